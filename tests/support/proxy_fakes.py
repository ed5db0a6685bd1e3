"""Stand-ins for the proxy's unit tests: a fake ``ssh`` and a fake forced command.

``fake_ssh`` behaves like ``ssh`` towards the proxy: it takes the last
argument as ``SSH_ORIGINAL_COMMAND`` and execs the forced command (``-O``
operations succeed). When the file named by ``FAKE_SSH_DOWN`` exists it fails
as ssh does when the login node is down (stderr message, exit status 255).
Every invocation's argv is appended (JSON) to ``FAKE_SSH_LOG``.

``fake_forced`` plays the cluster: ``keep-alive`` → ``OK``, ``status`` → the
JSON in ``FAKE_STATUS``, anything else a request, parsed as the wire
protocol says and answered by the service named in line 3. It writes what it
received (lines, parsed arguments, body) to ``FAKE_RECORDS/<inference-id>.json``.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

FAKE_SSH = r"""
import json, os, sys
log = os.environ.get("FAKE_SSH_LOG")
if log:
    with open(log, "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\n")
if "-O" in sys.argv:
    sys.exit(0)
if os.path.exists(os.environ.get("FAKE_SSH_DOWN", "/nonexistent")):
    sys.stderr.write("ssh: connect to host login port 22: Connection refused\n")
    sys.exit(255)
os.environ["SSH_ORIGINAL_COMMAND"] = sys.argv[-1]
forced = os.environ["FAKE_SSH_FORCED"]
os.execv(forced, [forced])
"""

FAKE_FORCED = r"""
import json, os, signal, sys, time

def out(data):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()

def answer(status, body, ctype="application/json", reason="OK"):
    out(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nx-backend: fake\r\n\r\n"
        % (status, reason.encode(), ctype.encode(), len(body)) + body)

cmd = os.environ.get("SSH_ORIGINAL_COMMAND", "")
if cmd == "keep-alive":
    with open(os.environ["FAKE_KEEPALIVES"], "a") as f:
        f.write("%f\n" % time.time())
    out(b"OK\n")
    sys.exit(0)
if cmd == "status":
    with open(os.environ["FAKE_STATUS"], "rb") as f:
        out(f.read())
    sys.exit(0)

lines = cmd.split("\n")
iid, user, service, path = lines[:4]
words = "".join(lines[4:]).split()
method, headers, i = None, [], 0
while i < len(words):
    if words[i] == "-X":
        method = words[i + 1]; i += 2
    elif words[i] == "-H":
        j = i + 1
        while j < len(words) and words[j] not in ("-H", "-X", "-d"):
            j += 1
        text = " ".join(words[i + 1 : j])
        if text.startswith('"'): text = text[1:]
        if text.endswith('"'): text = text[:-1]
        headers.append(text); i = j
    else:
        raise SystemExit("unexpected word %r" % words[i])
body = sys.stdin.buffer.read()
record = {"id": iid, "user": user, "service": service, "path": path, "method": method,
          "headers": headers, "raw": cmd, "body": body.decode("utf-8", "replace"), "body_len": len(body)}
with open(os.path.join(os.environ["FAKE_RECORDS"], iid + ".json"), "w") as f:
    json.dump(record, f)
try:
    req = json.loads(body) if body else {}
except ValueError:
    req = {}
usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
words_out = ["Hello", " from", " " + service]

if service == "hang":
    time.sleep(60)
if service == "garbage":
    out(b"this is not http\r\n\r\n"); sys.exit(0)
if service == "down":
    sys.stderr.write("ssh: Connection closed by remote host\n"); sys.exit(255)
if service == "continue":
    out(b"HTTP/1.1 100 Continue\r\n\r\n")
if service == "slowstream":
    out(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    for n in range(600):
        out(b'data: {"n": %d}\n\n' % n)
        with open(os.path.join(os.environ["FAKE_RECORDS"], iid + ".progress"), "w") as f:
            f.write(str(n))
        time.sleep(0.05)
    sys.exit(0)
if req.get("stream"):
    out(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n")
    base = {"id": "chatcmpl-" + iid, "object": "chat.completion.chunk", "created": 1, "model": service}
    for n, w in enumerate(words_out):
        chunk = dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": w} if n == 0
                     else {"content": w}, "finish_reason": None}])
        out(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        time.sleep(float(os.environ.get("FAKE_CHUNK_DELAY", "0")))
    out(b"data: " + json.dumps(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])).encode() + b"\n\n")
    if (req.get("stream_options") or {}).get("include_usage"):
        out(b"data: " + json.dumps(dict(base, choices=[], usage=usage)).encode() + b"\n\n")
    out(b"data: [DONE]\n\n")
    if service == "linger":  # the cluster side records the request after the answer: give it time
        time.sleep(1.0)
        with open(os.path.join(os.environ["FAKE_RECORDS"], iid + ".finished"), "w") as f:
            f.write("ok")
    sys.exit(0)
if path.startswith("/v1/embeddings"):
    answer(200, json.dumps({"object": "list", "model": service, "usage": {"prompt_tokens": 2, "total_tokens": 2},
                            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]}).encode())
    sys.exit(0)
resp = {"id": "chatcmpl-" + iid, "object": "chat.completion", "created": 1, "model": service,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words_out)},
                     "finish_reason": "stop"}], "usage": usage}
answer(200, json.dumps(resp).encode())
"""

DEFAULT_STATUS = {
    "services": [
        {
            "id": "echo",
            "name": "Echo",
            "owned_by": "tests",
            "input": ["text"],
            "output": ["text"],
            "ready": 1,
            "starting": 0,
            "target": 1,
        },
        {
            "id": "cold",
            "name": "Cold",
            "owned_by": "tests",
            "input": ["text"],
            "output": ["text"],
            "ready": 0,
            "starting": 1,
            "target": 1,
        },
        {
            "id": "off",
            "name": "Off",
            "owned_by": "tests",
            "input": ["text"],
            "output": ["text", "image"],
            "ready": 0,
            "starting": 0,
            "target": 0,
        },
    ]
}


class Fakes:
    """Paths and helpers of one test's stand-ins."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ssh = root / "fake_ssh"
        self.forced = root / "fake_forced"
        self.log = root / "ssh.log"
        self.down = root / "down"
        self.records = root / "records"
        self.keepalives = root / "keepalives"
        self.status = root / "status.json"

    def env(self) -> dict[str, str]:
        return {
            "FAKE_SSH_LOG": str(self.log),
            "FAKE_SSH_DOWN": str(self.down),
            "FAKE_SSH_FORCED": str(self.forced),
            "FAKE_RECORDS": str(self.records),
            "FAKE_KEEPALIVES": str(self.keepalives),
            "FAKE_STATUS": str(self.status),
        }

    def record(self, iid: str) -> dict[str, Any]:
        return dict(json.loads((self.records / f"{iid}.json").read_text()))

    def all_records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.records.glob("*.json"))]

    def argvs(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def keepalive_count(self) -> int:
        return len(self.keepalives.read_text().splitlines()) if self.keepalives.exists() else 0

    def set_status(self, doc: Any) -> None:
        self.status.write_text(json.dumps(doc))


def write_script(path: Path, body: str) -> None:
    """An executable Python script at ``path`` run by this interpreter."""
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def make_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    """The stand-ins in ``tmp_path``, their settings in the environment (which the proxy's ssh inherits)."""
    f = Fakes(tmp_path)
    f.records.mkdir()
    write_script(f.ssh, FAKE_SSH)
    write_script(f.forced, FAKE_FORCED)
    f.set_status(DEFAULT_STATUS)
    for k, v in f.env().items():
        monkeypatch.setenv(k, v)
    return f


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return make_fakes(tmp_path, monkeypatch)
