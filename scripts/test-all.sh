#!/usr/bin/env bash
# Install everything the test suite needs and run all of it (what CI runs).
#   - Debian packages: chromium (browser tests), postgresql (catalogue tests), iproute2 (test
#     hosts of the multihost tests; util-linux's unshare/nsenter/setpriv are always there)
#   - the package with its test extras
#   - a throw-away PostgreSQL server on 127.0.0.1 for the catalogue tests (stopped at the end)
#   - a throw-away one-node SLURM cluster for the `slurm` tests (stopped at the end; .ci/slurm.sh
#     installs Debian's slurm-wlm and munge itself)
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

# What this script starts is stopped when it ends, however it ends.
cleanup=()
on_exit() {
    local c
    for c in "${cleanup[@]}"; do $c >/dev/null 2>&1 || true; done
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [ -x .ci/postgres.sh ]; then
    # A PostgreSQL server that was already running (a developer's) is reused and left alone.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${PULSETRAIN_PG_PORT:-54329}") 2>/dev/null; then
        cleanup+=(".ci/postgres.sh stop")
    fi
    eval "$(.ci/postgres.sh)"
fi

if [ -x .ci/slurm.sh ]; then
    # Likewise a SLURM cluster of .ci/slurm.sh that was already running.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${PULSETRAIN_SLURM_PORT:-16817}") 2>/dev/null; then
        cleanup+=(".ci/slurm.sh stop")
    fi
    eval "$(.ci/slurm.sh)"
fi

python3 -m pytest -q -p no:cacheprovider "$@"
