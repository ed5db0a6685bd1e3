"""gpu shares in nanoseconds, in split order, in blocks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 15:30:00.000000

The ledger keeps each service's attributed GPU time per user as whole nanoseconds,
the users in the report's split order (by JSON-encoded id), in blocks of 128
consecutive users (`ledger_gpu_blocks`): each block has its first user's encoded id,
the sum of the blocks before it, the running sums of its users' nanoseconds
(little-endian int64) and their encoded ids, each line between newlines. One user's
share then reads one block (docs/accounting.md). The JSON object of seconds per user
(`ledger_services.user_gpu_seconds`) is converted and dropped. The conversion is
written out here (not imported) so that this revision does what it did when it was
written.
"""

import json
import struct
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BLOCK = 128


def _blocks(users: dict[str, float]) -> list[tuple[str, int, bytes, str]]:
    pairs = sorted((json.dumps(u), round(secs * 1e9)) for u, secs in users.items() if u)
    pairs = [(k, ns) for k, ns in pairs if ns]
    out, before = [], 0
    for at in range(0, len(pairs), BLOCK):
        chunk = pairs[at : at + BLOCK]
        sums, running = [], 0
        for _, ns in chunk:
            running += ns
            sums.append(running)
        keys = "\n" + "\n".join(k for k, _ in chunk) + "\n"
        out.append((chunk[0][0], before, struct.pack(f"<{len(sums)}q", *sums), keys))
        before += running
    return out


def upgrade() -> None:
    op.create_table(
        "ledger_gpu_blocks",
        sa.Column("tz", sa.String(length=64), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("service_id", sa.String(length=256), nullable=False),
        sa.Column("first_key", sa.Text(), nullable=False),
        sa.Column("before_ns", sa.Integer(), nullable=False),
        sa.Column("running", sa.LargeBinary(), nullable=False),
        sa.Column("keys", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("tz", "month", "service_id", "first_key", name=op.f("pk_ledger_gpu_blocks")),
        sqlite_with_rowid=False,
    )
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT tz, month, service_id, user_gpu_seconds FROM ledger_services")).all()
    for tz, month, sv, blob in rows:
        for first, before, running, keys in _blocks(json.loads(blob or "{}")):
            conn.execute(
                sa.text(
                    "INSERT INTO ledger_gpu_blocks (tz, month, service_id, first_key, before_ns, running, keys)"
                    " VALUES (:tz, :m, :sv, :f, :b, :r, :k)"
                ),
                {"tz": tz, "m": month, "sv": sv, "f": first, "b": before, "r": running, "k": keys},
            )
    op.drop_column("ledger_services", "user_gpu_seconds")


def downgrade() -> None:
    op.add_column(
        "ledger_services", sa.Column("user_gpu_seconds", sa.Text(), server_default="{}", nullable=False)
    )
    conn = op.get_bind()
    users: dict[tuple[str, str, str], dict[str, float]] = {}
    sql = "SELECT tz, month, service_id, running, keys FROM ledger_gpu_blocks ORDER BY tz, month, service_id, first_key"
    for tz, month, sv, running, keys in conn.execute(sa.text(sql)).all():
        sums = struct.unpack(f"<{len(running) // 8}q", running)
        names = json.loads("[" + keys[1:-1].replace("\n", ",") + "]")
        have = users.setdefault((tz, month, sv), {})
        for name, lo, hi in zip(names, (0, *sums), sums, strict=False):
            have[name] = (hi - lo) / 1e9
    counts = "requests, ok, errors, errors_4xx, errors_5xx, aborted, in_flight, input_tokens, output_tokens"
    for (tz, month, sv), have in users.items():  # a service with GPU time only had a row of zeros
        conn.execute(
            sa.text(
                f"INSERT INTO ledger_services (tz, month, service_id, {counts}, durations, ttfbs, user_gpu_seconds)"
                " VALUES (:tz, :m, :sv, 0, 0, 0, 0, 0, 0, 0, 0, 0, X'', X'', :u)"
                " ON CONFLICT (tz, month, service_id) DO UPDATE SET user_gpu_seconds = excluded.user_gpu_seconds"
            ),
            {"u": json.dumps(have, separators=(",", ":")), "tz": tz, "m": month, "sv": sv},
        )
    op.drop_table("ledger_gpu_blocks")
