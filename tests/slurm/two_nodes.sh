#!/usr/bin/env bash
# A second, two-node Slurm on this same machine for the multi-node DDP test
# (tests/test_slurm.py::test_multi_node_ddp...): its own slurmctld and two slurmd, nodes n1 and
# n2 (one CPU each), on ports 6827-6829, with its own slurm.conf. Clients reach it with
# SLURM_CONF=$STATE/two-nodes/slurm.conf; the single-node Slurm of setup.sh is untouched.
# Debian's slurmd runs several daemons on one host with `slurmd -N NAME` when each node has its
# own Port (checked with slurm-wlm 22.05). Idempotent, bounded, always exits 0: when it cannot
# come up, the reason goes to $STATE/two-nodes/unavailable and the test skips with it.
#
#   bash tests/slurm/two_nodes.sh        # as root, after setup.sh (munge running)
set -u
STATE=${COCKPIT_SLURM_STATE:-/tmp/cockpit-slurm}/two-nodes
mkdir -p "$STATE/spool/ctld" "$STATE/spool/n1" "$STATE/spool/n2" "$STATE/log" || exit 0
rm -f "$STATE/unavailable"
say() { echo "slurm two-node setup: $*"; }
fail() {
    say "not available: $*"
    echo "$*" > "$STATE/unavailable"
    exit 0
}
export SLURM_CONF=$STATE/slurm.conf
up() { [ "$(timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -Ec '^(idle|mixed|allocated)')" -ge 1 ] \
    && [ "$(timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null | grep -Ec ' (idle|mixed|allocated)')" = 2 ]; }
if command -v sinfo >/dev/null && [ -s "$SLURM_CONF" ] && up; then
    say "already up"
    exit 0
fi
[ "$(id -u)" = 0 ] || fail "not root: cannot start slurmctld/slurmd here"
command -v slurmd >/dev/null || fail "slurmd is not installed (run tests/slurm/setup.sh first)"
timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1 || fail "munge does not answer (run tests/slurm/setup.sh first)"
cat > "$SLURM_CONF" <<CONF
# written by cockpit's tests/slurm/two_nodes.sh: two Slurm nodes on one machine
ClusterName=cockpit-ci2
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
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldPort=6827
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName=n1 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=6828 CPUs=1 RealMemory=2000 State=UNKNOWN
NodeName=n2 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=6829 CPUs=1 RealMemory=2000 State=UNKNOWN
PartitionName=two Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! running "$STATE/slurmctld.pid"; then
    timeout 20 slurmctld -i -f "$SLURM_CONF" >"$STATE/slurmctld.out" 2>&1 || fail "slurmctld did not start (see $STATE/slurmctld.out)"
fi
for n in n1 n2; do
    if ! running "$STATE/slurmd-$n.pid"; then
        timeout 20 slurmd -N "$n" -f "$SLURM_CONF" >"$STATE/slurmd-$n.out" 2>&1 \
            || fail "slurmd -N $n did not start (see $STATE/slurmd-$n.out and $STATE/log; this slurmd may lack multiple-slurmd support)"
    fi
done
for _ in $(seq 1 30); do
    if up; then
        say "up: $(timeout 5 sinfo -h -o '%P %N %T')"
        exit 0
    fi
    timeout 5 scontrol update NodeName=n1,n2 State=RESUME >/dev/null 2>&1
    sleep 1
done
fail "the two nodes are not idle after 30 s: $(timeout 5 sinfo -h -N -o '%N %T' 2>&1 | tr '\n' ' ')"
