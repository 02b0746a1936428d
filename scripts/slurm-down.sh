#!/usr/bin/env bash
# Stop what slurm-up.sh started (only the PIDs it recorded; munged/mariadbd only if STOP_MUNGE/STOP_DB != 0).
ROOT=${ROOT:-/tmp/cfglab-slurm}
export SLURM_CONF="$ROOT/etc/slurm.conf"
scontrol shutdown >/dev/null 2>&1 || true          # slurmctld + slurmd exit cleanly
stop_pid() { local pid=$1; kill -0 "$pid" 2>/dev/null || return 0
  for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill "$pid" 2>/dev/null; for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true; }
for d in slurmd slurmctld; do [ -f "$ROOT/run/$d.launcher.pid" ] && stop_pid "$(cat "$ROOT/run/$d.launcher.pid")"; done
if [ -f "$ROOT/run/slurmdbd.launcher.pid" ]; then kill "$(cat "$ROOT/run/slurmdbd.launcher.pid")" 2>/dev/null; stop_pid "$(cat "$ROOT/run/slurmdbd.launcher.pid")"; fi
if [ "${STOP_DB:-1}" != 0 ] && [ -f "$ROOT/run/mariadbd.launcher.pid" ]; then kill "$(cat "$ROOT/run/mariadbd.launcher.pid")" 2>/dev/null; stop_pid "$(cat "$ROOT/run/mariadbd.launcher.pid")"; fi
if [ "${STOP_MUNGE:-1}" != 0 ] && [ -f /run/munge/munged.pid ]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
echo stopped
