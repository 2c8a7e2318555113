"""sampled sequences: a step may sample n sequences (an MCTS expansion, a vote)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:30:00.000000

- model_calls gains `requests` (the HTTP requests one recorded call took: 1, or n when a server
  that ignores `n` was sent one request per sample) and `sequences` (the sequences it generated).
  Rows written before: 1 request, and 1 sequence when the call succeeded, else 0.
- outputs gains `seq`, the output's place among its step's outputs (0 for every earlier row); a
  step may now write several outputs (an expansion's children), unique by (step_id, seq).
- The analyst views count requests and sequences apart.
Lossless both ways: the downgrade refuses while any call sampled several sequences or any step
wrote several outputs (it would lose them), and changes nothing then.
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.migrate import DowngradeRefusedError

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite reflects the unnamed UNIQUE(step_id) of 0003 without a name: batch mode names it so.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _views_0004() -> dict[str, str]:
    return dict(importlib.import_module("migrations.versions.0004_analyst_views").VIEWS)


VIEWS = {
    **_views_0004(),
    "problem_results": """
        SELECT j.id AS job_id, j.name AS job_name, j.strategy, p.id AS problem_id, p.item_id, p.question,
               p.reference_answer, p.final_answer, p.status, p.rounds_used, o.model AS chosen_model,
               s.reason AS selection_reason,
               (SELECT COUNT(*) FROM model_calls c WHERE c.problem_id = p.id) AS model_calls,
               (SELECT COALESCE(SUM(c.requests), 0) FROM model_calls c WHERE c.problem_id = p.id)
                   AS requests,
               (SELECT COALESCE(SUM(c.sequences), 0) FROM model_calls c WHERE c.problem_id = p.id)
                   AS sequences,
               (SELECT COALESCE(SUM(c.completion_tokens), 0) FROM model_calls c WHERE c.problem_id = p.id)
                   AS completion_tokens,
               p.error
        FROM problems p
        JOIN jobs j ON j.id = p.job_id
        LEFT JOIN selections s ON s.problem_id = p.id
        LEFT JOIN outputs o ON o.id = s.output_id
    """,
    "call_log": """
        SELECT c.id AS call_id, p.job_id, p.item_id, st.key AS step_key, st.kind AS step_kind,
               st.model, c.endpoint, c.model AS served_model, c.attempt, c.outcome, c.http_status,
               c.requests, c.sequences, c.prompt_tokens, c.completion_tokens, c.latency_ms,
               c.finish_reason, CASE WHEN c.reused_from_id IS NULL THEN 0 ELSE 1 END AS reused, c.error,
               c.created_at
        FROM model_calls c
        JOIN steps st ON st.id = c.step_id
        JOIN problems p ON p.id = c.problem_id
    """,
    "output_tree": """
        SELECT o.id AS output_id, p.job_id, p.item_id, st.key AS step_key, o.seq, o.model, o.kind,
               o.round, o.parent_id, o.answer, o.parse_error,
               CASE WHEN s.output_id = o.id THEN 1 ELSE 0 END AS selected
        FROM outputs o
        JOIN steps st ON st.id = o.step_id
        JOIN problems p ON p.id = o.problem_id
        LEFT JOIN selections s ON s.problem_id = o.problem_id
    """,
}


def _drop_views(views: dict[str, str]) -> None:
    for name in views:
        op.execute(f"DROP VIEW IF EXISTS {name}")


def _create_views(views: dict[str, str]) -> None:
    for name, body in views.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def _step_unique_name() -> str:
    return "outputs_step_id_key" if op.get_bind().dialect.name == "postgresql" else "uq_outputs_step_id"


def upgrade() -> None:
    _drop_views(VIEWS)  # SQLite rebuilds `outputs`, which views may not outlive
    with op.batch_alter_table("model_calls") as batch_op:
        batch_op.add_column(sa.Column("requests", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("sequences", sa.Integer(), nullable=True))
    calls = sa.table("model_calls", sa.column("outcome"), sa.column("requests"), sa.column("sequences"))
    op.execute(calls.update().values(requests=1, sequences=sa.case((calls.c.outcome == "ok", 1), else_=0)))
    with op.batch_alter_table("outputs", naming_convention=NAMING) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=False, server_default="0"))
        batch_op.drop_constraint(_step_unique_name(), type_="unique")
        batch_op.create_unique_constraint("uq_outputs_step_seq", ["step_id", "seq"])
    _create_views(VIEWS)


def check_downgrade(conn: sa.Connection) -> None:
    """Refuse, before anything changes, a downgrade that would lose sampled sequences."""
    calls = sa.table("model_calls", sa.column("requests"), sa.column("sequences"))
    outputs = sa.table("outputs", sa.column("seq"))
    sampled = conn.scalar(
        sa.select(sa.func.count()).where(sa.or_(calls.c.requests > 1, calls.c.sequences > 1))
    )
    several = conn.scalar(sa.select(sa.func.count()).where(outputs.c.seq > 0))
    if sampled or several:
        raise DowngradeRefusedError(
            f"refusing to downgrade below 0005: it would lose data. {sampled} model calls sampled"
            f" several sequences and {several} outputs share a step with another. "
            "Nothing was changed; export or delete those jobs first."
        )


def downgrade() -> None:
    _drop_views(VIEWS)
    with op.batch_alter_table("outputs", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint("uq_outputs_step_seq", type_="unique")
        batch_op.create_unique_constraint(_step_unique_name(), ["step_id"])
        batch_op.drop_column("seq")
    with op.batch_alter_table("model_calls") as batch_op:
        batch_op.drop_column("sequences")
        batch_op.drop_column("requests")
    _create_views(_views_0004())
