"""Reading feeders: feeder TOML, pandapower networks and JSON, OpenDSS models (``load_feeder``), line ratings.

Imports: ``grid``, ``core``, ``errors``.
"""
