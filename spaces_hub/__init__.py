"""Share semantic spaces on the Hugging Face Hub.

    import sxai_plugins, spaces_hub
    model = sxai_plugins.create_model("lite0_catdog")
    spaces = spaces_hub.pull("owner/name", model=model)

``push`` uploads a set in one commit (index ``spaces.json``, model card, one safetensors file per
space); ``pull`` downloads and verifies it; ``resolve_spaces`` takes local paths and
``hf://owner/name[@revision]`` alike. The repository layout is documented in ``spaces_hub.layout``.
"""

from .client import hub_endpoint, pull, push
from .errors import (
    DownloadError,
    HubAuthError,
    HubError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubUnreachableError,
    HubWarning,
    IntegrityError,
    SpacesIndexError,
)
from .layout import FORMAT_VERSION, INDEX_NAME
from .resolve import parse_hub_source, resolve_spaces

__all__ = [
    "FORMAT_VERSION",
    "INDEX_NAME",
    "DownloadError",
    "HubAuthError",
    "HubError",
    "HubRepoNotFoundError",
    "HubRevisionNotFoundError",
    "HubUnreachableError",
    "HubWarning",
    "IntegrityError",
    "SpacesIndexError",
    "hub_endpoint",
    "parse_hub_source",
    "pull",
    "push",
    "resolve_spaces",
]
