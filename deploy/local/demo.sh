#!/usr/bin/env bash
# `make demo` until the bridge itself lands: a PostgreSQL with logical WAL (the machine's, or the
# embedded wheel's), the legacy restaurant schema, and the legacy app's traffic, live, until Ctrl-C.
# Set DEMO_SECONDS to stop by itself. Everything is stopped on exit; the data stays in .state/demo.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"
STATE=".state/demo"
stack() { "$PY" deploy/local/stack.py --state "$STATE" "$@"; }

trap 'stack down >/dev/null || true' EXIT
stack up postgres
DSN="$(stack env | sed -n 's/^export BRIDGE_PG_DSN=//p')"
"$PY" -m legacy_db.migrate --dsn "$DSN"
cat <<MSG

  The legacy restaurant app is now writing rows to $DSN
  (customers sign up, menu items are repriced, orders are opened, filled and placed).
  Coming next: cdc-bridge reads this change stream and publishes OrderPlaced, ItemAddedToOrder,
  MenuItemPriceChanged ... as versioned domain events (issues 3 and 4). Ctrl-C stops.

MSG
args=(--dsn "$DSN" --rate "${DEMO_RATE:-20}" --seed "${DEMO_SEED:-$RANDOM}")
[[ -n "${DEMO_SECONDS:-}" ]] && args+=(--duration "$DEMO_SECONDS")
"$PY" -m legacy_db.simulate "${args[@]}" || [[ $? -eq 130 ]]
