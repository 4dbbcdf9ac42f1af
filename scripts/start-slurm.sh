#!/usr/bin/env bash
# start-slurm.sh - bring up a throwaway single-node SLURM cluster for the tests
# marked `slurm` (real slurmctld + slurmd, submitit and hydra-submitit-launcher
# submit real jobs to it).  Debian 12 (bookworm: Slurm 22.05, munge 0.5.15,
# MariaDB 10.11), run as root, no systemd needed.
#
# Idempotent: installs the packages that are missing, (re)writes the config in
# $SLURM_CI_DIR, starts only the daemons that are not running yet, waits
# (bounded) until the node is idle, and prints the partition name on stdout.
# Everything else (progress, errors, log tails) goes to stderr.
#
#   partition=$(bash scripts/start-slurm.sh)
#   source "${SLURM_CI_DIR:-/tmp/eightfold-slurm}/env"     # sets SLURM_CONF
#   ...
#   bash scripts/stop-slurm.sh [--purge]
#
# Environment:
#   SLURM_CI_DIR         config, state, logs, database  (default /tmp/eightfold-slurm)
#   SLURM_CI_PARTITION   partition name                  (default debug)
#   SLURM_CI_ACCOUNTING  1: slurmdbd + a private MariaDB so that sacct works;
#                        submitit polls sacct, and without it the result() of a
#                        job that died without a result (scancel, time limit,
#                        OOM) blocks forever.  0: no accounting.   (default 1)
#   SLURM_CI_DB_PORT     TCP port of the private MariaDB on 127.0.0.1 (default 3307)
#   SLURM_CI_DBD_PORT    TCP port of slurmdbd                        (default 6819)
#   SLURM_CI_CTLD_PORT   TCP port of slurmctld                       (default 6817)
#   SLURM_CI_SLURMD_PORT TCP port of slurmd                          (default 6818)
#   SLURM_CI_WAIT        seconds to wait for each daemon / the node  (default 90)
#   SLURM_CI_LINK_ETC    1: symlink /etc/slurm/slurm.conf to our config when
#                        that path is free, so clients work without SLURM_CONF
#                        (default 1)
set -euo pipefail

DIR=${SLURM_CI_DIR:-/tmp/eightfold-slurm}
PARTITION=${SLURM_CI_PARTITION:-debug}
ACCOUNTING=${SLURM_CI_ACCOUNTING:-1}
DB_PORT=${SLURM_CI_DB_PORT:-3307}
DBD_PORT=${SLURM_CI_DBD_PORT:-6819}
CTLD_PORT=${SLURM_CI_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_CI_SLURMD_PORT:-6818}
WAIT=${SLURM_CI_WAIT:-90}
LINK_ETC=${SLURM_CI_LINK_ETC:-1}

# Debian puts the daemons in /usr/sbin, which a non-login PATH may lack.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}

log() { echo "[start-slurm +${SECONDS}s] $*" >&2; }

# tail_logs FILE...: show the end of each existing log on stderr
tail_logs() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 25 "$f" >&2 || true
    done
}

# die MESSAGE [LOG...]: error with the end of the relevant logs, exit 1
die() {
    local msg=$1
    shift
    tail_logs "$@"
    log "ERROR: $msg"
    exit 1
}

case "$ACCOUNTING" in 0 | 1) ;; *) die "SLURM_CI_ACCOUNTING must be 0 or 1, not '$ACCOUNTING'" ;; esac
[[ "$WAIT" =~ ^[0-9]+$ ]] || die "SLURM_CI_WAIT must be a number of seconds, not '$WAIT'"
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# pid_alive PIDFILE NAME: the pid in PIDFILE is a live process whose comm is NAME
pid_alive() {
    local f=$1 name=$2 pid comm
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f") || return 1
    [ -n "$pid" ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [ "$comm" = "$name" ]
}

# wait_for SECONDS CMD...: run CMD every 0.2 s until it succeeds; 1 on timeout
wait_for() {
    local secs=$1
    shift
    local n=$((secs * 5))
    while [ "$n" -gt 0 ]; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
        n=$((n - 1))
    done
    return 1
}

installed() { # installed PKG: dpkg says PKG is installed
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# ------------------------------------------------------------------ install
pkgs=(slurmctld slurmd slurm-client munge)
[ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    # --no-install-recommends: the recommends pull in ~40 plugin packages
    # (hdf5, rrd, ipmi, rocm-smi ...) that a one-node test cluster never uses.
    # Debian's postinst cannot start the daemons here (no systemd, and
    # policy-rc.d may deny it); that is expected: we start them by hand below.
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"${TMPDIR:-/tmp}/eightfold-slurm-apt.log" 2>&1; then
        die "apt-get install ${missing[*]} failed" "${TMPDIR:-/tmp}/eightfold-slurm-apt.log"
    fi
    log "installed"
fi

mkdir -p "$DIR"/etc "$DIR"/state "$DIR"/spool "$DIR"/log "$DIR"/run
chmod 755 "$DIR"
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF
CTLD_LOG=$DIR/log/slurmctld.log
SLURMD_LOG=$DIR/log/slurmd.log
DBD_LOG=$DIR/log/slurmdbd.log
DB_LOG=$DIR/log/mariadbd.log
MUNGE_LOG=/var/log/munge/munged.log

# ------------------------------------------------------------------ munge
# Slurm 22.05 has no auth/slurm (23.11+), so munge it is.  munged runs as the
# "munge" user with the package's standard paths; the postinst made the user
# and normally the key.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0600 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge # /run is a tmpfs
    rm -f /run/munge/munged.pid
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged >&2 || die "munged failed to start" "$MUNGE_LOG"
    wait_for "$WAIT" sh -c 'munge -n | unmunge' || die "munged does not answer" "$MUNGE_LOG"
    # a copy of the pid file marks munged as ours, for stop-slurm.sh
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
fi

# ------------------------------------------------------------------ config
# The node line is `slurmd -C` (the real CPUs, sockets, cores, threads and
# hostname).  RealMemory is lowered to 95%: a configured value above what
# slurmd measures drains the node ("Low RealMemory").
NODE_LINE=$(slurmd -C | head -n 1)
NODE_NAME=$(sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' <<<"$NODE_LINE")
CPUS=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
MEM=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
if [ -z "$NODE_NAME" ] || [ -z "$CPUS" ] || [ -z "$MEM" ]; then
    die "cannot parse 'slurmd -C': $NODE_LINE"
fi
NODE_LINE=${NODE_LINE/RealMemory=$MEM/RealMemory=$((MEM * 95 / 100))}

if [ "$ACCOUNTING" = 1 ]; then
    ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux"
else
    ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

cat >"$CONF.new" <<EOF
# Generated by eightfold scripts/start-slurm.sh: a single-node test cluster.
ClusterName=eightfold
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again
# (default 120 s): submitit's timeout/preemption requeue waits for it.
AuthInfo=cred_expire=10
MpiDefault=none
# No cgroups: works on cgroup v1, v2 and in containers.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# Cores are consumable, memory is not, so jobs without --mem share the node.
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=5
ReturnToService=2
# Reject at submission what this node can never run (e.g. -c 8 on 2 CPUs)
# instead of leaving it pending forever: tests fail fast.
EnforcePartLimits=ALL
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
$ACCT
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
CONF_CHANGED=0
if cmp -s "$CONF.new" "$CONF"; then
    rm -f "$CONF.new"
else
    mv "$CONF.new" "$CONF"
    CONF_CHANGED=1
fi
{
    echo "export SLURM_CONF=$CONF"
    echo "export SLURM_CI_PARTITION=$PARTITION"
} >"$DIR/env"

if [ "$LINK_ETC" = 1 ]; then
    mkdir -p /etc/slurm
    if [ -L /etc/slurm/slurm.conf ] || [ ! -e /etc/slurm/slurm.conf ]; then
        ln -sfn "$CONF" /etc/slurm/slurm.conf
    elif [ "$(readlink -f /etc/slurm/slurm.conf)" != "$CONF" ]; then
        log "note: /etc/slurm/slurm.conf is not ours; clients need SLURM_CONF=$CONF (source $DIR/env)"
    fi
fi

# ------------------------------------------------------------------ accounting
if [ "$ACCOUNTING" = 1 ]; then
    SOCK=$DIR/db/mysqld.sock
    mkdir -p "$DIR/db"
    if ! pid_alive "$DIR/run/mariadbd.pid" mariadbd; then
        if [ ! -d "$DIR/db/data/mysql" ]; then
            log "initialising a private MariaDB in $DIR/db"
            mariadb-install-db --no-defaults --user=root --datadir="$DIR/db/data" \
                --auth-root-authentication-method=socket --skip-test-db \
                >"$DIR/log/mariadb-install.log" 2>&1 ||
                die "mariadb-install-db failed" "$DIR/log/mariadb-install.log"
        fi
        log "starting mariadbd on 127.0.0.1:$DB_PORT"
        setsid mariadbd --no-defaults --user=root --datadir="$DIR/db/data" \
            --socket="$SOCK" --pid-file="$DIR/run/mariadbd.pid" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
            --log-error="$DB_LOG" --innodb-buffer-pool-size=64M \
            --innodb-log-file-size=16M </dev/null >/dev/null 2>&1 &
        wait_for "$WAIT" mariadb-admin --no-defaults --socket="$SOCK" ping ||
            die "mariadbd does not answer on $SOCK" "$DB_LOG"
        wait_for 10 pid_alive "$DIR/run/mariadbd.pid" mariadbd ||
            die "mariadbd wrote no pid file" "$DB_LOG"
    fi
    if [ ! -s "$DIR/etc/dbpass" ]; then
        (
            umask 077
            od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$DIR/etc/dbpass"
        )
    fi
    DBPASS=$(cat "$DIR/etc/dbpass")
    mariadb --no-defaults --socket="$SOCK" -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
        ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" ||
        die "cannot create the slurm database user" "$DB_LOG"
    # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF; it must
    # be owned by SlurmUser (root) and mode 600.
    (
        umask 077
        cat >"$DIR/etc/slurmdbd.conf.new" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
LogFile=$DBD_LOG
PidFile=$DIR/run/slurmdbd.pid
DebugLevel=info
EOF
    )
    if cmp -s "$DIR/etc/slurmdbd.conf.new" "$DIR/etc/slurmdbd.conf"; then
        rm -f "$DIR/etc/slurmdbd.conf.new"
    else
        mv "$DIR/etc/slurmdbd.conf.new" "$DIR/etc/slurmdbd.conf"
        if pid_alive "$DIR/run/slurmdbd.pid" slurmdbd; then
            log "slurmdbd.conf changed: restarting slurmdbd"
            pid=$(cat "$DIR/run/slurmdbd.pid")
            kill -TERM "$pid"
            wait_for 20 sh -c "! test -d /proc/$pid" || die "slurmdbd ($pid) did not stop" "$DBD_LOG"
        fi
    fi
    if ! pid_alive "$DIR/run/slurmdbd.pid" slurmdbd; then
        log "starting slurmdbd"
        slurmdbd >&2 || die "slurmdbd failed to start" "$DBD_LOG"
    fi
    wait_for "$WAIT" sacctmgr -n show cluster || die "slurmdbd does not answer" "$DBD_LOG" "$DB_LOG"
fi

# ------------------------------------------------------------------ slurm
if pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
    if [ "$CONF_CHANGED" = 1 ]; then
        log "slurm.conf changed: scontrol reconfigure"
        scontrol reconfigure >&2 || die "scontrol reconfigure failed" "$CTLD_LOG"
    fi
else
    log "starting slurmctld"
    slurmctld >&2 || die "slurmctld failed to start" "$CTLD_LOG"
fi
wait_for "$WAIT" scontrol ping || die "slurmctld does not answer" "$CTLD_LOG"
if ! pid_alive "$DIR/run/slurmd.pid" slurmd; then
    log "starting slurmd (node $NODE_NAME, $CPUS CPUs)"
    slurmd >&2 || die "slurmd failed to start" "$SLURMD_LOG"
fi

node_ready() {
    local state
    state=$(sinfo -h -n "$NODE_NAME" -o %T 2>/dev/null) || return 1
    case "$state" in
    idle | mixed | allocated | completing) return 0 ;;
    *drain* | *down* | *fail*)
        # e.g. a previous run's state: bring it back
        scontrol update NodeName="$NODE_NAME" State=RESUME >/dev/null 2>&1 || true
        return 1
        ;;
    *) return 1 ;;
    esac
}
if ! wait_for "$WAIT" node_ready; then
    sinfo -N -l >&2 || true
    die "node $NODE_NAME is not idle after ${WAIT}s" "$SLURMD_LOG" "$CTLD_LOG"
fi
log "cluster up: $(sinfo -h -o '%P %a %D %T %N' | tr '\n' ' ')"
log "clients: source $DIR/env   (export SLURM_CONF=$CONF)"
echo "$PARTITION"
