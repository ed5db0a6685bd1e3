#!/usr/bin/env python3
"""The demo's cloud side: start ``saia-ctl proxy``, talk to it with the official openai client, stop it.

Called by ``scripts/demo.sh`` with the SSH parameters of its throwaway
cluster; ``SAIA_HOME`` (exported by demo.sh) is only used afterwards for
``saia-ctl jobs list`` and ``saia-ctl report --month``. Runs one
``models.list()``, one chat completion and one streaming chat completion
(printed as the chunks arrive), and always stops the proxy.

    scripts/demo_proxy.py --ssh-host 127.0.0.1 --ssh-port 2222 --ssh-user root \\
        --ssh-key KEY [--ssh-option Name=value]... [--model test-llm]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAIA = REPO / ".venv" / "bin" / "saia-ctl"


def saia_ctl() -> list[str]:
    return (
        [str(SAIA)] if SAIA.exists() else [sys.executable, "-c", "from saia_ctl.cli.main import run; run()"]
    )


def start_proxy(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    argv = [*saia_ctl(), "proxy", "--port", "0", "--ssh-host", args.ssh_host, "--ssh-key", args.ssh_key]
    if args.ssh_port:
        argv += ["--ssh-port", str(args.ssh_port)]
    if args.ssh_user:
        argv += ["--ssh-user", args.ssh_user]
    for opt in args.ssh_option:
        argv += ["--ssh-option", opt]
    env = {k: v for k, v in os.environ.items() if k != "SAIA_HOME"}  # the cloud side has no state dir
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, env=env, stderr=f, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"listening on (http://\S+?);", log.read_text())
        if m:
            return proc, m.group(1)
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"demo: the proxy did not start:\n{log.read_text()[-1000:]}")


def show(title: str, argv: list[str]) -> None:
    print(f"\n$ saia-ctl {' '.join(argv)}")
    r = subprocess.run([*saia_ctl(), *argv], capture_output=True, text=True, timeout=120, cwd=REPO)
    if r.returncode != 0 and ("No such command" in r.stderr or "Usage:" in r.stderr):
        print(f"({title} is not available in this checkout; skipped)")
        return
    print((r.stdout + r.stderr).rstrip())


def chat(base: str, model: str, user: str) -> None:
    import openai

    client = openai.OpenAI(
        base_url=base + "/v1", api_key="unused", default_headers={"X-Consumer-Custom-ID": user}, max_retries=2
    )
    print("\n-- models.list()")
    for m in client.models.list():
        extra = m.model_extra or {}
        print(
            f"   {m.id:24} owned_by={m.owned_by:12} status={extra.get('status')} name={extra.get('name')!r}"
        )
    print(f"\n-- chat.completions.create(model={model!r}) as {user}")
    done = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello through the proxy"}], max_tokens=8
    )
    print(f"   {done.choices[0].message.content!r}")
    if done.usage is not None:
        print(f"   usage: {done.usage.prompt_tokens} in, {done.usage.completion_tokens} out")
    print("\n-- the same, stream=True (chunks printed as they arrive)")
    t0 = time.monotonic()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Stream through the proxy"}],
        max_tokens=6,
        stream=True,
        extra_body={"token_delay": 0.2},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(f"   +{time.monotonic() - t0:5.2f}s {chunk.choices[0].delta.content!r}", flush=True)
    print(
        "   (the proxy asked the cluster for usage, so the tokens are recorded, and kept the extra chunk from us)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ssh-host", required=True)
    ap.add_argument("--ssh-port", type=int)
    ap.add_argument("--ssh-user")
    ap.add_argument("--ssh-key", required=True)
    ap.add_argument("--ssh-option", action="append", default=[])
    ap.add_argument("--model", default="test-llm")
    ap.add_argument("--user", default="carol@uni-z.de")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="saia-demo-proxy-") as tmp:
        log = Path(tmp) / "proxy.log"
        proc, base = start_proxy(args, log)
        print(f"saia-ctl proxy is listening on {base} (pid {proc.pid})")
        try:
            chat(base, args.model, args.user)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            print("\n-- the proxy's log")
            for line in log.read_text().splitlines()[-8:]:
                print(f"   {line}")
            print("saia-ctl proxy stopped")
    if os.environ.get("SAIA_HOME"):
        show("jobs list", ["jobs", "list"])
        show("report", ["report", "--month", time.strftime("%Y-%m", time.gmtime())])
    return 0


if __name__ == "__main__":
    sys.exit(main())
