"""job counts: each job's problems counted by the database as they change

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 00:00:00.000000

- New table `job_counts`: per job, one row per group of problems that the pages and `rstar status`
  tell apart (status; whether it has an answer, a reference; its judgement; the rounds it used),
  with how many problems are in it and their tallies summed (0007's `calls` .. `completion_tokens`).
  `rstar status`, the jobs page, the job page and its progress fragment read these few rows instead
  of every problem of the job (1.5 s for the job page of a million problems before).
- Triggers on `problems` keep it: whatever statement inserts, changes or deletes problems (submit,
  claims, answers, failures, cancel, resume, retry, recovery) changes the counts in the same
  transaction, so no code path can forget them. PostgreSQL: statement-level triggers over the
  transition tables (a submit's COPY or a cancel of a million problems is one grouped upsert, and
  an UPDATE that changes nothing counted, such as a claim's start time, touches no count row);
  SQLite: row-level triggers, limited to the counted columns.
- Rows written before: counted from `problems` once.
Lossless both ways: the table only derives from `problems`; the downgrade drops it and the triggers.

A later migration that rebuilds `problems` on SQLite (batch_alter_table's copy) drops its triggers
with the old table: it must call `create_triggers` again (as 0007's downgrade re-creates 0005's views).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = ("job_id", "status", "answered", "referenced", "correct", "rounds")
"""A count row's group. `correct` is 1, 0 or -1 (not judged) and `rounds` -1 when none: a unique key
treats NULLs as distinct, so the upserts would never meet an existing row."""
SUMS = ("n", "calls", "requests", "sequences", "prompt_tokens", "completion_tokens")
TALLIES = SUMS[1:]
WATCHED = ("job_id", "status", "final_answer", "reference_answer", "correct", "rounds_used", *TALLIES)
"""The problem columns a count depends on."""


def _grouped(row: str, dialect: str) -> list[str]:
    """A problem row's group key, as SQL over the row (NEW, OLD, or a transition table's alias)."""
    correct = (
        f"COALESCE({row}.correct::int, -1)" if dialect == "postgresql" else f"COALESCE({row}.correct, -1)"
    )
    return [
        f"{row}.job_id",
        f"{row}.status",
        f"({row}.final_answer IS NOT NULL)",  # bracketed: `x = a IS NOT NULL` is `(x = a) IS NOT NULL`
        f"({row}.reference_answer IS NOT NULL)",
        correct,
        f"COALESCE({row}.rounds_used, -1)",
    ]


def _counted(row: str, sign: str) -> list[str]:
    """The row's contribution to the sums: one problem and its tallies (0 while open)."""
    return [f"{sign}1", *(f"{sign}COALESCE({row}.{t}, 0)" for t in TALLIES)]


_ADD = ", ".join(f"{s} = job_counts.{s} + excluded.{s}" for s in SUMS)
_UPSERT = f"ON CONFLICT ({', '.join(KEYS)}) DO UPDATE SET {_ADD}"
_COLUMNS = ", ".join((*KEYS, *SUMS))


def _sqlite_triggers() -> list[str]:
    def add(row: str, sign: str) -> str:
        values = ", ".join((*_grouped(row, "sqlite"), *_counted(row, sign)))
        return f"INSERT INTO job_counts ({_COLUMNS}) VALUES ({values}) {_UPSERT};"

    def remove(row: str) -> str:
        # An UPDATE, not an upsert: every problem was counted, and a job being deleted has lost its
        # count rows already (ON DELETE CASCADE), where an insert would break the foreign key.
        sets = ", ".join(f"{s} = {s} - {v}" for s, v in zip(SUMS, _counted(row, ""), strict=True))
        where = " AND ".join(f"{k} = {v}" for k, v in zip(KEYS, _grouped(row, "sqlite"), strict=True))
        return f"UPDATE job_counts SET {sets} WHERE {where};"

    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in WATCHED)
    return [
        f"CREATE TRIGGER job_counts_insert AFTER INSERT ON problems BEGIN {add('NEW', '')} END",
        f"CREATE TRIGGER job_counts_delete AFTER DELETE ON problems BEGIN {remove('OLD')} END",
        f"CREATE TRIGGER job_counts_update AFTER UPDATE OF {', '.join(WATCHED)} ON problems"
        f" WHEN {changed} BEGIN {remove('OLD')} {add('NEW', '')} END",
    ]


def _pg_delta(sources: list[tuple[str, str]]) -> str:
    """The grouped change of (transition table, sign) pairs, non-zero groups only."""
    parts = " UNION ALL ".join(
        f"SELECT {', '.join(_grouped('r', 'postgresql'))}, {', '.join(_counted('r', sign))} FROM {table} r"
        for table, sign in sources
    )
    sums = ", ".join(f"SUM(d.{s}) AS {s}" for s in SUMS)
    nonzero = " OR ".join(f"SUM(d.{s}) <> 0" for s in SUMS)
    return (
        f"SELECT {', '.join(f'd.{k}' for k in KEYS)}, {sums}"
        f" FROM ({parts}) AS d({_COLUMNS})"
        f" GROUP BY {', '.join(f'd.{k}' for k in KEYS)} HAVING {nonzero}"
        # One order for every statement's row locks: two transactions that touch the same count
        # rows take them in the same order, and cannot deadlock on them.
        f" ORDER BY {', '.join(f'd.{k}' for k in KEYS)}"
    )


def _pg_function(name: str, body: str) -> str:
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body}; RETURN NULL; END $$"
    )


def _pg_triggers() -> list[str]:
    upsert = f"INSERT INTO job_counts ({_COLUMNS}) {{}} {_UPSERT}"
    matches = " AND ".join(f"job_counts.{k} = d.{k}" for k in KEYS)
    subtract = (
        f"UPDATE job_counts SET {', '.join(f'{s} = job_counts.{s} + d.{s}' for s in SUMS)}"
        f" FROM ({_pg_delta([('old_rows', '-')])}) d WHERE {matches}"
    )
    return [
        _pg_function("job_counts_inserted", upsert.format(_pg_delta([("new_rows", "")]))),
        _pg_function("job_counts_updated", upsert.format(_pg_delta([("new_rows", ""), ("old_rows", "-")]))),
        _pg_function("job_counts_deleted", subtract),
        "CREATE TRIGGER job_counts_insert AFTER INSERT ON problems REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION job_counts_inserted()",
        "CREATE TRIGGER job_counts_update AFTER UPDATE ON problems"
        " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION job_counts_updated()",
        "CREATE TRIGGER job_counts_delete AFTER DELETE ON problems REFERENCING OLD TABLE AS old_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION job_counts_deleted()",
    ]


def create_triggers(conn: sa.Connection) -> None:
    for statement in _pg_triggers() if conn.dialect.name == "postgresql" else _sqlite_triggers():
        conn.exec_driver_sql(statement)


def drop_triggers(conn: sa.Connection) -> None:
    for name in ("insert", "update", "delete"):
        conn.exec_driver_sql(
            f"DROP TRIGGER IF EXISTS job_counts_{name}"
            + (" ON problems" if conn.dialect.name == "postgresql" else "")
        )
    if conn.dialect.name == "postgresql":
        for name in ("inserted", "updated", "deleted"):
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS job_counts_{name}()")


def upgrade() -> None:
    op.create_table(
        "job_counts",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("answered", sa.Boolean(), nullable=False),
        sa.Column("referenced", sa.Boolean(), nullable=False),
        sa.Column("correct", sa.SmallInteger(), nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        *(sa.Column(s, sa.BigInteger(), nullable=False, server_default="0") for s in SUMS),
        sa.PrimaryKeyConstraint(*KEYS, name="pk_job_counts"),
    )
    conn = op.get_bind()
    dialect = conn.dialect.name
    sums = ", ".join(f"SUM({v})" for v in _counted("p", ""))
    conn.exec_driver_sql(
        f"INSERT INTO job_counts ({_COLUMNS}) SELECT {', '.join(_grouped('p', dialect))}, {sums}"
        f" FROM problems p GROUP BY {', '.join(str(i) for i in range(1, len(KEYS) + 1))}"
    )
    create_triggers(conn)


def downgrade() -> None:
    drop_triggers(op.get_bind())
    op.drop_table("job_counts")
