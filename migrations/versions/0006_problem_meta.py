"""problem metadata: what an input line declares under "meta", kept with its problem

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 07:00:00.000000

- problems gains `meta` (JSON, nullable): the line's "meta" object as given. Rows written before
  have none (NULL), as their lines could not carry one.
Lossless both ways: the downgrade refuses while any problem has metadata (it would lose it), and
changes nothing then.
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.migrate import DowngradeRefusedError

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _views() -> dict[str, str]:
    """0005's analyst views, unchanged: SQLite rebuilds `problems` on the downgrade, which views
    that read it may not outlive."""
    return dict(importlib.import_module("migrations.versions.0005_sampled_sequences").VIEWS)


def upgrade() -> None:
    # A nullable column is added in place (SQLite too): the views stand.
    op.add_column("problems", sa.Column("meta", sa.JSON(), nullable=True))


def check_downgrade(conn: sa.Connection) -> None:
    """Refuse, before anything changes, a downgrade that would lose problems' metadata."""
    problems = sa.table("problems", sa.column("meta"))
    kept = conn.scalar(sa.select(sa.func.count()).where(problems.c.meta.is_not(None)))
    if kept:
        raise DowngradeRefusedError(
            f"refusing to downgrade below 0006: it would lose data. {kept} problems have metadata."
            " Nothing was changed; export or delete those jobs first."
        )


def downgrade() -> None:
    views = _views()
    for name in views:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("problems") as batch_op:
        batch_op.drop_column("meta")
    for name, body in views.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
