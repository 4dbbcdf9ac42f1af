#!/usr/bin/env bash
# stop-slurm.sh - stop the test cluster that scripts/start-slurm.sh started.
# Cancels all jobs, then stops slurmd, slurmctld, slurmdbd, mariadbd and
# munged (munged only when start-slurm.sh started it), each by the PID in its
# pid file and only after checking /proc/PID/comm: never by name.
# Idempotent: stopping a stopped cluster is a no-op.
#
#   bash scripts/stop-slurm.sh            # keep $SLURM_CI_DIR (logs, state, DB)
#   bash scripts/stop-slurm.sh --purge    # also delete $SLURM_CI_DIR
#
# Environment: SLURM_CI_DIR (default /tmp/eightfold-slurm), SLURM_CI_STOP_WAIT
# (seconds to wait for each daemon after SIGTERM before SIGKILL, default 20).
set -euo pipefail

DIR=${SLURM_CI_DIR:-/tmp/eightfold-slurm}
STOP_WAIT=${SLURM_CI_STOP_WAIT:-20}
PURGE=0
for arg in "$@"; do
    case "$arg" in
    --purge) PURGE=1 ;;
    -h | --help)
        sed -n '2,13p' "$0" >&2
        exit 0
        ;;
    *)
        echo "usage: $0 [--purge]" >&2
        exit 2
        ;;
    esac
done
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}
export SLURM_CONF=$DIR/etc/slurm.conf

log() { echo "[stop-slurm +${SECONDS}s] $*" >&2; }

# pid_of PIDFILE NAME: print the pid in PIDFILE if it is a live process whose
# comm is NAME; fail otherwise
pid_of() {
    local f=$1 name=$2 pid comm
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f") || return 1
    [ -n "$pid" ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [ "$comm" = "$name" ] || return 1
    echo "$pid"
}

# stop_daemon NAME PIDFILE: SIGTERM, wait, SIGKILL as a last resort
stop_daemon() {
    local name=$1 f=$2 pid n
    if pid=$(pid_of "$f" "$name"); then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        n=$((STOP_WAIT * 5))
        while [ -d "/proc/$pid" ] && [ "$n" -gt 0 ]; do
            sleep 0.2
            n=$((n - 1))
        done
        # the pid may have been reused meanwhile: check the name again
        if pid_of "$f" "$name" >/dev/null; then
            log "$name (pid $pid) still running after ${STOP_WAIT}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    elif [ -e "$f" ]; then
        log "$name: stale pid file $f (no live $name)"
    fi
    rm -f "$f"
}

if [ -f "$SLURM_CONF" ] && pid_of "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ') || jobs=
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        read -r -a job_ids <<<"$jobs"
        scancel "${job_ids[@]}" 2>/dev/null || true
        n=50
        while [ -n "$(squeue -h -o %A 2>/dev/null)" ] && [ "$n" -gt 0 ]; do
            sleep 0.2
            n=$((n - 1))
        done
    fi
fi

stop_daemon slurmd "$DIR/run/slurmd.pid"
stop_daemon slurmctld "$DIR/run/slurmctld.pid"
stop_daemon slurmdbd "$DIR/run/slurmdbd.pid"
stop_daemon mariadbd "$DIR/run/mariadbd.pid"
# munged only when start-slurm.sh started it (it left a copy of the pid file)
if pid_of "$DIR/run/munged.pid" munged >/dev/null; then
    stop_daemon munged "$DIR/run/munged.pid"
    rm -f /run/munge/munged.pid
else
    rm -f "$DIR/run/munged.pid"
fi

if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/etc/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi
if [ "$PURGE" = 1 ] && [ -d "$DIR" ]; then
    log "removing $DIR"
    rm -rf "$DIR"
fi
log "stopped"
