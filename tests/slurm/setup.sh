#!/usr/bin/env bash
# A single-node Slurm for the tests (tests/test_slurm.py): Debian's slurm-wlm and munge,
# munged, slurmctld and slurmd on this machine, CPU-only, one node "localhost" in one default
# partition (then tests/slurm/two_nodes.sh: a second Slurm of two nodes on this machine, for the
# multi-node DDP test). Idempotent (a running, answering Slurm is left alone), bounded in time (every
# step has a timeout), and it always exits 0: when Slurm cannot be brought up, the reason goes
# to $COCKPIT_SLURM_STATE/unavailable and the Slurm tests skip with it.
#
#   bash tests/slurm/setup.sh            # as root (apt-get, daemons); ~1 min with the install
#
# State: $COCKPIT_SLURM_STATE (default /tmp/cockpit-slurm): slurm.conf's spool, logs, pid files.
set -u
STATE=${COCKPIT_SLURM_STATE:-/tmp/cockpit-slurm}
mkdir -p "$STATE" || exit 0
rm -f "$STATE/unavailable"
say() { echo "slurm setup: $*"; }
fail() {
    say "not available: $*"
    echo "$*" > "$STATE/unavailable"
    exit 0
}
up() { timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }
# and a second, two-node Slurm on this machine for the multi-node DDP test (its own ports)
two_nodes() { bash "$(dirname "${BASH_SOURCE[0]}")/two_nodes.sh"; }

if command -v sinfo >/dev/null && up; then
    say "already up ($(timeout 5 sinfo -h -o '%N %T %c CPUs' | head -1))"
    two_nodes
    exit 0
fi
[ "$(id -u)" = 0 ] || fail "not root: cannot install or start slurmctld/slurmd here (run tests/slurm/setup.sh as root)"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge (apt-get)…"
    t0=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    timeout 180 apt-get update -qq >"$STATE/apt.log" 2>&1 || fail "apt-get update failed or timed out (see $STATE/apt.log)"
    timeout 300 apt-get install -y -qq slurm-wlm munge >>"$STATE/apt.log" 2>&1 \
        || fail "apt-get install slurm-wlm munge failed or timed out (see $STATE/apt.log)"
    say "installed in $(( $(date +%s) - t0 )) s"
fi

# munge: a 1024-byte key owned by munge, mode 400, and munged running as munge
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    head -c 1024 /dev/urandom > /etc/munge/munge.key
    say "wrote /etc/munge/munge.key"
fi
chown munge:munge /etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null
if ! timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
    timeout 10 runuser -u munge -- munged --force >"$STATE/munged.out" 2>&1 \
        || fail "munged did not start (see $STATE/munged.out)"
    say "started munged"
fi
timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1 || fail "munge does not answer (munge -n | unmunge failed)"

# slurm.conf: one node, this machine's CPUs and memory, one default partition
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
CONF_DIR=/etc/slurm
mkdir -p "$CONF_DIR" "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/log"
cat > "$STATE/slurm.conf.new" <<CONF
# written by cockpit's tests/slurm/setup.sh: a single-node Slurm for the tests
ClusterName=cockpit-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=localhost CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
if ! cmp -s "$STATE/slurm.conf.new" "$CONF_DIR/slurm.conf"; then
    cp "$STATE/slurm.conf.new" "$CONF_DIR/slurm.conf"
    say "wrote $CONF_DIR/slurm.conf ($CPUS CPUs, $MEM MB)"
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! running "$STATE/slurmctld.pid"; then
    timeout 20 slurmctld -i >"$STATE/slurmctld.out" 2>&1 || fail "slurmctld did not start (see $STATE/slurmctld.out and $STATE/log/slurmctld.log)"
    say "started slurmctld"
fi
if ! running "$STATE/slurmd.pid"; then
    timeout 20 slurmd >"$STATE/slurmd.out" 2>&1 || fail "slurmd did not start (see $STATE/slurmd.out and $STATE/log/slurmd.log)"
    say "started slurmd"
fi
for _ in $(seq 1 30); do
    if up; then
        say "up: $(timeout 5 sinfo -h -o '%P %N %T %c CPUs')"
        two_nodes
        exit 0
    fi
    timeout 5 scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1
    sleep 1
done
fail "slurmctld and slurmd started but the node is not idle after 30 s: $(timeout 5 sinfo -h -o '%N %T %E' 2>&1 | head -1) (logs in $STATE/log)"
