"""The AsyncAPI export: valid against the official 3.0.0 schema, complete, and true to what the bridge publishes."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from bridge.changes import SnapshotMark, SourcePosition
from bridge.cli import cli
from bridge.contracts.asyncapi import asyncapi_document, draft07, render_json, render_yaml
from bridge.contracts.registry import ContractRegistry, load_contracts
from bridge.contracts.schema import revision_schema, schema_bytes
from bridge.events import DomainEvent, event_id, sequence_of
from bridge.settings import KafkaSink

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "mappings" / "contracts"
OFFICIAL = ROOT / "tests" / "fixtures" / "asyncapi" / "asyncapi-3.0.0.schema.json"
REQUIRED_HEADERS = {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_time", "ce_sequence",
                    "ce_dataschema", "content-type"}


@pytest.fixture(scope="module")
def registry() -> ContractRegistry:
    return load_contracts(CONTRACTS)


@pytest.fixture(scope="module")
def document(registry: ContractRegistry) -> dict[str, Any]:
    return asyncapi_document(registry, KafkaSink().topic_for, title="cdc-bridge domain events", version="1.0.0")


@pytest.fixture(scope="module")
def official() -> jsonschema.protocols.Validator:
    schema = json.loads(OFFICIAL.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    assert validator_class is jsonschema.Draft7Validator, "the official 3.0.0 schema is draft-07"
    validator_class.check_schema(schema)
    return validator_class(schema)


def _problems(validator: jsonschema.protocols.Validator, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(instance)]


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for token in ref[2:].split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def _validator_in(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    """A draft-07 validator of a schema of the document whose #/components/... refs resolve in the document."""
    return jsonschema.Draft7Validator({"components": document["components"], "allOf": [schema]},
                                      format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def _message(document: dict[str, Any], event_type: str) -> dict[str, Any]:
    return document["components"]["messages"][event_type]


def test_the_contracts_document_is_valid_asyncapi_3(document: dict[str, Any], official) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert _problems(official, document) == []


def test_broken_documents_are_rejected_by_the_official_schema(document: dict[str, Any], official) -> None:
    unknown_action = copy.deepcopy(document)
    unknown_action["operations"]["send.restaurant.order"]["action"] = "publish"  # AsyncAPI 2's verb
    no_channel = copy.deepcopy(document)
    del no_channel["operations"]["send.restaurant.order"]["channel"]
    no_version = copy.deepcopy(document)
    del no_version["info"]["version"]
    stray_field = copy.deepcopy(document)
    stray_field["channels"]["restaurant.order"]["topic"] = "restaurant.order"  # belongs in the Kafka binding
    for broken in (unknown_action, no_channel, no_version, stray_field):
        assert _problems(official, broken), "the official schema must refuse a broken document"


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    # JSON Schema cannot check that a $ref points somewhere: a renamed channel would still validate.
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend([node["$ref"]] if isinstance(node.get("$ref"), str) else [])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    assert refs
    for ref in refs:
        assert isinstance(_resolve(document, ref), dict), ref


def test_one_topic_per_aggregate_with_every_event_type_and_major(document: dict[str, Any],
                                                                  registry: ContractRegistry) -> None:
    channels = document["channels"]
    assert sorted(channels) == ["restaurant.customer", "restaurant.menu_item", "restaurant.order"]
    for topic, channel in channels.items():
        assert channel["address"] == topic
        assert channel["bindings"]["kafka"]["topic"] == topic
    majors = list(registry.majors())
    assert len(majors) == 20  # 19 event types in v1, and OrderPlaced v2
    assert {"restaurant.order.OrderPlaced.v1", "restaurant.order.OrderPlaced.v2"} <= {m.event_type for m in majors}
    for major in majors:
        topic = f"restaurant.{major.contract.aggregate}"
        assert major.event_type in channels[topic]["messages"], major.event_type
        message = _resolve(document, channels[topic]["messages"][major.event_type]["$ref"])
        assert message["name"] == major.event_type
        assert message["summary"] == major.contract.description
        assert message["contentType"] == "application/json"
        assert message["x-dataschema"] == major.dataschema()
        assert major.dataschema() in message["description"]
    for topic, channel in channels.items():
        operation = document["operations"][f"send.{topic}"]
        assert operation["action"] == "send"
        assert _resolve(document, operation["channel"]["$ref"]) is channel
        listed = [_resolve(document, ref["$ref"]) for ref in operation["messages"]]
        assert listed == list(channel["messages"].values())  # the channel's entries, each a $ref to a message


def test_headers_and_key_are_the_cloudevents_binary_mode_ones(document: dict[str, Any],
                                                             registry: ContractRegistry) -> None:
    for major in registry.majors():
        message = _message(document, major.event_type)
        common, pinned = message["headers"]["allOf"]
        headers = _resolve(document, common["$ref"])
        assert set(headers["required"]) == REQUIRED_HEADERS
        assert {"ce_backfill", "ce_backfillcut"} <= set(headers["properties"]) - set(headers["required"])
        assert headers["properties"]["ce_backfill"]["description"]
        assert pinned["properties"]["ce_type"] == {"const": major.event_type}
        assert pinned["properties"]["ce_dataschema"] == {"const": major.dataschema()}
        key = message["bindings"]["kafka"]["key"]
        assert key["type"] == "string" and "aggregate id" in key["description"]


def _published_headers(event_type: str, aggregate: str, dataschema: str, snapshot: SnapshotMark | None) -> dict[str, str]:
    """The headers the bridge puts on a record (decoded), with the ce_dataschema header being added."""
    position = SourcePosition(commit_lsn=0x16B3790, change_lsn=0x16B3748, seq=0)
    event = DomainEvent(
        id=event_id("legacy-restaurant", position, "orders_placed", 1, 0), type=event_type,
        source="/cdc-bridge/legacy-restaurant", subject=f"{aggregate}/7",
        time=datetime(2024, 1, 1, 12, 0, 1, tzinfo=timezone.utc), sequence=sequence_of(position, 0),
        aggregate_type=aggregate, aggregate_id="7", data={}, rule_id="orders_placed", position=position,
        snapshot=snapshot)
    return {**{name: value.decode() for name, value in event.headers()}, "ce_dataschema": dataschema}


def test_the_published_headers_obey_the_headers_schema(document: dict[str, Any], registry: ContractRegistry) -> None:
    major = registry.major("restaurant.order.OrderPlaced.v1")
    assert major is not None
    validator = _validator_in(document, _message(document, major.event_type)["headers"])
    for snapshot in (None, SnapshotMark("initial", 0x16B3748)):
        headers = _published_headers(major.event_type, "order", major.dataschema(), snapshot)
        assert _problems(validator, headers) == []
    live = _published_headers(major.event_type, "order", major.dataschema(), None)
    assert _problems(validator, {**live, "ce_type": "restaurant.order.OrderCanceled.v1"})
    assert _problems(validator, {**live, "ce_subject": "customer/7"})
    assert _problems(validator, {k: v for k, v in live.items() if k != "ce_dataschema"})


def test_every_payload_schema_accepts_the_contract_examples(document: dict[str, Any],
                                                            registry: ContractRegistry) -> None:
    checked = 0
    for major in registry.majors():
        payload = _message(document, major.event_type)["payload"]
        assert "$schema" not in payload and "$id" not in payload and "$defs" not in payload
        validator = _validator_in(document, payload)
        for example in major.spec.examples:
            assert _problems(validator, example.data) == [], f"{major.event_type} example {example.data}"
            checked += 1
            # Closed, as the contract: an unknown field is refused (so the check above can fail).
            assert _problems(validator, {**example.data, "unknownField": 1})
    assert checked >= 19


def test_nested_models_live_in_components_and_are_reached_through_refs(document: dict[str, Any]) -> None:
    lines = _message(document, "restaurant.order.OrderPlaced.v1")["payload"]["properties"]["lines"]
    assert lines["items"] == {"$ref": "#/components/schemas/OrderPlacedV1LinesItem"}
    validator = _validator_in(document, _message(document, "restaurant.order.OrderPlaced.v1")["payload"])
    bad_line = {"orderId": 7, "placedAt": None, "total": "1.00",
                "lines": [{"orderItemId": 1, "menuItemId": 2, "price": 1.0, "quantity": 1}]}
    assert any("lines/0/price" in p for p in _problems(validator, bad_line))


def test_draft07_rewrites_ref_siblings_and_refuses_what_draft07_cannot_say() -> None:
    assert draft07({"$ref": "#/components/schemas/A", "description": "d"}) == {
        "description": "d", "allOf": [{"$ref": "#/components/schemas/A"}]}
    with pytest.raises(ValueError, match="prefixItems"):
        draft07({"type": "array", "prefixItems": [{"type": "integer"}]})


def test_the_output_is_deterministic_and_yaml_equals_json(registry: ContractRegistry, document: dict[str, Any]) -> None:
    again = asyncapi_document(load_contracts(CONTRACTS), KafkaSink().topic_for, title="cdc-bridge domain events",
                              version="1.0.0")
    assert render_yaml(again) == render_yaml(document)
    assert yaml.safe_load(render_yaml(document)) == json.loads(render_json(document)) == document
    assert list(document["components"]["messages"]) == sorted(document["components"]["messages"])


def _export(*args: str) -> Any:
    result = CliRunner().invoke(cli, ["contracts", "export", "--dir", str(CONTRACTS), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_export_jsonschema_writes_one_file_per_revision(tmp_path: Path, registry: ContractRegistry) -> None:
    _export("--format", "jsonschema", "--out", str(tmp_path))
    expected = {}
    for major in registry.majors():
        for revision in range(major.revision + 1):
            path = tmp_path / major.contract.type / f"{major.number}.{revision}.schema.json"
            expected[path] = schema_bytes(revision_schema(major, revision))
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(expected)
    for path, content in expected.items():
        assert path.read_bytes() == content, path


def test_export_jsonschema_to_stdout_keys_every_revision_by_its_dataschema(registry: ContractRegistry) -> None:
    exported = json.loads(_export("--format", "jsonschema").output)
    major = registry.major("restaurant.order.OrderPlaced.v1")
    assert major is not None
    assert exported[major.dataschema(0)] == revision_schema(major, 0)
    assert len(exported) == sum(m.revision + 1 for m in registry.majors())


def test_export_asyncapi_writes_the_document(tmp_path: Path, document: dict[str, Any], official) -> None:
    _export("--format", "asyncapi", "--out", str(tmp_path), "--doc-version", "1.0.0")
    written = yaml.safe_load((tmp_path / "asyncapi.yaml").read_text())
    assert written == document
    _export("--format", "asyncapi", "--out", str(tmp_path), "--json")
    assert _problems(official, json.loads((tmp_path / "asyncapi.json").read_text())) == []


def test_export_asyncapi_takes_the_topics_from_the_settings_file(tmp_path: Path, official) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("sink:\n  kind: kafka\n  topics: {order: shop.orders}\n")
    exported = yaml.safe_load(_export("--format", "asyncapi", "--config", str(config)).output)
    assert sorted(exported["channels"]) == ["restaurant.customer", "restaurant.menu_item", "shop.orders"]
    assert exported["channels"]["shop.orders"]["address"] == "shop.orders"
    assert "restaurant.order.OrderPlaced.v1" in exported["channels"]["shop.orders"]["messages"]
    assert _problems(official, exported) == []


def test_a_major_with_revisions_accepts_every_revision_s_dataschema(tmp_path: Path, official) -> None:
    # Events published before the latest revision stay on the topic: their ce_dataschema names theirs.
    contracts = tmp_path / "contracts"
    (contracts / "thing").mkdir(parents=True)
    (contracts / "thing" / "ThingHappened.yaml").write_text(
        "type: shop.thing.ThingHappened\naggregate: thing\ndescription: A thing happened.\nmajors:\n  1:\n"
        "    fields:\n      thingId: {type: integer, description: The thing.}\n"
        "      note: {type: string, optional: true, since: 1, description: Added by revision 1.}\n")
    document = asyncapi_document(load_contracts(contracts), KafkaSink().topic_for, title="t", version="1")
    assert _problems(official, document) == []
    message = _message(document, "shop.thing.ThingHappened.v1")
    assert message["x-dataschema"] == "urn:cdc-bridge:contract:shop.thing.ThingHappened:1.1"
    assert message["headers"]["allOf"][1]["properties"]["ce_dataschema"] == {"enum": [
        "urn:cdc-bridge:contract:shop.thing.ThingHappened:1.1", "urn:cdc-bridge:contract:shop.thing.ThingHappened:1.0"]}
    assert sorted(document["channels"]) == ["shop.thing"]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["contracts", "export", "--format", "jsonschema", "--dir", str(contracts),
                                      "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "shop.thing.ThingHappened").iterdir()) == ["1.0.schema.json", "1.1.schema.json"]
