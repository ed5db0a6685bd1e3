"""The request path: what runs for every SSH session of the cloud proxy.
Standard library only, and cheap to import (one interpreter per request).

- ``entry.py``: the script ``cloud_interface.sh`` runs (``python -I -S``);
  ``handler.py``: one request from validation to the closed row (``run``);
- ``control.py``: the control words ``keep-alive`` and ``status``;
- ``wire.py``: parsing the forced command, our own error answers;
- ``store.py``: the SQL (on ``saia_ctl.rawdb`` connections);
- ``forward.py``: the backend connection, and the answer streamed to the
  client;
- ``spawn.py``: detached ticks; ``log.py``: ``logs/route.log``;
"""
