"""What the bridge's Kafka clients (the sink's producer, the Debezium source's consumer) share: the check
of their broker addresses and their reconnect backoff.

A host name that does not resolve is a setting to fix (exit 2), not an outage to wait for; kafka-python
alone would retry it for 30 s, logging a DNS error for every attempt, and then report only that it could
not bootstrap.
"""

from __future__ import annotations

import socket

from bridge.errors import ConfigurationError, ServiceUnavailable, UnresolvableHost

# Once a broker is back, a client should not sit out kafka-python's default reconnect backoff of up to 30 s
# (the daemon's own backoff, bridge/supervisor.py, already spaces out the attempts to rebuild a client).
CLIENT_BACKOFF = {"reconnect_backoff_max_ms": 5_000}

# The resolver's answers that mean "there is no such name", as opposed to "no answer now" (EAI_AGAIN).
_NO_SUCH_NAME = {code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
                 if code is not None}


def without_credentials(entry: str) -> str:
    """`[SCHEME://][user:password@]host:port` without the scheme and the user info."""
    entry = entry.strip()
    entry = entry.split("://", 1)[1] if "://" in entry else entry
    return entry.rsplit("@", 1)[1] if "@" in entry else entry


def redacted_servers(servers: str) -> str:
    """A broker list as it may appear in a message or a log: no user info (a password may be in it)."""
    return ",".join(without_credentials(entry) for entry in servers.split(",") if entry.strip())


def split_address(entry: str) -> tuple[str, str]:
    """`host:port`, `[v6]:port` or a bare `host` (after any scheme and user info) as (host, port); the port
    may be ''."""
    entry = without_credentials(entry)
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest.removeprefix(":")
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


def require_resolvable(servers: str, setting: str) -> None:
    """Raise ConfigurationError for a malformed entry and UnresolvableHost for a name that does not exist."""
    entries = [entry for entry in servers.split(",") if entry.strip()]
    if not entries:
        raise ConfigurationError(f"{setting} is empty: give the Kafka brokers as host:port[,host:port...]")
    for entry in entries:
        host, port = split_address(entry)
        if not host or (port and not port.isdigit()):
            raise ConfigurationError(
                f"{setting}: {without_credentials(entry)!r} is not a host:port address (e.g. kafka:9092)")
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME:
                raise UnresolvableHost(
                    f"the Kafka host {host!r} in {setting} does not resolve ({exc.strerror}): fix the address") from None
            # Anything else (EAI_AGAIN: the resolver did not answer) may pass: the client reports it.


def broker_unreachable(servers: str, setting: str, exc: Exception) -> ServiceUnavailable:
    """The error for a client that could not bootstrap from `servers` (configured by `setting`)."""
    return ServiceUnavailable(f"no Kafka broker answers at {redacted_servers(servers)} ({setting}): {exc}; "
                              "check the address and that the broker is up")
