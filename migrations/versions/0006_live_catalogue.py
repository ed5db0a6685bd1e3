"""live catalogue

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-02 06:35:00.000000

What the `status` answer tells beyond job counts, stored by the scheduler tick:
Slurm's reason for a pending job and its expected start (`squeue --start`),
and a service's context length learned from its backend's own `/v1/models`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slurm_reason", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("slurm_start", sa.Float(), nullable=True))
    with op.batch_alter_table("service_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("context_length", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("service_states", schema=None) as batch_op:
        batch_op.drop_column("context_length")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("slurm_start")
        batch_op.drop_column("slurm_reason")
