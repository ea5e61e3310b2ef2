"""Benchmark: the prior-row store (bridge.state) driven as the pipeline drives it, two builds A/B in one run.

    .venv/bin/python bench/prior_rows.py --changes 200000 --rounds 5 --base .state/ab-base
    .venv/bin/python bench/prior_rows.py --changes 1000000 --rounds 1 --base .state/ab-base   # memory at 1M
    (the base build: mkdir -p .state/ab-base && git archive main bridge | tar -x -C .state/ab-base; --current
    DIR measures a frozen tree the same way instead of this checkout)

Workload. A seeded stream of transactions with the legacy simulator's mix (legacy_db.planner.WEIGHTS: baskets
edited most, orders opened, placed, checked out, cancelled and deleted, menu items added, repriced, withdrawn
and removed, customers signing up, addresses, touches), as pgoutput decodes them: rows of the five legacy
tables with their value types (Decimal prices, aware and naive datetimes, text[] tags, jsonb preferences),
unchanged TOAST descriptions as UNKNOWN, UPDATEs and DELETEs without an old row (REPLICA IDENTITY DEFAULT).
Positions grow as a WAL's do. Every table is kept, as restaurant.yaml's rules need all five.

Driven as bridge.pipeline does: per transaction a before_image for each UPDATE and DELETE (what translation
asks), then record; flush once 500 entries are buffered (PRIOR_ROWS_FLUSH_BATCH); every --checkpoint changes
(about one commit_interval_s at the bridge's rate) a flush and schedule_prune at the position committed a
few transactions earlier; otherwise prune_some(200) every 4 transactions (a poll turn).

Each round runs each build in a fresh child process (alternating which goes first) on a fresh store file;
the child reports the wall and CPU seconds spent in the store's calls alone (no imports, no generation of the
stream, which is built before timing unless --stream, no digest), per kind of call,
its peak RSS (VmHWM) and a digest of every before image the store answered, which must be the same for all
builds. Reported: medians over rounds, the ratio, and the largest peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
FLUSH_BATCH = 500
PRUNE_BATCH = 200
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Workload:
    """The simulator's change mix as row changes, generated lazily (1M changes never sit in memory)."""

    def __init__(self, seed: int) -> None:
        from bridge.changes import UNKNOWN, Op
        self.Op, self.UNKNOWN = Op, UNKNOWN
        self.r = random.Random(seed)
        self.next_id = {t: 1 for t in ("customers", "customer_addresses", "menu_items", "orders", "order_items")}
        self.customers: list[int] = []
        self.addresses: dict[int, list[int]] = {}
        self.menu: dict[int, dict[str, Any]] = {}
        self.open_orders: dict[int, dict[str, Any]] = {}  # id -> row, with "_lines": {line id: row}
        self.lsn = 0x1000000
        self.changes: list[tuple[Any, ...]] = []

    def _new(self, table: str) -> int:
        value = self.next_id[table]
        self.next_id[table] += 1
        return value

    def _put(self, op: Any, table: str, row: dict[str, Any] | None, key: int) -> None:
        self.changes.append((op, table, row, key))

    def _now(self) -> datetime:
        return T0 + timedelta(seconds=self.lsn / 1000)

    def _customer(self) -> None:
        cid = self._new("customers")
        self.customers.append(cid)
        self._put(self.Op.CREATE, "customers", {
            "id": cid, "email": f"user{cid}@example.org", "full_name": f"Customer {cid}", "phone": "+33 1 23 45 67",
            "preferences": {"newsletter": self.r.random() < 0.5, "diet": ["vegan"]}, "created_at": self._now(),
            "updated_on": self._now().replace(tzinfo=None), "is_deleted": False}, cid)
        self._address(cid)

    def _address(self, cid: int | None = None) -> None:
        cid = cid if cid is not None else self.r.choice(self.customers)
        aid = self._new("customer_addresses")
        for old in self.addresses.get(cid, [])[-1:]:
            self._put(self.Op.UPDATE, "customer_addresses", {
                "id": old, "customer_id": cid, "label": "home", "street": "1 rue de la Paix", "city": "Paris",
                "postal_code": "75002", "country": "FR", "is_default": False, "created_at": T0}, old)
        self.addresses.setdefault(cid, []).append(aid)
        self._put(self.Op.CREATE, "customer_addresses", {
            "id": aid, "customer_id": cid, "label": "work", "street": f"{aid} avenue Foch", "city": "Lyon",
            "postal_code": "69001", "country": "FR", "is_default": True, "created_at": self._now()}, aid)

    def _menu_row(self, mid: int, price: Decimal, available: bool = True) -> dict[str, Any]:
        return {"id": mid, "name": f"Dish {mid}", "description": "A long description " * 20,
                "price": price, "category": "mains", "tags": ["spicy", "house"], "is_available": available,
                "created_at": T0, "updated_on": self._now().replace(tzinfo=None)}

    def _menu_item(self) -> None:
        mid = self._new("menu_items")
        self.menu[mid] = self._menu_row(mid, Decimal(self.r.randint(300, 3000)) / 100)
        self._put(self.Op.CREATE, "menu_items", dict(self.menu[mid]), mid)

    def _menu_update(self, kind: str) -> None:
        if not self.menu:
            return self._menu_item()
        mid = self.r.choice(list(self.menu))
        row = self.menu[mid]
        if kind == "reprice":
            row["price"] = Decimal(self.r.randint(300, 3000)) / 100
        elif kind == "withdraw":
            row["is_available"] = not row["is_available"]
        else:
            row["name"] = f"Dish {mid} v{self.r.randint(1, 99)}"
        row["updated_on"] = self._now().replace(tzinfo=None)
        self._put(self.Op.UPDATE, "menu_items", {**row, "description": self.UNKNOWN}, mid)  # TOAST unchanged

    def _menu_remove(self) -> None:
        if len(self.menu) > 20:
            mid = self.r.choice(list(self.menu))
            del self.menu[mid]
            self._put(self.Op.DELETE, "menu_items", None, mid)

    def _order_row(self, oid: int, cid: int, status: str) -> dict[str, Any]:
        return {"id": oid, "customer_id": cid, "status": status, "delivery_address_id": None, "placed_at": None,
                "notes": None, "created_at": self._now(), "updated_on": self._now().replace(tzinfo=None)}

    def _open_order(self, lines: int = 0) -> None:
        if not self.customers or not self.menu:
            return self._customer()
        oid = self._new("orders")
        row = self._order_row(oid, self.r.choice(self.customers), "OPEN")
        self.open_orders[oid] = {**row, "_lines": {}}
        self._put(self.Op.CREATE, "orders", row, oid)
        for _ in range(lines):
            self._add_line(oid, touch=False)

    def _touch_order(self, oid: int, **changes: Any) -> None:
        order = self.open_orders[oid]
        order.update(changes, updated_on=self._now().replace(tzinfo=None))
        self._put(self.Op.UPDATE, "orders", {k: v for k, v in order.items() if k != "_lines"}, oid)

    def _some_open_order(self) -> int | None:
        if not self.open_orders:
            self._open_order()
            return None
        # Recent orders are the busy ones (baskets being edited now).
        recent = list(self.open_orders)[-50:]
        return self.r.choice(recent)

    def _add_line(self, oid: int | None = None, touch: bool = True) -> None:
        oid = oid if oid is not None else self._some_open_order()
        if oid is None or not self.menu:
            return
        lid = self._new("order_items")
        mid = self.r.choice(list(self.menu))
        line = {"id": lid, "order_id": oid, "menu_item_id": mid, "quantity": self.r.randint(1, 4),
                "unit_price": self.menu[mid]["price"], "created_at": self._now()}
        self.open_orders[oid]["_lines"][lid] = line
        self._put(self.Op.CREATE, "order_items", dict(line), lid)
        if touch:
            self._touch_order(oid)

    def _line_change(self, remove: bool) -> None:
        oid = self._some_open_order()
        if oid is None or not self.open_orders[oid]["_lines"]:
            return self._add_line(oid)
        lines = self.open_orders[oid]["_lines"]
        lid = self.r.choice(list(lines))
        if remove:
            del lines[lid]
            self._put(self.Op.DELETE, "order_items", None, lid)
        else:
            lines[lid]["quantity"] = self.r.randint(1, 9)
            self._put(self.Op.UPDATE, "order_items", dict(lines[lid]), lid)
        self._touch_order(oid)

    def _close_order(self, status: str) -> None:
        oid = self._some_open_order()
        if oid is None:
            return
        self._touch_order(oid, status=status, placed_at=self._now() if status == "PLACED" else None)
        del self.open_orders[oid]

    def _delete_order(self) -> None:
        oid = self._some_open_order()
        if oid is None:
            return
        for lid in self.open_orders.pop(oid)["_lines"]:
            self._put(self.Op.DELETE, "order_items", None, lid)
        self._put(self.Op.DELETE, "orders", None, oid)

    def _touch(self) -> None:
        if self.customers and self.r.random() < 0.5:
            cid = self.r.choice(self.customers[-2000:])
            self._put(self.Op.UPDATE, "customers", {
                "id": cid, "email": f"user{cid}@example.org", "full_name": f"Customer {cid}", "phone": None,
                "preferences": None, "created_at": T0, "updated_on": self._now().replace(tzinfo=None),
                "is_deleted": False}, cid)
        elif self.open_orders:
            self._touch_order(self._some_open_order() or next(iter(self.open_orders)))

    ACTIONS = [("customer", 4.0), ("address", 2.0), ("deactivate", 0.5), ("menu_add", 1.5), ("menu_modify", 1.0),
               ("menu_reprice", 1.5), ("menu_withdraw", 0.5), ("menu_remove", 0.4), ("order_open", 8.0),
               ("line_add", 20.0), ("line_qty", 6.0), ("line_remove", 4.0), ("delivery", 5.0), ("place", 6.0),
               ("checkout", 5.0), ("cancel", 2.0), ("delete", 2.0), ("touch", 6.0)]

    def _act(self, name: str) -> None:
        if name in ("customer", "deactivate") or not self.customers:
            return self._customer()
        if name == "address":
            return self._address()
        if name == "menu_add" or len(self.menu) < 12:
            return self._menu_item()
        if name.startswith("menu_"):
            return self._menu_remove() if name == "menu_remove" else self._menu_update(name[5:])
        if name == "order_open":
            return self._open_order(lines=1)
        if name == "line_add":
            return self._add_line()
        if name in ("line_qty", "line_remove"):
            return self._line_change(remove=name == "line_remove")
        if name == "delivery":
            oid = self._some_open_order()
            if oid is not None:
                self._touch_order(oid, delivery_address_id=self.r.randint(1, self.next_id["customer_addresses"]))
            return None
        if name == "checkout":
            return self._open_order(lines=self.r.randint(1, 5))
        if name in ("place", "cancel"):
            return self._close_order("PLACED" if name == "place" else "CANCELLED")
        if name == "delete":
            return self._delete_order()
        return self._touch()

    def transactions(self, changes: int) -> Iterator[Any]:
        """Transactions until `changes` changes were produced."""
        from bridge.changes import RowChange, SourcePosition, Transaction
        names = [name for name, _ in self.ACTIONS]
        weights = [weight for _, weight in self.ACTIONS]
        produced = xid = 0
        while produced < changes:
            self.changes = []
            while not self.changes:
                self._act(self.r.choices(names, weights)[0])
            xid += 1
            first = self.lsn
            self.lsn += 64 * (len(self.changes) + 1)
            commit = self.lsn
            built = tuple(
                RowChange(op=op, schema="public", table=table, key={"id": key}, before=None, after=row,
                          position=SourcePosition(commit, first + 64 * i, 0), commit_time=T0, xid=xid)
                for i, (op, table, row, key) in enumerate(self.changes))
            produced += len(built)
            yield Transaction(xid=xid, commit_lsn=commit, commit_time=T0, changes=built)


def child(changes: int, checkpoint: int, seed: int, stream: bool) -> dict[str, Any]:
    """One run of the store on a fresh file: seconds of the loop, peak RSS, digest of the answers."""
    sys.path.insert(0, str(REPO / "bench"))
    from _peak_rss import peak_rss_mb

    from bridge.changes import Op
    from bridge.state import PriorRowStore

    workload = Workload(seed)
    source: Any = workload.transactions(changes)
    if not stream:  # built before timing: the loop times the store alone
        source = list(source)
    digest = hashlib.sha256()
    asked = found = 0
    committed: list[Any] = []
    with tempfile.TemporaryDirectory() as scratch:
        store = PriorRowStore(Path(scratch) / "prior.sqlite")
        since_checkpoint = turn = 0
        # Wall and CPU time of the store's calls alone (not the digest, not the stream), per kind of call.
        spent = {part: [0.0, 0.0] for part in ("before_image", "record", "flush", "prune")}
        clock, cpu_clock = time.perf_counter, time.process_time

        def charge(part: str, wall: float, cpu: float) -> tuple[float, float]:
            now, cpu_now = clock(), cpu_clock()
            spent[part][0] += now - wall
            spent[part][1] += cpu_now - cpu
            return now, cpu_now

        for tx in source:
            images = []
            wall, cpu = clock(), cpu_clock()
            for change in tx.changes:
                if change.op is Op.UPDATE or change.op is Op.DELETE:
                    images.append(store.before_image(change))
            wall, cpu = charge("before_image", wall, cpu)
            store.record(tx)
            wall, cpu = charge("record", wall, cpu)
            if store.buffered >= FLUSH_BATCH:
                store.flush()
            wall, cpu = charge("flush", wall, cpu)
            committed.append(tx.changes[-1].position)
            del committed[:-8]  # the acknowledged position lags a few transactions behind
            since_checkpoint += len(tx.changes)
            turn += 1
            if since_checkpoint >= checkpoint:
                store.flush()
                wall, cpu = charge("flush", wall, cpu)
                store.schedule_prune(committed[0])
                since_checkpoint = 0
            elif turn % 4 == 0:
                store.prune_some(PRUNE_BATCH)
            charge("prune", wall, cpu)
            for image in images:
                asked += 1
                if image is not None:
                    found += 1
                    digest.update(repr(sorted(image.items())).encode())
                else:
                    digest.update(b"-")
        wall, cpu = clock(), cpu_clock()
        store.close()
        charge("flush", wall, cpu)
        seconds = sum(wall for wall, _ in spent.values())
        cpu = sum(cpu for _, cpu in spent.values())
        size = (Path(scratch) / "prior.sqlite").stat().st_size
    import bridge
    return {"seconds": seconds, "cpu": cpu, "cpu_parts": {part: c for part, (_, c) in spent.items()}, "peak_rss_mb": peak_rss_mb(), "asked": asked, "found": found,
            "digest": digest.hexdigest()[:16], "file_mb": size / 1e6, "bridge": str(Path(bridge.__file__).parent)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checkpoint", type=int, default=5000, help="changes between checkpoints")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--base", type=Path, help="a tree holding the base build's bridge package")
    parser.add_argument("--current", type=Path, default=REPO,
                        help="a tree holding the build to measure (default: this checkout)")
    parser.add_argument("--stream", action="store_true",
                        help="generate the stream while timing (for memory at 1M changes: nothing held)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        sys.path.insert(0, str(args.child))
        print(json.dumps(child(args.changes, args.checkpoint, args.seed, args.stream)))
        return 0
    builds = {"current": args.current.resolve()}
    if args.base is not None:
        builds = {"base": args.base.resolve(), **builds}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in builds}
    for round_ in range(args.rounds):
        order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
        for name in order:
            command = [sys.executable, str(Path(__file__).resolve()), "--child", str(builds[name]),
                       "--changes", str(args.changes), "--checkpoint", str(args.checkpoint), "--seed", str(args.seed)]
            out = subprocess.run(command + (["--stream"] if args.stream else []), check=True, capture_output=True,
                                 text=True, env={**os.environ, "PYTHONPATH": ""}).stdout
            result = json.loads(out.strip().splitlines()[-1])
            results[name].append(result)
            print(f"round {round_ + 1} {name:<8} {result['seconds']:7.2f} s (CPU {result['cpu']:.2f} s)  {result['peak_rss_mb']:6.1f} MB  "
                  f"file {result['file_mb']:.1f} MB  asked {result['asked']} found {result['found']} "
                  f"digest {result['digest']}  ({result['bridge']})", flush=True)
    digests = {r["digest"] for runs in results.values() for r in runs}
    if len(digests) != 1:
        print(f"BEFORE IMAGES DIFFER between builds or rounds: {digests}")
        return 1
    medians = {name: statistics.median(r["seconds"] for r in runs) for name, runs in results.items()}
    cpus = {name: statistics.median(r["cpu"] for r in runs) for name, runs in results.items()}
    print(f"{args.changes} changes, median of {args.rounds} rounds; same before images in every run:")
    for name, seconds in medians.items():
        peak = max(r["peak_rss_mb"] for r in results[name])
        print(f"  {name:<8} {seconds:7.2f} s  {seconds / args.changes * 1e6:6.2f} us/change  "
              f"CPU {cpus[name]:.2f} s  {cpus[name] / args.changes * 1e6:6.2f} us/change  peak RSS {peak:.1f} MB")
        parts = {part: statistics.median(r["cpu_parts"][part] for r in results[name]) for part in results[name][0]["cpu_parts"]}
        print("           CPU per change: " + ", ".join(f"{part} {c / args.changes * 1e6:.1f} us" for part, c in parts.items()))
    if "base" in medians:
        print(f"  base/current: {medians['base'] / medians['current']:.2f}x wall, {cpus['base'] / cpus['current']:.2f}x CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
