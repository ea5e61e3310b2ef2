"""Which failures are settings to fix (exit 2) and which are services to wait for (exit 3); the real servers'
answers are checked in tests/integration/test_bridge_faults.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)

from bridge.errors import ConfigurationError, ServiceUnavailable, UnresolvableHost
from bridge.kafka_client import require_resolvable, split_address
from bridge.observability import configure_logging
from bridge.pg_connect import connect_error
from bridge.settings import load_settings
from bridge.sinks.kafka import KafkaEventSink, _delivery_error

PREAMBLE = 'connection failed: connection to server at "10.0.0.5", port 5432 failed: '


@pytest.mark.parametrize(("server_says", "kind", "names"), [
    ('FATAL:  database "restaurnt" does not exist', ConfigurationError, "database 'restaurnt' does not exist"),
    ('FATAL:  password authentication failed for user "bridge"', ConfigurationError, "refused the login"),
    ('FATAL:  role "brigde" does not exist', ConfigurationError, "role 'brigde' does not exist"),
    ('FATAL:  role "reader" is not permitted to log in', ConfigurationError, "ALTER ROLE reader LOGIN"),
    ('FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "bridge", database "restaurant", no encryption',
     ConfigurationError, "pg_hba.conf"),
    ("fe_sendauth: no password supplied", ConfigurationError, "refused the login"),
    ("Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
     ServiceUnavailable, "Connection refused Is the server running"),
    ("FATAL:  the database system is starting up", ServiceUnavailable, "starting up"),
    ("FATAL:  the database system is shutting down", ServiceUnavailable, "shutting down"),
    ("FATAL:  sorry, too many clients already", ServiceUnavailable, "too many clients"),
    ("timeout expired", ServiceUnavailable, "timeout expired"),
], ids=["no-database", "wrong-password", "no-role", "no-login", "hba", "no-password", "refused", "starting",
        "stopping", "full", "timeout"])
def test_postgresql_connect_failures_are_classified_by_what_the_server_says(
    server_says: str, kind: type, names: str,
) -> None:
    error = connect_error(Exception(PREAMBLE + server_says), where="host=10.0.0.5 dbname=restaurnt",
                          setting="source.dsn")
    assert type(error) is kind
    assert names in str(error) and "(source.dsn)" in str(error)
    assert "\n" not in str(error) and "FATAL" not in str(error)


def test_an_unknown_database_host_is_unresolvable_but_a_slow_resolver_is_an_outage() -> None:
    unknown = connect_error(Exception("failed to resolve host 'db.exmaple': [Errno -2] Name or service not known"),
                            where="host=db.exmaple", setting="source.dsn")
    assert isinstance(unknown, UnresolvableHost) and unknown.exit_code == 2
    slow = connect_error(Exception("failed to resolve host 'db': [Errno -3] Temporary failure in name resolution"),
                         where="host=db", setting="source.dsn")
    assert type(slow) is ServiceUnavailable


def test_kafka_addresses_are_checked_before_a_client_is_built() -> None:
    require_resolvable("127.0.0.1:9092,localhost:9093,[::1]:9094", "sink.bootstrap_servers")
    with pytest.raises(UnresolvableHost, match=r"'no-such-broker.invalid' in sink.bootstrap_servers"):
        require_resolvable("127.0.0.1:9092,no-such-broker.invalid:9092", "sink.bootstrap_servers")
    with pytest.raises(ConfigurationError, match="not a host:port"):
        require_resolvable("kafka:ninety", "source.bootstrap_servers")
    with pytest.raises(ConfigurationError, match="is empty"):
        require_resolvable(" , ", "sink.bootstrap_servers")
    assert split_address("[fe80::1]:9092") == ("fe80::1", "9092") and split_address("kafka") == ("kafka", "")


def test_a_delivery_is_retried_later_only_when_kafka_says_it_may_succeed() -> None:
    assert _delivery_error(KafkaTimeoutError("Expiring 3 record(s)"), "event e1", "t").retryable
    assert _delivery_error(KafkaConnectionError("111 ECONNREFUSED"), "event e1", "t").retryable
    refused = _delivery_error(TopicAuthorizationFailedError("t"), "event e1", "t")
    assert not refused.retryable and refused.exit_code == 1
    # A topic limit lowered while running: the next run's sink reads it and dead-letters the record.
    assert _delivery_error(MessageSizeTooLargeError("1.2 MB"), "event e1", "t").retryable


class _Sender:
    def __init__(self) -> None:
        self.forced = False

    def force_close(self) -> None:
        self.forced = True

    def join(self, timeout: float) -> None: ...


class _ProducerOfAGoneBroker:
    """kafka-python's close flushes first and raises when the broker is away, before stopping its thread."""

    def __init__(self) -> None:
        self._sender = _Sender()
        self.closes: list[float] = []

    def close(self, timeout: float) -> None:
        self.closes.append(timeout)
        if not self._sender.forced:
            raise KafkaTimeoutError("Timeout waiting for future")


def test_closing_the_kafka_sink_while_the_broker_is_away_abandons_the_records_and_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink: Any = KafkaEventSink.__new__(KafkaEventSink)
    producer = _ProducerOfAGoneBroker()
    sink._producer = producer
    sink.close()
    assert producer._sender.forced and producer.closes[-1] == 0
    assert any("abandoned" in r.getMessage() for r in caplog.records)


def test_kafka_pythons_own_lines_are_silenced_unless_debugging() -> None:
    try:
        configure_logging("INFO")
        assert not logging.getLogger("kafka.net.manager").isEnabledFor(logging.ERROR)
        configure_logging("DEBUG")
        assert logging.getLogger("kafka.net.manager").isEnabledFor(logging.WARNING)
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger("kafka").setLevel(logging.NOTSET)


def test_a_pgoutput_source_without_a_dsn_names_the_setting_and_its_variable(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("source: {kind: pgoutput, slot_name: s1}\n")
    with pytest.raises(ConfigurationError) as error:
        load_settings(config)
    assert "source.dsn: required and not given" in str(error.value)
    assert "BRIDGE_SOURCE__DSN" in str(error.value)
