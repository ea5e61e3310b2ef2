# Entry points for humans and CI. `make demo` and `make test` are the two Quickstart commands.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STACK  := $(PY) deploy/local/stack.py
# The stack a human starts by hand; tests start their own under .state/pytest-* and remove it.
STATE  ?= .state/local

.PHONY: help setup test test-unit demo stack-fetch stack-up stack-down stack-status clean

help:
	@echo "make demo          legacy traffic on an embedded PostgreSQL -> cdc-bridge -> domain events, live (Ctrl-C stops)"
	@echo "make test          virtualenv, install, fetch jars, start the real stack, run every test"
	@echo "make test-unit     the tests that need no services"
	@echo "make stack-up      start PostgreSQL, Kafka and Kafka Connect + Debezium under $(STATE)"
	@echo "make stack-status  what runs where;  make stack-down  stops it"

# confluent too: CI runs the Kafka sink's tests on both clients (sink.client).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,embedded,confluent]'
	touch $@

setup: $(VENV)/.installed

test: setup
	bash deploy/local/prereqs.sh
	$(STACK) fetch
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest tests/unit

demo: setup
	$(PY) -m bridge.cli demo $(DEMO_ARGS)

stack-fetch: setup
	$(STACK) fetch

stack-up: setup
	$(STACK) --state $(STATE) up
	$(PY) -m legacy_db.migrate --dsn "$$($(STACK) --state $(STATE) env | sed -n 's/^export BRIDGE_PG_DSN=//p')"

stack-down:
	$(STACK) --state $(STATE) down

stack-status:
	$(STACK) --state $(STATE) status

clean: stack-down
	rm -rf $(VENV) .state .pytest_cache
