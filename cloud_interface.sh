#!/bin/bash
# Forced command of the cloud proxy's SSH key (authorized_keys:
#   restrict,command="SAIA_HOME=/path/to/state /path/to/cloud_interface.sh" ssh-ed25519 ...).
# The request is in $SSH_ORIGINAL_COMMAND, its body (if not inline) on stdin;
# see docs/wire-protocol.md. No parsing here: the handler does it all.
# SAIA_HOME defaults to this script's folder; SAIA_PYTHON to its .venv.
here=${BASH_SOURCE[0]%/*}
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.
[[ $here == /* ]] || here=$PWD/$here
export SAIA_HOME="${SAIA_HOME:-$here}"
py="${SAIA_PYTHON:-$here/.venv/bin/python}"
[[ -x $py ]] || py=python3
# SAIA_FORWARDER=on: its private directory exists; the client hands the request
# to the forwarder, or execs the line below when the forwarder does not answer.
[[ -d ${TMPDIR:-/tmp}/saia-$UID && -x /usr/bin/perl ]] &&
    exec /usr/bin/perl "$here/saia_ctl/request_path/client.pl" "$py" "$here/saia_ctl/request_path/entry.py"
exec "$py" -I -S "$here/saia_ctl/request_path/entry.py"
