"""job windows: how many of a job's problems are started at once, decided at submit

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 11:10:00.000000

- jobs gains `job_window` (nullable integer): the problems of the job started and open at once
  (tasks/dispatch.py, `feed`). Submit sets it (twice the in-flight slots of the job's servers,
  or RSTAR_JOB_WINDOW); a job written before has none and keeps the workers' RSTAR_JOB_WINDOW,
  1024 when unset, as before.
The downgrade drops the column: what it held decides only how many problems run at once, never
what is asked or answered; the release before reads its RSTAR_JOB_WINDOW for every job again.
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _views() -> dict[str, str]:
    """0005's analyst views, unchanged: they read `jobs`, so they are made again around the drop."""
    return dict(importlib.import_module("migrations.versions.0005_sampled_sequences").VIEWS)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("job_window", sa.Integer(), nullable=True))


def downgrade() -> None:
    views = _views()
    for name in views:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    # In place on SQLite too (3.35+): rebuilding `jobs` would touch every table that refers to it.
    op.execute("ALTER TABLE jobs DROP COLUMN job_window")
    for name, body in views.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
