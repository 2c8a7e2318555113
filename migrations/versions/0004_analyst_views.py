"""analyst views: problem_results, call_log, output_tree (plain SQL over the audit tables)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 19:30:00.000000

Read-only views for `sqlite3` and `psql` users; the README shows example queries. Correctness
is not a column: it needs the answer checker (`rstar results` has it), which SQL does not.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = {
    # One row per problem: its answer, the model whose output was chosen, its calls and tokens.
    "problem_results": """
        SELECT j.id AS job_id, j.name AS job_name, j.strategy, p.id AS problem_id, p.item_id, p.question,
               p.reference_answer, p.final_answer, p.status, p.rounds_used, o.model AS chosen_model,
               s.reason AS selection_reason,
               (SELECT COUNT(*) FROM model_calls c WHERE c.problem_id = p.id) AS model_calls,
               (SELECT COALESCE(SUM(c.completion_tokens), 0) FROM model_calls c WHERE c.problem_id = p.id)
                   AS completion_tokens,
               p.error
        FROM problems p
        JOIN jobs j ON j.id = p.job_id
        LEFT JOIN selections s ON s.problem_id = p.id
        LEFT JOIN outputs o ON o.id = s.output_id
    """,
    # One row per model call (every attempt): which job, problem, step and roster model it was for.
    "call_log": """
        SELECT c.id AS call_id, p.job_id, p.item_id, st.key AS step_key, st.kind AS step_kind,
               st.model, c.endpoint, c.model AS served_model, c.attempt, c.outcome, c.http_status,
               c.prompt_tokens, c.completion_tokens, c.latency_ms, c.finish_reason,
               CASE WHEN c.reused_from_id IS NULL THEN 0 ELSE 1 END AS reused, c.error, c.created_at
        FROM model_calls c
        JOIN steps st ON st.id = c.step_id
        JOIN problems p ON p.id = c.problem_id
    """,
    # One row per output: the tree of a problem's solutions, reviews and completions by parent.
    "output_tree": """
        SELECT o.id AS output_id, p.job_id, p.item_id, st.key AS step_key, o.model, o.kind, o.round,
               o.parent_id, o.answer, o.parse_error,
               CASE WHEN s.output_id = o.id THEN 1 ELSE 0 END AS selected
        FROM outputs o
        JOIN steps st ON st.id = o.step_id
        JOIN problems p ON p.id = o.problem_id
        LEFT JOIN selections s ON s.problem_id = o.problem_id
    """,
}


def upgrade() -> None:
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW {name}")
