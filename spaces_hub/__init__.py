"""Share semantic spaces on the Hugging Face Hub.

    import sxai_plugins, spaces_hub
    model = sxai_plugins.create_model("lite0_catdog")
    spaces = spaces_hub.pull("owner/name", model=model)

``push`` uploads a set in one commit (index ``spaces.json``, model card, one safetensors file per
space); ``pull`` downloads and verifies it; ``resolve_spaces`` takes local paths and
``hf://owner/name[@revision]`` alike. The repository layout is documented in ``spaces_hub.layout``.
"""

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

# Loaded on first use: the sxai plugin in spaces_hub.plugin is imported whenever sxai lists its
# plugins, and must not pull in torch and huggingface_hub for that.
_HOMES = {
    "hub_endpoint": "client",
    "pull": "client",
    "push": "client",
    "FORMAT_VERSION": "layout",
    "INDEX_NAME": "layout",
    "parse_hub_source": "resolve",
    "resolve_spaces": "resolve",
}


def __getattr__(name: str):
    import importlib

    if name in _HOMES:
        return getattr(importlib.import_module(f"spaces_hub.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'spaces_hub' has no attribute {name!r}")
