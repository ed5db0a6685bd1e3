"""Where things are: the repository, its interpreter, the forced command."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")
CLOUD_INTERFACE = REPO / "cloud_interface.sh"
DEV_CLUSTER = REPO / "scripts" / "dev-cluster.sh"
