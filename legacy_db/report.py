"""What a simulation run did, in the vocabulary the rest of cdc-bridge checks it against.

``row_changes`` uses Debezium's op letters ('c', 'u', 'd') keyed by table, counted from each statement's
``rowcount``; ``transactions`` lists every committed transaction with its legacy xid, so a test can match the
change stream (grouped by xid) against what was written, transaction by transaction.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TableOp = tuple[str, str]


@dataclass(slots=True)
class TransactionRecord:
    xid: int  # pg_current_xact_id() (64-bit, epoch-extended) taken inside the transaction
    action: str  # one of legacy_db.actions.ACTION_KINDS
    #: Rows written per (table, op). Read-only: records of transactions with the same shape share it.
    changes: Counter[TableOp]


@dataclass(slots=True)
class SimulationReport:
    seed: int
    #: Salt of the e-mail addresses; "" when the database had no customers when the run started.
    namespace: str = ""
    elapsed_s: float = 0.0
    #: Why the run ended: "count", "duration", "stopped" (Ctrl-C or a stop event) or "error".
    stop_reason: str = ""
    actions: Counter[str] = field(default_factory=Counter)
    row_changes: Counter[TableOp] = field(default_factory=Counter)
    transactions: list[TransactionRecord] = field(default_factory=list)

    def record(self, tx: TransactionRecord, keep: bool = True) -> None:
        """Add a committed transaction to the totals (and to ``transactions`` when ``keep``)."""
        self.actions[tx.action] += 1
        self.row_changes.update(tx.changes)
        if keep:
            self.transactions.append(tx)

    @property
    def transaction_count(self) -> int:
        return sum(self.actions.values())

    @property
    def tx_per_s(self) -> float:
        return self.transaction_count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def net_rows(self) -> dict[str, int]:
        """Rows each table gained: inserted minus deleted (what a fresh database must now contain)."""
        net: Counter[str] = Counter()
        for (table, op), n in self.row_changes.items():
            if op == "c":
                net[table] += n
            elif op == "d":
                net[table] -= n
        return dict(net)

    def to_json(self) -> str:
        """One JSON object; transactions are encoded one by one (a long run has hundreds of thousands, and
        building them all as dicts first would need several times the memory of the run itself)."""
        head = json.dumps(
            {
                "seed": self.seed,
                "namespace": self.namespace,
                "elapsed_s": self.elapsed_s,
                "stop_reason": self.stop_reason,
                "actions": dict(sorted(self.actions.items())),
                "row_changes": _nest(self.row_changes),
                "transactions": [],
            },
            ensure_ascii=False,
        )
        encoded_changes: dict[int, str] = {}  # records of one shape share one Counter: encode it once
        parts = []
        for t in self.transactions:
            changes = encoded_changes.get(id(t.changes))
            if changes is None:
                changes = encoded_changes[id(t.changes)] = json.dumps(_nest(t.changes))
            parts.append(f'{{"xid": {t.xid}, "action": {json.dumps(t.action)}, "changes": {changes}}}')
        assert head.endswith('"transactions": []}')
        return head[: -len("]}")] + ", ".join(parts) + "]}"

    @classmethod
    def from_json(cls, text: str) -> SimulationReport:
        try:
            data = json.loads(text)
            return cls(
                seed=int(data["seed"]),
                namespace=str(data.get("namespace", "")),
                elapsed_s=float(data.get("elapsed_s", 0.0)),
                stop_reason=str(data.get("stop_reason", "")),
                actions=Counter({str(k): int(v) for k, v in data["actions"].items()}),
                row_changes=_unnest(data["row_changes"]),
                transactions=[
                    TransactionRecord(xid=int(t["xid"]), action=str(t["action"]), changes=_unnest(t["changes"]))
                    for t in data["transactions"]
                ],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a simulation report: {exc!r}") from exc

    def summary(self) -> str:
        """A few human lines: totals, rate, per-action counts, per-table c/u/d."""
        lines = [
            f"seed {self.seed}: {self.transaction_count} transactions in {self.elapsed_s:.2f}s "
            f"({self.tx_per_s:,.0f} tx/s), ended by {self.stop_reason or '?'}"
            + (f", e-mail namespace {self.namespace!r}" if self.namespace else ""),
            "actions:",
        ]
        for kind, n in sorted(self.actions.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {kind:<30} {n:>9}")
        lines.append(f"row changes:  {'table':<20} {'c':>9} {'u':>9} {'d':>9}")
        for table, ops in sorted(_nest(self.row_changes).items()):
            lines.append(f"              {table:<20} " + " ".join(f"{ops.get(op, 0):>9}" for op in "cud"))
        return "\n".join(lines)


def _nest(changes: Counter[TableOp]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (table, op), n in sorted(changes.items()):
        nested.setdefault(table, {})[op] = n
    return nested


def _unnest(nested: dict[str, Any]) -> Counter[TableOp]:
    return Counter({(str(table), str(op)): int(n) for table, ops in nested.items() for op, n in ops.items()})
