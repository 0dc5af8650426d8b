"""Errors raised while sharing semantic spaces: one line each, naming the repo and what to do."""

from __future__ import annotations

from sxai_plugins._utils.errors import SxaiError


class HubError(SxaiError):
    """Base class of every error ``spaces_hub`` raises on purpose."""


class HubRepoNotFoundError(HubError):
    """The repository does not exist (or is private and no valid token was given)."""


class HubRevisionNotFoundError(HubError):
    """The branch, tag or commit does not exist in the repository."""


class HubUnreachableError(HubError):
    """The Hub cannot be reached and the local cache does not hold what was asked for."""


class HubAuthError(HubError):
    """The Hub refused the token (missing, invalid or without write access)."""


class SpacesIndexError(HubError):
    """``spaces.json`` is missing, unreadable, malformed or of a newer format."""


class IntegrityError(HubError):
    """A downloaded file does not match the index or is not a well-formed safetensors file."""


class DownloadError(HubError):
    """A download did not complete."""


class HubWarning(UserWarning):
    """Something in a pulled repository was ignored (files the index does not list, unsafe paths)."""
