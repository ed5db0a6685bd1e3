"""slurm records

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 06:40:00.000000

Slurm's accounting record of each job (sacct), read by the tick once the job
left the queue: state, exit code, start, end, GPUs and account. Columns are
NULL for older jobs and wherever sacct was not available; the observed
started_at/ended_at/gpus are unchanged.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("slurm_state", sa.String(length=32)),
    ("slurm_exit_code", sa.String(length=16)),
    ("slurm_started_at", sa.Float()),
    ("slurm_ended_at", sa.Float()),
    ("slurm_gpus", sa.Integer()),
    ("slurm_account", sa.String(length=128)),
)


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name, type_ in _COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): a batch copy of `jobs` would drop
    # a table that the requests' foreign keys point at.
    for name, _type in reversed(_COLUMNS):
        op.drop_column("jobs", name)
