"""The plugin system: hook specs with their contract types (``hookspecs``) and discovery (``manager``)."""
