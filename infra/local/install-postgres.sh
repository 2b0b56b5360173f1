#!/usr/bin/env bash
# Installs PostgreSQL from Debian's packages when no server binary is present.
# The production-mode tests (tests/production) start their own throw-away cluster on
# 127.0.0.1 from these binaries; nothing is started or enabled here.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    echo "PostgreSQL server binaries present: $(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
# Debian's package starts a cluster on 5432; the tests run their own, so stop it again.
if command -v pg_ctlcluster >/dev/null; then
    for cluster in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do
        $SUDO pg_ctlcluster ${cluster/\// } stop 2>/dev/null || true
    done
fi
echo "installed: $(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -1)"
