#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, to try `attrcli launch --launcher slurm` (and
# `attrcli run --launcher slurm`) without a real cluster. Debian/Ubuntu, as root.
#
#   scripts/local-slurm.sh          start (install slurm-wlm and munge with apt-get when missing)
#   scripts/local-slurm.sh stop     stop the daemons this script started, remove its state
#   scripts/local-slurm.sh status   exit 0 when `sinfo` answers and the node is up
#
# Idempotent: a cluster that is already up is left alone. The configuration goes to
# /etc/slurm/slurm.conf (where sbatch, sinfo and submitit look) and is marked as this script's;
# an existing slurm.conf that is not ours is never overwritten. State, spool, logs and pid files
# live under $ATTRCLI_SLURM_DIR (default: ${TMPDIR:-/tmp}/attrcli-slurm). On success the script
# prints one line on stdout; everything else goes to stderr.
set -euo pipefail

DIR="${ATTRCLI_SLURM_DIR:-${TMPDIR:-/tmp}/attrcli-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by attrcli scripts/local-slurm.sh"
PARTITION=debug
HOST="$(hostname -s)"

say() { echo "local-slurm: $*" >&2; }
die() { say "error: $*"; exit 1; }

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
    for daemon in slurmd slurmctld munged; do
        if pid_alive "$DIR/$daemon.pid"; then
            kill "$(cat "$DIR/$daemon.pid")" 2>/dev/null || true
            for _ in $(seq 50); do pid_alive "$DIR/$daemon.pid" || break; sleep 0.1; done
            say "stopped $daemon"
        fi
    done
    if [[ -f "$CONF" ]] && grep -qxF "$MARK" "$CONF"; then rm -f "$CONF"; fi
    rm -rf "$DIR"
}

node_ready() {
    # The node's compact state (idle, mix, alloc) without a trailing '*' (not responding).
    local state
    state="$(timeout 10 sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -1)" || return 1
    [[ "$state" == idle || "$state" == mix || "$state" == alloc ]]
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get"
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2
}

start_munge() {
    if timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
        return
    fi
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key >&2
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- munged >&2 || die "munged did not start (see /var/log/munge/munged.log)"
    # munged writes its pid file as the munge user; keep a copy where stop() looks for it.
    for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$DIR/munged.pid" 2>/dev/null || true
    timeout 5 munge -n </dev/null | timeout 5 unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

write_conf() {
    local cpus memory
    cpus="$(nproc)"
    # RealMemory (MB) a little below the machine's, or slurmd marks the node invalid.
    memory="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
    if [[ -f "$CONF" ]] && ! grep -qxF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    mkdir -p /etc/slurm "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF.tmp" <<EOF
$MARK
ClusterName=attrcli-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    mv -f "$CONF.tmp" "$CONF"
    CPUS=$cpus MEMORY=$memory
}

start() {
    [[ "$(id -u)" == 0 ]] || die "needs root (it installs packages and starts munged, slurmctld and slurmd)"
    install
    mkdir -p "$DIR"
    write_conf
    start_munge
    pid_alive "$DIR/slurmctld.pid" || slurmctld -c >&2 || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
    pid_alive "$DIR/slurmd.pid" || slurmd >&2 || die "slurmd did not start (see $DIR/log/slurmd.log)"
    local waited=0
    until node_ready; do
        (( waited < 60 )) || die "node $HOST is not idle after 60 s: $(sinfo -N 2>&1 | tail -1) (logs in $DIR/log)"
        # A node that registered before its slurmd was ready may be left down: resume it.
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        sleep 1; waited=$((waited + 1))
    done
    local ran
    ran="$(timeout 60 srun -N1 -n1 -t 1 hostname 2>&1)" || die "srun hostname failed: $ran"
    [[ "$ran" == "$HOST"* ]] || die "srun hostname printed '$ran', expected $HOST"
    echo "local SLURM up: node $HOST ($CPUS CPUs, ${MEMORY} MB), partition $PARTITION, conf $CONF, state in $DIR; stop with $0 stop"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) node_ready ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
