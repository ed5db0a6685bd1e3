"""live catalogue

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 06:35:00.000000

What the `status` answer tells beyond job counts, stored by the scheduler tick:
Slurm's reason for a pending job and its expected start (`squeue --start`),
a service's context length learned from its backend's own `/v1/models`; and
a service's state set by hand (`saia-ctl services drain|resume|disable|enable`),
which a re-import of config.json leaves alone; the fingerprint of what shapes
a service's jobs (its batch script), on the service and on each job submitted,
so that a change replaces running jobs rolling; the end and name of the Slurm
maintenance reservation (MAINT) a service is down for.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slurm_reason", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("slurm_start", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("spec", sa.String(length=64), nullable=True))
    with op.batch_alter_table("service_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("context_length", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("maintenance_until", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("maintenance_name", sa.String(length=256), nullable=True))
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("admin_state", sa.String(length=16), server_default="active", nullable=False)
        )
        batch_op.add_column(sa.Column("spec", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): a batch copy of `services` or
    # `jobs` would drop a table that other tables' foreign keys point at.
    op.drop_column("services", "spec")
    op.drop_column("services", "admin_state")
    op.drop_column("jobs", "spec")
    op.drop_column("service_states", "maintenance_name")
    op.drop_column("service_states", "maintenance_until")
    op.drop_column("service_states", "context_length")
    op.drop_column("jobs", "slurm_start")
    op.drop_column("jobs", "slurm_reason")
