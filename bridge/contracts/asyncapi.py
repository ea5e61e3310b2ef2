"""The AsyncAPI 3.0.0 document of the published events: topics, messages, CloudEvents headers, key, payloads.

What a consumer reads to subscribe: one channel per Kafka topic, the messages (event type with major) on
it, each with its Kafka headers (CloudEvents 1.0 binary mode), its key (the aggregate id) and its payload,
the JSON Schema of the major's latest revision rewritten for AsyncAPI's default schema format (a draft-07
superset): nested models move to ``components.schemas``. The bridge is the application described, so the
operations are ``send``. Everything is sorted, so the same contracts give the same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import yaml

from bridge.contracts.registry import ContractRegistry, Major
from bridge.contracts.schema import revision_schema
from bridge.events import CONTENT_TYPE, SPEC_VERSION

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
SCHEMAS = "#/components/schemas/"
HEADERS_SCHEMA = "CloudEventsKafkaHeaders"

# 2020-12 keywords a draft-07 reader would silently ignore (so it would accept what the contract refuses):
# our models do not emit them today; if a new field type makes pydantic emit one, the export stops.
_NOT_DRAFT_07 = {"prefixItems", "$dynamicRef", "$dynamicAnchor", "$anchor", "unevaluatedProperties",
                 "unevaluatedItems", "dependentRequired", "dependentSchemas", "minContains", "maxContains",
                 "$vocabulary", "$recursiveRef", "$recursiveAnchor"}

DESCRIPTION = """\
The domain events cdc-bridge publishes to Kafka, one channel per topic, one message per event type and
major version. How to read them:

- CloudEvents 1.0 in **binary content mode**: the event's attributes are Kafka headers (`ce_id`,
  `ce_source`, `ce_type`, ...; UTF-8 text), the record's value is the event's `data` alone (JSON, see each
  message's payload).
- `ce_type` names the event type and its major version (`<namespace>.<aggregate>.<Event>.v<major>`): a
  consumer dispatches on it. `ce_dataschema` names the exact contract revision the payload obeys
  (`urn:cdc-bridge:contract:<type>:<major>.<revision>`); revisions of a major only add fields.
- The Kafka key is the aggregate id (UTF-8 text), so all events of one aggregate are on one partition,
  in the order of the legacy commits; `ce_sequence` sorts them too (compare as strings).
- Event ids are deterministic: a replay, restart or backfill republishes an event with the same `ce_id`,
  so deduplicate on (`ce_source`, `ce_id`). Events of a snapshot read also carry `ce_backfill` and
  `ce_backfillcut`.
"""

TopicFor = Callable[[str, str], str]  # (namespace, aggregate type) -> topic


def asyncapi_document(registry: ContractRegistry, topic_for: TopicFor, *, title: str, version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of every major of every contract, as plain data (YAML/JSON-ready)."""
    schemas: dict[str, Any] = {HEADERS_SCHEMA: common_headers_schema()}
    messages: dict[str, Any] = {}
    by_topic: dict[str, list[str]] = {}
    for major in registry.majors():
        contract = major.contract
        topic = topic_for(namespace_of(contract.type), contract.aggregate)
        messages[major.event_type] = message(major, schemas)
        by_topic.setdefault(topic, []).append(major.event_type)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in sorted(by_topic):
        names = sorted(by_topic[topic])
        channels[topic] = {
            "address": topic,
            "title": topic,
            "description": "Kafka topic; key = aggregate id, so one aggregate's events keep their order.",
            "messages": {name: {"$ref": f"#/components/messages/{_pointer(name)}"} for name in names},
            "bindings": {"kafka": {"topic": topic, "bindingVersion": KAFKA_BINDING_VERSION}},
        }
        operations[f"send.{topic}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{_pointer(topic)}"},
            "summary": f"cdc-bridge publishes the events of {topic}.",
            "messages": [{"$ref": f"#/channels/{_pointer(topic)}/messages/{_pointer(name)}"} for name in names],
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title, "version": version, "description": DESCRIPTION},
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(sorted(schemas.items())), "messages": dict(sorted(messages.items()))},
    }


def namespace_of(event_type: str) -> str:
    """restaurant.order.OrderPlaced -> restaurant (a namespace may itself hold dots)."""
    return event_type.rsplit(".", 2)[0]


def message(major: Major, schemas: dict[str, Any]) -> dict[str, Any]:
    """The message of one major: headers, key, payload (its nested models added to `schemas`)."""
    contract = major.contract
    uri = major.dataschema()
    major_note = f"{major.spec.description}\n\n" if major.spec.description else ""
    return {
        "name": major.event_type,
        "title": major.title,
        "summary": contract.description,
        "description": f"{major_note}Payload: revision {major.revision} of the contract, `ce_dataschema` {uri}.",
        "contentType": CONTENT_TYPE,
        "headers": message_headers(major),
        "payload": payload_schema(major, schemas),
        # Inline, not a $ref: the Kafka binding's key is oneOf(Reference, Schema), and a bare {$ref} is both.
        "bindings": {"kafka": {"key": key_schema(), "bindingVersion": KAFKA_BINDING_VERSION}},
        "x-dataschema": uri,
        "x-aggregate": contract.aggregate,
        "x-revision": major.revision,
    }


def payload_schema(major: Major, schemas: dict[str, Any]) -> dict[str, Any]:
    """The latest revision's schema in draft-07 form; its `$defs` go to `schemas` (same name, same schema)."""
    schema = revision_schema(major, ref_template=SCHEMAS + "{model}")
    for name, definition in sorted(schema.pop("$defs", {}).items()):
        definition = draft07(definition)
        if name in schemas and schemas[name] != definition:
            raise ValueError(f"two contracts define the nested schema {name} differently ({major.event_type})")
        schemas[name] = definition
    schema.pop("$schema", None)  # the document's schema format says the dialect
    schema.pop("$id", None)  # an $id would make the components refs resolve against the URN
    return draft07(schema)


def draft07(node: Any) -> Any:
    """A copy of a pydantic 2020-12 schema a draft-07 reader reads the same way: a `$ref` with siblings
    (ignored beside `$ref` in draft-07) is wrapped in `allOf`; keywords without a draft-07 meaning stop."""
    if isinstance(node, list):
        return [draft07(item) for item in node]
    if not isinstance(node, dict):
        return node
    unknown = _NOT_DRAFT_07 & node.keys()
    if unknown:
        raise ValueError(f"schema keyword {sorted(unknown)[0]} has no draft-07 equivalent; AsyncAPI cannot carry it")
    result = {key: (value if key in ("const", "enum", "default", "examples") else draft07(value))
              for key, value in node.items()}
    if "$ref" in result and len(result) > 1:
        ref = result.pop("$ref")
        result = {**result, "allOf": [{"$ref": ref}, *result.get("allOf", [])]}
    return result


def common_headers_schema() -> dict[str, Any]:
    """The Kafka headers of every event (CloudEvents 1.0 binary mode); each message pins ce_type and
    ce_dataschema on top. Other headers (tracing, ...) may be present: consumers ignore them."""
    text = {"type": "string"}
    return {
        "type": "object",
        "description": "Kafka record headers: the CloudEvents attributes of the event, UTF-8 text.",
        "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_time", "ce_sequence",
                     "ce_dataschema", "content-type"],
        "properties": {
            "ce_specversion": {**text, "const": SPEC_VERSION, "description": "CloudEvents specversion."},
            "ce_id": {**text, "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", "description": (
                "The event id: a UUIDv5 of where the event came from (source, change position, rule, major, "
                "output index). Replays, restarts and backfills republish the same id: deduplicate on "
                "(ce_source, ce_id).")},
            "ce_source": {**text, "pattern": "^/cdc-bridge/.+$",
                          "description": "/cdc-bridge/<source id>: the legacy database the event came from."},
            "ce_type": {**text, "description": "<namespace>.<aggregate>.<Event>.v<major>: dispatch on it."},
            "ce_subject": {**text, "description": "<aggregate type>/<aggregate id>; the id is also the Kafka key."},
            "ce_time": {**text, "format": "date-time",
                        "description": "The legacy commit time, RFC 3339 in UTC with microseconds."},
            "ce_sequence": {**text, "description": (
                "The place in the legacy database's history (commit LSN, change LSN, ordinals; fixed-width hex): "
                "sorts in commit order as a string.")},
            "ce_dataschema": {**text, "format": "uri", "description": (
                "urn:cdc-bridge:contract:<type>:<major>.<revision>: the contract revision the payload obeys.")},
            "content-type": {**text, "const": CONTENT_TYPE, "description": "The record value is JSON."},
            "ce_backfill": {**text, "description": (
                "Only on events of a snapshot read: \"initial\" for the first snapshot of the direct source, else "
                "the backfill run's id. Such an event restates an aggregate's state; it is not a new change.")},
            "ce_backfillcut": {**text, "description": (
                "Only on events of a snapshot read: the snapshot's consistent point (a PostgreSQL LSN such as "
                "0/16B3748); changes committed after it arrive as ordinary events.")},
        },
    }


def message_headers(major: Major) -> dict[str, Any]:
    """The common headers, with this message's type, subject and dataschema pinned."""
    # Every revision of the major: events published before the latest revision stay on the topic.
    uris = [major.dataschema(revision) for revision in range(major.revision, -1, -1)]
    dataschema = {"const": uris[0]} if len(uris) == 1 else {"enum": uris}
    aggregate = major.contract.aggregate
    return {"allOf": [
        {"$ref": SCHEMAS + HEADERS_SCHEMA},
        {"type": "object", "properties": {
            "ce_type": {"const": major.event_type},
            "ce_subject": {"pattern": f"^{re.escape(aggregate)}/.+$"},
            "ce_dataschema": dataschema,
        }},
    ]}


def key_schema() -> dict[str, Any]:
    return {"type": "string", "description": (
        "The Kafka key: the aggregate id as UTF-8 text (the part of ce_subject after the slash). All events of "
        "one aggregate share it, hence one partition and commit order.")}


def _pointer(name: str) -> str:
    """A name as a JSON Pointer token (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (info.description) as literal blocks, readable as written."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render_yaml(document: dict[str, Any]) -> str:
    # sort_keys=False: the document is built in reading order (asyncapi, info, channels, ...), already sorted.
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def render_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
