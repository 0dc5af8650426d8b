"""Attributions (as ``captum.attr``): where in an image a semantic space's evidence lies, beside Captum's class attributions."""
