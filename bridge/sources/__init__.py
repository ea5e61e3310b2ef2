"""Change sources: each turns its input (Debezium records on Kafka, pgoutput, a snapshot) into one shape.

Debezium decoding lives in debezium_records (entry point: decode_record), built from debezium_envelope
(schema/payload split and plan caches), debezium_types (Connect schema -> plan), debezium_declared
(declared PostgreSQL types for schemaless topics) and debezium_values (exact value conversions).
"""
