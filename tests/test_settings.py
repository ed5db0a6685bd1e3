"""Settings: one registry, every value parsed and checked when loaded."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from saia_ctl.errors import SaiaError
from saia_ctl.settings import SETTINGS, Settings, SettingsError, markdown
from tests.support.paths import REPO


def load(tmp_path: Path, **env: str) -> Settings:
    return Settings(home=str(tmp_path), environ=env)


def test_a_retired_setting_is_ignored_and_named_not_an_error(tmp_path: Path) -> None:
    """SAIA_FORWARDER was removed: a saia.conf that still sets it (whatever the value)
    loads, unlike one with an unknown name, and the settings say it is there."""
    assert load(tmp_path).retired == []
    assert load(tmp_path, SAIA_FORWARDER="on").retired == ["SAIA_FORWARDER"]
    (tmp_path / "saia.conf").write_text("SAIA_FORWARDER=maybe\nSAIA_TICK_INTERVAL=7\n")
    s = load(tmp_path)
    assert s.retired == ["SAIA_FORWARDER"] and s.tick_interval == 7.0
    assert not hasattr(s, "forwarder") and "SAIA_FORWARDER" not in {x.name for x in SETTINGS}
    assert "SAIA_FORWARDER" not in markdown()
    (tmp_path / "saia.conf").write_text("SAIA_FORWARDR=on\n")
    with pytest.raises(SettingsError, match=r"not a known SAIA_ setting: 'SAIA_FORWARDR'"):
        load(tmp_path)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SAIA_BUSY_TIMEOUT", "soon"),
        ("SAIA_BUSY_TIMEOUT", "nan"),
        ("SAIA_SLURM_TIMEOUT", "0.5"),
        ("SAIA_TICK_INTERVAL", "-1"),
        ("SAIA_PROBE_TIMEOUT", "0"),
        ("SAIA_JOURNAL_MODE", "fast"),
        ("SAIA_JOB_PREFIX", "a b"),
        ("SAIA_PORT_RANGE", "62000-61000"),
        ("SAIA_PORT_RANGE", "80"),
        ("SAIA_DB_URL", "postgresql://x/y"),
        ("SAIA_ACCOUNTING_TZ", " "),
    ],
)
def test_every_bad_value_fails_when_loaded_naming_setting_and_value(
    tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(SettingsError) as e:
        load(tmp_path, **{name: value})
    message = str(e.value)
    assert message.startswith(name) and repr(value) in message and "\n" not in message
    assert isinstance(e.value, SaiaError)


def test_values_are_typed(tmp_path: Path) -> None:
    s = load(tmp_path, SAIA_JOURNAL_MODE="WAL", SAIA_BUSY_TIMEOUT="7", SAIA_PORT_RANGE="40001-40003")
    assert (s.journal_mode, s.busy_timeout, s.port_range) == ("wal", 7.0, (40001, 40003))
    assert s.db_path == str(tmp_path / "saia.db")
    assert s.python == sys.executable and s.slurm_bin == ""


def test_the_zone_is_looked_up_when_used(tmp_path: Path) -> None:
    s = load(tmp_path, SAIA_ACCOUNTING_TZ="Mars/Olympus")  # the request path never asks
    with pytest.raises(SettingsError, match="SAIA_ACCOUNTING_TZ must be a time zone"):
        _ = s.accounting_tz
    assert load(tmp_path, SAIA_ACCOUNTING_TZ="Europe/Berlin").accounting_tz == "Europe/Berlin"


def test_every_registry_entry_fills_a_declared_attribute() -> None:
    declared = typing.get_type_hints(Settings)
    assert sorted(s.attr for s in SETTINGS) == sorted(declared)


def test_defaults_parse(tmp_path: Path) -> None:
    s = load(tmp_path)
    for setting in SETTINGS:
        if setting.name != "SAIA_HOME":
            assert getattr(s, setting.attr) == setting.parse(setting.name, setting.default)


def test_markdown_command_prints_the_table() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "saia_ctl.settings", "--markdown"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    assert r.stdout == markdown()
    assert all(f"| `{s.name}` |" in r.stdout for s in SETTINGS)


def test_loading_settings_imports_no_typing() -> None:
    """The request path loads the settings on every request: they stay cheap."""
    code = "import sys, saia_ctl.settings; assert 'typing' not in sys.modules, 'typing imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
