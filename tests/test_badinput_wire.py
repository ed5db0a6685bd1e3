"""Bad input on the wire: a generated corpus of >= 10,000 forced commands.

Every invalid command must get a complete HTTP error answer (status line,
headers, blank line, a JSON body of exactly Content-Length bytes that says
what was wrong), reach no backend (a local backend is registered as the
service's ready job and must see nothing), write no file outside the state
directory (payloads like ``$(touch CANARY/x)`` must create nothing), and
print no traceback. The bulk runs through the handler's in-process entry
(``saia_ctl.request_path.handler.run``); a few hundred, spread over every kind, through the
real ``cloud_interface.sh`` process. Commands that are valid but nasty
(shell syntax in header values and bodies) must reach the backend verbatim.
"""

from __future__ import annotations

import random
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.backend import FakeBackend
from tests.support.fixtures import service_config
from tests.support.paths import REPO
from tests.support.wire import (
    add_ready_job,
    assert_error_answer,
    interface_argv,
    parse_http,
    process_env,
    request_rows,
    run_inproc,
    run_process,
)

SERVICE = "svc-bad"
SBATCH = str(REPO / "examples" / "saia" / "sbatch" / "example-service.sbatch")
CORPUS_SIZE = 10_000
PROCESS_SAMPLE = 300


@pytest.fixture
def world(
    home: Path, import_services: Callable[..., None], tmp_path: Path
) -> Iterator[tuple[Path, FakeBackend, Path]]:
    """A configured service whose one ready job is a local recording backend; a canary dir."""
    import_services(service_config(SERVICE, sbatch=SBATCH))
    canary = tmp_path / "canary"
    canary.mkdir()
    with FakeBackend("ok") as b:
        add_ready_job(home, SERVICE, b.port)
        yield home, b, canary


# --- the corpus ------------------------------------------------------------------


def shell_payloads(canary: Path) -> list[bytes]:
    c = str(canary).encode()
    return [
        b"$(touch " + c + b"/dollar)",
        b"`touch " + c + b"/backtick`",
        b";touch " + c + b"/semi",
        b"|touch " + c + b"/pipe",
        b"&&touch " + c + b"/and",
        b"||touch " + c + b"/or",
        b">" + c + b"/redirect",
        b"<" + c + b"/in",
        b"${IFS}touch${IFS}" + c + b"/ifs",
        b"'$(touch " + c + b"/quoted)'",
        b'"$(touch ' + c + b'/dquoted)"',
        b"\\$(touch " + c + b"/escaped)",
        b"$((1+1))",
        b"${HOME}",
        b"*",
        b"~root",
        b"!!",
        b"#comment",
        b"{a,b}",
        b"a b",
        b"a\tb",
    ]


TRAVERSAL = [b"../", b"..", b"/../../etc/passwd", b"..%2f", b"./../x", b"....//", b"/.."]
CONTROL = [b"\x00", b"\r", b"\x01", b"\x1b[31m", b"\x7f", b"\x0b", b"\x0c", b"\x08"]
BAD_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xe2\x82",
    b"\xf8\x88\x80\x80\x80",
]
UNICODE = ["é", "ü", "€", "😀", "\u202e", "\u200b", "ａ", "İ", "\ufeff"]
WORD_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789"


class Case:
    __slots__ = ("command", "expect", "kind", "stdin")

    def __init__(
        self, kind: str, command: bytes, expect: tuple[int, ...] = (400,), stdin: bytes = b""
    ) -> None:
        self.kind = kind
        self.command = command
        self.expect = expect
        self.stdin = stdin

    def __repr__(self) -> str:
        return f"Case({self.kind}, {self.command[:120]!r})"


def request(
    lines: list[bytes],
    args: bytes = b' -X POST -H "content-type: application/json"',
    body: bytes | None = b'{"a":1}',
) -> bytes:
    cmd = b"\n".join(lines) + b"\n" + args
    if body is not None:
        cmd += b" -d " + body
    return cmd


def good_lines(rng: random.Random) -> list[bytes]:
    return [
        b"inf-%08x" % rng.getrandbits(32),
        b"jdoe@uni-x.de",
        SERVICE.encode(),
        b"/v1/chat/completions",
    ]


def _word(rng: random.Random, n: int = 6) -> bytes:
    return bytes(rng.choice(WORD_CHARS) for _ in range(n))


def bad_field_value(rng: random.Random, canary: Path, field: int) -> bytes:
    """A value that breaks the charset/length/shape rule of line ``field`` (0..3)."""
    choice = rng.randrange(7)
    pre, post = _word(rng, rng.randrange(0, 4)), _word(rng, rng.randrange(0, 4))
    if choice == 0:
        mid = rng.choice(shell_payloads(canary))
    elif choice == 1:
        mid = rng.choice(CONTROL)
    elif choice == 2:
        mid = rng.choice(BAD_UTF8)
    elif choice == 3:
        mid = rng.choice(UNICODE).encode()
    elif choice == 4:  # too long
        return b"/" * (field == 3) + b"a" * rng.choice([257, 300, 1000, 65536, 1 << 20])
    elif choice == 5:
        if field == 3:
            return rng.choice([b"/v1/../x", b"/..", b"/v1/..", b"v1/chat", b"", b"/a b", b"/a%2e%2e"])
        return b""  # empty field
    else:
        mid = (
            rng.choice(TRAVERSAL) if field == 3 else rng.choice([b"/", b"../x", b":", b",", b"%", b"=", b"?"])
        )
    if field == 1 and mid in (b"@",):
        mid = b"/"
    value = pre + mid + post
    if field == 3:
        value = b"/" + value
    return value


def corpus(canary: Path, size: int, seed: int = 20260101) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []

    def add(kind: str, command: bytes, expect: tuple[int, ...] = (400,), stdin: bytes = b"") -> None:
        cases.append(Case(kind, command, expect, stdin))

    # Fixed cases first, so every kind is present whatever the size.
    for word in [
        b"",
        b" ",
        b"\t",
        b"keep_alive",
        b"KEEP-ALIVE",
        b"Status",
        b"keepalive",
        b"keep-alive;id",
        b"keep-alive $(touch " + str(canary).encode() + b"/kc)",
        b"status`id`",
        b"rm -rf /",
        b"sh",
        b"bash -i",
        b"/bin/sh",
        b"scp -t /tmp/x",
        b"scp -f /etc/passwd",
        b"internal-sftp",
        b"/usr/lib/openssh/sftp-server",
        b"git-upload-pack '/x'",
        b"exit",
        b"help",
        b"status status",
        b"keep-alive\x00",
        b"\x00",
        b"\xff",
        b"status\x1b",
        b"ok",
        b"keep-alive\x0b",
    ]:
        add("control", word)
    for n in range(4):
        add("lines", b"\n".join(good_lines(rng)[:n]) + (b"\n" if n else b"\n\n"))
    add("lines", b"\n\n\n\n")
    add("lines", b"\n" * 10)
    for arg in [
        b" -X",
        b" -X ",
        b" -H",
        b" -H ",
        b" -X -H",
        b" -H -X POST",
        b' -H "" -X POST',
        b" -X POST -X GET",
        b" -X post",
        b" -X FOO",
        b" -X " + b"P" * 17,
        b" -X CONNECT",
        b" -X TRACE",
        b" --data x",
        b" -i",
        b" -Z",
        b" stray",
        b' -H "nocolon"',
        b' -H ": v"',
        b' -H "bad name: v"',
        b' -H "x(y): v"',
        b' -H "a/b: v"',
        b' -H "a@b: v"',
        b' -H "content-length: abc"',
        b' -H "content-length: 1234567890123456"',
        b' -H "content-length: -1"',
        b" -X POST -H",
        b' -X POST -H "content-type: application/json" -H',
    ]:
        add("args", request(good_lines(rng), arg, None))

    kinds = ["field", "field", "field", "field", "args", "args", "control", "lines", "huge", "unknown"]
    while len(cases) < size:
        kind = rng.choice(kinds)
        lines = good_lines(rng)
        if kind == "field":
            f = rng.randrange(4)
            lines[f] = bad_field_value(rng, canary, f)
            add(f"field{f + 1}", request(lines))
        elif kind == "unknown":  # valid charset, not configured: 404, nothing forwarded
            lines[2] = b"no-such-" + _word(rng)
            add("unknown", request(lines), (404,))
        elif kind == "control":
            word = rng.choice(
                [
                    _word(rng),
                    rng.choice(shell_payloads(canary)),
                    rng.choice(CONTROL) + b"status",
                    b"keep-alive" + rng.choice(shell_payloads(canary)),
                    rng.choice(BAD_UTF8),
                ]
            )
            if b"\n" in word or word.strip(b" \t\r") in (b"keep-alive", b"status"):
                continue
            add("control", word)
        elif kind == "lines":
            n = rng.randrange(0, 4)
            add("lines", b"\n".join(lines[:n]))
        elif kind == "huge":
            which = rng.randrange(4)
            if which == 0:  # a header over the limit
                add(
                    "huge",
                    request(lines, b' -X POST -H "x-big: ' + b"v" * rng.choice([8200, 20000, 200000]) + b'"'),
                )
            elif which == 1:  # too many headers
                many = b"".join(b' -H "x-h%d: v"' % i for i in range(rng.choice([101, 150, 1000])))
                add("huge", request(lines, b" -X POST" + many))
            elif which == 2:  # one very long line 1
                lines[0] = b"i" * rng.choice([257, 4096, 1 << 20])
                add("huge", request(lines))
            else:  # a long path
                lines[3] = b"/" + b"p" * rng.choice([256, 1000, 100000])
                add("huge", request(lines))
        else:  # args
            what = rng.randrange(8)
            payload = rng.choice(shell_payloads(canary) + CONTROL + BAD_UTF8)
            if what == 0:  # control byte before the body
                arg = b' -X POST -H "x-a: ' + _word(rng) + rng.choice(CONTROL) + _word(rng) + b'"'
            elif what == 1:  # invalid UTF-8 in a header value
                arg = b' -X POST -H "x-a: ' + rng.choice(BAD_UTF8) + b'"'
            elif what == 2:  # a bad header name
                arg = (
                    b' -X POST -H "'
                    + _word(rng, 3)
                    + rng.choice([b"(", b")", b"/", b"@", b"[", b"=", b"{", b",", b";", b"\xc3\xa9"])
                    + b': v"'
                )
            elif what == 3:  # a word outside -X/-H/-d
                arg = b" -X POST " + payload.replace(b" ", b"") + b' -H "a: b"'
                if not payload.replace(b" ", b"").strip(b" \t") or payload.replace(b" ", b"").strip(
                    b" \t"
                ) in (b"-d",):
                    continue
            elif what == 4:  # a method that is not one
                arg = b" -X " + rng.choice(
                    [_word(rng).upper() + b"X", payload.replace(b" ", b"_"), b"GET;", b"POST\r"]
                )
            elif what == 5:  # -X / -H without value at the end
                arg = b' -H "a: b"' + rng.choice([b" -X", b" -H", b" -X -H", b" -X -d"])
            elif what == 6:  # no colon in a header
                arg = b' -X POST -H "' + _word(rng) + payload.replace(b":", b"") + b'"'
                if b"\x00" in payload or b"\r" in payload:
                    pass  # still invalid (control byte)
            else:  # a duplicate -X
                arg = b" -X POST -X " + rng.choice([b"GET", b"POST", b"PUT"])
            add("args", request(lines, arg, None if rng.random() < 0.5 else b"{}"))
    return cases


def test_corpus_is_big_and_covers_every_kind(tmp_path: Path) -> None:
    cases = corpus(tmp_path, CORPUS_SIZE)
    assert len(cases) >= 10_000
    kinds = Counter(c.kind for c in cases)
    for kind in ("control", "lines", "args", "huge", "unknown", "field1", "field2", "field3", "field4"):
        assert kinds[kind] >= 50, kinds
    blob = b"".join(c.command for c in cases)
    for needle in (b"$(", b"`", b"../", b"\x00", b"\r", b"\xff", b";", b"|"):
        assert needle in blob, needle
    assert max(len(c.command) for c in cases) >= 1 << 20


# --- in-process bulk -------------------------------------------------------------


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_ten_thousand_bad_commands_in_process(
    world: tuple[Path, FakeBackend, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, backend, canary = world
    monkeypatch.chdir(canary)  # a relative path written anywhere would land here
    outside = tree(tmp_path)
    statuses: Counter[int] = Counter()
    cases = corpus(canary, CORPUS_SIZE)
    for case in cases:
        out = run_inproc(case.command, home, case.stdin)
        try:
            ans = assert_error_answer(out, case.expect)
        except (AssertionError, ValueError, KeyError) as e:
            raise AssertionError(f"{case!r}: {e}\n{out[:400]!r}") from None
        statuses[ans.status] += 1
    assert backend.connections == 0, backend.received[:3]
    assert request_rows(home) == []  # invalid / unknown requests are not recorded
    assert list(canary.iterdir()) == []
    new = tree(tmp_path) - outside
    assert all(p.startswith("home") for p in new), sorted(new)[:10]
    assert sum(statuses.values()) == len(cases) >= 10_000
    print(f"in-process bad inputs answered correctly: {len(cases)} {dict(statuses)}")


def test_nul_bytes_are_refused_in_process(world: tuple[Path, FakeBackend, Path]) -> None:
    home, backend, _ = world
    rng = random.Random(3)
    for where in range(5):
        lines = good_lines(rng)
        if where < 4:
            lines[where] = lines[where][:3] + b"\x00" + lines[where][3:]
            cmd = request(lines)
        else:
            cmd = request(lines, b' -X POST -H "x-a: a\x00b"', None)
        assert_error_answer(run_inproc(cmd, home))
    assert backend.connections == 0


def nasty_valid(canary: Path, n: int, seed: int = 99) -> list[tuple[bytes, bytes, bytes]]:
    """(command, expected header value, expected body): valid requests carrying shell syntax."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        payload = rng.choice(shell_payloads(canary)).replace(b"\t", b" ")
        payload = payload.strip(b'"').strip() or b"x"
        body = rng.choice(shell_payloads(canary)) + rng.choice(
            [b"", b"\x00", b"\xff\xfe", b"\r", "é".encode()]
        )
        lines = good_lines(rng)
        lines[0] = b"nasty-%d" % i
        cmd = request(
            lines,
            b' -X POST -H "x-case: %d" -H "x-payload: ' % i + payload + b'" -H "content-type: text/plain"',
            body,
        )
        out.append((cmd, payload, body))
    return out


def test_shell_syntax_in_valid_requests_is_forwarded_verbatim_never_evaluated(
    world: tuple[Path, FakeBackend, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, backend, canary = world
    monkeypatch.chdir(canary)
    cases = nasty_valid(canary, 200)
    for cmd, _, _ in cases:
        ans = parse_http(run_inproc(cmd, home))
        assert ans.status == 200, ans.body
    assert list(canary.iterdir()) == []
    assert len(backend.received) == len(cases)
    got = {}
    for head, body in backend.received:
        fields = dict(ln.split(b": ", 1) for ln in head.split(b"\r\n")[1:])
        got[int(fields[b"x-case"])] = (fields[b"x-payload"], body)
    for i, (_, payload, body) in enumerate(cases):
        assert got[i] == (payload, body)
    rows = request_rows(home)
    assert len(rows) == len(cases) and all(r["outcome"] == "ok" for r in rows)


# --- the real process -------------------------------------------------------------


def spread(cases: list[Case], n: int) -> list[Case]:
    """n cases spread over every kind (round robin), small enough for an environment variable."""
    by_kind: dict[str, list[Case]] = {}
    for c in cases:
        if b"\x00" not in c.command and len(c.command) < 120_000:  # execve: no NUL, MAX_ARG_STRLEN 128 KiB
            by_kind.setdefault(c.kind, []).append(c)
    picked: list[Case] = []
    while len(picked) < n and any(by_kind.values()):
        for kind in sorted(by_kind):
            if by_kind[kind] and len(picked) < n:
                picked.append(by_kind[kind].pop(0))
    return picked


def test_bad_commands_through_the_real_forced_command(
    world: tuple[Path, FakeBackend, Path], tmp_path: Path
) -> None:
    home, backend, canary = world
    outside = tree(tmp_path)
    cases = spread(corpus(canary, 2000, seed=7), PROCESS_SAMPLE)
    assert len(cases) == PROCESS_SAMPLE and len({c.kind for c in cases}) >= 9

    def one(case: Case) -> tuple[Case, subprocess.CompletedProcess[bytes]]:
        return case, run_process(case.command, home, case.stdin, cwd=canary)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, cases))
    for case, r in results:
        try:
            assert_error_answer(r.stdout, case.expect)
        except (AssertionError, ValueError, KeyError) as e:
            raise AssertionError(
                f"{case!r}: {e}\nstdout={r.stdout[:300]!r}\nstderr={r.stderr[:300]!r}"
            ) from None
        assert b"Traceback" not in r.stderr, r.stderr
    assert backend.connections == 0
    assert request_rows(home) == []
    assert list(canary.iterdir()) == []
    new = tree(tmp_path) - outside
    assert all(p.startswith("home") for p in new), sorted(new)[:10]


def test_nul_cannot_reach_the_process_and_a_truncated_command_is_refused(
    world: tuple[Path, FakeBackend, Path],
) -> None:
    """execve refuses NUL in the environment, and sshd takes the command as a C
    string: at most the part before the NUL arrives. That part is refused."""
    home, backend, _ = world
    rng = random.Random(5)
    lines = good_lines(rng)
    cmd = request([lines[0], lines[1][:4] + b"\x00" + lines[1][4:], lines[2], lines[3]])
    with pytest.raises(ValueError, match="null byte"):
        run_process(cmd, home)
    truncated = cmd.split(b"\x00", 1)[0]
    r = run_process(truncated, home)
    assert_error_answer(r.stdout)
    assert backend.connections == 0


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set (VmHWM) of a running process, in KiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_a_body_larger_than_memory_allows_is_streamed_not_buffered(
    world: tuple[Path, FakeBackend, Path],
) -> None:
    """128 MiB on stdin: forwarded whole while the handler stays small (it must stream)."""
    home, backend, _ = world
    size = 128 << 20
    lines = good_lines(random.Random(11))
    cmd = request(lines, b' -X POST -H "content-type: application/octet-stream"', None)
    env = {k.encode(): v.encode() for k, v in process_env(home).items()}
    env[b"SSH_ORIGINAL_COMMAND"] = cmd

    proc = subprocess.Popen(
        interface_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None and proc.stdout is not None
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    peak = 0  # VmHWM: the peak resident set of the handler's own image (after exec)
    block = b"x" * (1 << 20)
    for i in range(size >> 20):
        proc.stdin.write(block)
        if i % 8 == 0:
            peak = max(peak, vm_hwm_kib(proc.pid))
    proc.stdin.flush()
    peak = max(peak, vm_hwm_kib(proc.pid))
    proc.stdin.close()
    reader.join(120)
    proc.wait(30)
    assert parse_http(out[0]).status == 200
    assert len(backend.received) == 1 and len(backend.received[0][1]) == size
    assert 0 < peak < 100 * 1024, f"handler peak RSS {peak} KiB for a {size >> 20} MiB body"
    [row] = request_rows(home)
    assert row["bytes_in"] == size and row["outcome"] == "ok"
