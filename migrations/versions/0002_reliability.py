"""reliability: retry budget base, request hash and reuse of recorded calls, resumed-from job

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resume_from_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_jobs_resume_from", "jobs", ["resume_from_id"], ["id"], ondelete="SET NULL"
        )
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retry_base", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("model_calls", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reused_from_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_model_calls_request_hash"), ["request_hash"], unique=False)
        batch_op.create_foreign_key(
            "fk_model_calls_reused_from", "model_calls", ["reused_from_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("model_calls", schema=None) as batch_op:
        batch_op.drop_constraint("fk_model_calls_reused_from", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_model_calls_request_hash"))
        batch_op.drop_column("reused_from_id")
        batch_op.drop_column("request_hash")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_column("retry_base")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jobs_resume_from", type_="foreignkey")
        batch_op.drop_column("resume_from_id")
