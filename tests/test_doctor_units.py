"""`saia-ctl doctor`'s pure parts: mounts, journal verdict, authorized_keys lines, the sbatch argv."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from saia_ctl.doctor.account import (
    KeyLine,
    KeyLineError,
    check_authorized_keys,
    command_parts,
    is_restricted,
    parse_authorized_keys,
    split_options,
)
from saia_ctl.doctor.database import header_is_wal, journal_verdict
from saia_ctl.doctor.filesystems import is_network_fs, mount_of, parse_mounts
from saia_ctl.install_paths import forced_command_path
from saia_ctl.scheduler.apply import SUBMIT_ARGS, submit_place
from saia_ctl.settings import Settings
from saia_ctl.slurm import RealSlurm
from tests.support.paths import REPO

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw,relatime 0 0
fs1:/export/home /home nfs4 rw,vers=4.2 0 0
10.0.0.5@o2ib:/scratch /scratch lustre rw,flock 0 0
/dev/sdb1 /home/local ext4 rw 0 0
sshfs#me@host: /mnt/remote fuse.sshfs rw 0 0
server:/with\\040space /mnt/with\\040space nfs rw 0 0
gpfs0 /gpfs gpfs rw 0 0
overlay /var/lib/x fuse.fuse-overlayfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "mount_point", "fs_type"),
    [
        ("/", "/", "ext4"),
        ("/var/tmp/saia", "/", "ext4"),
        ("/home", "/home", "nfs4"),
        ("/home/alice/saia", "/home", "nfs4"),
        ("/homework", "/", "ext4"),  # a prefix of the name, not of the path
        ("/home/local/saia", "/home/local", "ext4"),  # the longest mount point wins
        ("/scratch/state", "/scratch", "lustre"),
        ("/mnt/remote/db", "/mnt/remote", "fuse.sshfs"),
        ("/mnt/with space/db", "/mnt/with space", "nfs"),  # \040 unescaped
        ("/gpfs/projects/saia", "/gpfs", "gpfs"),
    ],
)
def test_mount_of_finds_the_longest_mount_point(path: str, mount_point: str, fs_type: str) -> None:
    m = mount_of(path, MOUNTS)
    assert m is not None
    assert (m.mount_point, m.fs_type) == (mount_point, fs_type)


def test_a_later_mount_on_the_same_point_hides_the_earlier() -> None:
    text = "/dev/vda /data ext4 rw 0 0\nfs:/x /data nfs rw 0 0\n"
    m = mount_of("/data/saia.db", text)
    assert m is not None and m.fs_type == "nfs"


def test_mounts_text_with_garbage_lines_and_none() -> None:
    assert parse_mounts("garbage\n\n/dev/a /b ext4 rw 0 0\n")[0].mount_point == "/b"
    assert mount_of("/x", "") is None


@pytest.mark.parametrize(
    "fs_type", ["nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "fuse.sshfs"]
)
def test_network_filesystems(fs_type: str) -> None:
    assert is_network_fs(fs_type)


@pytest.mark.parametrize(
    "fs_type", ["ext4", "xfs", "btrfs", "tmpfs", "zfs", "overlay", "fuse.fuse-overlayfs"]
)
def test_local_filesystems(fs_type: str) -> None:
    assert not is_network_fs(fs_type)


def test_wal_on_a_network_filesystem_is_an_error_with_the_reason() -> None:
    r = journal_verdict("wal", False, "/home/alice/state", "nfs4")
    assert not r.ok
    assert "shared memory" in r.detail and "nfs4" in r.detail
    assert "SAIA_JOURNAL_MODE=delete" in r.fix


def test_a_wal_file_on_a_network_filesystem_is_an_error_too() -> None:
    r = journal_verdict("delete", True, "/scratch/state", "lustre")
    assert not r.ok and "the file's" in r.detail


@pytest.mark.parametrize(
    ("mode", "file_wal", "fs"), [("delete", False, "nfs"), ("wal", False, "ext4"), ("truncate", True, "xfs")]
)
def test_journal_modes_that_fit(mode: str, file_wal: bool, fs: str) -> None:
    assert journal_verdict(mode, file_wal, "/state", fs).ok


def test_header_is_wal() -> None:
    header = bytearray(b"SQLite format 3\x00" + bytes(84))
    assert not header_is_wal(bytes(header))
    header[18] = header[19] = 2
    assert header_is_wal(bytes(header))
    assert not header_is_wal(b"")


# --- authorized_keys -----------------------------------------------------------


def test_split_options_reads_quotes_commas_and_escapes() -> None:
    options, rest = split_options(
        'restrict,command="A=1 /x/cloud_interface.sh \\"q\\", b",from="10.0.0.1,10.0.0.2" ssh-ed25519 AAAA c'
    )
    assert options == [
        ("restrict", None),
        ("command", 'A=1 /x/cloud_interface.sh "q", b'),
        ("from", "10.0.0.1,10.0.0.2"),
    ]
    assert rest == "ssh-ed25519 AAAA c"


@pytest.mark.parametrize(
    "text", ['command="unclosed ssh-ed25519 AAAA', "command=bare ssh-ed25519 AAAA", ",x k"]
)
def test_split_options_refuses_what_sshd_refuses(text: str) -> None:
    with pytest.raises(KeyLineError):
        split_options(text)


def test_parse_authorized_keys_skips_comments_and_keeps_line_numbers() -> None:
    lines = parse_authorized_keys(
        '# comment\n\nssh-ed25519 AAAA plain\nno-pty,command="x" ssh-rsa BBBB c\ncommand="oops\n'
    )
    assert isinstance(lines[0], KeyLine) and lines[0].number == 3 and lines[0].options == ()
    assert isinstance(lines[1], KeyLine) and lines[1].number == 4 and lines[1].option("command") == "x"
    assert isinstance(lines[2], KeyLineError) and "line 5" in str(lines[2])


@pytest.mark.parametrize(
    ("options", "ok"),
    [
        ("restrict", True),
        ("RESTRICT", True),  # sshd's option names are case-insensitive
        ("no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty", True),
        ("no-port-forwarding,no-agent-forwarding,no-pty", False),
        ("restrict,pty", False),
        ("pty,restrict", True),
        ('from="1.2.3.4"', False),
    ],
)
def test_is_restricted(options: str, ok: bool) -> None:
    (line,) = parse_authorized_keys(f'{options},command="c" ssh-ed25519 AAAA')
    assert isinstance(line, KeyLine)
    assert is_restricted(line)[0] is ok


@pytest.mark.parametrize(
    ("command", "env", "program"),
    [
        (
            "SAIA_HOME=/s /opt/saia/bin/cloud_interface.sh",
            {"SAIA_HOME": "/s"},
            "/opt/saia/bin/cloud_interface.sh",
        ),
        ("/x/cloud_interface.sh", {}, "/x/cloud_interface.sh"),
        ("SAIA_HOME='/a b' exec '/p q/cloud_interface.sh'", {"SAIA_HOME": "/a b"}, "/p q/cloud_interface.sh"),
        (
            "env SAIA_HOME=/s A=1 /x/cloud_interface.sh",
            {"SAIA_HOME": "/s", "A": "1"},
            "/x/cloud_interface.sh",
        ),
        ("SAIA_HOME='unclosed /x", {}, None),
    ],
)
def test_command_parts(command: str, env: dict[str, str], program: str | None) -> None:
    assert command_parts(command) == (env, program)


def _keys(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "authorized_keys"
    path.write_text("".join(f"{x}\n" for x in lines))
    return str(path)


def test_authorized_keys_good_line(tmp_path: Path) -> None:
    fc = "/opt/saia/bin/cloud_interface.sh"
    path = _keys(
        tmp_path, "ssh-ed25519 AAAA admin", f'restrict,command="SAIA_HOME=/state {fc}" ssh-ed25519 BBBB cloud'
    )
    r = check_authorized_keys(path, fc, "/state")
    assert r.ok, r.detail
    assert "line 2" in r.detail


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('command="SAIA_HOME=/state /opt/saia/bin/cloud_interface.sh" ssh-ed25519 BBBB', "neither restrict"),
        (
            'restrict,pty,command="SAIA_HOME=/state /opt/saia/bin/cloud_interface.sh" ssh-ed25519 B',
            "undone by pty",
        ),
        (
            'restrict,command="SAIA_HOME=/state /old/checkout/cloud_interface.sh" ssh-ed25519 BBBB',
            "runs /old/checkout",
        ),
        ('restrict,command="/opt/saia/bin/cloud_interface.sh" ssh-ed25519 BBBB', "sets no SAIA_HOME"),
        (
            'restrict,command="SAIA_HOME=/other /opt/saia/bin/cloud_interface.sh" ssh-ed25519 B',
            "SAIA_HOME=/other",
        ),
    ],
)
def test_authorized_keys_bad_lines(tmp_path: Path, line: str, problem: str) -> None:
    r = check_authorized_keys(_keys(tmp_path, line), "/opt/saia/bin/cloud_interface.sh", "/state")
    assert not r.ok
    assert problem in r.detail
    assert "restrict,command=" in r.fix


def test_authorized_keys_without_our_line_or_file(tmp_path: Path) -> None:
    r = check_authorized_keys(_keys(tmp_path, "ssh-ed25519 AAAA admin"), "/x/cloud_interface.sh", "/s")
    assert not r.ok and "no line" in r.detail
    r = check_authorized_keys(str(tmp_path / "absent"), "/x/cloud_interface.sh", "/s")
    assert not r.ok and "no file" in r.detail


def test_forced_command_path_of_a_checkout_is_its_own_script() -> None:
    assert forced_command_path() == REPO / "cloud_interface.sh"
    assert forced_command_path().is_absolute()


# --- the sbatch argv ---------------------------------------------------------------


def test_test_submit_runs_the_argv_submit_runs_with_test_only(tmp_path: Path) -> None:
    """A recording stand-in for sbatch: doctor tests exactly what the tick submits."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    fake = bin_dir / "sbatch"
    fake.write_text(
        f'#!/bin/bash\nprintf "%s\\n" "$*" >> {log}\n'
        'if [[ $1 == --test-only ]]; then echo "sbatch: Job 7 to start at now on nodes n1" >&2; else echo 7; fi\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    settings = Settings(home=str(tmp_path), environ={"SAIA_SLURM_BIN": str(bin_dir)})
    slurm = RealSlurm(settings)
    place = submit_place(settings)
    kwargs = {
        "name": "saia_1_svc",
        "port": 61001,
        "env": {},
        "workdir": place.workdir,
        "output": place.output,
        "extra_args": place.extra_args,
    }
    assert slurm.submit("/s/job.sbatch", **kwargs) == 7  # type: ignore[arg-type]
    assert "Job 7 to start" in slurm.test_submit("/s/job.sbatch", **kwargs)  # type: ignore[arg-type]
    submitted, tested = log.read_text().splitlines()
    assert tested == "--test-only " + submitted
    assert all(a in submitted.split() for a in SUBMIT_ARGS)
    assert f"--chdir={settings.jobs_dir}" in submitted.split()
    assert os.path.basename(submitted.split()[-2]) == "job.sbatch"


def test_a_real_wal_file_is_seen_from_its_header(tmp_path: Path) -> None:
    import sqlite3

    from saia_ctl.doctor.database import check_journal_mode, read_header

    db = tmp_path / "x.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    assert header_is_wal(read_header(str(db)))
    mounts = f"/dev/vda / ext4 rw 0 0\nfiler:/v {os.path.realpath(tmp_path)} nfs rw 0 0\n"
    r = check_journal_mode(str(db), "delete", mounts)
    assert not r.ok and "the file's journal mode is wal" in r.detail


def test_free_space_below_the_minimum(tmp_path: Path) -> None:
    from saia_ctl.doctor.database import check_free_space

    assert check_free_space(str(tmp_path / "saia.db"), 1).ok
    r = check_free_space(str(tmp_path / "saia.db"), 1 << 62)
    assert not r.ok and "database or disk is full" in r.detail


def test_port_range_counts_ports_held_by_live_jobs() -> None:
    import socket

    from saia_ctl.doctor.ports import check_port_range

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = check_port_range((port, port), {port})
    assert not r.ok and "1 held by live jobs" in r.detail
    assert check_port_range((port, port), set()).ok


def test_authorized_keys_leaves_other_installations_alone_unless_unrestricted(tmp_path: Path) -> None:
    fc = "/opt/saia/bin/cloud_interface.sh"
    other = 'restrict,command="SAIA_HOME=/test-state /opt/test/bin/cloud_interface.sh" ssh-ed25519 CCCC'
    ours = f'restrict,command="SAIA_HOME=/state {fc}" ssh-ed25519 BBBB'
    r = check_authorized_keys(_keys(tmp_path, other, ours), fc, "/state")
    assert r.ok, r.detail
    assert "line 2" in r.detail and "1 line(s) of other state directories" in r.detail
    r = check_authorized_keys(_keys(tmp_path, other.removeprefix("restrict,"), ours), fc, "/state")
    assert not r.ok and "line 1: neither restrict" in r.detail
    r = check_authorized_keys(_keys(tmp_path, other), fc, "/state")
    assert not r.ok and "no line runs it with SAIA_HOME=/state" in r.detail and "/test-state" in r.detail


def test_a_retired_setting_is_a_doctor_error_with_the_reason(tmp_path: Path) -> None:
    from saia_ctl.doctor import Options, run_checks

    (tmp_path / "saia.conf").write_text("SAIA_FORWARDER=on\n")
    checks = run_checks(Options(home=str(tmp_path), environ={}))
    settings, retired = next(checks), next(checks)
    assert settings.ok and settings.name == "settings"
    assert (retired.name, retired.ok) == ("retired settings", False)
    assert "SAIA_FORWARDER is no longer read" in retired.detail and "tunnel" in retired.detail
    assert "delete SAIA_FORWARDER from" in retired.fix
    (tmp_path / "saia.conf").write_text("")
    checks = run_checks(Options(home=str(tmp_path), environ={}))
    assert [next(checks).name, next(checks).name] == ["settings", "database"]
