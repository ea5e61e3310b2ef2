"""The legacy restaurant system as it really is: its schema (plain SQL migrations), SQLAlchemy Core tables
that mirror it, and a traffic simulator that writes to it the way the legacy app does.

- :mod:`legacy_db.migrate`   ``apply_migrations(dsn)``; ``python -m legacy_db.migrate --dsn DSN``
- :mod:`legacy_db.tables`    ``metadata`` and one ``Table`` per legacy table
- :mod:`legacy_db.simulate`  ``run_simulation(dsn, ...)``; ``python -m legacy_db.simulate --dsn DSN``
- :mod:`legacy_db.planner`   the pure, seeded plan of business actions (:mod:`legacy_db.actions`)
- :mod:`legacy_db.report`    ``SimulationReport``, ``TransactionRecord``
"""
