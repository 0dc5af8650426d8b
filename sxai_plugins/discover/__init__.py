"""Concepts without hand annotation: discover clusters of segments a class's images share, name
them once (``concepts.toml``), and build calibrated semantic spaces from them."""
