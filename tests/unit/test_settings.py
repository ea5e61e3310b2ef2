"""Settings come from the YAML file, environment variables override them, and mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigurationError
from bridge.settings import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "bridge.yaml"


def test_the_example_config_loads_and_points_at_real_mappings() -> None:
    settings = load_settings(EXAMPLE)
    assert all(path.is_file() for path in settings.mappings)
    assert settings.source.resolved_transaction_topic() == "legacy.transaction"
    assert settings.sink.topic_for("restaurant", "order") == "restaurant.order"


def test_the_commented_pgoutput_source_in_the_example_is_valid_and_says_the_defaults() -> None:
    import yaml

    from bridge.settings import PgOutputSource

    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# source:")
    block = [lines[start][2:]]
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    values = yaml.safe_load("\n".join(block))["source"]
    source = PgOutputSource(**values)
    defaults = PgOutputSource(dsn=values["dsn"])  # the DSN has no default
    for name in values.keys() - {"dsn"}:
        assert getattr(source, name) == getattr(defaults, name), f"the example's {name} is not the default"


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SOURCE__BOOTSTRAP_SERVERS", "kafka-a:9092")
    monkeypatch.setenv("BRIDGE_PIPELINE__ON_ERROR", "stop")
    settings = load_settings(EXAMPLE)
    assert settings.source.bootstrap_servers == "kafka-a:9092"
    assert settings.pipeline.on_error == "stop"
    assert settings.source.topic_prefix == "legacy"  # the rest still from the file


def test_mistakes_name_the_file_and_every_setting(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("source: {topic_prefixx: legacy}\nsink: {partitions: zero}\nsource_id: two words\n")
    with pytest.raises(ConfigurationError) as error:
        load_settings(config)
    message = str(error.value)
    assert message.startswith(str(config))
    assert "source.topic_prefixx: Extra inputs are not permitted" in message
    assert "sink.partitions" in message and "source_id" in message


def test_a_missing_or_broken_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("source: [unclosed\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_settings(broken)
