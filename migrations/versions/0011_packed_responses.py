"""packed responses: a model call's raw response stored compressed

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 11:00:00.000000

- model_calls.response (JSON) becomes binary: the same value (the response as the server sent it
  but for the texts `response_text` holds, 0008) as compact JSON, zlib-compressed
  (`rstar.records.pack_json`); `db.models.PackedJSON` reads and writes it as the value, so every
  reader (`rstar show`, the viewer's "response as received", a reused call) gets what it got.
  Rows written before are packed a batch at a time. A JSON null and SQL NULL both read as None
  before and after; both are stored as NULL.
Lossless both ways: the downgrade writes every value back as JSON.
"""

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500


def _views() -> dict[str, str]:
    """0005's analyst views, unchanged: they read `model_calls`, so they are made again around the
    column swap."""
    return dict(importlib.import_module("migrations.versions.0005_sampled_sequences").VIEWS)


def _convert(old: sa.types.TypeEngine, new: sa.types.TypeEngine, convert: Callable[[Any], Any]) -> None:
    """Replace model_calls.response of type `old` by one of type `new`, each value through `convert`:
    a new column filled a batch at a time, the old one dropped, the new one renamed. In place on
    SQLite too (3.35+): rebuilding `model_calls` would touch the tables that refer to it."""
    op.add_column("model_calls", sa.Column("response_new", new, nullable=True))
    calls = sa.table("model_calls", sa.column("id", sa.Integer), sa.column("response", old))
    target = sa.table("model_calls", sa.column("id", sa.Integer), sa.column("response_new", new))
    conn = op.get_bind()
    after = 0
    query = sa.select(calls.c.id, calls.c.response).where(calls.c.response.is_not(None)).order_by(calls.c.id)
    while rows := conn.execute(query.where(calls.c.id > after).limit(BATCH)).all():
        # A JSON null passes the SQL filter and reads as None: left NULL.
        values = [{"row": r.id, "value": convert(r.response)} for r in rows if r.response is not None]
        if values:
            conn.execute(
                target.update()
                .where(target.c.id == sa.bindparam("row"))
                .values(response_new=sa.bindparam("value", type_=new)),
                values,
            )
        after = rows[-1].id
    views = _views()
    for name in views:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute("ALTER TABLE model_calls DROP COLUMN response")
    op.execute("ALTER TABLE model_calls RENAME COLUMN response_new TO response")
    for name, body in views.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def upgrade() -> None:
    from rstar.records import pack_json

    _convert(sa.JSON(), sa.LargeBinary(), pack_json)


def downgrade() -> None:
    from rstar.records import unpack_json

    _convert(sa.LargeBinary(), sa.JSON(), unpack_json)
