"""Which filesystem holds a path, and whether it is a network filesystem (pure, over /proc/mounts).

SQLite's WAL mode keeps its index in shared memory (the ``-shm`` file mapped
by every process); a network filesystem does not share that memory between
hosts, so two login nodes using one database in WAL mode can corrupt it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# Filesystems whose files other hosts see too (by type name in /proc/mounts).
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "afs",
        "panfs",
        "9p",
        "gfs2",
        "ocfs2",
        "pvfs2",
        "orangefs",
        "wekafs",
    }
)
# FUSE filesystems that are local despite the fuse. prefix.
LOCAL_FUSE_TYPES = frozenset({"fuse.fuse-overlayfs", "fuse.lxcfs", "fuse.portal"})

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of /proc/mounts."""

    device: str
    mount_point: str
    fs_type: str


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes (\040 ...).
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    """The mounts of a /proc/mounts text, in order (later mounts hide earlier ones)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mounts.append(Mount(_unescape(fields[0]), _unescape(fields[1]), fields[2]))
    return mounts


def mount_of(path: str, mounts_text: str) -> Mount | None:
    """The mount that holds ``path`` (absolute, symlinks already resolved): the one with the
    longest mount point that is a prefix of it; the last one of equal length wins."""
    best: Mount | None = None
    for m in parse_mounts(mounts_text):
        point = m.mount_point.rstrip("/") or "/"
        inside = point == "/" or path == point or path.startswith(point + "/")
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = m
    return best


def is_network_fs(fs_type: str) -> bool:
    """True for filesystems shared between hosts (NFS, Lustre, GPFS, ..., FUSE ones)."""
    t = fs_type.lower()
    if t in LOCAL_FUSE_TYPES:
        return False
    return t in NETWORK_FS_TYPES or t.startswith("fuse.") or t == "fuse"


def existing_folder(path: str) -> str:
    """The folder that holds ``path``, or its nearest existing ancestor, symlinks resolved."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    return os.path.realpath(folder)


def read_mounts(path: str = "/proc/mounts") -> str:
    """The text of /proc/mounts ('' where there is none, e.g. not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""
