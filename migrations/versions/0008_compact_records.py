"""compact records: system prompts and outputs' texts stored once, responses without their texts

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 20:30:00.000000

- New table `shared_texts` (digest: sha256 hex of the text, text). A model call's request keeps
  its system messages (a strategy's instructions and few-shot examples, most of a request's bytes
  and the same in every call of a kind) as a digest (`rstar.records.compact_request`); the viewer
  and `rstar show` put them back (`expanded_request`).
- outputs gains `text_seq`: an output whose text is one of its call's sequences verbatim stores
  none (`outputs.text` null) and names the sequence (`rstar.records.sequence_index`); readers
  get it back through `db.models.Output.text`.
- Rows written before: each request, output and raw response is stored that way (a response
  without the texts `response_text` holds, `rstar.records.compact_response`, as the release
  before already stored the calls it recorded), a batch of rows at a time.
Lossless both ways: the downgrade writes every request back as it was sent, every response as it
was received (as releases before 4d378d5 stored them, and as every release reads them) and every
output's text back, then drops the new table and column.
"""

import importlib
from collections.abc import Iterator, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500

_calls = sa.table(
    "model_calls",
    sa.column("id", sa.Integer),
    sa.column("request", sa.JSON),
    sa.column("response", sa.JSON),
    sa.column("response_text", sa.Text),
    sa.column("sequences", sa.Integer),
)
_outputs = sa.table(
    "outputs",
    sa.column("id", sa.Integer),
    sa.column("seq", sa.Integer),
    sa.column("model_call_id", sa.Integer),
    sa.column("text", sa.Text),
    sa.column("text_seq", sa.Integer),
)
_texts = sa.table("shared_texts", sa.column("digest", sa.String), sa.column("text", sa.Text))


def _views() -> dict[str, str]:
    """0005's analyst views, unchanged: SQLite rebuilds `outputs` on the downgrade."""
    return dict(importlib.import_module("migrations.versions.0005_sampled_sequences").VIEWS)


def _batches(conn: sa.Connection, query: sa.Select, key: sa.ColumnElement) -> Iterator[list[sa.Row]]:
    after = 0
    while rows := conn.execute(query.where(key > after).order_by(key).limit(BATCH)).all():
        yield rows
        after = rows[-1].id


def _rewrite(conn: sa.Connection, table: sa.TableClause, changes: list[dict[str, object]]) -> None:
    """Set the columns each change names (`row`: the row's id), all changes naming the same ones."""
    if changes:
        columns = [k for k in changes[0] if k != "row"]
        conn.execute(
            table.update()
            .where(table.c.id == sa.bindparam("row"))
            .values({k: sa.bindparam(f"new_{k}") for k in columns}),
            [{"row": c["row"], **{f"new_{k}": c[k] for k in columns}} for c in changes],
        )


def _outputs_with_calls(*where: sa.ColumnElement) -> sa.Select:
    return (
        sa.select(_outputs.c.id, _outputs.c.seq, _outputs.c.text, _outputs.c.text_seq)
        .add_columns(_calls.c.response_text, _calls.c.sequences)
        .join(_calls, _calls.c.id == _outputs.c.model_call_id)
        .where(*where)
    )


def upgrade() -> None:
    from db.calls import save_texts
    from rstar.records import compact_request, compact_response, sequence_index

    op.create_table(
        "shared_texts",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.add_column("outputs", sa.Column("text_seq", sa.Integer(), nullable=True))
    conn = op.get_bind()
    for rows in _batches(conn, sa.select(_calls), _calls.c.id):
        texts: dict[str, str] = {}
        requests, responses = [], []
        for r in rows:
            stored, named = compact_request(r.request) if isinstance(r.request, dict) else (r.request, {})
            if named:
                texts.update(named)
                requests.append({"row": r.id, "request": stored})
            response = compact_response(r.response, r.response_text, r.sequences)
            if response is not r.response:
                responses.append({"row": r.id, "response": response})
        save_texts(conn, texts)
        _rewrite(conn, _calls, requests)
        _rewrite(conn, _calls, responses)
    for rows in _batches(conn, _outputs_with_calls(_outputs.c.text.is_not(None)), _outputs.c.id):
        found = [(r.id, sequence_index(r.text, r.response_text, r.sequences, first=r.seq)) for r in rows]
        _rewrite(conn, _outputs, [{"row": i, "text": None, "text_seq": n} for i, n in found if n is not None])


def downgrade() -> None:
    from rstar.records import (
        SHARED_TEXTS,
        TEXTS_STORED_APART,
        expanded_request,
        expanded_response,
        recorded_texts,
    )

    conn = op.get_bind()
    texts = dict(conn.execute(sa.select(_texts.c.digest, _texts.c.text)).tuples().all())
    for rows in _batches(conn, sa.select(_calls), _calls.c.id):
        shared = [r for r in rows if isinstance(r.request, dict) and SHARED_TEXTS in r.request]
        _rewrite(conn, _calls, [{"row": r.id, "request": expanded_request(r.request, texts)} for r in shared])
        compact = [r for r in rows if isinstance(r.response, dict) and TEXTS_STORED_APART in r.response]
        _rewrite(
            conn,
            _calls,
            [
                {"row": r.id, "response": expanded_response(r.response, r.response_text, r.sequences)}
                for r in compact
            ],
        )
    for rows in _batches(conn, _outputs_with_calls(_outputs.c.text_seq.is_not(None)), _outputs.c.id):
        _rewrite(
            conn,
            _outputs,
            [{"row": r.id, "text": recorded_texts(r.response_text, r.sequences)[r.text_seq]} for r in rows],
        )
    views = _views()
    for name in views:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("outputs") as batch_op:
        batch_op.drop_column("text_seq")
    for name, body in views.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
    op.drop_table("shared_texts")
