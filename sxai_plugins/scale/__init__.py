"""The scale-out engine: ``sxai index|traits|space --engine ray`` on Ray Data.

Nothing here is imported by the rest of the library, and Ray is imported only inside these
modules' functions: the embedded default (SQLite, one process) never needs Ray. Install it with
``pip install "sxai[ray]"``.

- :mod:`~sxai_plugins.scale.ray_index`: the index as a Ray Data pipeline writing a Parquet dataset
- :mod:`~sxai_plugins.scale.ray_traits`: the genetic search and the feature extraction of
  ``traits`` and ``space``, one block of images per actor
"""
