#!/bin/bash
# Forced command of the cloud proxy's SSH key; `saia-ctl ssh authorized-key KEY.pub`
# prints its authorized_keys line:
#   restrict,command="SAIA_HOME=/path/to/state /path/to/cloud_interface.sh" ssh-ed25519 ...
# The request is in $SSH_ORIGINAL_COMMAND, its body (if not inline) on stdin;
# see docs/wire-protocol.md. No parsing here: the handler does it all.
# It runs from a checkout (this file at the top, the venv in .venv/, SAIA_HOME
# defaulting to this folder) or from a wheel installed into a venv (this file
# in the venv's bin/, next to its python). SAIA_PYTHON overrides the interpreter.
here=${BASH_SOURCE[0]%/*}
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.
[[ $here == /* ]] || here=$PWD/$here
entry=$here/saia_ctl/request_path/entry.py
if [[ -e $entry ]]; then
    export SAIA_HOME="${SAIA_HOME:-$here}"
    py="${SAIA_PYTHON:-$here/.venv/bin/python}"
else
    # Installed: python -S leaves site-packages off sys.path, so the handler is
    # named by its path (it puts its own package root on sys.path).
    py="${SAIA_PYTHON:-$here/python}"
    for entry in "$here"/../lib/python3*/site-packages/saia_ctl/request_path/entry.py; do
        [[ -e $entry ]] && break
    done
fi
[[ -x $py ]] || py=python3
# Not found by path (an editable install): import it through site-packages.
[[ -e $entry ]] || exec "$py" -I -m saia_ctl.request_path.entry
exec "$py" -I -S "$entry"
