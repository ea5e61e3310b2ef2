"""The one exception tree of cdc-bridge.

    BridgeError                    anything the bridge reports to a user; `retryable` says if waiting helps
    ├── ConfigurationError         bad settings, mapping or command-line input: fix the input, then rerun
    └── ServiceUnavailable         a database or broker cannot be reached: retrying may help

Every message names what is wrong, where, and what to do about it; the CLI prints it as one line
and exits with `exit_code`.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    retryable: bool = False
    exit_code: int = 1


class ConfigurationError(BridgeError):
    """The input is wrong (a setting, a mapping, an argument); retrying the same input cannot help."""

    exit_code = 2


class ServiceUnavailable(BridgeError):
    """A service the bridge depends on (PostgreSQL, Kafka) did not answer; it may later."""

    retryable = True
    exit_code = 3
