"""What the tests and benches share; every name here is public, nothing is private to a test.

- ``paths`` — where the repository, its interpreter and the forced command are.
- ``net`` — a free loopback port, waiting for a listener.
- ``backend`` — the one fake backend (OpenAI-like routes, or misbehaving on purpose).
- ``wire`` — the request path's kit: job rows, the proxy's command format,
  running ``cloud_interface.sh`` in-process or as sshd runs it, parsing its answer.
- ``cluster`` — the real cluster (Slurm + sshd) fixture.
- ``proxy_fakes`` — a fake ``ssh`` and a fake cluster side for the proxy's unit tests.
- ``accounting`` — request and job rows for the accounting tests.
- ``tunnel`` — the login node's side of a ``tunnel`` session in-process (``Session``), its fixtures.
- ``fixtures`` — the general fixtures ``conftest.py`` wires in (a migrated home, a clock, configs).
"""
