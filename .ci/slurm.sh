#!/usr/bin/env bash
# Start a throw-away one-node SLURM cluster on this machine for the `slurm` tests and print
# how to reach it.
#
#   eval "$(.ci/slurm.sh)"     # start (or reuse) it; exports SLURM_CONF and
#                              # PULSETRAIN_TEST_SLURM_PARTITION
#   .ci/slurm.sh stop          # cancel its jobs and stop its daemons
#   .ci/slurm.sh purge         # stop it and delete its directory
#
# Installs the Debian packages "slurm-wlm" and "munge" with apt-get if their daemons are not
# found.  Then, without systemd and without touching /etc: makes a MUNGE key, writes a
# slurm.conf for one node (this host at 127.0.0.1, its CPU count and memory, one partition),
# starts munged, slurmctld and slurmd as background daemons on non-default ports with all
# their state, sockets, logs and pid files in one directory, and waits until `sinfo` shows
# the node idle.  The configuration suits containers: no cgroup plugins (proctrack/linuxproc,
# task/none, no accounting).  Run as root (slurmd must start jobs as their users).
# Idempotent: run again, it reuses the running cluster.  Only the export lines go to stdout;
# progress goes to stderr.
#
# Settings (environment): PULSETRAIN_SLURM_DIR (default ${TMPDIR:-/tmp}/pulsetrain-slurm),
# PULSETRAIN_SLURM_PORT (slurmctld's port, default 16817; slurmd uses the next one),
# PULSETRAIN_SLURM_PARTITION (default "pulsetrain").
set -euo pipefail

DIR="${PULSETRAIN_SLURM_DIR:-${TMPDIR:-/tmp}/pulsetrain-slurm}"
PORT="${PULSETRAIN_SLURM_PORT:-16817}"
PARTITION="${PULSETRAIN_SLURM_PARTITION:-pulsetrain}"
CONF="$DIR/slurm.conf"
MUNGE="$DIR/munge"          # munged's socket, pid, log and seed (readable by all)
KEYDIR="$DIR/munge-key"     # its key (root only)
LOGS="$DIR/log"

say() { echo "slurm.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stop the daemon whose pid file is $1: SIGTERM, then SIGKILL after 15 s.
stop_daemon() {
    local pidfile="$1" name="$2" pid i
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "stopped $name"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    say "killed $name (did not stop within 15 s)"
}

stop_cluster() {
    [[ -d "$DIR" ]] || return 0
    if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid"; then
        # Cancel every job first so that slurmd stops their processes (slurmstepd).
        local jobs i
        jobs=$(SLURM_CONF="$CONF" squeue -h -o %i 2>/dev/null || true)
        if [[ -n "$jobs" ]]; then
            say "cancelling jobs: $(echo $jobs)"
            # shellcheck disable=SC2086 # one job id per word
            SLURM_CONF="$CONF" scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 300; i++)); do
                [[ -z $(SLURM_CONF="$CONF" squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.1
            done
        fi
    fi
    stop_daemon "$DIR/slurmd.pid" slurmd
    stop_daemon "$DIR/slurmctld.pid" slurmctld
    stop_daemon "$MUNGE/munged.pid" munged
}

case "${1:-start}" in
    stop | purge)
        stop_cluster
        if [[ "$1" == purge ]]; then
            rm -rf "$DIR"
            say "removed $DIR"
        fi
        exit 0
        ;;
    start) ;;
    *) die "unknown command '$1' (use start, stop or purge)" ;;
esac

[[ $(id -u) -eq 0 ]] || die "run as root: slurmd starts jobs as their users"

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
    || ! command -v munged >/dev/null 2>&1 || ! command -v sbatch >/dev/null 2>&1; then
    say "SLURM or MUNGE not found; installing the Debian packages slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    # The packages' own services (system-wide munged, slurmctld, slurmd with /etc/slurm) must
    # not start: ours run with their own key and configuration.  A policy-rc.d that denies
    # every start does that under systemd and SysV init alike; it is removed again unless it
    # was there before.
    policy=/usr/sbin/policy-rc.d
    own_policy=""
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    status=0
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
        slurm-wlm munge >&2 || status=$?
    [[ -z "$own_policy" ]] || rm -f "$policy"
    [[ $status -eq 0 ]] || die "apt-get install slurm-wlm munge failed (status $status)"
    command -v slurmctld >/dev/null 2>&1 || die "slurm-wlm installed but no slurmctld found"
fi

export SLURM_CONF="$CONF"

if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && pid_alive "$MUNGE/munged.pid" \
    && sinfo -h >/dev/null 2>&1; then
    say "cluster already running in $DIR"
else
    stop_cluster # whatever is left of an earlier one
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null \
        || (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + 1))") 2>/dev/null; then
        die "another program listens on 127.0.0.1:$PORT or :$((PORT + 1)); set PULSETRAIN_SLURM_PORT"
    fi
    mkdir -p "$DIR" "$MUNGE" "$KEYDIR" "$LOGS" "$DIR/state" "$DIR/spool"
    chmod 755 "$DIR" "$MUNGE" # munged wants its socket's directories searchable by all
    chmod 700 "$KEYDIR"

    # ---------------------------------------------------------------- MUNGE (authentication)
    if [[ ! -s "$KEYDIR/munge.key" ]]; then
        say "making a MUNGE key"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$KEYDIR/munge.key" >&2
        else
            dd if=/dev/urandom of="$KEYDIR/munge.key" bs=1024 count=1 status=none
        fi
        chmod 400 "$KEYDIR/munge.key"
    fi
    say "starting munged (socket $MUNGE/munge.socket)"
    munged --key-file="$KEYDIR/munge.key" --socket="$MUNGE/munge.socket" \
        --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" \
        --seed-file="$MUNGE/munged.seed" \
        || { tail -n 20 "$MUNGE/munged.log" >&2 2>/dev/null; die "munged did not start"; }

    # ---------------------------------------------------------------- slurm.conf
    NODE=$(hostname -s)
    CPUS=$(nproc --all)
    MEM_MB=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
    # Leave some memory to the system, as a real node's RealMemory does.
    REAL_MB=$((MEM_MB * 9 / 10))
    cat >"$CONF" <<EOF
# One-node SLURM cluster for the pulsetrain tests, written by .ci/slurm.sh.
ClusterName=pulsetrain
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# containers: no cgroups, no accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
# jobs share the node by cores; memory is counted too
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# a job that is cancelled gets SIGTERM, then SIGKILL 10 s later
KillWait=10
MinJobAge=60
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

    # ---------------------------------------------------------------- daemons
    say "starting slurmctld on 127.0.0.1:$PORT (log $LOGS/slurmctld.log)"
    slurmctld -f "$CONF" -c \
        || { tail -n 20 "$LOGS/slurmctld.log" >&2 2>/dev/null; die "slurmctld did not start"; }
    say "starting slurmd for node $NODE (log $LOGS/slurmd.log)"
    slurmd -f "$CONF" -N "$NODE" \
        || { tail -n 20 "$LOGS/slurmd.log" >&2 2>/dev/null; die "slurmd did not start"; }
fi

# ------------------------------------------------------------------- wait for the node
state=""
for ((i = 0; i < 600; i++)); do
    state=$(sinfo -h -p "$PARTITION" -o %t 2>/dev/null | head -n 1 || true)
    [[ "$state" == idle || "$state" == mix || "$state" == alloc ]] && break
    if ! pid_alive "$DIR/slurmctld.pid" || ! pid_alive "$DIR/slurmd.pid"; then
        tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 2>/dev/null || true
        die "a SLURM daemon died while starting (logs in $LOGS)"
    fi
    sleep 0.1
done
if [[ "$state" != idle && "$state" != mix && "$state" != alloc ]]; then
    tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 2>/dev/null || true
    die "the node is not idle after 60 s (state '${state:-unknown}'; logs in $LOGS)"
fi
say "ready: partition $PARTITION, node $(sinfo -h -p "$PARTITION" -o '%n %c CPUs %m MB %t')"
echo "export SLURM_CONF=$CONF"
echo "export PULSETRAIN_TEST_SLURM_PARTITION=$PARTITION"
