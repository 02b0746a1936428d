#!/usr/bin/env bash
# Start a single-node Slurm 22.05 (Debian 12 packages) on localhost, as root, without systemd.
#   ROOT=<dir>   where config/state/logs go            (default /tmp/cfglab-slurm)
#   AUTH=munge|none                                    (default munge)
#   DBD=0|1      1 = also start MariaDB + slurmdbd so that `sacct` works (default 0)
#   FAKE_CPUS=N  advertise N CPUs instead of $(nproc) (SlurmdParameters=config_overrides)
#   FAKE_GPUS=N  advertise N fake GPUs (gres/gpu backed by dummy files) so --gpus-per-node=N is accepted
# Afterwards:  export SLURM_CONF=$ROOT/etc/slurm.conf
set -euo pipefail
ROOT=${ROOT:-/tmp/cfglab-slurm}; AUTH=${AUTH:-munge}; DBD=${DBD:-0}
HOST=$(hostname -s)
mkdir -p "$ROOT"/{etc,state,log,run} "$ROOT/spool/slurmd-$HOST"
CPUS=${FAKE_CPUS:-$(nproc)}
FAKE_GPUS=${FAKE_GPUS:-0}
EXTRA=""; NODEGRES=""
[ -n "${FAKE_CPUS:-}" ] && EXTRA+=$'SlurmdParameters=config_overrides\n'
if [ "$FAKE_GPUS" -gt 0 ]; then
  mkdir -p "$ROOT/fakegpu"; : > "$ROOT/etc/gres.conf"
  for i in $(seq 0 $((FAKE_GPUS-1))); do touch "$ROOT/fakegpu/gpu$i"; echo "NodeName=$HOST Name=gpu File=$ROOT/fakegpu/gpu$i" >> "$ROOT/etc/gres.conf"; done
  EXTRA+=$'GresTypes=gpu\n'; NODEGRES="Gres=gpu:$FAKE_GPUS"
fi
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
if [ "$AUTH" = munge ]; then AUTHTYPE=auth/munge; CREDTYPE=cred/munge; else AUTHTYPE=auth/none; CREDTYPE=cred/none; fi
if [ "$DBD" = 1 ]; then ACCTLINES=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\nAccountingStoragePort=6819\nJobAcctGatherType=jobacct_gather/linux\nJobAcctGatherFrequency=30'
else ACCTLINES=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'; fi
cat > "$ROOT/etc/slurm.conf" <<CONF
ClusterName=localci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=${AUTHTYPE}
CredType=${CREDTYPE}
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${ROOT}/state
SlurmdSpoolDir=${ROOT}/spool/slurmd-%n
SlurmctldPidFile=${ROOT}/run/slurmctld.pid
SlurmdPidFile=${ROOT}/run/slurmd.pid
SlurmctldLogFile=${ROOT}/log/slurmctld.log
SlurmdLogFile=${ROOT}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
${ACCTLINES}
JobCompType=jobcomp/filetxt
JobCompLoc=${ROOT}/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MpiDefault=none
MailProg=/bin/true
EnforcePartLimits=ALL
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
${EXTRA}NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} ${NODEGRES} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$ROOT/etc/slurm.conf"

if [ "$AUTH" = munge ]; then
  install -d -o munge -g munge -m 0755 /run/munge
  if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid   # forks into background
  fi
  munge -n | unmunge >/dev/null
fi

if [ "$DBD" = 1 ]; then
  install -d -o mysql -g root -m 0755 /run/mysqld
  if ! mariadb -e 'select 1' >/dev/null 2>&1; then
    nohup /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid >"$ROOT/log/mariadb.out" 2>&1 &
    echo $! > "$ROOT/run/mariadbd.launcher.pid"
    for i in $(seq 1 60); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  # fresh StateSaveLocation => job ids restart at 1, so drop old accounting rows to avoid stale sacct hits
  [ -e "$ROOT/state/job_state" ] || mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db_localci'
  # root@localhost authenticates by unix_socket, so slurmdbd (running as root) needs no password
  cat > "$ROOT/etc/slurmdbd.conf" <<CONF
AuthType=${AUTHTYPE}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=${ROOT}/log/slurmdbd.log
PidFile=${ROOT}/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db_localci
CONF
  chmod 600 "$ROOT/etc/slurmdbd.conf"
  nohup slurmdbd -D >"$ROOT/log/slurmdbd.out" 2>&1 &
  echo $! > "$ROOT/run/slurmdbd.launcher.pid"
  for i in $(seq 1 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -i add cluster localci >/dev/null 2>&1 || true
fi

nohup slurmctld -D -i >"$ROOT/log/slurmctld.out" 2>&1 &
echo $! > "$ROOT/run/slurmctld.launcher.pid"
nohup slurmd -D >"$ROOT/log/slurmd.out" 2>&1 &
echo $! > "$ROOT/run/slurmd.launcher.pid"
for i in $(seq 1 120); do
  if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then echo "slurm up (waited $((i/2))s for idle node)"; exit 0; fi
  sleep 0.5
done
echo "slurm did not become idle"; sinfo -N -l || true; tail -20 "$ROOT"/log/*.log; exit 1
