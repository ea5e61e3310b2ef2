"""Settings: the only reader of configuration files and environment variables.

A YAML file (`cdc-bridge run --config bridge.yaml`) gives the settings; environment variables override
any of them, named BRIDGE_<SECTION>__<FIELD> (e.g. BRIDGE_SOURCE__BOOTSTRAP_SERVERS). Invalid settings
raise ConfigurationError with one line per problem naming the file and the setting.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.errors import ConfigurationError
from bridge.redact import dsn_problem, note_secrets_in


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DebeziumSource(_Section):
    """Where Debezium writes and how its JSON converter is set up."""

    kind: Literal["debezium"] = "debezium"
    bootstrap_servers: str = "127.0.0.1:9092"
    bootstrap_timeout_s: float = Field(30.0, gt=0, description="how long to wait at start for a broker to answer")
    topic_prefix: str = Field("legacy", description="the connector's topic.prefix")
    schema_name: str = "public"
    replica_identity_full: list[str] = Field(
        default_factory=list,
        description="tables with REPLICA IDENTITY FULL, whose before images are complete; Debezium's "
                    "before images of every other table are trusted for their key columns only")
    group_id: str = "cdc-bridge"
    group_instance_id: str | None = Field(
        "cdc-bridge", description="static group membership: a restart resumes at once; null for dynamic")
    transaction_topic: str | None = Field(None, description="default: <topic_prefix>.transaction")
    # The connector's decoding options, needed to decode schemaless JSON (schemas.enable=false).
    decimal_handling_mode: Literal["precise", "string", "double"] = "precise"
    time_precision_mode: Literal[
        "adaptive", "adaptive_time_microseconds", "connect", "microseconds", "nanoseconds", "isostring"
    ] = "adaptive"
    unavailable_value_placeholder: str = "__debezium_unavailable_value"
    transaction_wait_s: float = Field(
        60.0, gt=0, description="how long transactions may wait with none completing before the bridge stops")
    poll_max_records: int = Field(2000, gt=0)
    skip_transactions: list[int] = Field(
        default_factory=list,
        description="xids of transactions to move past without translating them (their rows are dead-lettered): "
                    "for transactions a stall message names whose missing rows will never come")


    def resolved_transaction_topic(self) -> str:
        return self.transaction_topic or f"{self.topic_prefix}.transaction"

    def full_identity_tables(self) -> frozenset[str]:
        return frozenset(t if "." in t else f"{self.schema_name}.{t}" for t in self.replica_identity_full)


class PgOutputSource(_Section):
    """PostgreSQL's logical replication stream (pgoutput), read directly: no Kafka Connect needed."""

    kind: Literal["pgoutput"] = "pgoutput"
    # No default: a guessed database (the old postgres@127.0.0.1:5432/restaurant) would be read without a word.
    dsn: str = Field(description="the legacy database, e.g. postgresql://bridge@legacy-host:5432/restaurant")
    schema_name: str = "public"
    slot_name: str = "cdc_bridge"
    publication_name: str = "cdc_bridge"
    create_slot: bool = Field(True, description="create the slot if missing (never drops one it did not create)")
    create_publication: bool = Field(True, description="create the publication for exactly the mapped tables")
    heartbeat_interval_s: float = Field(
        10.0, gt=0, description="emit a logical message this often so a quiet database's slot still advances")
    status_interval_s: float = Field(1.0, gt=0, description="how often the acknowledged position is reported")
    slot_busy_wait_s: float = Field(
        30.0, ge=0, description="how long to wait for a slot still held by a bridge that just died")
    connect_timeout_s: float = Field(10.0, gt=0, description="how long a connection to the server may take to open")
    silence_warning_s: float = Field(
        60.0, gt=0, description="warn when neither data nor a keepalive arrived for this long (the heartbeat "
                                "should come back every heartbeat_interval_s, so keep it longer than that)")
    acknowledged_path: Path | None = Field(
        None, description="where the position acknowledged to the slot is kept, so transactions a restarted "
                          "server resends are not published twice; default: beside state.path")
    snapshot: Literal["initial", "never"] = Field(
        "initial", description="when `run` creates the slot, read every mapped table inside the slot's exported "
                               "snapshot first (events of op r), then stream from the slot's consistent point; "
                               "never: only changes made after the slot was created are published")
    snapshot_batch_rows: int = Field(
        1000, gt=0, description="rows of one table the initial snapshot reads per batch (one unit of work)")

    def acknowledged_file(self, state_path: Path | None) -> Path | None:
        """Where the acknowledged position is kept: as configured, else beside the prior-row store (none without)."""
        if self.acknowledged_path is not None:
            return self.acknowledged_path
        return state_path.with_suffix(".acknowledged.json") if state_path is not None else None

    def snapshot_file(self, state_path: Path | None) -> Path | None:
        """Where the initial snapshot's marker is kept: beside the acknowledged-position file (none without)."""
        if self.acknowledged_path is not None:
            return self.acknowledged_path.with_suffix(".snapshot.json")
        return state_path.with_suffix(".snapshot.json") if state_path is not None else None

    @field_validator("dsn")
    @classmethod
    def _parseable(cls, value: str) -> str:
        # Here, not at the first connect: libpq's own message for an unparseable string quotes it, password too.
        if problem := dsn_problem(value):
            raise ValueError(problem)
        return value


class _SinkSection(_Section):
    separate_process: bool = Field(
        False, description="publish from a second process: event encoding and the sink's own work (the Kafka client, "
                           "the log's writes) run on another core while this one reads and translates; deliveries "
                           "are acknowledged as before, only once the sink has them")


class KafkaSink(_SinkSection):
    kind: Literal["kafka"] = "kafka"
    client: Literal["kafka-python", "confluent"] = Field(
        "kafka-python", description="the producer library: kafka-python (pure Python, installed always) or confluent "
                                    "(confluent-kafka on librdkafka, faster; pip install 'cdc-bridge[confluent]')")
    bootstrap_servers: str = "127.0.0.1:9092"
    bootstrap_timeout_s: float = Field(30.0, gt=0, description="how long to wait at start for a broker to answer")
    topic_template: str = Field("{namespace}.{aggregate_type}", description="topic per aggregate type")
    topics: dict[str, str] = Field(default_factory=dict, description="aggregate type -> topic, overrides the template")
    dead_letter_topic: str = "cdc-bridge.dead-letters"
    create_topics: bool = Field(True, description="create missing event and dead-letter topics at start")
    partitions: int = Field(3, gt=0, description="for topics the bridge creates; key = aggregate id keeps order")
    replication_factor: int = Field(1, gt=0, description="for topics the bridge creates")
    linger_ms: int = 5
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] | None = None
    delivery_timeout_s: float = Field(120.0, gt=0)
    max_message_bytes: int = Field(
        1024 * 1024, ge=16 * 1024,
        description="the largest record sent (the smaller of this and the topics' max.message.bytes counts); a "
                    "larger event or dead letter becomes a bounded dead letter")

    def topic_for(self, namespace: str, aggregate_type: str) -> str:
        return self.topics.get(aggregate_type) or self.topic_template.format(
            namespace=namespace, aggregate_type=aggregate_type)


class LocalLogSink(_SinkSection):
    """An embedded, durable, append-only event log on local disk: no server needed."""

    kind: Literal["locallog"] = "locallog"
    path: Path = Field(Path(".state/bridge/events"), description="the log's directory (`cdc-bridge tail --log`)")
    dead_letter_path: Path | None = Field(None, description="default: <path>/dead-letters")
    fsync_interval_ms: float = Field(5.0, ge=0, description="acknowledge after the fsync that covers an event")
    segment_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024, description="size at which a segment file is sealed")
    cached_segments: int = Field(1, ge=1, description="sealed segments whose ids stay in memory for deduplication")


def _kind_or(default: str) -> Any:
    """Pick a section's variant by its `kind`, which may be left out for the default variant."""
    def pick(value: Any) -> str:
        return value.get("kind", default) if isinstance(value, dict) else getattr(value, "kind", default)
    return Discriminator(pick)


SourceSettings = Annotated[
    Annotated[DebeziumSource, Tag("debezium")] | Annotated[PgOutputSource, Tag("pgoutput")], _kind_or("debezium")]
SinkSettings = Annotated[
    Annotated[KafkaSink, Tag("kafka")] | Annotated[LocalLogSink, Tag("locallog")], _kind_or("kafka")]


class StateSettings(_Section):
    """The local store of last-seen rows that supplies old values under REPLICA IDENTITY DEFAULT."""

    path: Path | None = Field(Path(".state/bridge/prior-rows.sqlite"), description="null disables the store")


class PipelineSettings(_Section):
    max_in_flight_events: int = Field(20000, gt=0, description="events sent but not yet acknowledged")
    commit_interval_s: float = Field(1.0, gt=0)
    on_error: Literal["dead_letter", "stop"] | None = Field(None, description="overrides every mapping's policy")
    outage_limit_s: float = Field(
        300.0, ge=0, description="how long to wait for an unreachable Kafka or PostgreSQL (with backoff, from the "
                                 "committed position) before stopping with exit code 3; 0 stops at once")
    spill_changes: int = Field(
        10000, gt=0, description="a transaction with more changes is translated and published in slices of this "
                                 "many, and the direct source (pgoutput) holds it on disk instead of in memory")
    spill_path: Path | None = Field(
        None, description="the directory for large transactions' spill files (unnamed, owner-only); "
                          "default: spill/ beside state.path, else the system's temporary directory")

    def spill_directory(self, state_path: Path | None) -> Path:
        if self.spill_path is not None:
            return self.spill_path
        return state_path.parent / "spill" if state_path is not None else Path(tempfile.gettempdir()) / "cdc-bridge-spill"


class MetricsSettings(_Section):
    """Prometheus metrics, /healthz and /readyz on one HTTP port (bridge/metrics.py)."""

    port: int | None = Field(None, ge=0, le=65535, description="null: off; 0: any free port (logged at start)")
    host: str = Field("127.0.0.1", description="the address to listen on; 0.0.0.0 exposes it beyond this host")
    stall_after_s: float = Field(
        60.0, gt=0, description="/healthz fails when the loop has not turned this long, /readyz when work waits "
                                "without progress this long")
    lag_interval_s: float = Field(5.0, gt=0, description="how often the slot or consumer lag is measured")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(BaseSettings):
    """Everything `cdc-bridge run` needs."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", env_nested_delimiter="__", extra="forbid")

    source_id: str = Field("legacy-restaurant", description="names the legacy database in event ids and sources")
    mappings: list[Path] = Field(default_factory=lambda: [Path("mappings/restaurant.yaml")])
    retired_events: list[str] = Field(
        default_factory=list, description="event types with their major (restaurant.order.OrderPlaced.v1) no longer "
        "published although a rule emits them: ends a dual-publishing window once consumers read the new major")
    source: SourceSettings = Field(default_factory=DebeziumSource)
    sink: SinkSettings = Field(default_factory=KafkaSink)
    state: StateSettings = Field(default_factory=StateSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @field_validator("source_id")
    @classmethod
    def _stable_id(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError("must be a non-empty word without spaces; it is part of every event id")
        return value

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the file, which arrives as init settings.
        return env_settings, init_settings


def load_settings(config_file: Path | None) -> Settings:
    """Read the file (if any) and the environment; relative paths in the file are taken from its folder."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            text = config_file.read_text()
        except FileNotFoundError:
            raise ConfigurationError(f"config file {config_file} does not exist") from None
        note_secrets_in(text)  # before parsing: a file that does not parse may still hold a DSN
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{config_file}: not valid YAML: {_yaml_problem(exc)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigurationError(f"{config_file}: expected a mapping of settings at the top level")
        note_secrets_in(loaded)
        data = _resolve_paths(loaded or {}, config_file.parent)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        where = str(config_file) if config_file else "settings"
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise ConfigurationError(
            f"{where}: {problems} (environment variables BRIDGE_<SECTION>__<FIELD> override the file)") from None
    note_secrets_in(settings)
    return settings


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's quote of the offending line: that line may hold a password."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f"{exc.context}, " if exc.context else ""
        return f"{context}{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return type(exc).__name__


_VARIANTS = {"debezium", "pgoutput", "kafka", "locallog"}


def _problem(error: Any) -> str:
    name = _setting_name(error["loc"])
    if error["type"] == "missing":
        variable = "BRIDGE_" + "__".join(name.upper().split("."))
        return f"{name}: required and not given: set it in the file or with the environment variable {variable}"
    return f"{name}: {error['msg']}"


def _setting_name(loc: tuple[Any, ...]) -> str:
    """`sink.partitions`, not pydantic's `sink.kafka.partitions`: the variant tag is not a setting."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("source", "sink") and parts[1] in _VARIANTS:
        del parts[1]
    return ".".join(parts)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    resolved = dict(data)
    if isinstance(resolved.get("mappings"), list):
        resolved["mappings"] = [str(base / p) if not Path(p).is_absolute() else p for p in resolved["mappings"]]
    for section, keys in (("state", ("path",)), ("sink", ("path", "dead_letter_path")),
                          ("source", ("acknowledged_path",)), ("pipeline", ("spill_path",))):
        values = resolved.get(section)
        if isinstance(values, dict):
            resolved[section] = {**values, **{key: str(base / values[key]) for key in keys
                                              if isinstance(values.get(key), str) and not Path(values[key]).is_absolute()}}
    return resolved
