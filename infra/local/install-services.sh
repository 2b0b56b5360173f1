#!/usr/bin/env bash
# Installs the servers make test-production runs, from Debian's packages, when missing:
# PostgreSQL (Airflow metadata, Celery results, MLflow backend store) and Redis (the
# Celery broker). The tests start their own throw-away servers on 127.0.0.1 from these
# binaries; nothing is started or enabled here.
set -euo pipefail
missing=()
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    missing+=(postgresql postgresql-client)
fi
if ! command -v redis-server >/dev/null; then
    missing+=(redis-server)
fi
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The packages start their servers where an init system runs; the tests run their
    # own, so stop them again.
    if command -v pg_ctlcluster >/dev/null; then
        for cluster in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do
            $SUDO pg_ctlcluster ${cluster/\// } stop 2>/dev/null || true
        done
    fi
    $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
echo "PostgreSQL: $(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -1)"
echo "Redis: $(redis-server --version | cut -d' ' -f3)"
