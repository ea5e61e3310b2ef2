"""cdc-bridge: a legacy PostgreSQL database's change stream in, versioned domain events out."""

__version__ = "0.1.0"
