"""Exceptions with messages meant for the person at the keyboard."""


class SxaiError(Exception):
    """Base class of every error sxai raises on purpose."""


class BackboneNotFoundError(SxaiError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BackboneError(SxaiError, ValueError):
    """A backbone cannot serve as a GAP trait model (e.g. not a CNN)."""


class PluginNotFoundError(SxaiError, LookupError):
    pass


class PluginError(SxaiError):
    """A plugin breaks the hook contract (e.g. implements a hook that does not exist)."""


class WeightsError(SxaiError):
    """A weights file is missing, unreadable or does not fit the model."""


class ImageLoadError(SxaiError):
    """An image file could not be read."""


class SpaceError(SxaiError):
    """A semantic space file is invalid or does not fit the model."""
