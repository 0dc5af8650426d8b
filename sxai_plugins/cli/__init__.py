"""The ``sxai`` command line: one module per command; each parses arguments, calls the library and prints."""
