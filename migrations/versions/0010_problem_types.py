"""problem types: the form of a job's answers (number, latex, yes-no, choice)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 03:00:00.000000

- jobs gains `problem_type` (a name from `rstar.problem_types`, not null, default "number"). Every
  job written before is a `number` job: it was asked for numbers, its answers were normalised and
  judged as numbers, and it reads back exactly as before.
Lossless both ways: the downgrade refuses while any job has another type (a release without types
would judge its answers as numbers), and drops the column then.
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.migrate import DowngradeRefusedError

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _views() -> dict[str, str]:
    """0005's analyst views, unchanged: they read `jobs`, so they are made again around the drop."""
    return dict(importlib.import_module("migrations.versions.0005_sampled_sequences").VIEWS)


def upgrade() -> None:
    # A column with a default is added in place (SQLite too): existing rows read "number".
    op.add_column("jobs", sa.Column("problem_type", sa.String(20), nullable=False, server_default="number"))


def check_downgrade(conn: sa.Connection) -> None:
    """Refuse, before anything changes, a downgrade that would judge other types as numbers."""
    jobs = sa.table("jobs", sa.column("problem_type"))
    typed = conn.scalar(sa.select(sa.func.count()).where(jobs.c.problem_type != "number"))
    if typed:
        raise DowngradeRefusedError(
            f"refusing to downgrade below 0010: it would lose data. {typed} jobs have a problem type"
            " other than number. Nothing was changed; export or delete those jobs first."
        )


def downgrade() -> None:
    views = _views()
    for name in views:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    # In place on SQLite too (3.35+): rebuilding `jobs` would touch every table that refers to it.
    op.execute("ALTER TABLE jobs DROP COLUMN problem_type")
    for name, body in views.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
