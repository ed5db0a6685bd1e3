"""Shell completion: `saia-ctl --show-completion` prints a script that bash runs to complete."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.paths import REPO

BIN = REPO / ".venv" / "bin"


def completion_env() -> dict[str, str]:
    # Typer's own switch: take the shell from the argument instead of guessing it from the
    # process tree (which, under pytest, is not an interactive shell).
    env = dict(os.environ, SHELL="/bin/bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_show_completion_prints_a_bash_script_for_saia_ctl() -> None:
    r = subprocess.run(
        [str(BIN / "saia-ctl"), "--show-completion", "bash"],
        capture_output=True, text=True, timeout=60, env=completion_env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "complete -o default -F _saia_ctl_completion saia-ctl" in r.stdout
    assert "_SAIA_CTL_COMPLETE=complete_bash" in r.stdout
    help_text = subprocess.run(
        [str(BIN / "saia-ctl"), "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_and_options_with_the_script() -> None:
    script = """
source <(saia-ctl --show-completion bash)
complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _saia_ctl_completion saia-ctl;
  printf '%s\\n' "${COMPREPLY[@]}"; echo --; }
complete_words saia-ctl rep
complete_words saia-ctl report --wi
complete_words saia-ctl report --format ''
"""
    r = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, env=completion_env()
    )
    assert r.returncode == 0, r.stderr
    commands, options, formats, _ = r.stdout.split("--\n")
    assert commands.split() == ["report"]
    assert options.split() == ["--wide"]
    assert formats.split() == ["table", "json", "csv", "markdown", "html"]
