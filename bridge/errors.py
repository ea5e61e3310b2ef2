"""The one exception tree of cdc-bridge.

    BridgeError                    anything the bridge reports on purpose; `retryable` says if waiting helps
    ├── ConfigurationError         settings, command-line input or the source setup are wrong: fix, then rerun
    │   ├── MappingError           a mapping file is wrong; names file, line, rule and field
    │   ├── ContractError          a contract file is wrong, or a contract change would break consumers
    │   └── UnresolvableHost       a host name in the settings does not resolve (a typo, or a service not
    │                              there yet: waited for like an outage once the bridge has run)
    ├── ChangeError                one change cannot be handled; the pipeline dead-letters it or stops (policy)
    │   ├── DecodeError            a malformed or undecodable change event (names topic, offset, column)
    │   ├── TranslationError       a mapping rule failed on a change (names rule and field)
    │   │   └── ContractViolation  an event does not obey its contract (names contract, field, reason)
    │   └── RecordTooLarge         an event or dead letter exceeds the sink's per-record maximum
    ├── DamagedFileError           a file the bridge keeps (the event log) is damaged: restore or repair it, rerun
    ├── DeliveryError              an event could not be published (after the producer's own retries);
    │                              retryable unless the sink refused it for good
    └── ServiceUnavailable         a database or broker cannot be reached: retrying may help

Every message names what is wrong, where, and what to do about it; the CLI prints it as one line
and exits with `exit_code`. `cdc-bridge run` waits out retryable errors (bridge/supervisor.py) up to
pipeline.outage_limit_s before it exits 3.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    retryable: bool = False
    exit_code: int = 1

    def __init__(self, *args: object, retryable: bool | None = None) -> None:
        super().__init__(*args)
        if retryable is not None:  # the raiser knows better than the class (a delivery refused for good)
            self.retryable = retryable


class ConfigurationError(BridgeError):
    """The input is wrong (a setting, a mapping, an argument); retrying the same input cannot help."""

    exit_code = 2


class MappingError(ConfigurationError):
    """A mapping file does not load or does not fit the change stream."""


class ContractError(ConfigurationError):
    """A contract file does not load, or the contracts changed in a way that would break their consumers."""


class UnresolvableHost(ConfigurationError):
    """A host name in the settings does not resolve: at start almost always a typo. The daemon waits for it
    instead once it has run (a service being replaced can drop out of DNS for a while)."""


class ChangeError(BridgeError):
    """One change (or transaction) could not be handled; others may still be."""


class DecodeError(ChangeError):
    """A change event is malformed or carries a value the bridge cannot decode exactly."""


class TranslationError(ChangeError):
    """A mapping rule failed while translating a change (a failed expression, a missing value)."""


class ContractViolation(TranslationError):
    """An event a rule built does not obey its contract (a null in a required field, a value of the wrong
    kind): it is never published; the rule's on_error policy dead-letters it or stops the bridge."""


class DamagedFileError(BridgeError):
    """A file the bridge wrote earlier no longer reads back whole (a checksum fails, a part is missing).

    Nothing was changed: the bridge never cuts or rewrites data it acknowledged. Like an input error,
    retrying cannot help; the file must be restored or repaired first.
    """

    exit_code = 2


class DeliveryError(BridgeError):
    """The sink did not acknowledge an event."""

    retryable = True

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        # 3 says "retry later"; a delivery refused for good (retryable=False) is another stop.
        return 3 if self.retryable else 1


class ServiceUnavailable(BridgeError):
    """A service the bridge depends on (PostgreSQL, Kafka) did not answer; it may later."""

    retryable = True
    exit_code = 3


class RecordTooLarge(ChangeError):
    """An event or dead letter is larger than the sink takes; the pipeline dead-letters it, bounded.

    Raised by nothing: a sink reports it through the delivery callback, before anything is sent, so
    the pipeline can replace that one record and go on.
    """

    def __init__(self, size: int, limit: int, where: str) -> None:
        super().__init__(f"{size} bytes, more than the {limit} bytes {where} takes")
        self.size, self.limit, self.where = size, limit, where
