"""The proxy's stand-ins themselves (``tests.support.proxy_fakes``)."""

from __future__ import annotations

import os
import subprocess

from tests.support.proxy_fakes import Fakes


def test_fake_forced_speaks_the_protocol(fakes: Fakes) -> None:
    """The stand-in itself: keep-alive answers OK, a request is parsed and answered in HTTP."""
    ka = subprocess.run([str(fakes.ssh), "-T", "login", "keep-alive"], capture_output=True, timeout=20)
    assert ka.stdout == b"OK\n" and ka.returncode == 0
    cmd = 'abc\nu@x\necho\n/v1/chat/completions\n -X POST -H "content-type: application/json"'
    r = subprocess.run(
        [str(fakes.ssh), "login", cmd], input=b'{"model":"echo"}', capture_output=True, timeout=20
    )
    assert r.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    rec = fakes.record("abc")
    assert rec["headers"] == ["content-type: application/json"] and rec["body"] == '{"model":"echo"}'
    fakes.down.touch()
    d = subprocess.run([str(fakes.ssh), "login", "keep-alive"], capture_output=True, timeout=20)
    assert d.returncode == 255 and d.stdout == b""
    assert os.path.exists(fakes.log)
