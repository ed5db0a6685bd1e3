#!/usr/bin/env bash
# Install saia-ctl the way a site does and use only that installation.
#
#   scripts/wheel-check.sh CLUSTER_DIR      (a running scripts/dev-cluster.sh cluster)
#
# Builds the wheel from this checkout's files, installs it into a fresh venv
# outside the checkout and, from a folder outside the checkout, with that
# venv's saia-ctl only: db upgrade; init with the example config, whose batch
# script is the installed test template; ticks until a job of the example
# service is ready on the cluster; one request through the cluster's sshd to
# the installed forced command (the authorized_keys line from `saia-ctl ssh
# authorized-key`), recorded in the database; the month's report. At the end
# the job is cancelled, the key taken out of authorized_keys and the folder
# deleted (WHEEL_CHECK_KEEP=1 keeps the folder).
# Env: WHEEL_CHECK_PORTS (backend port range, default 62001-62050), PYTHON (default:
# the checkout's .venv/bin/python; the new venv is made from its base interpreter).
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 CLUSTER_DIR" >&2; exit 2; }
CLUSTER=$(realpath "$1")
REPO=$(realpath "$(dirname "$0")/..")
[[ -s $CLUSTER/env.sh ]] || { echo "wheel-check: no running cluster in $CLUSTER (scripts/dev-cluster.sh up DIR)" >&2; exit 2; }
# shellcheck disable=SC1091
source "$CLUSTER/env.sh"
PY=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PY ]] || PY=python3
W=$(mktemp -d /tmp/saia-wheel-check.XXXXXX)
PREFIX=wc$$
KEYLINE=
log() { printf 'wheel-check: %s (%ds)\n' "$*" "$SECONDS" >&2; }
fail() { log "FAILED: $*"; exit 1; }

cleanup() {
  local rc=$?
  local ids
  ids=$(squeue -h -o '%i %j' 2>/dev/null | awk -v p="${PREFIX}_" 'index($2, p) == 1 {print $1}') || true
  # shellcheck disable=SC2086
  [[ -z $ids ]] || scancel $ids || true
  if [[ -n $KEYLINE ]]; then
    # As tests/ do: under the lock, replaced atomically (sshd never reads half a file).
    (
      flock 9
      grep -vxF "$KEYLINE" "$CLUSTER/ssh/authorized_keys" >"$CLUSTER/ssh/authorized_keys.tmp$$" || true
      chmod 600 "$CLUSTER/ssh/authorized_keys.tmp$$"
      mv "$CLUSTER/ssh/authorized_keys.tmp$$" "$CLUSTER/ssh/authorized_keys"
    ) 9>"$CLUSTER/ssh/authorized_keys.lock"
  fi
  if ((rc != 0)) && [[ -d $W/home/logs ]]; then tail -n 20 "$W"/home/logs/*.log >&2 || true; fi
  if [[ ${WHEEL_CHECK_KEEP:-0} == 1 ]]; then log "kept $W"; else rm -rf "$W"; fi
  exit "$rc"
}
trap cleanup EXIT

# --- build: from a copy of the checkout's files (a stale build/ never leaks in)
mkdir -p "$W/src" "$W/dist"
git -C "$REPO" ls-files -z -co --exclude-standard | (cd "$REPO" && tar --null -T - -cf -) | tar -xf - -C "$W/src"
pip_quiet() { "$@" >"$W/pip.log" 2>&1 || { cat "$W/pip.log" >&2; fail "$*"; }; }
pip_quiet "$PY" -m pip wheel --disable-pip-version-check --no-deps -w "$W/dist" "$W/src"
wheel=$(echo "$W"/dist/saia_ctl-*.whl)
[[ -f $wheel ]] || fail "no wheel built"
rm -rf "$W/src"
log "built $(basename "$wheel")"

# --- install into a fresh venv, nothing of the checkout on any path
"$PY" -m venv "$W/venv"
pip_quiet "$W/venv/bin/python" -m pip install --disable-pip-version-check "$wheel"
BIN=$W/venv/bin
SITE=$("$BIN/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
for f in "$BIN/saia-ctl" "$BIN/cloud_interface.sh" "$SITE/saia_ctl/request_path/entry.py" \
  "$SITE/saia_ctl/migrations/env.py" "$SITE/saia_ctl/sbatch/vllm.sbatch"; do
  [[ -e $f ]] || fail "the installation lacks $f"
done
[[ -x $BIN/cloud_interface.sh ]] || fail "$BIN/cloud_interface.sh is not executable"
log "installed into $W/venv"

cd "$W"
export SAIA_HOME=$W/home
mkdir -p "$SAIA_HOME"
cat >"$SAIA_HOME/saia.conf" <<EOF
SAIA_JOB_PREFIX=$PREFIX
SAIA_PORT_RANGE=${WHEEL_CHECK_PORTS:-62001-62050}
SAIA_SLURM_CONF=$SLURM_CONF
EOF
saia() { "$BIN/saia-ctl" "$@"; }

# Installed without the [proxy] extra: the proxy says in one line how to get it.
out=$(saia proxy --ssh-host localhost --ssh-user nobody --ssh-key /dev/null 2>&1) && fail "proxy ran without aiohttp"
[[ $out == *"pip install"*"[proxy]"* && $out != *$'\n'* ]] || fail "saia-ctl proxy without the extra: $out"

saia db upgrade
# The example config as a site has it: config.json and its ./sbatch/ folder,
# the batch script being the installed test template (and its server).
mkdir -p "$W/site/sbatch"
cp "$REPO/examples/saia/config.json" "$W/site/config.json"
cp "$SITE/saia_ctl/sbatch/test-llm.sbatch" "$W/site/sbatch/example-service.sbatch"
cp "$SITE/saia_ctl/sbatch/test_llm_server.py" "$W/site/sbatch/"
saia init --config "$W/site/config.json"
service=$("$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["services"][0]["id"])' "$W/site/config.json")

# --- ticks until a job of the service is ready
end=$((SECONDS + 90))
until saia jobs list --service "$service" --format json | "$BIN/python" -c \
  'import json, sys; sys.exit(0 if any(j["state"] == "ready" for j in json.load(sys.stdin)) else 1)'; do
  ((SECONDS < end)) || { saia jobs list --all >&2 || true; fail "no ready job of $service after 90 s"; }
  saia tick >/dev/null
  sleep 1
done
log "a job of $service is ready"

# --- one request through sshd to the installed forced command
ssh-keygen -q -t ed25519 -N '' -C "wheel-check-$$" -f "$W/proxy_key"
KEYLINE=$(saia ssh authorized-key "$W/proxy_key.pub")
[[ $KEYLINE == "restrict,command=\"SAIA_HOME=$SAIA_HOME $BIN/cloud_interface.sh\" "* ]] ||
  fail "unexpected authorized_keys line: $KEYLINE"
(
  flock 9
  cp "$CLUSTER/ssh/authorized_keys" "$CLUSTER/ssh/authorized_keys.tmp$$"
  echo "$KEYLINE" >>"$CLUSTER/ssh/authorized_keys.tmp$$"
  chmod 600 "$CLUSTER/ssh/authorized_keys.tmp$$"
  mv "$CLUSTER/ssh/authorized_keys.tmp$$" "$CLUSTER/ssh/authorized_keys"
) 9>"$CLUSTER/ssh/authorized_keys.lock"
iid=wheel-check-$$-$RANDOM
body='{"model": "'$service'", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}'
request=$(printf '%s\n%s\n%s\n%s\n -X POST -H "content-type: application/json" -d %s' \
  "$iid" "operator@site" "$service" /v1/chat/completions "$body")
answer=$(ssh -p "$SSH_PORT" -i "$W/proxy_key" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
  -o UserKnownHostsFile="$W/known_hosts" -o LogLevel=ERROR "$SSH_TARGET" "$request" </dev/null) || fail "ssh: exit $?: $answer"
[[ $answer == "HTTP/1.1 200"* ]] || fail "the request was answered: ${answer:0:300}"
log "request $iid answered 200 through sshd"
saia requests list --format json | "$BIN/python" -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r.get("inference_id") == sys.argv[1]]
sys.exit(0 if rows and rows[0].get("status") == 200 else f"not recorded with status 200: {rows}")' "$iid"
log "request $iid recorded"

# --- the month's report counts it
saia report --no-files --format json | "$BIN/python" -c '
import json, sys
text = sys.stdin.read()
sys.exit(0 if sys.argv[1] in text and "operator@site" in text else "the report lacks the request: " + text[:300])' "$service"
log "report ok; all checks passed"
