#!/usr/bin/env bash
# A single-node Slurm cluster on this machine for the tests marked `slurm` (tests/bench/test_slurm.py).
#
# Installs Debian's slurm-wlm and munge when they are missing, writes /etc/slurm/slurm.conf for this host
# (no cgroups, no systemd, no accounting: proctrack/linuxproc, task/none), creates the munge key, starts
# munged, slurmctld and slurmd, and waits until the node is idle. .ci/slurm-down.sh stops what this started.
#
# Exit status: 0 when the cluster is up, or when the packages cannot be installed (then it prints
# "slurm packages unavailable: <reason>", starts nothing, and the Slurm tests skip, which fails the tests
# under CI: tests/bench/ci_skips.py); 1 when the packages are there but the cluster does not come up (a real
# failure, with the daemons' logs).
set -uo pipefail

STATE_DIR=/run/probprec-slurm            # what this script started, for slurm-down.sh
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
WAIT_S=${SLURM_UP_WAIT_S:-60}

say() { echo "slurm-up: $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "slurm packages unavailable: slurm-up.sh needs root (to install packages and start daemons)"
    exit 0
fi

if sinfo --noheader >/dev/null 2>&1; then
    say "a Slurm cluster is already up here; using it"
    sinfo
    exit 0
fi

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        echo "slurm packages unavailable: no apt-get on this machine"
        return 1
    fi
    local log
    log=$(mktemp)
    say "installing slurm-wlm and munge (apt-get)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge; } \
           >"$log" 2>&1; then
        echo "slurm packages unavailable: $(grep -E '^(E|Err):' "$log" | tail -n 1 || tail -n 1 "$log")"
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

install_packages || exit 0

mkdir -p "$STATE_DIR"
host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(awk '/^MemTotal:/ { m = int($2 / 1024) - 1024; print (m > 512 ? m : 512) }' /proc/meminfo)

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged is already running"
        return 0
    fi
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force >/dev/null
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid || return 1
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    cat /run/munge/munged.pid >"$STATE_DIR/munged.pid"
}

write_config() {
    mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    chown slurm:slurm "$LOG_DIR" /var/spool/slurmctld
    if [ -f "$CONF_DIR/slurm.conf" ] && [ ! -f "$STATE_DIR/conf-backup" ]; then
        cp -p "$CONF_DIR/slurm.conf" "$CONF_DIR/slurm.conf.probprec-backup"
        touch "$STATE_DIR/conf-backup"
    fi
    cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by probprec's .ci/slurm-up.sh: one node, no cgroups, no systemd, no accounting.
ClusterName=probprec-ci
SlurmctldHost=${host}(127.0.0.1)
AuthType=auth/munge
AuthInfo=cred_expire=10
SlurmUser=slurm
SlurmdUser=root
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${memory_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
}

start_slurm() {
    slurmctld -c || return 1
    cat /run/slurmctld.pid >"$STATE_DIR/slurmctld.pid" 2>/dev/null
    slurmd -c || return 1
    for _ in $(seq 50); do
        [ -s /run/slurmd.pid ] && break
        sleep 0.1
    done
    cat /run/slurmd.pid >"$STATE_DIR/slurmd.pid" 2>/dev/null
}

node_state() { sinfo --noheader --nodes="$host" --format=%t 2>/dev/null | head -n 1; }

fail() {
    say "the cluster did not come up: $*"
    for log in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        [ -f "$log" ] && { echo "--- $log"; tail -n 20 "$log"; }
    done
    "$(dirname "$0")/slurm-down.sh"
    exit 1
}

start_munge || fail "munged did not start"
write_config
start_slurm || fail "slurmctld or slurmd did not start"
deadline=$((SECONDS + WAIT_S))
state=""
while [ $SECONDS -lt $deadline ]; do
    state=$(node_state)
    case "$state" in
        idle*) break ;;
        down*|drain*|drng*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 ;;
    esac
    sleep 1
done
case "$state" in
    idle*) ;;
    *) fail "node $host is '${state:-unknown}' after ${WAIT_S} s" ;;
esac
say "single-node cluster up: node $host, $cpus CPUs, ${memory_mb} MB"
sinfo
