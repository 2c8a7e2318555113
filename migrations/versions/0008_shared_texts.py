"""shared texts: a request's system messages stored once, responses without the texts kept beside

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 20:30:00.000000

- New table `shared_texts` (digest: sha256 hex of the text, text). A model call's request keeps
  its system messages (a strategy's instructions and few-shot examples, most of a request's bytes
  and the same in every call of a kind) as a digest (`rstar.records.compact_request`); the viewer
  and `rstar show` put them back (`expanded_request`).
- Rows written before: each request is stored that way, and each raw response without the texts
  `response_text` holds verbatim (`rstar.records.compact_response`, what the release before
  already did for the calls it recorded), a batch of calls at a time.
Lossless both ways: the downgrade writes every request back as it was sent and drops the table;
responses stay compact, which the release before reads (`expanded_response`).
"""

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
_texts = sa.table("shared_texts", sa.column("digest", sa.String), sa.column("text", sa.Text))


def _batches(conn: sa.Connection) -> Iterator[list[sa.Row]]:
    todo = sa.select(_calls).order_by(_calls.c.id)
    after = 0
    while rows := conn.execute(todo.where(_calls.c.id > after).limit(BATCH)).all():
        yield rows
        after = rows[-1].id


def _rewrite(conn: sa.Connection, changes: list[dict[str, object]], column: str) -> None:
    if changes:
        conn.execute(
            _calls.update().where(_calls.c.id == sa.bindparam("cid")).values({column: sa.bindparam("value")}),
            changes,
        )


def upgrade() -> None:
    from db.calls import save_texts
    from rstar.records import compact_request, compact_response

    op.create_table(
        "shared_texts",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    conn = op.get_bind()
    for rows in _batches(conn):
        texts: dict[str, str] = {}
        requests, responses = [], []
        for r in rows:
            stored, named = compact_request(r.request) if isinstance(r.request, dict) else (r.request, {})
            if named:
                texts.update(named)
                requests.append({"cid": r.id, "value": stored})
            response = compact_response(r.response, r.response_text, r.sequences)
            if response is not r.response:
                responses.append({"cid": r.id, "value": response})
        save_texts(conn, texts)
        _rewrite(conn, requests, "request")
        _rewrite(conn, responses, "response")


def downgrade() -> None:
    from rstar.records import SHARED_TEXTS, expanded_request

    conn = op.get_bind()
    texts = dict(conn.execute(sa.select(_texts.c.digest, _texts.c.text)).tuples().all())
    for rows in _batches(conn):
        _rewrite(
            conn,
            [
                {"cid": r.id, "value": expanded_request(r.request, texts)}
                for r in rows
                if isinstance(r.request, dict) and SHARED_TEXTS in r.request
            ],
            "request",
        )
    op.drop_table("shared_texts")
