"""problem tallies: a finished problem keeps its judgement and its cost beside its answer

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 04:30:00.000000

- problems gains `correct` (the answer judged against the reference: `rstar.reports.judge`, NULL
  when not answered or without a reference) and `calls`, `requests`, `sequences`,
  `prompt_tokens`, `completion_tokens` (what its model calls cost, summed). The worker writes them
  when a problem is answered or fails; they stay NULL while it is open, and readers count its
  calls then. Counts and pages over a job of a million problems become sums over `problems`
  instead of a scan of every model call and a judgement per problem in Python.
- Rows written before: every answered or failed problem gets its tallies from its model calls,
  and every answered problem with a reference its judgement, with today's `judge` (the one every
  command already applied when it printed them).
- Indexes (job_id, status) and (job_id, line): counts per state and pages in input order.
Lossless both ways: every new column is derived from rows that stay; the downgrade drops them.
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TALLIES = ("calls", "requests", "sequences", "prompt_tokens", "completion_tokens")
BATCH = 1000


def _views() -> dict[str, str]:
    """0005's analyst views, unchanged: SQLite rebuilds `problems` on the downgrade."""
    return dict(importlib.import_module("migrations.versions.0005_sampled_sequences").VIEWS)


def upgrade() -> None:
    op.add_column("problems", sa.Column("correct", sa.Boolean(), nullable=True))
    for name in TALLIES:
        op.add_column("problems", sa.Column(name, sa.Integer(), nullable=True))
    op.create_index("ix_problems_job_status", "problems", ["job_id", "status"])
    op.create_index("ix_problems_job_line", "problems", ["job_id", "line"])
    calls = "FROM model_calls c WHERE c.problem_id = problems.id"
    sums = ", ".join(f"{name} = (SELECT COALESCE(SUM(c.{name}), 0) {calls})" for name in TALLIES[1:])
    op.execute(
        f"UPDATE problems SET calls = (SELECT COUNT(*) {calls}), {sums}"
        " WHERE status IN ('answered', 'failed')"
    )
    _judge_answered(op.get_bind())


def _judge_answered(conn: sa.Connection) -> None:
    """Judge every answered problem with a reference, a batch of rows at a time."""
    from rstar.reports import judge

    problems = sa.table(
        "problems",
        sa.column("id", sa.Integer),
        sa.column("status", sa.String),
        sa.column("final_answer", sa.String),
        sa.column("reference_answer", sa.String),
        sa.column("correct", sa.Boolean),
    )
    todo = (
        sa.select(problems.c.id, problems.c.final_answer, problems.c.reference_answer)
        .where(problems.c.status == "answered", problems.c.reference_answer.is_not(None))
        .order_by(problems.c.id)
    )
    setting = (
        problems.update().where(problems.c.id == sa.bindparam("pid")).values(correct=sa.bindparam("verdict"))
    )
    after = 0
    while rows := conn.execute(todo.where(problems.c.id > after).limit(BATCH)).all():
        conn.execute(
            setting,
            [{"pid": r.id, "verdict": judge("answered", r.final_answer, r.reference_answer)} for r in rows],
        )
        after = rows[-1].id


def downgrade() -> None:
    views = _views()
    for name in views:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_problems_job_line", table_name="problems")
    op.drop_index("ix_problems_job_status", table_name="problems")
    with op.batch_alter_table("problems") as batch_op:
        for name in ("correct", *TALLIES):
            batch_op.drop_column(name)
    for name, body in views.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
