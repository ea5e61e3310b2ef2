"""Versioned event contracts: declared as data, compiled to pydantic models, snapshotted, checked, upcast.

    spec.py       the shape of a contract file (one per event type, majors and additive revisions)
    models.py     a revision compiled into a closed, strict pydantic model, and the run-time payload check
                  (the same fields as a strict, closed TypedDict: no model instance per event)
    registry.py   contract files in, a registry by event type out; where a mapping's contracts live
    schema.py     the JSON Schema of a revision (serialization mode, 2020-12), canonical bytes
    snapshots.py  the committed schema snapshots and their lock file; `contracts publish`
    compat.py     our compatibility checker on the restricted schema shapes our models emit
    check.py      `cdc-bridge contracts check`: snapshots, lock, revisions, compatibility, examples
    upcast.py     upcasters from one major to the next: declarative steps and registered functions
    asyncapi.py   the AsyncAPI 3.0 document of the topics, messages, headers and payloads
    describe.py   the text of `contracts show`
    commands.py   `cdc-bridge contracts list|show|export|check|publish`
"""
