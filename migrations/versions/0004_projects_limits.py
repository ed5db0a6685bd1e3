"""projects, limits and limit counters

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 06:30:00

Projects group users for limits and billing; limits cap requests, concurrency,
tokens and GPU-hours per user, project or by default; the counters are what the
request path's admission (saia_ctl/request_path/admission.py) reads and
updates in the transaction that records a request. All empty after the
upgrade: without limits nothing changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS = (
    "'requests_minute', 'requests_hour', 'requests_day', 'requests_month', 'concurrent', "
    "'tokens_day', 'tokens_month', 'gpu_hours_month'"
)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("slurm_account", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_projects")),
    )
    op.create_table(
        "project_members",
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("member", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(
            ["project"],
            ["projects.name"],
            name=op.f("fk_project_members_project_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project", "member", name=op.f("pk_project_members")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "limits",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("service_id", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.CheckConstraint("scope IN ('user', 'project', 'default')", name=op.f("ck_limits_scope")),
        sa.CheckConstraint(f"kind IN ({_KINDS})", name=op.f("ck_limits_kind")),
        sa.CheckConstraint("value >= 0", name=op.f("ck_limits_value")),
        sa.PrimaryKeyConstraint("scope", "subject", "service_id", "kind", name=op.f("pk_limits")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "limit_counters",
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("service_id", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("window", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("subject", "service_id", "kind", name=op.f("pk_limit_counters")),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("limit_counters")
    op.drop_table("limits")
    op.drop_table("project_members")
    op.drop_table("projects")
