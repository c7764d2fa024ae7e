#!/usr/bin/env bash
# Stop the daemons that .ci/slurm-up.sh started (by the process ids it recorded; nothing else), and put back
# a slurm.conf that it replaced. Safe to run when nothing was started.
set -uo pipefail

STATE_DIR=/run/probprec-slurm
CONF_DIR=/etc/slurm

[ -d "$STATE_DIR" ] || exit 0

stop() {  # stop NAME: TERM the recorded pid, wait up to 10 s, then KILL
    local file="$STATE_DIR/$1.pid" pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$file"
    echo "slurm-down: stopped $1 ($pid)"
}

stop slurmd
stop slurmctld
stop munged
if [ -f "$STATE_DIR/conf-backup" ] && [ -f "$CONF_DIR/slurm.conf.probprec-backup" ]; then
    mv -f "$CONF_DIR/slurm.conf.probprec-backup" "$CONF_DIR/slurm.conf"
fi
rm -rf "$STATE_DIR"
