"""Checks of the forced-command account: its shell's start-up cost and its authorized_keys line.

sshd runs a forced command as ``$SHELL -c COMMAND`` with the account's login
shell, once per request. bash, started by sshd (``SSH_CLIENT`` set, shell
level below 2), reads ``~/.bashrc`` even though it is not interactive, so
whatever that file does is paid on every request.
"""

from __future__ import annotations

import os
import re
import shlex
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .result import CheckResult, failed, passed

SHELL_THRESHOLD = 0.020  # seconds of extra start-up per request that make a ✗
SHELL_RUNS = 5
_RUN_TIMEOUT = 10.0


# --- shell start-up ----------------------------------------------------------


def _sshd_env(shell: str, home: str, user: str) -> dict[str, str]:
    """About the environment sshd gives a forced command."""
    return {
        "HOME": home,
        "SHELL": shell,
        "USER": user,
        "LOGNAME": user,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "SSH_CLIENT": "127.0.0.1 1 22",
        "SSH_CONNECTION": "127.0.0.1 1 127.0.0.1 22",
    }


def bare_argv(shell: str) -> list[str] | None:
    """The shell told to read no start-up file; None when it has no such option."""
    base = os.path.basename(shell)
    if base == "bash":
        return [shell, "--norc", "--noprofile", "-c", "true"]
    if base == "zsh":
        return [shell, "-f", "-c", "true"]
    return None


@dataclass(frozen=True)
class ShellRun:
    seconds: float
    returncode: int
    stdout: str
    stderr: str


def _run(argv: Sequence[str], env: dict[str, str], cwd: str) -> ShellRun:
    start = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=_RUN_TIMEOUT,
        check=False,
    )
    return ShellRun(time.perf_counter() - start, proc.returncode, proc.stdout, proc.stderr)


@dataclass(frozen=True)
class StartupCost:
    as_sshd: float  # median seconds of `SHELL -c true` started as sshd starts it
    bare: float  # median seconds with no start-up file read
    first: ShellRun  # the first run as sshd (exit status, output)

    @property
    def extra(self) -> float:
        return max(0.0, self.as_sshd - self.bare)


def measure_startup(shell: str, home: str, user: str, runs: int = SHELL_RUNS) -> StartupCost:
    """Median time of ``SHELL -c true`` as sshd starts it, and with no start-up file
    (``--norc --noprofile`` for bash, ``-f`` for zsh, an empty HOME otherwise); runs interleaved."""
    env = _sshd_env(shell, home, user)
    bare = bare_argv(shell)
    with tempfile.TemporaryDirectory(prefix="saia-doctor-") as empty:
        bare_env = env if bare is not None else {**env, "HOME": empty}
        bare = bare or [shell, "-c", "true"]
        sshd_argv = [shell, "-c", "true"]
        first = _run(sshd_argv, env, home)  # also warms the caches
        _run(bare, bare_env, home)
        as_sshd, plain = [], []
        for _ in range(runs):
            as_sshd.append(_run(sshd_argv, env, home).seconds)
            plain.append(_run(bare, bare_env, home).seconds)
    return StartupCost(statistics.median(as_sshd), statistics.median(plain), first)


def _startup_files(shell: str, home: str) -> str:
    base = os.path.basename(shell)
    if base == "bash":
        return os.path.join(home, ".bashrc")
    if base == "zsh":
        return os.path.join(home, ".zshenv")
    return f"the start-up files of {shell} in {home}"


def check_shell_startup(
    shell: str, home: str, user: str, threshold: float = SHELL_THRESHOLD, runs: int = SHELL_RUNS
) -> CheckResult:
    """The account's shell adds less than ``threshold`` per request and prints nothing."""
    name = "shell start-up"
    if not os.path.isfile(shell) or not os.access(shell, os.X_OK):
        return failed(
            name,
            f"the account's shell {shell} is not an executable file: sshd runs the forced command with it",
            "give the account a shell such as /bin/bash (chsh)",
        )
    if not os.path.isdir(home):
        return failed(name, f"the account's home {home} is not a folder", "create it, or pass --account-home")
    try:
        cost = measure_startup(shell, home, user, runs)
    except (OSError, subprocess.SubprocessError) as e:
        return failed(name, f"{shell} -c true could not be run: {e}", "give the account a working shell")
    files = _startup_files(shell, home)
    if cost.first.returncode != 0:
        return failed(
            name,
            f"`{shell} -c true` as sshd runs it exits {cost.first.returncode}: sshd runs the forced "
            f"command the same way ({cost.first.stderr.strip()[:120] or 'no message'})",
            f"give the account a shell that runs commands (not nologin/false), and check {files}",
        )
    if cost.first.stdout:
        return failed(
            name,
            f"{files} prints {cost.first.stdout[:40]!r} for a non-interactive shell: it ends "
            "up in front of every answer",
            f"print nothing from {files} when the shell is not interactive",
        )
    detail = (
        f"{shell}: {cost.extra * 1000:.0f} ms of start-up files per request "
        f"({cost.as_sshd * 1000:.0f} ms as sshd starts it, {cost.bare * 1000:.0f} ms without them)"
    )
    if cost.extra > threshold:
        return failed(
            name,
            f"{detail}, more than {threshold * 1000:.0f} ms",
            f"keep {files} empty for non-interactive shells"
            + (": start it with `[[ $- == *i* ]] || return`" if files.endswith(".bashrc") else ""),
        )
    return passed(name, detail)


# --- authorized_keys ---------------------------------------------------------

_KEY_TYPE = re.compile(r"^(ssh-|ecdsa-|sk-|rsa-sha2-)")
# Options that `restrict` turns off, and those that turn one back on after it.
NO_OPTIONS = ("no-port-forwarding", "no-x11-forwarding", "no-agent-forwarding", "no-pty")
_REENABLE = ("port-forwarding", "x11-forwarding", "agent-forwarding", "pty", "user-rc")


class KeyLineError(ValueError):
    """An authorized_keys line sshd would not accept."""


@dataclass(frozen=True)
class KeyLine:
    """One key of an authorized_keys file."""

    number: int  # line number in the file
    options: tuple[tuple[str, str | None], ...]  # (lower-cased name, unquoted value or None), in order
    key: str  # key type, key and comment

    def option(self, name: str) -> str | None:
        for n, value in self.options:
            if n == name:
                return value
        return None

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.options)


def split_options(text: str) -> tuple[list[tuple[str, str | None]], str]:
    """The options in front of a key, as sshd reads them, and the rest of the line.

    Options are separated by commas up to the first blank outside quotes; a
    value is ``name="..."`` with ``\\"`` for a quote inside.
    """
    options: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while True:
        start = i
        while i < n and text[i] not in '=, \t"':
            i += 1
        name = text[start:i].lower()
        if not name:
            raise KeyLineError("an empty option")
        value: str | None = None
        if i < n and text[i] == "=":
            if i + 1 >= n or text[i + 1] != '"':
                raise KeyLineError(f"option {name} needs a quoted value")
            i += 2
            chars = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] == '"':
                    i += 1
                chars.append(text[i])
                i += 1
            if i >= n:
                raise KeyLineError(f"option {name}: the quote is not closed")
            i += 1
            value = "".join(chars)
        options.append((name, value))
        if i < n and text[i] == ",":
            i += 1
            continue
        if i < n and text[i] not in " \t":
            raise KeyLineError(f"unexpected {text[i]!r} after option {name}")
        return options, text[i:].strip()


def parse_authorized_keys(text: str) -> list[KeyLine | KeyLineError]:
    """Every key line of an authorized_keys file (comments and blank lines skipped)."""
    out: list[KeyLine | KeyLineError] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _KEY_TYPE.match(line):
            out.append(KeyLine(number, (), line))
            continue
        try:
            options, rest = split_options(line)
        except KeyLineError as e:
            out.append(KeyLineError(f"line {number}: {e}"))
            continue
        out.append(KeyLine(number, tuple(options), rest))
    return out


def is_restricted(line: KeyLine) -> tuple[bool, str]:
    """Whether the key may open nothing but its command; and why not."""
    if line.has("restrict"):
        names = [n for n, _ in line.options]
        after = names[names.index("restrict") + 1 :]
        back = [n for n in after if n in _REENABLE]
        if back:
            return False, f"restrict is undone by {', '.join(back)}"
        return True, "restrict"
    missing = [o for o in NO_OPTIONS if not line.has(o)]
    if missing:
        return False, f"neither restrict nor {', '.join(missing)}"
    return True, ",".join(NO_OPTIONS)


def command_parts(command: str) -> tuple[dict[str, str], str | None]:
    """The variables a forced command sets in front of it, and the program it runs."""
    try:
        words = shlex.split(command)
    except ValueError:
        return {}, None
    assignments: dict[str, str] = {}
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        if eq and name.isidentifier():
            assignments[name] = value
            continue
        if word in ("exec", "env") and i + 1 < len(words):
            continue
        return assignments, word
    return assignments, None


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check_authorized_keys(path: str, forced_command: str, saia_home: str | None) -> CheckResult:
    """A line of ``path`` runs this installation's forced command, restricted, with its SAIA_HOME.

    Every line that runs a ``cloud_interface.sh`` must be restricted. Lines whose
    SAIA_HOME is another state directory belong to another installation and are
    left alone; a line of this one (its SAIA_HOME, or any when it is not known)
    must run this installation's command.
    """
    name = "authorized_keys"
    example = (
        f'restrict,command="SAIA_HOME={saia_home or "/path/to/state"} {forced_command}" ssh-ed25519 AAAA... '
        "(`saia-ctl ssh authorized-key` prints it for a key)"
    )
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return failed(name, f"no file {path}", f"add the cloud server's key to it: {example}")
    except OSError as e:
        return failed(
            name, f"cannot read {path}: {e.strerror}", "pass the file sshd reads with --authorized-keys"
        )
    candidates = []
    broken = []
    for line in parse_authorized_keys(text):
        if isinstance(line, KeyLineError):
            broken.append(str(line))
            continue
        command = line.option("command")
        if command is not None and "cloud_interface.sh" in command:
            candidates.append((line, command))
    if not candidates:
        seen = f" ({'; '.join(broken)})" if broken else ""
        return failed(name, f"no line of {path} runs cloud_interface.sh{seen}", f"add a line: {example}")
    problems: list[str] = []
    ours: list[int] = []
    others: list[str] = []
    for line, command in candidates:
        where = f"line {line.number}"
        restricted, why = is_restricted(line)
        if not restricted:
            problems.append(f"{where}: {why}")
        env, program = command_parts(command)
        home = env.get("SAIA_HOME")
        if program is None:
            problems.append(f"{where}: cannot read the command {command!r}")
            continue
        if home is None:
            problems.append(f"{where}: the command sets no SAIA_HOME")
            continue
        if saia_home is not None and not _same_file(home, saia_home):
            others.append(f"{where} runs {program} with SAIA_HOME={home}")
            continue
        ours.append(line.number)
        if not _same_file(program, forced_command):
            problems.append(f"{where}: runs {program}, not this installation's {forced_command}")
    if not ours:
        seen = f" ({'; '.join(others)})" if others else ""
        problems.append(f"no line runs it with SAIA_HOME={saia_home}{seen}")
    if problems:
        return failed(name, f"{path}: " + "; ".join(problems), f"make the line: {example}")
    numbers = ", ".join(str(n) for n in ours)
    other = f"; {len(others)} line(s) of other state directories" if others else ""
    return passed(name, f"{path} line {numbers}: restricted, runs {forced_command}{other}")
