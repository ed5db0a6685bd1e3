"""The README stays true: every setting and service key documented, exactly two set-up commands."""

from __future__ import annotations

import re

from saia_ctl.config import OPTIONAL_KEYS
from saia_ctl.proxy import config as proxy_config
from saia_ctl.settings import SETTINGS, markdown
from tests.support.paths import REPO

README = (REPO / "README.md").read_text()


def test_every_setting_and_service_key_is_documented() -> None:
    for s in SETTINGS:
        assert f"`{s.name}`" in README, s.name
    for k in OPTIONAL_KEYS:
        assert f"`{k.name}`" in README, k.name


def test_the_settings_table_is_the_registry_cell_for_cell() -> None:
    """The README's table is exactly ``python -m saia_ctl.settings --markdown``."""
    section = README.split("### Settings", 1)[1].split("\n#", 1)[0]
    table = "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))
    assert table == markdown(), "regenerate with: python -m saia_ctl.settings --markdown"


def test_the_proxy_options_table_is_the_declaration_cell_for_cell() -> None:
    """The README's proxy options are exactly ``python -m saia_ctl.proxy.config --markdown``."""
    section = README.split("## The cloud proxy", 1)[1].split("\n## ", 1)[0]
    table = "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))
    assert table == proxy_config.markdown(), "regenerate with: python -m saia_ctl.proxy.config --markdown"


def test_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    section = README.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
