#!/usr/bin/env bash
# Install everything the test suite needs and run all of it (what CI runs).
#   - Debian packages: chromium (browser tests), postgresql (catalogue tests), iproute2 (test
#     hosts of the multihost tests; util-linux's unshare/nsenter/setpriv are always there)
#   - the package with its test extras
#   - a throw-away PostgreSQL server on 127.0.0.1 for the catalogue tests (stopped at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)  # test hosts (multihost tests)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_apt[@]}"
fi

python3 -m pip install -q -e '.[test,postgres,slurm]'

if [ -x .ci/postgres.sh ]; then
    # A server this script starts is stopped when it ends, however it ends; one that was
    # already running (a developer's) is reused and left alone.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${PULSETRAIN_PG_PORT:-54329}") 2>/dev/null; then
        trap '.ci/postgres.sh stop >/dev/null 2>&1 || true' EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        trap 'exit 129' HUP
    fi
    eval "$(.ci/postgres.sh)"
fi

python3 -m pytest -q -p no:cacheprovider "$@"
