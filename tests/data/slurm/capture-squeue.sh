#!/usr/bin/env bash
# Re-captures tests/data/slurm/squeue_*.txt with saia_ctl.slurm.SQUEUE_FORMAT (and
# SLURM_TIME_FORMAT=%s, as RealSlurm runs squeue) on a fresh private dev cluster whose
# job ids start at 1 (16 CPUs, 4 GPUs, no accounting). Slow: ~2.5 min (a 1-minute job
# runs past its time limit).   tests/data/slurm/capture-squeue.sh DIR   (DIR must not exist)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
D=$1
OUT=$REPO/tests/data/slurm
[[ ! -e $D ]] || { echo "capture: $D exists" >&2; exit 1; }
mkdir -p "$D"
echo 1 >"$D/first_job_id"
FORMAT=$("$REPO/.venv/bin/python" -c 'from saia_ctl.slurm import SQUEUE_FORMAT; print(SQUEUE_FORMAT)')
trap '"$REPO/scripts/dev-cluster.sh" down "$D" >/dev/null' EXIT
SLURMCTLD_PORT=auto SLURMD_PORT=auto SSH_PORT=auto DEV_SLURMDBD=0 DEV_MEMCG=0 "$REPO/scripts/dev-cluster.sh" up "$D"
# shellcheck disable=SC1091
source "$D/env.sh"
export SLURM_TIME_FORMAT=%s
q() { squeue -h -t all -o "$FORMAT"; }
sub() { sbatch --parsable -o /dev/null "$@" >/dev/null; }
for i in 1 2 3 4; do sub -J "cap-run$i" -t 5 --wrap 'sleep 600'; done
sub -J cap-gpu4 -t 5 --gres=gpu:4 --wrap 'sleep 600'
sub -J cap-pend -t 5 --gres=gpu:1 --wrap 'sleep 600'
sub -J cap-timeout -t 1 --wrap 'sleep 600'
sub -J 'cap-weird|name with spaces' -t 5 --wrap 'sleep 600'
sleep 10
q >"$OUT/squeue_running_pending.txt"
scancel -n cap-run1
scancel -n cap-run2
for _ in $(seq 50); do s=$(q); grep -q '|COMPLETING|' <<<"$s" && break; sleep 0.1; done
echo "$s" >"$OUT/squeue_completing.txt"
for _ in $(seq 100); do s=$(q); grep -q '^1|CANCELLED|' <<<"$s" && grep -q '^2|CANCELLED|' <<<"$s" && break; sleep 0.2; done
echo "$s" >"$OUT/squeue_cancelled.txt"
sub -J cap-after -t 5 --wrap 'sleep 600'
# Slurm checks time limits every ~30 s; the job is COMPLETING for a moment (KillWait), then TIMEOUT.
completing=
for _ in $(seq 3000); do
  s=$(q)
  if [[ -z $completing ]] && grep -q '|COMPLETING|.*|cap-timeout$' <<<"$s"; then completing=$s; fi
  grep -q '|TIMEOUT|.*|cap-timeout$' <<<"$s" && break
  sleep 0.05
done
[[ -n $completing ]] || { echo "capture: cap-timeout was never seen COMPLETING: run again" >&2; exit 1; }
echo "$completing" >"$OUT/squeue_timeout_completing.txt"
echo "$s" >"$OUT/squeue_timeout.txt"
echo "capture: done"
