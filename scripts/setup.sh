#!/usr/bin/env bash
# Idempotent setup of a saia-ctl checkout (used by `make setup`, .ci/run and the demo).
#
#   scripts/setup.sh
#
# 1. As root on Debian/Ubuntu: apt-get installs what is missing of slurm-wlm
#    munge openssh-server openssh-client curl sqlite3 chromium python3-venv, and
#    slurmdbd mariadb-server for the dev cluster's Slurm accounting (nothing is
#    touched when all are present). Not root or no apt: only reports.
# 2. Finds a Python >= 3.11 (the concrete interpreter, never a pyenv shim:
#    a shim costs ~70 ms per start), creates .venv if missing and installs
#    the package with its dev and proxy extras (editable).
# 3. Compiles saia_ctl/ to bytecode: PYTHONDONTWRITEBYTECODE may be set, and
#    the request path starts one interpreter per request.
# Env: PYTHON (interpreter to use), SAIA_SKIP_APT=1 (skip step 1).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

log() { printf 'setup: %s\n' "$*" >&2; }

# --- 1. system packages -------------------------------------------------------
# python3-venv: for when the only Python >= 3.11 is Debian's own (its venv module is split off).
# slurmdbd mariadb-server: Slurm's accounting in the dev cluster (optional there: without them it runs without).
PKGS=(slurm-wlm slurmdbd mariadb-server munge openssh-server openssh-client curl sqlite3 chromium python3-venv)
missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
fi
if [[ ${SAIA_SKIP_APT:-0} == 1 ]]; then
  log "skipping apt (SAIA_SKIP_APT=1)"
elif ((${#missing[@]} == 0)); then
  log "system packages present"
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "missing system packages (install them as root): ${missing[*]}"
fi

# --- 2. Python and the venv ---------------------------------------------------
ok_python() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }
find_python() {
  local c
  for c in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    command -v "$c" >/dev/null 2>&1 || continue
    ok_python "$c" || continue
    # Resolve shims (pyenv's python3 is a bash script) to the real interpreter.
    "$c" -c 'import sys; print(sys.executable)'
    return 0
  done
  return 1
}
if [[ -x .venv/bin/python ]] && ok_python .venv/bin/python; then
  log "venv present: $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])')"
else
  PY=$(find_python) || { log "no Python >= 3.11 found (set PYTHON=...)"; exit 1; }
  log "creating .venv with $PY"
  rm -rf .venv
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml or setup.py changed since the last install.
stamp=.venv/.saia-setup-stamp
want=$(cat pyproject.toml setup.py | sha256sum | cut -d" " -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]] || ! .venv/bin/python -c 'import saia_ctl, pytest, openai, aiohttp' 2>/dev/null; then
  log "installing saia-ctl[dev,proxy] (editable)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "$REPO[dev,proxy]"
  echo "$want" >"$stamp"
else
  log "python packages up to date"
fi

# --- 3. bytecode --------------------------------------------------------------
.venv/bin/python -m compileall -q saia_ctl
log "done: $(.venv/bin/saia-ctl --help >/dev/null 2>&1 && echo 'saia-ctl works' || echo 'saia-ctl not runnable yet')"
