#!/usr/bin/env bash
# The README's demo (`make demo`, after scripts/setup.sh): a throwaway real
# Slurm + sshd, a state directory with the test service, the scheduler's tick
# until its job is ready, then requests through real `ssh` into
# cloud_interface.sh (the forced command), exactly as the SAIA cloud proxy
# sends them; prints the answers and the recorded rows. Leaves nothing
# running, also on failure or Ctrl-C (trap).
#
#   scripts/demo.sh            (root: the dev cluster needs it)
# Env: DEMO_KEEP=1 keeps the temp dir (state, logs) for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SAIA=$REPO/.venv/bin/saia-ctl
PY=$REPO/.venv/bin/python
[[ -x $SAIA ]] || { echo "demo: run scripts/setup.sh (make setup) first" >&2; exit 1; }

TMP=$(mktemp -d /tmp/saia-demo-XXXXXX) # short: the munge socket path must fit a sockaddr_un
chmod 755 "$TMP" # munged wants every folder above its socket searchable by all
CLUSTER=$TMP/c
export SAIA_HOME=$TMP/home
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  echo
  echo "== cleaning up"
  if [[ -f $SAIA_HOME/saia.db ]]; then # cancel our jobs first (down cancels every job anyway)
    SLURM_CONF=$CLUSTER/slurm.conf "$PY" - "$SAIA_HOME/saia.db" <<'PY' || true
import sqlite3, subprocess, sys
ids = [str(r[0]) for r in sqlite3.connect(sys.argv[1]).execute(
    "SELECT slurm_job_id FROM jobs WHERE slurm_job_id IS NOT NULL AND ended_at IS NULL")]
if ids:
    subprocess.run(["scancel", *ids], check=False)
PY
  fi
  [[ -d $CLUSTER ]] && scripts/dev-cluster.sh down "$CLUSTER" >/dev/null 2>&1 || true
  if [[ ${DEMO_KEEP:-0} == 1 ]]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== 1. a throwaway cluster (munge, slurmctld, slurmd with 4 stand-in GPUs, sshd) in $CLUSTER"
SLURMCTLD_PORT=$(free_port) SLURMD_PORT=$(free_port) SSH_PORT=$(free_port) \
  scripts/dev-cluster.sh up "$CLUSTER" >"$TMP/cluster.log" 2>&1 || { tail -20 "$TMP/cluster.log" >&2; exit 1; }
# shellcheck disable=SC1091
source "$CLUSTER/env.sh"
export SLURM_CONF

echo "== 2. state directory $SAIA_HOME: database, config with the test service"
mkdir -p "$SAIA_HOME"
low=$((61001 + RANDOM % 900))
cat >"$SAIA_HOME/saia.conf" <<EOF
SAIA_SLURM_CONF=$SLURM_CONF
SAIA_JOB_PREFIX=demo$$
SAIA_PORT_RANGE=$low-$((low + 49))
SAIA_PYTHON=$PY
EOF
"$SAIA" db upgrade
cat >"$SAIA_HOME/config.json" <<EOF
{
  "services": [
    {
      "name": "Test LLM (stand-in for vLLM)",
      "id": "test-llm",
      "owned_by": "saia-demo",
      "input": ["text"],
      "output": ["text"],
      "sbatch": "$REPO/sbatch/test-llm.sbatch",
      "inferences_per_instance": 4,
      "maximum_number_instances": 1,
      "minimum_number_instances": 1,
      "job_expiry_time": "5:00"
    }
  ]
}
EOF
"$SAIA" init --config "$SAIA_HOME/config.json"

echo "== 3. scheduler ticks until the job is ready"
ready=0
for _ in $(seq 1 60); do
  "$SAIA" tick >"$TMP/tick.out" 2>&1 || true
  if "$PY" - "$SAIA_HOME/saia.db" <<'PY'; then
import sqlite3, sys
n = sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM jobs WHERE state='ready'").fetchone()[0]
sys.exit(0 if n else 1)
PY
    ready=1
    break
  fi
  sleep 1
done
cat "$TMP/tick.out"
[[ $ready == 1 ]] || { echo "demo: the job did not become ready" >&2; exit 1; }

echo "== 4. an SSH key whose forced command is cloud_interface.sh"
ssh-keygen -q -t ed25519 -N '' -C saia-demo -f "$TMP/cloud_key"
echo "restrict,command=\"SAIA_HOME=$SAIA_HOME $REPO/cloud_interface.sh\" $(cat "$TMP/cloud_key.pub")" \
  >>"$CLUSTER/ssh/authorized_keys"
SSH=(ssh -p "$SSH_PORT" -i "$TMP/cloud_key" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
  -o "UserKnownHostsFile=$TMP/known_hosts" -o LogLevel=ERROR "$SSH_TARGET")
# What saia-hub's proxy-hpc sends: 4 lines, then ` -X METHOD -H "k: v" ... -d <body>`.
request() { # id user path method body [extra header]
  local cmd
  cmd=$(printf '%s\n%s\n%s\n%s\n -X %s -H "content-type: application/json" -H "authorization: Bearer users-key"%s -d %s' \
    "$1" "$2" test-llm "$3" "$4" "${6:-}" "$5")
  "${SSH[@]}" "$cmd"
}

echo "== 5. keep-alive and status"
"${SSH[@]}" keep-alive
"${SSH[@]}" status | "$PY" -m json.tool
echo
echo "== 6. GET /v1/models"
request "demo-$$-1" alice@uni-x.de /v1/models GET ""
echo
echo
echo "== 7. a chat completion"
request "demo-$$-2" alice@uni-x.de /v1/chat/completions POST \
  '{"model": "test-llm", "messages": [{"role": "user", "content": "Hello from the demo"}], "max_tokens": 8}'
echo
echo
echo "== 8. a streaming chat completion (server-sent events, as they are produced)"
request "demo-$$-3" bob@uni-y.de /v1/chat/completions POST \
  '{"model": "test-llm", "messages": [{"role": "user", "content": "Stream to me"}], "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}, "token_delay": 0.2}' \
  ' -H "accept: text/event-stream"'
echo
echo "== 9. bad input is answered by the interface itself"
"${SSH[@]}" $'x\nalice\ntest-llm\n/../etc/passwd\n -X GET -d ' || true
echo
echo
echo "== 10. the recorded rows (saia-ctl requests list, when available, shows the same)"
"$PY" - "$SAIA_HOME/saia.db" <<'PY'
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1])
cols = ["inference_id", "user_id", "service_id", "job_id", "method", "path", "status", "outcome",
        "bytes_in", "bytes_out", "input_tokens", "output_tokens", "ms"]
rows = conn.execute(
    "SELECT inference_id, user_id, service_id, job_id, method, path, status, outcome, bytes_in, bytes_out,"
    " input_tokens, output_tokens, round((ended_at - started_at) * 1000) FROM requests ORDER BY id").fetchall()
width = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(cols)]
print("  ".join(c.ljust(w) for c, w in zip(cols, width)))
for r in rows:
    print("  ".join(str(v).ljust(w) for v, w in zip(r, width)))
PY
echo
echo "== 11. the cloud side: saia-ctl proxy and the official openai client (scripts/demo_proxy.py)"
"$PY" scripts/demo_proxy.py --ssh-host "${SSH_TARGET#*@}" --ssh-user "${SSH_TARGET%@*}" --ssh-port "$SSH_PORT" \
  --ssh-key "$TMP/cloud_key" --ssh-option StrictHostKeyChecking=no --ssh-option "UserKnownHostsFile=$TMP/known_hosts" \
  --model test-llm
echo
echo "demo: done"
