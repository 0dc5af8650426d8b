"""The built-in feature inverters as a plugin: ``tv`` (the paper's MSE + total variation) and
``fourier`` (a decorrelated Fourier image, as Lucent); the algorithms are in ``viz.inversion``."""

from __future__ import annotations

from ..plugin.deferred import Deferred
from ..plugin.hookspecs import hookimpl


@hookimpl
def sxai_feature_inverters() -> list:
    return [
        Deferred("tv", "sxai_plugins.viz.inversion:TVInverter"),
        Deferred("fourier", "sxai_plugins.viz.inversion:FourierInverter"),
    ]
