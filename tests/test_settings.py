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


@pytest.mark.parametrize(
    ("text", "on"),
    [
        *[("on", True), ("YES", True), ("True", True), ("1", True), (" on ", True)],
        *[("off", False), ("No", False), ("FALSE", False), ("0", False)],
    ],
)
def test_flags_take_the_usual_spellings(tmp_path: Path, text: str, on: bool) -> None:
    s = load(tmp_path, SAIA_FORWARDER=text)
    assert s.forwarder is on
    assert s.raw("SAIA_FORWARDER") == ("on" if on else "off")  # what the request path reads


@pytest.mark.parametrize("text", ["enabled", "y", "2", "onn"])
def test_an_unknown_flag_is_an_error_not_off(tmp_path: Path, text: str) -> None:
    with pytest.raises(SettingsError) as e:
        load(tmp_path, SAIA_FORWARDER=text)
    assert str(e.value) == f"SAIA_FORWARDER must be on or off (yes/no, true/false, 1/0), not {text!r}"


def test_a_bad_flag_in_saia_conf_is_an_error_too(tmp_path: Path) -> None:
    (tmp_path / "saia.conf").write_text("SAIA_FORWARDER=sure\n")
    with pytest.raises(SettingsError, match=r"SAIA_FORWARDER .* not 'sure'"):
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
    assert s.db_path == str(tmp_path / "saia.db") and s.forwarder is False
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
