"""The audit schema. The database is the source of truth for where every problem stands.

    Job 1─* Problem 1─* Step 1─* ModelCall          (one row per attempt, failed ones too)
                          Step 1─1 Output            (the parsed reply of the step's call)
                                 Output *─1 Output   (parent: what it extends or judges)
                  Problem 1─1 Selection ─1 Output
    ModelCall.request *─* SharedText                 (its system messages, by digest)
    Job 1─* JobCount                                 (its problems counted, by triggers)

A job's models are its roster (`jobs.models`, a list of {"name", "url"}); a step names the model
that runs it. Step kinds and output payloads belong to the job's strategy (rstar/strategies/).

Idempotency lives in the unique constraints: a step key is unique per problem (so a step is
dispatched once), an attempt number is unique per step (so a call is recorded once), and a step
has at most one output row (so a redelivered task cannot duplicate a solution or a review).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    case,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

from rstar.records import pack_json, unpack_json

MAX_ROW_ID = 2**63 - 1
"""The largest id a row can have (SQLite's and PostgreSQL's 64-bit integers): an id typed above
it is refused where it is read, not handed to the driver to overflow."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class PackedJSON(TypeDecorator[Any]):
    """A JSON value stored packed (`rstar.records.pack_json`): read and written as the value, by
    the ORM and Core statements alike; None is SQL NULL."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
        return None if value is None else pack_json(value)

    def process_result_value(self, value: bytes | None, dialect: Any) -> Any:
        return None if value is None else unpack_json(value)


class JobStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"
    FINISHED = "finished"


class ProblemStatus(StrEnum):
    # Not started: a job keeps at most `job_window` problems started and open at once, and starts
    # the next waiting one (in input order) as one finishes (tasks/dispatch.py, `feed`).
    WAITING = "waiting"
    # Started: its first steps are queued, none taken by a worker yet.
    PENDING = "pending"
    RUNNING = "running"
    ANSWERED = "answered"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_PROBLEM_STATES = (ProblemStatus.ANSWERED, ProblemStatus.FAILED, ProblemStatus.CANCELLED)


class StepStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


OPEN_STEP_STATES = (StepStatus.QUEUED, StepStatus.RUNNING)
"""A step someone will still work on."""


class CallOutcome(StrEnum):
    OK = "ok"
    RETRYABLE_ERROR = "retryable_error"
    PERMANENT_ERROR = "permanent_error"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    strategy: Mapped[str] = mapped_column(String(50))
    params: Mapped[dict[str, Any]]
    """Every parameter of the run (rounds, temperatures, max tokens, seeds, prompt version)."""
    models: Mapped[list[Any]]
    """The roster, in order: [{"name": "A", "url": "http://..."}, ...] (URLs without credentials)."""
    source: Mapped[str | None] = mapped_column(String(1000))
    problem_type: Mapped[str] = mapped_column(String(20), default="number", server_default="number")
    """The form of its answers (`rstar.problem_types`): number, latex, yes-no or choice (0010)."""
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.ACTIVE)
    resume_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", name="fk_jobs_resume_from", ondelete="SET NULL")
    )
    """`submit --resume-from`: identical model requests answered in that job are reused, not re-sent."""
    job_window: Mapped[int | None] = mapped_column(Integer)
    """Its problems started and open at once (tasks/dispatch.py, `feed`), decided at submit (0012);
    null for jobs from before, which keep the workers' RSTAR_JOB_WINDOW (1024 unset)."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    problems: Mapped[list[Problem]] = relationship(back_populates="job", order_by="Problem.id")


class Problem(Base):
    __tablename__ = "problems"
    __table_args__ = (
        UniqueConstraint("job_id", "item_id", name="uq_problems_job_item"),
        # Counts per state and pages in input order, read from the index alone (0007).
        Index("ix_problems_job_status", "job_id", "status"),
        Index("ix_problems_job_line", "job_id", "line"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(String(200))
    line: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    reference_answer: Mapped[str | None] = mapped_column(String(500))
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The input line's "meta" object, as given (None: it had none)."""
    status: Mapped[str] = mapped_column(String(20), default=ProblemStatus.PENDING, index=True)
    final_answer: Mapped[str | None] = mapped_column(String(500))
    rounds_used: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # A finished problem's tallies (migration 0007), written with its answer or failure so that
    # pages and counts over a million problems are sums over this table, not over every model
    # call. NULL while it is open (pending, running, cancelled): readers count its calls then.
    correct: Mapped[bool | None] = mapped_column(Boolean)
    """`judge` of the answer against the reference; NULL when not answered or no reference."""
    calls: Mapped[int | None] = mapped_column(Integer)
    requests: Mapped[int | None] = mapped_column(Integer)
    sequences: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)

    job: Mapped[Job] = relationship(back_populates="problems")
    steps: Mapped[list[Step]] = relationship(order_by="Step.id", viewonly=True)


class Step(Base):
    """One unit of work for a problem: a model call of a kind its strategy owns, or the selection."""

    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("problem_id", "key", name="uq_steps_problem_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(100))
    """E.g. "r2.review.A": round 2, A reviews B's latest solution."""
    kind: Mapped[str] = mapped_column(String(20))
    model: Mapped[str | None] = mapped_column(String(32))
    """The roster name of the model that runs it; None for the selection."""
    round: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=StepStatus.QUEUED, index=True)
    task_id: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_base: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Attempts made before the current retry budget began (`rstar retry` starts a fresh budget)."""
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class ModelCall(Base):
    __tablename__ = "model_calls"
    __table_args__ = (UniqueConstraint("step_id", "attempt", name="uq_model_calls_step_attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), index=True)
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    endpoint: Mapped[str] = mapped_column(String(500))
    server_kind: Mapped[str | None] = mapped_column(String(20))
    model: Mapped[str | None] = mapped_column(String(500))
    request: Mapped[dict[str, Any]]
    """As sent, but for its system messages, stored once in `shared_texts` and named by digest
    (rstar/records.py: `expanded_request` gives it as sent)."""
    response: Mapped[dict[str, Any] | None] = mapped_column(PackedJSON)
    """As received, but for the texts `response_text` holds (rstar/records.py), packed."""
    response_text: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(50))
    requests: Mapped[int | None] = mapped_column(Integer)
    """HTTP requests this call took: 1, or n for n samples from a server that ignores `n`."""
    sequences: Mapped[int | None] = mapped_column(Integer)
    """Sequences it generated (0 when it failed): a call that samples n counts n here, 1 above."""
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(20))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    """sha256 of the endpoint and the request as sent: finds an identical call to reuse."""
    reused_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_calls.id", name="fk_model_calls_reused_from", ondelete="SET NULL")
    )
    """Set when this reply was copied from an identical call recorded earlier (no request was sent)."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Output(Base):
    """A step's reply as its strategy parsed it: a solution, a review, a completion, a tree node."""

    __tablename__ = "outputs"
    __table_args__ = (UniqueConstraint("step_id", "seq", name="uq_outputs_step_seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), index=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Its place among its step's outputs (a step that samples n sequences may write several)."""
    model_call_id: Mapped[int | None] = mapped_column(ForeignKey("model_calls.id"))
    round: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(20))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("outputs.id"), index=True)
    """The output this one extends or judges: a review's solution, a refinement's draft, a
    completion's prefix, a tree node's parent."""
    stored_text: Mapped[str | None] = mapped_column("text", Text)
    """The reply as parsed, when it is not one of its call's sequences verbatim (`text_seq`)."""
    text_seq: Mapped[int | None] = mapped_column(Integer)
    """Set when the text is its model call's sequence `text_seq` (from 0), stored once, in the
    call's `response_text` (rstar/records.py); `stored_text` is null then."""
    payload: Mapped[dict[str, Any]]
    """What the strategy parsed out of it (JSON): a solution's steps, a review's verdict, ..."""
    answer: Mapped[str | None] = mapped_column(String(500))
    """The normalised final answer it gives, if any."""
    parse_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class sequence_text(FunctionElement[str]):
    """SQL: sequence `index` of a model call's `response_text` (the text itself when the call
    generated one; else its JSON list's element), as `rstar.records.recorded_texts` reads it."""

    type = Text()
    inherit_cache = True
    name = "sequence_text"


@compiles(sequence_text, "sqlite")
def _sequence_text_sqlite(element: sequence_text, compiler: SQLCompiler, **kw: Any) -> str:
    text, sequences, index = (compiler.process(c, **kw) for c in element.clauses)
    return f"CASE WHEN {sequences} > 1 THEN json_extract({text}, '$[' || {index} || ']') ELSE {text} END"


@compiles(sequence_text, "postgresql")
def _sequence_text_postgresql(element: sequence_text, compiler: SQLCompiler, **kw: Any) -> str:
    text, sequences, index = (compiler.process(c, **kw) for c in element.clauses)
    return f"CASE WHEN {sequences} > 1 THEN CAST({text} AS JSON) ->> {index} ELSE {text} END"


# An output's text as written, wherever it is stored: read like a column (`Output.text`, in the ORM
# and in Core statements alike), a correlated lookup of its call only where it is one of its
# sequences.
Output.text = column_property(
    case(
        (Output.text_seq.is_(None), Output.stored_text),
        else_=select(sequence_text(ModelCall.response_text, ModelCall.sequences, Output.text_seq))
        .where(ModelCall.id == Output.model_call_id)
        .correlate_except(ModelCall)  # its own lookup, even in a query that joins model_calls
        .scalar_subquery(),
    )
)
"""The reply as parsed (as recorded with its model call): `stored_text`, or the sequence
`text_seq` of its call."""


class Selection(Base):
    __tablename__ = "selections"

    id: Mapped[int] = mapped_column(primary_key=True)
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), unique=True)
    output_id: Mapped[int | None] = mapped_column(ForeignKey("outputs.id"))
    """The output whose answer was chosen."""
    answer: Mapped[str | None] = mapped_column(String(500))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SharedText(Base):
    """A text many model calls sent (a strategy's system prompt), stored once: requests name it by
    its digest (rstar/records.py). Rows are only added, never changed or removed."""

    __tablename__ = "shared_texts"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    """sha256 of the text's UTF-8 bytes, in hex (`rstar.records.text_digest`)."""
    text: Mapped[str] = mapped_column(Text)


class JobCount(Base):
    """How many of a job's problems are in one group (status; answer, reference, judgement and
    rounds as the pages tell them apart), with their tallies summed. Written only by the database's
    triggers on `problems` (migration 0009), in the transaction that changes them: read, never
    written, by the code. A group whose problems have all moved on keeps a row with n = 0."""

    __tablename__ = "job_counts"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    answered: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    """final_answer is not NULL."""
    referenced: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    """reference_answer is not NULL."""
    correct: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    """1 right, 0 wrong, -1 not judged (NULL cannot be part of a key the upserts meet)."""
    rounds: Mapped[int] = mapped_column(Integer, primary_key=True)
    """rounds_used, -1 when none."""
    n: Mapped[int] = mapped_column(BigInteger, server_default="0")
    calls: Mapped[int] = mapped_column(BigInteger, server_default="0")
    requests: Mapped[int] = mapped_column(BigInteger, server_default="0")
    sequences: Mapped[int] = mapped_column(BigInteger, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
