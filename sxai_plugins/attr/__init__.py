"""Attributions (as ``captum.attr``): Captum's classes on the semantic spaces (:mod:`.semantic`),
their scores (:mod:`.metrics`) and the comparison with class attributions (:mod:`.compare`).

Only the method names live here, so that the CLI can list them without importing Captum.
"""

METHODS: tuple[str, ...] = ("occlusion", "window", "ig", "saliency", "input_x_gradient", "gradcam")
"""The named methods of :class:`~sxai_plugins.attr.semantic.PixelAttribution`."""
