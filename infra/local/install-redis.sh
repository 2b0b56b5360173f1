#!/usr/bin/env bash
# Installs Redis from Debian's packages when no redis-server binary is present.
# The production-mode tests (tests/production) start their own throw-away server on
# 127.0.0.1 as the CeleryExecutor's broker; nothing is started or enabled here.
set -euo pipefail
if command -v redis-server >/dev/null; then
    echo "Redis server present: $(redis-server --version | cut -d' ' -f3)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# Debian's package starts a server on 6379 where an init system runs; the tests run their
# own, so stop it again.
if command -v service >/dev/null; then
    $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
echo "installed: $(redis-server --version | cut -d' ' -f3)"
