#!/usr/bin/env bash
# Installs what the test suites run outside Python, from Debian's packages, when missing:
#   postgres  PostgreSQL (Airflow metadata, Celery results, MLflow backend store)
#   redis     Redis (the Celery broker)
#   chromium  headless Chromium (the review page's browser test)
# Usage: install-services.sh [postgres] [redis] [chromium]   (no argument: all three)
# The tests start their own throw-away servers on 127.0.0.1 from these binaries; nothing
# is started or enabled here.
set -euo pipefail
wanted=("$@")
if [ ${#wanted[@]} -eq 0 ]; then wanted=(postgres redis chromium); fi
missing=()
for component in "${wanted[@]}"; do
    case "$component" in
        postgres) compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null \
                      || missing+=(postgresql postgresql-client) ;;
        redis) command -v redis-server >/dev/null || missing+=(redis-server) ;;
        chromium) command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core) ;;
        *) echo "unknown component $component (postgres, redis, chromium)" >&2; exit 2 ;;
    esac
done
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
for component in "${wanted[@]}"; do
    case "$component" in
        postgres) echo "PostgreSQL: $(compgen -G '/usr/lib/postgresql/*/bin/postgres' \
                                      | sort -V | tail -1)" ;;
        redis) echo "Redis: $(redis-server --version | cut -d' ' -f3)" ;;
        chromium) echo "Chromium: $(chromium --version 2>/dev/null)" ;;
    esac
done
