"""Fetch Apache Kafka, Kafka Connect and the Debezium PostgreSQL connector from Maven Central, once.

The poms in maven/ name the artifacts; Maven resolves their runtime dependencies and copies the jars
into a cache directory outside the clone, so later runs and fresh clones reuse them.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from procs import REPO_ROOT, StackError, cache_dir, run

POM_DIR = REPO_ROOT / "deploy" / "local" / "maven"
KAFKA_POM = POM_DIR / "kafka.pom.xml"
DEBEZIUM_POM = POM_DIR / "debezium.pom.xml"
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class Jars:
    kafka_lib: Path  # broker, Connect runtime and their dependencies: the classpath of both JVMs
    plugin_path: Path  # Kafka Connect plugin.path; holds debezium-connector-postgres/


def _pom_property(pom: Path, name: str) -> str:
    match = re.search(rf"<{name}>([^<]+)</{name}>", pom.read_text())
    if not match:
        raise StackError(f"{pom}: property <{name}> is missing")
    return match.group(1)


def kafka_version() -> str:
    return _pom_property(KAFKA_POM, "kafka.version")


def debezium_version() -> str:
    return _pom_property(DEBEZIUM_POM, "debezium.version")


def locate() -> Jars:
    root = cache_dir() / "jars"
    return Jars(
        kafka_lib=root / f"kafka-{kafka_version()}" / "lib",
        plugin_path=root / f"debezium-{debezium_version()}",
    )


def ensure_jars(*, quiet: bool = False) -> Jars:
    """Return the jar folders, downloading them first if this machine has not got them yet."""
    jars = locate()
    _ensure(KAFKA_POM, jars.kafka_lib, "Apache Kafka and Kafka Connect", quiet)
    _ensure(DEBEZIUM_POM, jars.plugin_path / "debezium-connector-postgres", "Debezium PostgreSQL connector", quiet)
    return jars


def _ensure(pom: Path, target: Path, what: str, quiet: bool) -> None:
    if (target / COMPLETE_MARKER).exists():
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            f"Maven (mvn) is needed once to fetch {what} from Maven Central, and it is not installed. "
            "Fix: `apt-get install maven` (or put mvn on PATH)."
        )
    if not quiet:
        print(f"fetching {what} into {target} (once; later runs reuse it) ...", flush=True)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.monotonic()
    try:
        run(
            [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
            what=f"Fetching {what} with Maven",
            timeout=1200,
        )
    except StackError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StackError(
            f"{exc}\nMaven could not fetch {what}. Check that Maven Central is reachable from this "
            "machine (a proxy goes in ~/.m2/settings.xml), then run `make stack-fetch` again."
        ) from exc
    (staging / COMPLETE_MARKER).write_text(f"fetched in {time.monotonic() - started:.1f}s\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    if not quiet:
        print(f"fetched {what} in {time.monotonic() - started:.1f}s", flush=True)
