"""PostgreSQL's logical replication stream (pgoutput), read directly by the bridge: no Kafka Connect in between."""
