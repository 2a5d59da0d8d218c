#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, as plain processes (no systemd, no cgroups):
# what the integration test (tests/integration/test_cluster.py) runs the pipeline on, and a
# way to try `snakemake --profile profiles/slurm` without a cluster.
#   scripts/slurm-local.sh start   install what is missing (Debian/Ubuntu, as root), write
#                                  /etc/slurm/slurm.conf, start munged, slurmctld, slurmd,
#                                  wait until the node is idle
#   scripts/slurm-local.sh stop    stop the daemons this script started, and only those,
#                                  and remove the slurm.conf it wrote
#   scripts/slurm-local.sh status  whether they run
# Both are idempotent; exit 3 says SLURM cannot be set up here (not root, no apt-get, or
# the machine has a SLURM configuration of its own), 1 that it failed. The daemons' pids, logs and state live in $HYPERMETA_SLURM_STATE
# (default /run/hypermeta-slurm). No accounting daemon (slurmdbd): `sacct` does not answer,
# so Snakemake must poll with `squeue` (profiles/slurm), which sees a finished job for
# MinJobAge seconds.
set -euo pipefail

STATE=${HYPERMETA_SLURM_STATE:-/run/hypermeta-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by hypermeta scripts/slurm-local.sh"
MIN_JOB_AGE=3600  # finished jobs stay in squeue/scontrol this long (the test reads them)
PACKAGES=(slurmctld slurmd slurm-client munge)

die() {
  echo "slurm-local: $*" >&2
  exit 1
}

cannot() { # SLURM cannot be set up on this machine (exit 3: the test skips, naming why)
  echo "slurm-local: $*" >&2
  exit 3
}

alive() { # alive NAME: the pid in $STATE/NAME.pid runs the program NAME
  local pid
  pid=$(cat "$STATE/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

install_missing() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null ||
    cannot "cannot install ${missing[*]}: this machine has no apt-get; install SLURM and munge with its package manager."
  # The packages' install scripts start their services; without a service manager that
  # fails the install, unless policy-rc.d forbids starting them (exit 101).
  local policy=/usr/sbin/policy-rc.d ours=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1
  fi
  local apt=(apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends)
  local status=0
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${PACKAGES[@]}" >/dev/null 2>&1 ||
    { apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${PACKAGES[@]}" >/dev/null; } || status=$?
  [ -n "$ours" ] && rm -f "$policy"
  [ "$status" = 0 ] || cannot "apt-get could not install ${PACKAGES[*]} (exit $status); run it by hand to see why."
}

write_config() {
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    cannot "$CONF exists and is not this script's: this machine has its own SLURM; use that cluster."
  fi
  local host cpus memory
  host=$(hostname -s)
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc heeds OpenMP's limits
  # below the real total, as slurmd refuses a node that has less than it declares
  memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
  cat >"$CONF" <<EOF
$MARK: a one-node cluster
ClusterName=hypermeta-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=$MIN_JOB_AGE
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return # a munged runs already (ours or the machine's): use it
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  cp /run/munge/munged.pid "$STATE/munged.pid"
}

wait_idle() {
  local state=""
  for _ in $(seq 120); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n 1)
    [ "$state" = idle ] && return
    sleep 0.5
  done
  die "the node did not become idle in 60 s (sinfo says '${state:-nothing}'); see $STATE/slurmctld.log and $STATE/slurmd.log."
}

start() {
  [ "$(id -u)" = 0 ] || cannot "starting a local SLURM cluster needs root (it installs packages and writes $CONF); run it with sudo."
  install_missing
  mkdir -p "$STATE"
  alive slurmctld && alive slurmd && wait_idle && echo "slurm-local: running" && return
  write_config
  start_munge
  alive slurmctld || slurmctld -c -f "$CONF"
  alive slurmd || slurmd -f "$CONF"
  wait_idle
  echo "slurm-local: running (node $(hostname -s); logs in $STATE)"
}

stop() {
  local name pid
  for name in slurmd slurmctld munged; do
    if alive "$name"; then
      pid=$(cat "$STATE/$name.pid")
      kill "$pid"
      for _ in $(seq 50); do
        [ -d "/proc/$pid" ] || break
        sleep 0.2
      done
      [ -d "/proc/$pid" ] && kill -9 "$pid"
    fi
    rm -f "$STATE/$name.pid"
  done
  # With our configuration left and no controller, every SLURM client waits ~9 s for one,
  # and so does every later `snakemake` start (its SLURM plugin asks `scontrol show config`
  # as it loads); start writes it again.
  if [ -e "$CONF" ] && grep -qF "$MARK" "$CONF"; then rm -f "$CONF"; fi
  echo "slurm-local: stopped"
}

status() {
  local name
  for name in munged slurmctld slurmd; do
    if alive "$name"; then echo "$name: running ($(cat "$STATE/$name.pid"))"; else echo "$name: not started here"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: scripts/slurm-local.sh start|stop|status" ;;
esac
