"""Source adapters: one module per monitoring tool, each a pure ``parse(payload)``."""
