"""outputs and roster: one outputs table (solutions and reviews), a model roster per job

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 18:30:00.000000

Upgrade, losing nothing:
- `outputs` takes every solution (same id) and every review (id after the last solution's; its
  parent is the solution it judges). A solution's steps, raw answer and structured flag go to
  the payload, as do a review's verdict, scores, issues, suggested answer and structured flag;
  `text` is the reply recorded with the output's model call.
- `selections.solution_id` becomes `output_id` (same values: solution ids are kept).
- `jobs.model_a_url` / `model_b_url` become the roster `jobs.models`: [{"name": "A", "url": a},
  {"name": "B", "url": b}].
- `steps.role` becomes `steps.model` (the roster name).

Downgrade is refused, before anything is changed, when the database holds what the old schema
cannot: a roster other than A and B, a step kind the old tasks do not know, or a job with
`peers=all`.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from db.migrate import DowngradeRefusedError

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 2000
SOLUTION_KINDS = ("generate", "refine", "complete")
OLD_KINDS = (*SOLUTION_KINDS, "review", "select")


def _batches(conn: sa.Connection, statement: Any) -> Iterator[list[Any]]:
    result = conn.execute(statement)
    while rows := result.fetchmany(BATCH):
        yield rows


def _tables() -> sa.MetaData:
    """The tables this migration creates or re-creates, as they are at their revision: `outputs`
    (0003) and `solutions` and `reviews` (0001), with stubs of the tables they refer to. Also used
    to copy rows between them."""
    md = sa.MetaData()
    sa.Table("problems", md, sa.Column("id", sa.Integer(), primary_key=True))
    sa.Table("steps", md, sa.Column("id", sa.Integer(), primary_key=True))
    sa.Table(
        "model_calls",
        md,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("response_text", sa.Text()),
    )

    def common(*columns: sa.Column[Any]) -> list[Any]:
        """id, problem, step, call and round first, created_at and the constraints last, as 0001 had."""
        return [
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column(
                "problem_id", sa.Integer(), sa.ForeignKey("problems.id", ondelete="CASCADE"), nullable=False
            ),
            sa.Column("step_id", sa.Integer(), sa.ForeignKey("steps.id", ondelete="CASCADE"), nullable=False),
            sa.Column("model_call_id", sa.Integer(), sa.ForeignKey("model_calls.id"), nullable=True),
            sa.Column("round", sa.Integer(), nullable=False),
            *columns,
            sa.Column("parse_error", sa.Text(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.UniqueConstraint("step_id"),
        ]

    outputs = sa.Table(
        "outputs",
        md,
        *common(
            sa.Column("model", sa.String(length=32), nullable=False),
            sa.Column("kind", sa.String(length=20), nullable=False),
            sa.Column("parent_id", sa.Integer(), sa.ForeignKey("outputs.id"), nullable=True),
            sa.Column("text", sa.Text(), nullable=True),
            sa.Column("payload", sa.JSON(), nullable=False),
            sa.Column("answer", sa.String(length=500), nullable=True),
        ),
    )
    sa.Index("ix_outputs_problem_id", outputs.c.problem_id)
    sa.Index("ix_outputs_parent_id", outputs.c.parent_id)
    solutions = sa.Table(
        "solutions",
        md,
        *common(
            sa.Column("author", sa.String(length=1), nullable=False),
            sa.Column("kind", sa.String(length=20), nullable=False),
            sa.Column("parent_id", sa.Integer(), sa.ForeignKey("solutions.id"), nullable=True),
            sa.Column("steps", sa.JSON(), nullable=False),
            sa.Column("answer_raw", sa.Text(), nullable=True),
            sa.Column("answer", sa.String(length=500), nullable=True),
            sa.Column("structured", sa.Boolean(), nullable=False),
        ),
    )
    sa.Index("ix_solutions_problem_id", solutions.c.problem_id)
    reviews = sa.Table(
        "reviews",
        md,
        *common(
            sa.Column("reviewer", sa.String(length=1), nullable=False),
            sa.Column("target_solution_id", sa.Integer(), sa.ForeignKey("solutions.id"), nullable=False),
            sa.Column("verdict", sa.String(length=20), nullable=False),
            sa.Column("logical_consistency", sa.Integer(), nullable=True),
            sa.Column("calculation_accuracy", sa.Integer(), nullable=True),
            sa.Column("step_completeness", sa.Integer(), nullable=True),
            sa.Column("issues", sa.JSON(), nullable=False),
            sa.Column("suggested_answer", sa.String(length=500), nullable=True),
            sa.Column("structured", sa.Boolean(), nullable=False),
        ),
    )
    sa.Index("ix_reviews_problem_id", reviews.c.problem_id)
    return md


def _rebuild_selections(target: str, target_column: str, source_column: str) -> None:
    """Re-create `selections` with its chosen-output column renamed and pointing at `target`
    (a new table, copied, then renamed: portable where an unnamed foreign key cannot be dropped)."""
    op.create_table(
        "selections_new",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("problem_id", sa.Integer(), nullable=False),
        sa.Column(target_column, sa.Integer(), nullable=True),
        sa.Column("answer", sa.String(length=500), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["problem_id"], ["problems.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint([target_column], [f"{target}.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("problem_id"),
    )
    op.execute(
        f"INSERT INTO selections_new (id, problem_id, {target_column}, answer, reason, created_at) "
        f"SELECT id, problem_id, {source_column}, answer, reason, created_at FROM selections"
    )
    op.drop_table("selections")
    op.rename_table("selections_new", "selections")


def _reset_sequence(conn: sa.Connection, table: str) -> None:
    """PostgreSQL: rows were inserted with explicit ids, so move the id sequence past them."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )
        )


def _check_no_cascades(conn: sa.Connection) -> None:
    """SQLite rebuilds a table to alter it (drop, re-create): with foreign keys enforced, dropping
    `steps` would cascade-delete every call and output. Alembic's connection leaves them off."""
    if conn.dialect.name == "sqlite" and conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("SQLite enforces foreign keys on the migration's connection: refusing to rebuild")


def upgrade() -> None:
    conn = op.get_bind()
    _check_no_cascades(conn)
    tables = _tables()
    outputs, solutions, reviews = (tables.tables[n] for n in ("outputs", "solutions", "reviews"))
    calls = tables.tables["model_calls"]
    outputs.create(conn)

    def with_text(table: sa.Table) -> Any:
        return (
            sa.select(table, calls.c.response_text.label("text"))
            .select_from(table.outerjoin(calls, calls.c.id == table.c.model_call_id))
            .order_by(table.c.id)
        )

    for rows in _batches(conn, with_text(solutions)):
        conn.execute(
            outputs.insert(),
            [
                {
                    "id": r.id,
                    "problem_id": r.problem_id,
                    "step_id": r.step_id,
                    "model_call_id": r.model_call_id,
                    "round": r.round,
                    "model": r.author,
                    "kind": r.kind,
                    "parent_id": r.parent_id,
                    "text": r.text,
                    "payload": {
                        "steps": list(r.steps or []),
                        "answer_raw": r.answer_raw,
                        "structured": bool(r.structured),
                    },
                    "answer": r.answer,
                    "parse_error": r.parse_error,
                    "created_at": r.created_at,
                }
                for r in rows
            ],
        )
    offset = conn.scalar(sa.select(sa.func.coalesce(sa.func.max(solutions.c.id), 0)))
    for rows in _batches(conn, with_text(reviews)):
        conn.execute(
            outputs.insert(),
            [
                {
                    "id": offset + r.id,
                    "problem_id": r.problem_id,
                    "step_id": r.step_id,
                    "model_call_id": r.model_call_id,
                    "round": r.round,
                    "model": r.reviewer,
                    "kind": "review",
                    "parent_id": r.target_solution_id,
                    "text": r.text,
                    "payload": {
                        "verdict": r.verdict,
                        "scores": [r.logical_consistency, r.calculation_accuracy, r.step_completeness],
                        "issues": list(r.issues or []),
                        "suggested_answer": r.suggested_answer,
                        "structured": bool(r.structured),
                    },
                    "answer": None,
                    "parse_error": r.parse_error,
                    "created_at": r.created_at,
                }
                for r in rows
            ],
        )
    _reset_sequence(conn, "outputs")
    _rebuild_selections("outputs", "output_id", "solution_id")
    op.drop_table("reviews")
    op.drop_table("solutions")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("models", sa.JSON(), nullable=True))
    jobs = sa.table(
        "jobs",
        sa.column("id"),
        sa.column("model_a_url"),
        sa.column("model_b_url"),
        sa.column("models", sa.JSON()),
    )
    for r in conn.execute(sa.select(jobs.c.id, jobs.c.model_a_url, jobs.c.model_b_url)).all():
        roster = [{"name": "A", "url": r.model_a_url}, {"name": "B", "url": r.model_b_url}]
        conn.execute(jobs.update().where(jobs.c.id == r.id).values(models=roster))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("models", existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column("model_a_url")
        batch_op.drop_column("model_b_url")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.alter_column(
            "role", new_column_name="model", existing_type=sa.String(length=1), type_=sa.String(length=32)
        )


def check_downgrade(conn: sa.Connection) -> None:
    """Refuse, before anything changes, a downgrade that would lose data (db.migrate.downgrade
    asks every migration on the way first)."""
    problems: list[str] = []
    jobs = sa.table("jobs", sa.column("id"), sa.column("models", sa.JSON()), sa.column("params", sa.JSON()))
    for r in conn.execute(sa.select(jobs.c.id, jobs.c.models, jobs.c.params)):
        names = [m.get("name") for m in r.models or []]
        if names not in (["A"], ["A", "B"]):
            problems.append(
                f"job {r.id} has the models {', '.join(map(str, names))} (the old schema holds A and B)"
            )
        if (r.params or {}).get("peers", "next") != "next":
            problems.append(
                f"job {r.id} has peers={r.params['peers']} (the old strategies know only the next peer)"
            )
    steps = sa.table("steps", sa.column("kind"))
    kinds = {k for (k,) in conn.execute(sa.select(steps.c.kind).distinct())}
    if unknown := sorted(kinds - set(OLD_KINDS)):
        problems.append(f"steps of kinds the old tasks do not know: {', '.join(unknown)}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DowngradeRefusedError(
            f"refusing to downgrade below 0003: it would lose data. {shown}. "
            "Nothing was changed; export or delete those jobs first."
        )


def downgrade() -> None:
    conn = op.get_bind()
    check_downgrade(conn)
    _check_no_cascades(conn)
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.alter_column(
            "model", new_column_name="role", existing_type=sa.String(length=32), type_=sa.String(length=1)
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_a_url", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("model_b_url", sa.String(length=500), nullable=True))
    jobs = sa.table(
        "jobs",
        sa.column("id"),
        sa.column("models", sa.JSON()),
        sa.column("params", sa.JSON()),
        sa.column("model_a_url"),
        sa.column("model_b_url"),
    )
    for r in conn.execute(sa.select(jobs.c.id, jobs.c.models, jobs.c.params)).all():
        urls = [m["url"] for m in r.models]
        params = {k: v for k, v in (r.params or {}).items() if k != "peers"}
        conn.execute(
            jobs.update()
            .where(jobs.c.id == r.id)
            .values(model_a_url=urls[0], model_b_url=urls[-1], params=params)
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("model_a_url", existing_type=sa.String(length=500), nullable=False)
        batch_op.alter_column("model_b_url", existing_type=sa.String(length=500), nullable=False)
        batch_op.drop_column("models")

    # The 0001 tables, as they were.
    tables = _tables()
    outputs, solutions, reviews = (tables.tables[n] for n in ("outputs", "solutions", "reviews"))
    solutions.create(conn)
    reviews.create(conn)
    # Solutions first, parents before children (a refinement's parent is an earlier output).
    for rows in _batches(
        conn, sa.select(outputs).where(outputs.c.kind.in_(SOLUTION_KINDS)).order_by(outputs.c.id)
    ):
        conn.execute(
            solutions.insert(),
            [
                {
                    "id": r.id,
                    "problem_id": r.problem_id,
                    "step_id": r.step_id,
                    "model_call_id": r.model_call_id,
                    "round": r.round,
                    "author": r.model,
                    "kind": r.kind,
                    "parent_id": r.parent_id,
                    "steps": list(r.payload.get("steps") or []),
                    "answer_raw": r.payload.get("answer_raw"),
                    "answer": r.answer,
                    "structured": bool(r.payload.get("structured")),
                    "parse_error": r.parse_error,
                    "created_at": r.created_at,
                }
                for r in rows
            ],
        )
    for rows in _batches(conn, sa.select(outputs).where(outputs.c.kind == "review").order_by(outputs.c.id)):
        conn.execute(
            reviews.insert(),
            [
                {
                    "id": r.id,
                    "problem_id": r.problem_id,
                    "step_id": r.step_id,
                    "model_call_id": r.model_call_id,
                    "round": r.round,
                    "reviewer": r.model,
                    "target_solution_id": r.parent_id,
                    "verdict": r.payload.get("verdict"),
                    "logical_consistency": (r.payload.get("scores") or [None] * 3)[0],
                    "calculation_accuracy": (r.payload.get("scores") or [None] * 3)[1],
                    "step_completeness": (r.payload.get("scores") or [None] * 3)[2],
                    "issues": list(r.payload.get("issues") or []),
                    "suggested_answer": r.payload.get("suggested_answer"),
                    "structured": bool(r.payload.get("structured")),
                    "parse_error": r.parse_error,
                    "created_at": r.created_at,
                }
                for r in rows
            ],
        )
    _reset_sequence(conn, "solutions")
    _reset_sequence(conn, "reviews")
    _rebuild_selections("solutions", "solution_id", "output_id")
    outputs.drop(conn)
