"""The README stays true: every setting and service key documented, exactly two set-up commands."""

from __future__ import annotations

import re

from saia_ctl.config import OPTIONAL_KEYS
from saia_ctl.settings import SETTINGS
from tests.support.paths import REPO

README = (REPO / "README.md").read_text()


def test_every_setting_and_service_key_is_documented() -> None:
    for s in SETTINGS:
        assert f"`{s.name}`" in README, s.name
    for k in OPTIONAL_KEYS:
        assert f"`{k.name}`" in README, k.name


def test_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    section = README.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
