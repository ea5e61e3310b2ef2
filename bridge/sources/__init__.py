"""Change sources: each turns its input into the one internal shape (RowChange, Transaction).

    debezium/      Debezium change events on Kafka: the consumer (source), exact decoding (records, built from
                   envelope, types, declared and values) and Kafka offset bookkeeping (offsets)
    pgoutput/      PostgreSQL's logical replication read directly: the source, the streaming protocol over
                   libpq (stream), message parsing (protocol), values and transaction assembly (changes)
    transactions   reassembly of Debezium's per-table rows and transaction markers into transactions
"""
