"""The position this bridge last acknowledged to each slot, kept on local disk, so a slot that moved back
after a server restart does not make it publish transactions twice.

Before PostgreSQL 17 a logical slot's confirmed_flush_lsn is written to disk only when its restart_lsn or
catalog_xmin moves too (17 also writes it at the shutdown checkpoint), and on any version a crash loses
what was not yet written: after a restart the slot can be back at an older position, and the server
resends what the bridge had already published. Started at the position kept here instead, the stream
skips those transactions (the server decodes from the slot's restart_lsn but sends only transactions
committing at or after the requested start).

A kept position is used only for the same cluster (IDENTIFY_SYSTEM's system identifier), the same timeline
and the same slot name, and only when it is not ahead of the WAL the server has flushed, so that another
cluster, a promoted standby or a restored backup (a new timeline, or WAL behind the position) never makes
the bridge skip a change it has not seen. A slot dropped and created again under the same name starts at
the end of the WAL, past anything acknowledged on that cluster before: nothing of it is skipped either.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from bridge.errors import ConfigurationError
from bridge.private_files import replace_privately
from bridge.sources.pgoutput.protocol import lsn_text, parse_lsn
from bridge.sources.pgoutput.stream import SystemIdentity

log = logging.getLogger(__name__)


class AcknowledgedPositions:
    """A small JSON file: "<system id>/<slot>" -> {timeline, lsn}; replaced atomically on every save."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._saved: dict[str, int] = {}  # what this process last wrote, per key: saves only on progress

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("the file of acknowledged positions is unreadable; ignoring it (a restarted server may "
                        "then resend transactions, published again with the same ids)",
                        extra={"path": str(self._path), "error": str(exc)})
            return {}
        return data if isinstance(data, dict) else {}

    def recall(self, identity: SystemIdentity, slot: str) -> int:
        """The position acknowledged to `slot` on this cluster and timeline, or 0 when none can be trusted."""
        entry = self._read().get(f"{identity.system_id}/{slot}")
        if not isinstance(entry, dict):
            return 0
        try:
            timeline, lsn = int(entry["timeline"]), parse_lsn(str(entry["lsn"]))  # type: ignore[call-overload]
        except (KeyError, ValueError, TypeError):
            return 0
        if timeline != identity.timeline:
            log.info("acknowledged position not used: the server is on another timeline (a promotion or a "
                     "point-in-time recovery happened)", extra={"slot": slot, "kept_timeline": timeline,
                                                                "server_timeline": identity.timeline})
            return 0
        if lsn > identity.flushed_lsn:
            log.warning("acknowledged position not used: it is ahead of the server's WAL, so this is not the "
                        "history it was acknowledged on (a restored backup?)",
                        extra={"slot": slot, "kept": lsn_text(lsn), "server_flushed": lsn_text(identity.flushed_lsn)})
            return 0
        return lsn

    def save(self, identity: SystemIdentity, slot: str, lsn: int) -> None:
        """Durably record `lsn` (write a new file, fsync, rename): a crash leaves the old or the new one."""
        key = f"{identity.system_id}/{slot}"
        if self._saved.get(key, -1) >= lsn:
            return
        data = self._read()
        data[key] = {"timeline": identity.timeline, "lsn": lsn_text(lsn),
                     "saved_at": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            replace_privately(self._path, json.dumps(data, indent=1, sort_keys=True))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the acknowledged position to {self._path} ({exc.strerror or exc}): make its folder "
                "writable by the bridge, or set source.acknowledged_path elsewhere") from exc
        self._saved[key] = lsn
