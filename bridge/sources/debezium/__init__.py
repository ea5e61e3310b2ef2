"""Debezium's change events on Kafka as a change source: consume, decode exactly, reassemble, commit after delivery."""
