#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the catalogue tests and print how to reach it.
#
#   eval "$(.ci/postgres.sh)"        # start (or reuse) the server; exports PULSETRAIN_TEST_PG_URL
#   .ci/postgres.sh stop             # stop it
#   .ci/postgres.sh purge            # stop it and delete its data directory
#
# Installs the Debian "postgresql" package with apt-get if no server binaries are found, then
# runs initdb + pg_ctl (no systemd) on 127.0.0.1 only, on a non-default port, in a data
# directory under $TMPDIR.  Run as root, the server runs as the "postgres" user; run as any
# other user, it runs as that user.  Idempotent: running it again reuses a running server.
# Only the export line goes to stdout; progress goes to stderr.
#
# Settings (environment): PULSETRAIN_PG_PORT (default 54329), PULSETRAIN_PG_DIR (default
# ${TMPDIR:-/tmp}/pulsetrain-pg-<port>), PULSETRAIN_PG_DB (pulsetrain_test),
# PULSETRAIN_PG_USER (pulsetrain), PULSETRAIN_PG_PASSWORD (pulsetrain).
set -euo pipefail

PORT="${PULSETRAIN_PG_PORT:-54329}"
PGDIR="${PULSETRAIN_PG_DIR:-${TMPDIR:-/tmp}/pulsetrain-pg-${PORT}}"
DB="${PULSETRAIN_PG_DB:-pulsetrain_test}"
DBUSER="${PULSETRAIN_PG_USER:-pulsetrain}"
DBPASS="${PULSETRAIN_PG_PASSWORD:-pulsetrain}"
DATA="$PGDIR/data"
SOCK="$PGDIR/socket"
LOG="$PGDIR/server.log"

say() { echo "postgres.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

find_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then
        echo "$dir"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

BINDIR=$(find_bindir)
if [[ -z "$BINDIR" ]]; then
    say "PostgreSQL server binaries not found; installing the Debian package"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install postgresql yourself"
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >&2
    # The package may also create and start the distribution's own cluster on port 5432;
    # ours is separate (own data directory and port).
    $SUDO apt-get install -y -q --no-install-recommends postgresql >&2
    BINDIR=$(find_bindir)
    [[ -n "$BINDIR" ]] || die "postgresql installed but no initdb found"
fi

# Run a command as the server's owner: "postgres" when we are root, else ourselves.
if [[ $(id -u) -eq 0 ]]; then
    OWNER=postgres
    id "$OWNER" >/dev/null 2>&1 || die "user postgres does not exist (is the package installed?)"
    as_owner() { runuser -u "$OWNER" -- "$@"; }
else
    OWNER=$(id -un)
    as_owner() { "$@"; }
fi

pg_running() { as_owner "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

case "${1:-start}" in
    stop | purge)
        if [[ -d "$DATA" ]] && pg_running; then
            as_owner "$BINDIR/pg_ctl" -D "$DATA" -m fast -w stop >&2
        fi
        if [[ "$1" == purge ]]; then
            rm -rf "$PGDIR"
            say "removed $PGDIR"
        fi
        exit 0
        ;;
    start) ;;
    *) die "unknown command '$1' (use start, stop or purge)" ;;
esac

mkdir -p "$PGDIR" "$SOCK"
chown "$OWNER" "$PGDIR" "$SOCK"
chmod 700 "$PGDIR"

if [[ ! -f "$DATA/PG_VERSION" ]]; then
    say "initdb in $DATA"
    rm -rf "$DATA"
    as_owner "$BINDIR/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >&2 \
        || as_owner "$BINDIR/initdb" -D "$DATA" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 --encoding=UTF8 --no-locale >&2
fi

if pg_running; then
    say "server already running in $DATA"
else
    if "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
        die "another server already listens on 127.0.0.1:$PORT; set PULSETRAIN_PG_PORT"
    fi
    say "starting server on 127.0.0.1:$PORT (log $LOG)"
    touch "$LOG" && chown "$OWNER" "$LOG"
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $SOCK -c max_connections=200 -c fsync=off" \
        start >&2 || { tail -n 20 "$LOG" >&2; die "server did not start"; }
fi

psql_admin() { as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres "$@"; }

if [[ -z $(psql_admin -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$DBUSER'") ]]; then
    say "creating role $DBUSER"
    psql_admin -d postgres -c "CREATE ROLE \"$DBUSER\" LOGIN PASSWORD '$DBPASS'" >&2
else
    psql_admin -d postgres -c "ALTER ROLE \"$DBUSER\" LOGIN PASSWORD '$DBPASS'" >&2
fi
if [[ -z $(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'") ]]; then
    say "creating database $DB"
    psql_admin -d postgres -c "CREATE DATABASE \"$DB\" OWNER \"$DBUSER\"" >&2
fi

URL="postgresql+psycopg://$DBUSER:$DBPASS@127.0.0.1:$PORT/$DB"
# Check the URL works over TCP with the password before handing it out.
PGPASSWORD="$DBPASS" "$BINDIR/psql" -X -q -h 127.0.0.1 -p "$PORT" -U "$DBUSER" -d "$DB" \
    -tAc "SELECT 1" >/dev/null || die "cannot log in as $DBUSER over TCP"
say "ready: $DB on 127.0.0.1:$PORT"
echo "export PULSETRAIN_TEST_PG_URL=$URL"
