#!/usr/bin/env bash
# A real single-node Slurm (munged + slurmctld + slurmd with 4 stand-in GPUs)
# and a forced-command sshd on 127.0.0.1, all state under one directory, no
# systemd. Derived from the setup verified on Debian 12 (slurm-wlm 22.05.8,
# munge 0.5.15, OpenSSH 9.2p1); the facts it relies on are in the comments below.
#
#   scripts/dev-cluster.sh up|down|status DIR      (all idempotent)
#
# After "up":  source DIR/env.sh  ->  SLURM_CONF NODE SSH_PORT SSH_USER SSH_KEY
#   SSH_OPTS SSH_TARGET;  sinfo/sbatch/squeue work;  ssh $SSH_OPTS $SSH_TARGET 'cmd'
#   runs DIR/ssh/forced.sh (an echo stub), so the harness does not depend on
#   cloud_interface.sh. env.sh is written only once everything answers.
# "down" cancels every job, waits for the queue to empty, then stops exactly
# the daemons it started (pid files under DIR). "status" exits 0 only when
# all daemons run and the node is usable.
#
# Slurm accounting: when mariadbd and slurmdbd are installed, the first `up` of
# a DIR also starts MariaDB (its own datadir, socket and 127.0.0.1 port under
# DIR/mysql) and slurmdbd, and slurm.conf uses accounting_storage/slurmdbd with
# AccountingStorageTRES=gres/gpu and jobacct_gather/linux; `up` registers the
# cluster, two accounts (saia_a, saia_b) and the users' associations. If they
# are missing or fail, the cluster comes up without accounting, as before, and
# says so. DIR/accounting ("slurmdbd" or "none") and env.sh's
# DEV_ACCOUNTING tell which. DEV_SLURMDBD=0 switches it off, =1 makes a
# failure fatal; unset: on when installed. It adds ~10-20 s to a first `up`.
# With accounting, job memory is enforced by task/cgroup (a job above --mem ends
# OUT_OF_MEMORY) where /sys/fs/cgroup/memory is a writable cgroup v1 hierarchy,
# else by jobacct_gather (FAILED 0:9); DIR/memory ("cgroup" or "none") tells
# which, DEV_MEMCG=0 switches it off, =1 makes its absence fatal.
#
# Env overrides: SLURMCTLD_PORT (6817) SLURMD_PORT (6818) SSH_PORT (2222)
#   SLURMDBD_PORT (6819) DEV_MYSQL_PORT (6820)
#   SSH_USER (the invoking user) DEV_CPUS (16) DEV_GPUS (4) DEV_WAIT (seconds
#   each of Slurm and sshd may take to answer: 30). A port may be
#   "auto": a free one outside the kernel's ephemeral range, where no outgoing
#   connection takes it. A daemon that finds its port taken is started again on
#   such a port (up to 3 times; env.sh and DIR/ports tell the ports in use). On
#   a failure the tail of the failing daemon's log is printed: callers may
#   delete DIR right after.
# Needs root (daemons, mknod, /run/sshd). Nothing is written outside DIR except
# /run/sshd (sshd's compiled-in privilege separation directory) and, with
# task/cgroup, the jobs' cgroups under /sys/fs/cgroup/memory/slurm_NODE (Slurm
# removes each when its job ends; the empty slurm_NODE stays); no accounts are created.
set -euo pipefail

usage() { echo "usage: $0 up|down|status DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
ACTION=$1
D=$(realpath -m "$2")
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
SSH_PORT=${SSH_PORT:-2222}
DBD_PORT=${SLURMDBD_PORT:-6819}
MYSQL_PORT=${DEV_MYSQL_PORT:-6820}
SSH_USER=${SSH_USER:-$(id -un)}
# A cluster keeps the ports and user it was first brought up with (env
# overrides apply to a new DIR only), so `up` stays idempotent.
if [[ -s $D/ports ]]; then
  # shellcheck disable=SC1091
  source "$D/ports"
fi
# The kernel's ephemeral range: ports it hands to outgoing connections.
read -r EPH_LO EPH_HI </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { EPH_LO=32768 EPH_HI=60999; }
port_used() { # anything bound to port $1, listening or connected (hex in /proc/net/tcp*)
  grep -q "$(printf ':%04X ' "$1")" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
pick_port() { # a free port in 10000-19999 outside the ephemeral range, not one of ours already
  local p _
  for _ in $(seq 200); do
    p=$((10000 + RANDOM % 10000))
    ((p >= EPH_LO && p <= EPH_HI)) && continue
    [[ $p == "$CTLD_PORT" || $p == "$SLURMD_PORT" || $p == "$SSH_PORT" || $p == "$DBD_PORT" || $p == "$MYSQL_PORT" ]] && continue
    port_used "$p" || { echo "$p"; return 0; }
  done
  echo "dev-cluster: no free port in 10000-19999 outside the ephemeral range $EPH_LO-$EPH_HI" >&2
  return 1
}
[[ $CTLD_PORT != auto ]] || CTLD_PORT=$(pick_port)
[[ $SLURMD_PORT != auto ]] || SLURMD_PORT=$(pick_port)
[[ $SSH_PORT != auto ]] || SSH_PORT=$(pick_port)
[[ $DBD_PORT != auto ]] || DBD_PORT=$(pick_port)
[[ $MYSQL_PORT != auto ]] || MYSQL_PORT=$(pick_port)
save_ports() {
  printf 'CTLD_PORT=%d\nSLURMD_PORT=%d\nSSH_PORT=%d\nDBD_PORT=%d\nMYSQL_PORT=%d\nSSH_USER=%q\n' \
    "$CTLD_PORT" "$SLURMD_PORT" "$SSH_PORT" "$DBD_PORT" "$MYSQL_PORT" "$SSH_USER" >"$D/ports.tmp"
  mv "$D/ports.tmp" "$D/ports"
}
CPUS=${DEV_CPUS:-16}
WAIT=${DEV_WAIT:-30}
GPUS=${DEV_GPUS:-4}
NODE=$(hostname -s)
S=$D/ssh
M=$D/mysql
ACCOUNTS=(saia_a saia_b)
export SLURM_CONF=$D/slurm.conf

# A running PID exists and is not a zombie: PID 1 on these VMs reaps orphans
# ~2 s late and `kill -0` succeeds on a zombie.
running() { [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }
alive() { [[ -s $1 ]] && running "$(cat "$1")"; }
stop() { # stop the daemon whose pid is in file $1 (only that PID): TERM, then KILL after 10 s
  alive "$1" || { rm -f "$1"; return 0; }
  local p; p=$(cat "$1")
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do running "$p" || break; sleep 0.1; done
  if running "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
  rm -f "$1"
}
wait_for() { # wait_for SECONDS DESCRIPTION CMD...   (bounded; CMD is an argv, never eval'd)
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  while ((SECONDS < end)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "dev-cluster: timeout after ${secs}s waiting for: $what" >&2
  return 1
}
# Logs: what a daemon wrote since a byte offset taken before it started.
size() { stat -c %s "$1" 2>/dev/null || echo 0; }
bind_failed() { # bind_failed LOG OFFSET: the daemon found its port taken
  tail -c +$(($2 + 1)) "$1" 2>/dev/null | grep -qiE 'address already in use|cannot bind any address'
}
died() { # died LOG OFFSET: the daemon logged a fatal error (no use waiting for it)
  tail -c +$(($2 + 1)) "$1" 2>/dev/null | grep -qE '^(\[[^]]*\] )?fatal:'
}
show_log() { # the tail of a daemon's log on stderr
  [[ -s $1 ]] || { echo "dev-cluster: $1 is empty or missing" >&2; return 0; }
  echo "dev-cluster: last lines of $1:" >&2
  tail -n 12 "$1" | sed 's/^/  | /' >&2
}
until_or_bind_failure() { # SECONDS DESCRIPTION CMD... with LOGS=(log offset ...): 0 ok, 2 a port taken, 1 failed
  local secs=$1 what=$2 i; shift 2
  local end=$((SECONDS + secs))
  while ((SECONDS < end)); do
    "$@" >/dev/null 2>&1 && return 0
    for ((i = 0; i < ${#LOGS[@]}; i += 2)); do
      bind_failed "${LOGS[i]}" "${LOGS[i + 1]}" && return 2
      died "${LOGS[i]}" "${LOGS[i + 1]}" && { echo "dev-cluster: a daemon died waiting for: $what" >&2; return 1; }
    done
    sleep 0.2
  done
  echo "dev-cluster: timeout after ${secs}s waiting for: $what" >&2
  return 1
}
node_usable() { [[ "$(sinfo -h -n "$NODE" -o %t 2>/dev/null)" =~ ^(idle|mix|alloc)$ ]]; }
queue_empty() { local q; q=$(squeue -h -o %i) && [[ -z $q ]]; }
ssh_opts() {
  echo "-p $SSH_PORT -i $S/client_key -o IdentitiesOnly=yes -o BatchMode=yes" \
    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=$S/known_hosts -o LogLevel=ERROR"
}
ssh_ok() { # bounded: whatever else holds the port may accept and never speak SSH
  # shellcheck disable=SC2046
  timeout 10 ssh $(ssh_opts) "$SSH_USER@127.0.0.1" keep-alive | grep -q 'SSH_ORIGINAL_COMMAND=\[keep-alive\]'
}

# --- Memory enforcement: task/cgroup on the cgroup v1 memory controller -------
# Slurm names a job OUT_OF_MEMORY only when its step's memory cgroup saw an OOM
# kill (task/cgroup, ConstrainRAMSpace); jobacct_gather's OverMemoryKill alone
# sends SIGKILL and Slurm records FAILED 0:9. Slurm 22.05's cgroup/v2 plugin
# wants the controllers delegated to it (systemd or a cgroup of its own with
# cgroup.subtree_control); where /sys/fs/cgroup is a v1 (or hybrid) mount with a
# writable memory hierarchy, cgroup/v1 works without systemd. Its cgroups are
# /sys/fs/cgroup/memory/slurm_NODE/uid_N/job_N, NODE the host's short name, so
# the same on every cluster of the machine: each cluster numbers its jobs from a
# FirstJobId of its own so that two clusters never share a job's cgroup (Slurm
# itself serialises their creation and removal with flock on the hierarchy's root).
MEMCG=/sys/fs/cgroup/memory
memcg_writable() { # the v1 memory hierarchy's root is mounted here and a cgroup can be made in it
  [[ -e $MEMCG/release_agent && -e $MEMCG/memory.limit_in_bytes ]] || return 1
  local probe=$MEMCG/saia-dev-probe.$$
  mkdir "$probe" 2>/dev/null || return 1
  rmdir "$probe"
}
choose_memory() { # the first `up` of DIR decides: "cgroup" or "none" in DIR/memory
  [[ -s $D/memory ]] && return 0
  local want=${DEV_MEMCG:-auto}
  if [[ $want == 0 ]]; then
    echo none >"$D/memory"
  elif memcg_writable; then
    echo cgroup >"$D/memory"
  else
    [[ $want != 1 ]] || { echo "dev-cluster: DEV_MEMCG=1 but $MEMCG is no writable cgroup v1 memory hierarchy" >&2; exit 1; }
    echo none >"$D/memory"
    echo "dev-cluster: no writable cgroup v1 memory hierarchy at $MEMCG: a job above --mem ends FAILED, not OUT_OF_MEMORY" >&2
  fi
}
memory_enforced() { [[ $(cat "$D/memory" 2>/dev/null) == cgroup && $(cat "$D/accounting" 2>/dev/null) == slurmdbd ]]; }
task_plugin() { if memory_enforced; then echo task/cgroup; else echo task/none; fi; }
first_job_id() { # a per-cluster start for job ids (see above), kept in DIR/first_job_id
  [[ -s $D/first_job_id ]] || echo $((1000 + (RANDOM * 32768 + RANDOM) % 60000000)) >"$D/first_job_id"
  cat "$D/first_job_id"
}
write_cgroup_conf() {
  cat >"$D/cgroup.conf.tmp" <<EOF
# Generated by scripts/dev-cluster.sh: memory limits only (task/cgroup), cgroup v1.
CgroupPlugin=cgroup/v1
CgroupAutomount=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainCores=no
ConstrainDevices=no
EOF
  mv "$D/cgroup.conf.tmp" "$D/cgroup.conf"
}

select_params() { # memory is a consumable resource with accounting: jobacct_gather's OverMemoryKill needs job limits
  if [[ $(cat "$D/accounting" 2>/dev/null) == slurmdbd ]]; then echo CR_Core_Memory; else echo CR_Core; fi
}

memory_kill_conf() { # who kills a job above its --mem (slurmd refuses both at once)
  if memory_enforced; then
    echo "# A job above its --mem: its memory cgroup's OOM killer (task/cgroup, cgroup.conf): OUT_OF_MEMORY 0:125."
  else
    echo "# A job above its --mem is killed by jobacct_gather (SIGKILL: Slurm records FAILED, exit 0:9)."
    echo "JobAcctGatherParams=OverMemoryKill"
  fi
}

accounting_conf() { # slurm.conf's accounting lines for DIR/accounting's mode
  if [[ $(cat "$D/accounting" 2>/dev/null) == slurmdbd ]]; then
    cat <<EOF
# Slurm's own accounting (slurmdbd + MariaDB under $M): sacct/sreport work.
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
$(memory_kill_conf)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# With auth/munge this is the munge socket for talking to slurmdbd (AuthInfo is not used there).
AccountingStoragePass=$D/munge/munge.socket
AccountingStorageTRES=gres/gpu
EOF
  else
    cat <<EOF
# No AccountingStorageTRES=gres/gpu: without slurmdbd slurmctld refuses it
# (fatal: "slurmdbd is required to run with TRES gres/gpu"). GPU counts are
# read from squeue %b (tres-per-node, e.g. gres:gpu:4) and scontrol TresPerNode.
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
EOF
  fi
}

write_slurm_conf() {
  # Node shape from `slurmd -C`, except CPUs: we declare $CPUS single-thread
  # cores so that many 1-CPU jobs run at once on a 2-core VM. slurmd accepts a
  # configuration above the hardware only with SlurmdParameters=config_overrides
  # (verified: the node registers idle, not drained "Low socket*core*thread count").
  local mem
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
  mem=${mem:-1024}
  cat >"$SLURM_CONF.tmp" <<EOF
# Generated by scripts/dev-cluster.sh for a throwaway test cluster.
ClusterName=saiadev
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=$(task_plugin)
FirstJobId=$(first_job_id)
SelectType=select/cons_tres
SelectTypeParameters=$(select_params)
SlurmdParameters=config_overrides
GresTypes=gpu
$(accounting_conf)
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
# A job waiting for GPUs blocks later jobs of the partition (reason Priority)
# until the next backfill pass: every 30 s by default, every 2 s here.
SchedulerParameters=bf_interval=2
# Without it a job asks for the whole node's memory (mem=0), which backfill
# plans as exclusive. Note backfill still reserves the node for a job waiting
# for GPUs: later jobs start only if their time limit ends before it starts.
DefMemPerCPU=100
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$SLURM_CONF.tmp" "$SLURM_CONF"
  if memory_enforced; then write_cgroup_conf; else rm -f "$D/cgroup.conf"; fi
  # GPUs need device files: a file-less gpu GRES is dropped by slurmd and the
  # node goes INVAL; regular files are rejected. Character devices with the
  # numbers of /dev/null work (real-infra.md section 7).
  local i
  for ((i = 0; i < GPUS; i++)); do
    [[ -c $D/fakegpu$i ]] || mknod "$D/fakegpu$i" c 1 3
  done
  cat >"$D/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=$D/fakegpu[0-$((GPUS - 1))]
EOF
}

write_sshd() {
  [[ -s $S/host_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f "$S/host_ed25519"
  [[ -s $S/client_key ]] || ssh-keygen -q -t ed25519 -N '' -f "$S/client_key" -C "saia-dev-cluster"
  if [[ ! -s $S/forced.sh ]]; then
    cat >"$S/forced.sh.tmp" <<'EOF'
#!/bin/bash
# Echo stub for the harness: shows what the forced command receives.
printf 'SSH_ORIGINAL_COMMAND=[%s]\n' "$SSH_ORIGINAL_COMMAND"
if [[ $SSH_ORIGINAL_COMMAND == read-stdin* ]]; then printf 'STDIN=[%s]\n' "$(cat)"; fi
EOF
    chmod 755 "$S/forced.sh.tmp"
    mv "$S/forced.sh.tmp" "$S/forced.sh"
  fi
  # The default key's line; tests append their own keys (tests/support/cluster.py).
  local line
  line="restrict,command=\"$S/forced.sh\" $(cat "$S/client_key.pub")"
  touch "$S/authorized_keys"
  grep -qxF "$line" "$S/authorized_keys" || echo "$line" >>"$S/authorized_keys"
  chmod 600 "$S/authorized_keys"
  # Forwarding, pty and agent stay at sshd's permissive defaults, X11 is
  # switched on and an sftp subsystem is defined, all on purpose: the tests
  # prove that the key's `restrict` and forced command block them, as they
  # must on a centre's own sshd.
  cat >"$S/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $S/host_ed25519
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin forced-commands-only
AllowUsers $SSH_USER
MaxStartups 200:30:400
MaxSessions 100
X11Forwarding yes
Subsystem sftp internal-sftp
# sshd runs the forced command through the user's shell, and bash sources
# \$HOME/.bashrc even for \`bash -c\` from sshd: on these machines root's .bashrc
# runs \`pyenv init\` (~100 processes, 0.1-2 s per request under load). A HOME of
# our own keeps every session's start-up cost to the forced command itself.
SetEnv HOME=$S/home
EOF
  mkdir -p "$S/home"
}

start_slurm() { # 0: the node is usable; 2: a port was taken (new ones chosen); 1: failed
  local ctld_log=$D/log/slurmctld.log slurmd_log=$D/log/slurmd.log rc=0
  LOGS=("$ctld_log" "$(size "$ctld_log")" "$slurmd_log" "$(size "$slurmd_log")")
  alive "$D/slurmctld.pid" || slurmctld
  alive "$D/slurmd.pid" || slurmd -N "$NODE"
  until_or_bind_failure "$WAIT" "node $NODE idle" node_usable || rc=$?
  ((rc != 0)) || return 0
  if ((rc == 2)); then
    stop "$D/slurmd.pid"
    stop "$D/slurmctld.pid"
    local old="$CTLD_PORT/$SLURMD_PORT"
    if bind_failed "${LOGS[0]}" "${LOGS[1]}"; then CTLD_PORT=$(pick_port); fi
    if bind_failed "${LOGS[2]}" "${LOGS[3]}"; then SLURMD_PORT=$(pick_port); fi
    echo "dev-cluster: Slurm's ports $old: one was taken, trying $CTLD_PORT/$SLURMD_PORT" >&2
    save_ports
    write_slurm_conf
    return 2
  fi
  show_log "$ctld_log"
  show_log "$slurmd_log"
  echo "dev-cluster: Slurm did not come up: node $NODE not idle (logs above)" >&2
  return 1
}

start_sshd() { # 0: ssh reaches the forced command; 2: its port was taken (a new one chosen); 1: failed
  local rc=0
  write_sshd
  /usr/sbin/sshd -t -f "$S/sshd_config" || return 1
  LOGS=("$S/sshd.log" "$(size "$S/sshd.log")")
  alive "$S/sshd.pid" || /usr/sbin/sshd -f "$S/sshd_config" -E "$S/sshd.log"
  until_or_bind_failure "$WAIT" "ssh to the forced command" ssh_ok || rc=$?
  ((rc != 0)) || return 0
  if ((rc == 2)); then
    stop "$S/sshd.pid"
    local old=$SSH_PORT
    SSH_PORT=$(pick_port)
    echo "dev-cluster: sshd's port $old was taken, trying $SSH_PORT" >&2
    save_ports
    return 2
  fi
  show_log "$S/sshd.log"
  if [[ $(getent shadow "$SSH_USER" | cut -d: -f2) == '!'* ]]; then
    echo "dev-cluster: $SSH_USER's password is locked ('!'), which sshd rejects with UsePAM no" >&2
  fi
  echo "dev-cluster: sshd did not answer on port $SSH_PORT (log above)" >&2
  return 1
}

# --- Slurm accounting: MariaDB + slurmdbd, both under DIR ---------------------
mysql_cmd() { mariadb --no-defaults --socket="$M/mysqld.sock" -u root "$@"; }
mysql_ok() { mysql_cmd -e 'SELECT 1'; }
dbd_ok() { sacctmgr -n -P show cluster format=cluster; }
dbd_installed() { command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null; }

write_slurmdbd_conf() {
  mkdir -p "$M"
  [[ -s $M/pass ]] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$M/pass"; chmod 600 "$M/pass"; }
  cat >"$D/slurmdbd.conf.tmp" <<EOF
# Generated by scripts/dev-cluster.sh: slurmdbd for the throwaway test cluster.
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.socket
DbdAddr=127.0.0.1
DbdHost=$NODE
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$D/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$(cat "$M/pass")
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$D/slurmdbd.conf.tmp" # slurmdbd refuses a readable file holding a password
  mv "$D/slurmdbd.conf.tmp" "$D/slurmdbd.conf"
}

start_mysql() { # 0: MariaDB answers on its socket; 2: its port was taken; 1: failed
  local rc=0 log=$M/mariadbd.log
  mkdir -p "$M"
  if [[ ! -d $M/data/mysql ]]; then
    rm -rf "$M/data"
    mariadb-install-db --no-defaults --user=root --datadir="$M/data" --auth-root-authentication-method=socket \
      --skip-test-db >"$M/install.log" 2>&1 || { show_log "$M/install.log"; return 1; }
  fi
  LOGS=("$log" "$(size "$log")")
  if ! alive "$M/mariadbd.pid"; then
    # No option files (--no-defaults): nothing of the host's /etc/mysql applies.
    setsid mariadbd --no-defaults --user=root --datadir="$M/data" --socket="$M/mysqld.sock" \
      --port="$MYSQL_PORT" --bind-address=127.0.0.1 --pid-file="$M/mariadbd.pid" --log-error="$log" \
      --innodb-buffer-pool-size=32M --innodb-log-file-size=16M --skip-name-resolve </dev/null >/dev/null 2>&1 &
    disown
  fi
  until_or_bind_failure "$WAIT" "MariaDB on $M/mysqld.sock" mysql_ok || rc=$?
  if ((rc == 0)); then
    mysql_cmd -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$M/pass")';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || return 1
    return 0
  fi
  if ((rc == 2)) || grep -qi 'Do you already have another .* running' "$log" 2>/dev/null; then
    stop "$M/mariadbd.pid"
    local old=$MYSQL_PORT
    MYSQL_PORT=$(pick_port)
    echo "dev-cluster: MariaDB's port $old was taken, trying $MYSQL_PORT" >&2
    save_ports
    write_slurmdbd_conf
    return 2
  fi
  show_log "$log"
  echo "dev-cluster: MariaDB did not start (log above)" >&2
  return 1
}

start_slurmdbd() { # 0: sacctmgr answers; 2: its port was taken; 1: failed
  local rc=0 log=$D/log/slurmdbd.log
  LOGS=("$log" "$(size "$log")")
  alive "$D/slurmdbd.pid" || slurmdbd
  until_or_bind_failure "$WAIT" "slurmdbd on port $DBD_PORT" dbd_ok || rc=$?
  ((rc != 0)) || return 0
  if ((rc == 2)); then
    stop "$D/slurmdbd.pid"
    local old=$DBD_PORT
    DBD_PORT=$(pick_port)
    echo "dev-cluster: slurmdbd's port $old was taken, trying $DBD_PORT" >&2
    save_ports
    write_slurmdbd_conf
    write_slurm_conf
    return 2
  fi
  show_log "$log"
  echo "dev-cluster: slurmdbd did not answer (log above)" >&2
  return 1
}

start_accounting() { # MariaDB, slurmdbd and the cluster's associations; 1 on any failure
  write_slurmdbd_conf
  retry start_mysql || return 1
  retry start_slurmdbd || return 1
  local users=("$SSH_USER") u
  [[ $SSH_USER == root ]] || users+=(root)
  # sacctmgr -i: no prompt; adding what exists already is a no-op (exit 1, "Nothing new added").
  sacctmgr -i add cluster saiadev >/dev/null 2>&1 || true
  sacctmgr -i add account "$(IFS=,; echo "${ACCOUNTS[*]}")" cluster=saiadev \
    description=saia-dev organization=saia-dev >/dev/null 2>&1 || true
  for u in "${users[@]}"; do
    sacctmgr -i add user "$u" account="$(IFS=,; echo "${ACCOUNTS[*]}")" defaultaccount="${ACCOUNTS[0]}" \
      cluster=saiadev >/dev/null 2>&1 || true
  done
  [[ -n $(sacctmgr -n -P show assoc cluster=saiadev user="$SSH_USER" account="${ACCOUNTS[1]}" format=account) ]] || {
    echo "dev-cluster: sacctmgr did not record the associations" >&2
    return 1
  }
}

choose_accounting() { # the first `up` of DIR decides: "slurmdbd" or "none" in DIR/accounting
  [[ -s $D/accounting ]] && return 0
  local want=${DEV_SLURMDBD:-auto}
  if [[ $want == 0 ]]; then
    echo none >"$D/accounting"
    echo "dev-cluster: Slurm accounting off (DEV_SLURMDBD=0)" >&2
    return 0
  fi
  if ! dbd_installed; then
    [[ $want != 1 ]] || { echo "dev-cluster: DEV_SLURMDBD=1 but slurmdbd or mariadb-server is not installed" >&2; exit 1; }
    echo none >"$D/accounting"
    echo "dev-cluster: slurmdbd or mariadb-server not installed: cluster without Slurm accounting" >&2
    return 0
  fi
  local t0=$SECONDS
  echo slurmdbd >"$D/accounting"
  write_slurm_conf # sacctmgr reads AccountingStorageHost/Port from it
  if start_accounting; then
    echo "dev-cluster: Slurm accounting up (slurmdbd, MariaDB) in $((SECONDS - t0))s"
    return 0
  fi
  stop "$D/slurmdbd.pid"
  stop "$M/mariadbd.pid"
  [[ $want != 1 ]] || { echo "dev-cluster: DEV_SLURMDBD=1 and Slurm accounting failed (above)" >&2; exit 1; }
  echo none >"$D/accounting"
  write_slurm_conf
  echo "dev-cluster: Slurm accounting failed (above): cluster without Slurm accounting" >&2
}

retry() { # retry FUNCTION: again while it reports a taken port (2), at most 3 times
  local attempt rc
  for attempt in 1 2 3; do
    rc=0
    "$1" || rc=$?
    ((rc == 2)) || return "$rc"
  done
  echo "dev-cluster: $1: ports taken $attempt times in a row, giving up" >&2
  return 1
}

up() {
  command -v slurmctld >/dev/null || { echo "dev-cluster: slurmctld not found (run scripts/setup.sh)" >&2; exit 1; }
  getent passwd "$SSH_USER" >/dev/null || { echo "dev-cluster: no such user: $SSH_USER" >&2; exit 1; }
  mkdir -p "$D"/{munge,state,spool,log,ssh}
  chmod 755 "$D" "$D/munge" "$D/ssh"
  [[ -s $D/ports ]] || save_ports
  # --- munge (socket dir must be 0755; key 0400)
  [[ -s $D/munge/munge.key ]] || { head -c 1024 /dev/urandom >"$D/munge/munge.key"; chmod 400 "$D/munge/munge.key"; }
  alive "$D/munge/munged.pid" || munged --socket="$D/munge/munge.socket" \
    --key-file="$D/munge/munge.key" --pid-file="$D/munge/munged.pid" \
    --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed" ||
    { show_log "$D/munge/munged.log"; echo "dev-cluster: munged did not start (log above)" >&2; exit 1; }
  # --- Slurm accounting (optional), then Slurm (SLURM_CONF is honoured by the
  # daemons and every client command, slurmdbd reads slurmdbd.conf next to it)
  # Memory enforcement: decided with the first slurm.conf (a cluster older than it keeps none).
  if [[ ! -s $D/memory && -s $SLURM_CONF ]]; then echo none >"$D/memory"; else choose_memory; fi
  if [[ -s $D/accounting ]]; then
    [[ -s $SLURM_CONF ]] || write_slurm_conf
    if [[ $(cat "$D/accounting") == slurmdbd ]]; then start_accounting || exit 1; fi
  elif [[ -s $SLURM_CONF ]]; then
    echo none >"$D/accounting" # a cluster first brought up before accounting existed
  else
    choose_accounting
  fi
  [[ -s $SLURM_CONF ]] || write_slurm_conf
  retry start_slurm || exit 1
  # --- sshd, logging in $SSH_USER with forced commands only
  mkdir -p /run/sshd && chmod 755 /run/sshd
  retry start_sshd || exit 1
  cat >"$D/env.sh.tmp" <<EOF
export SLURM_CONF=$SLURM_CONF
export NODE=$NODE
export SSH_PORT=$SSH_PORT SSH_USER=$SSH_USER SSH_KEY=$S/client_key
export SSH_TARGET=$SSH_USER@127.0.0.1
export SSH_OPTS="$(ssh_opts)"
export DEV_ACCOUNTING=$(cat "$D/accounting")
EOF
  mv "$D/env.sh.tmp" "$D/env.sh"
  echo "dev-cluster: ready: source $D/env.sh"
}

down() {
  rm -f "$D/env.sh"
  if alive "$D/slurmctld.pid"; then # jobs first: slurmstepd outlives slurmd
    local ids
    if ids=$(squeue -h -o %i 2>/dev/null) && [[ -n $ids ]]; then
      # shellcheck disable=SC2086
      scancel $ids || true
      wait_for 60 "the queue to empty" queue_empty || true
    fi
  fi
  stop "$D/slurmd.pid"
  stop "$D/slurmctld.pid" # SIGTERM: slurmctld saves its state
  stop "$D/slurmdbd.pid"
  stop "$M/mariadbd.pid"
  stop "$D/munge/munged.pid"
  stop "$S/sshd.pid"
  echo "dev-cluster: down: $D"
}

status() {
  local rc=0 name pidfile names=(munged slurmctld slurmd sshd)
  [[ $(cat "$D/accounting" 2>/dev/null) != slurmdbd ]] || names+=(mariadbd slurmdbd)
  for name in "${names[@]}"; do
    case $name in
      munged) pidfile=$D/munge/munged.pid ;;
      sshd) pidfile=$S/sshd.pid ;;
      mariadbd) pidfile=$M/mariadbd.pid ;;
      *) pidfile=$D/$name.pid ;;
    esac
    if alive "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: stopped"; rc=3; fi
  done
  if [[ $rc -eq 0 ]]; then
    sinfo -h -n "$NODE" -o '%N %t cpus=%c gres=%G' || rc=3
    node_usable || { echo "node $NODE not usable"; rc=3; }
    [[ -s $D/env.sh ]] || { echo "env.sh missing"; rc=3; }
  fi
  return $rc
}

case $ACTION in
  up) up ;;
  down) down ;;
  status) status ;;
  *) usage ;;
esac
