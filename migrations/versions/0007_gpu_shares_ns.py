"""gpu shares in nanoseconds, in split order

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 15:30:00.000000

The ledger keeps each service's attributed GPU time per user as whole nanoseconds,
the users in the report's split order (JSON-encoded id, one per line: `gpu_users`)
and their nanoseconds as little-endian int64 in the same order (`gpu_ns`), so that
one user's share is read without decoding the others' (docs/accounting.md). The
JSON object of seconds (`user_gpu_seconds`) is converted and dropped. The conversion
is written out here (not imported) so that this revision does what it did when it
was written.
"""

import json
import sys
from array import array
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _pack(users: dict[str, float]) -> tuple[str, bytes]:
    pairs = sorted((json.dumps(u), round(secs * 1e9)) for u, secs in users.items() if u)
    pairs = [(k, ns) for k, ns in pairs if ns]
    a = array("q", [ns for _, ns in pairs])
    if sys.byteorder == "big":
        a.byteswap()
    return "\n".join(k for k, _ in pairs), a.tobytes()


def _unpack(keys: str, blob: bytes) -> dict[str, float]:
    a = array("q")
    a.frombytes(blob)
    if sys.byteorder == "big":
        a.byteswap()
    names = json.loads("[" + keys.replace("\n", ",") + "]") if keys else []
    return {u: ns / 1e9 for u, ns in zip(names, a, strict=True)}


def upgrade() -> None:
    op.add_column("ledger_services", sa.Column("gpu_users", sa.Text(), server_default="", nullable=False))
    op.add_column(
        "ledger_services",
        sa.Column("gpu_ns", sa.LargeBinary(), server_default=sa.text("X''"), nullable=False),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT tz, month, service_id, user_gpu_seconds FROM ledger_services")).all()
    for tz, month, sv, blob in rows:
        keys, ns = _pack(json.loads(blob or "{}"))
        conn.execute(
            sa.text(
                "UPDATE ledger_services SET gpu_users = :k, gpu_ns = :n WHERE tz = :tz AND month = :m AND service_id = :sv"
            ),
            {"k": keys, "n": ns, "tz": tz, "m": month, "sv": sv},
        )
    op.drop_column("ledger_services", "user_gpu_seconds")


def downgrade() -> None:
    op.add_column(
        "ledger_services", sa.Column("user_gpu_seconds", sa.Text(), server_default="{}", nullable=False)
    )
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT tz, month, service_id, gpu_users, gpu_ns FROM ledger_services")).all()
    for tz, month, sv, keys, ns in rows:
        users = json.dumps(_unpack(keys, ns), separators=(",", ":"))
        conn.execute(
            sa.text(
                "UPDATE ledger_services SET user_gpu_seconds = :u WHERE tz = :tz AND month = :m AND service_id = :sv"
            ),
            {"u": users, "tz": tz, "m": month, "sv": sv},
        )
    op.drop_column("ledger_services", "gpu_ns")
    op.drop_column("ledger_services", "gpu_users")
