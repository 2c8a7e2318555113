"""A problem's state for its strategy (`load_state`): the job's models, the steps and their
statuses, and the outputs they produced, as the domain's views.

Like every query module in db/: keyword-only and typed, one transaction's worth of work each
(the caller owns the transaction).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, Sequence, ValuesView
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import JSON, ColumnElement, bindparam, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from db.models import OPEN_STEP_STATES, ModelCall, Output, Step, StepStatus
from rstar import roster
from rstar.strategies.base import OutputView, ProblemState, StepView, output_key

# The state is read with prebuilt Core statements, as plain rows (no ORM objects, no statement
# building per call): every model step loads its problem's state twice (to build its request,
# then to plan what comes next), so this is the hottest read of the worker, and the ORM path cost
# about four times the CPU.
_steps_t = Step.__table__
_outputs_t = Output.__table__
_calls_t = ModelCall.__table__


class StateStep(NamedTuple):
    """A step as its problem's state needs it: the columns `STATE_STEPS` reads, and the shape of
    a row of `steps_json`'s aggregate."""

    id: int
    key: str
    kind: str
    model: str | None
    round: int
    status: str


STATE_STEPS = select(*(_steps_t.c[c] for c in StateStep._fields)).where(
    _steps_t.c.problem_id == bindparam("problem_id")
)
_state_steps = _steps_t.alias("state_steps")


def steps_json(problem_id: ColumnElement[Any]) -> ColumnElement[Any]:
    """PostgreSQL: `STATE_STEPS` of the problem as one JSON column (an array of arrays), to add to
    another statement's columns (the claim's: one round trip less per model step). Read in that
    statement's snapshot."""
    row = func.json_build_array(*(_state_steps.c[c] for c in StateStep._fields))
    return (
        select(func.json_agg(row, type_=JSON))
        .where(_state_steps.c.problem_id == problem_id)
        .scalar_subquery()
        .label("state_steps")
    )


def steps_from_json(rows: Sequence[Sequence[Any]] | None) -> list[StateStep]:
    return [StateStep(*r) for r in rows or ()]


class StepCounts(NamedTuple):
    """What a plan that may be skipped needs of its problem's steps (`Strategy.plans_after`): one
    row, where the steps are hundreds at rstar's budget."""

    failed: int
    open: int
    """Model steps queued or running."""


_counted = _steps_t.alias("counted_steps")
_OPEN_VALUES = [s.value for s in OPEN_STEP_STATES]


def step_counts(
    problem_id: ColumnElement[Any], *, besides: ColumnElement[Any] | None = None
) -> tuple[Any, Any]:
    """`StepCounts` of the problem as two scalar subqueries (columns `failed` and `open`), to add
    to a statement; `besides`: a step left out of `open` (one the statement itself finishes,
    which its subqueries still see running)."""
    mine = _counted.c.problem_id == problem_id
    others = () if besides is None else (_counted.c.id != besides,)
    failed = select(func.count()).where(mine, _counted.c.status == StepStatus.FAILED.value)
    open_ = select(func.count()).where(
        mine, _counted.c.model.is_not(None), _counted.c.status.in_(_OPEN_VALUES), *others
    )
    return failed.scalar_subquery().label("failed"), open_.scalar_subquery().label("open")


_STATE_OUTPUTS = (
    select(
        _outputs_t.c.id,
        _outputs_t.c.step_id,
        _outputs_t.c.seq,
        _outputs_t.c.kind,
        _outputs_t.c.model,
        _outputs_t.c.round,
        _outputs_t.c.parent_id,
        _outputs_t.c.payload,
        _outputs_t.c.answer,
        Output.text.label("text"),  # stored with it, or its call's sequence (db/models.py)
        _outputs_t.c.parse_error,
        select(_calls_t.c.endpoint)
        .where(_calls_t.c.id == _outputs_t.c.model_call_id)
        .scalar_subquery()
        .label("endpoint"),
    )
    .where(_outputs_t.c.problem_id == bindparam("problem_id"))
    # In the order they were written: strategies break ties by it (the answer seen first), and
    # PostgreSQL returns rows in no order of its own (its heap order after the migration's copy).
    .order_by(_outputs_t.c.id)
)


# The outputs of some of the problem's steps, as an earlier read of its state found them: see
# `OutputCache`.
_STATE_OUTPUTS_OF_STEPS = _STATE_OUTPUTS.where(
    _outputs_t.c.step_id.in_(bindparam("step_ids", expanding=True))
)

V = TypeVar("V")


class OutputCache:
    """The outputs one task run has read of its problem, by step: read again at its plan, only the
    steps it had not seen done are asked for.

    A step's outputs are written in the transaction that marks it done and never change after, so
    a step seen done (or seen with outputs) is known for good; a later read asks only for the
    others. A model step loads its problem's state twice (to build its request, then to plan), so
    at rstar's budget (hundreds of outputs per problem) this halves the rows and JSON the worker
    reads and decodes per call.
    """

    def __init__(self, by_step: dict[int, list[tuple[str, OutputView]]] | None = None) -> None:
        self.by_step: dict[int, list[tuple[str, OutputView]]] = by_step or {}

    def wrote(self, step_id: int, outputs: Sequence[OutputView]) -> None:
        """The outputs the caller's transaction wrote for its step (which it marked done)."""
        self.by_step[step_id] = [(output_key(o.step_key, o.seq), o) for o in outputs]

    def fork(self) -> OutputCache:
        """A copy to read with in a transaction that may roll back: what it reads of the
        transaction's own writes must not outlive it."""
        return OutputCache(dict(self.by_step))


class OutputMemo:
    """The outputs this process has read of its problems, kept between task runs (the most
    recently used problems, at most `max_outputs` outputs in all).

    A step's claim used to read every output of its problem (and decode each payload): at rstar's
    budget a problem has hundreds, and each of its hundreds of steps read them all again. The rule
    that makes `OutputCache` safe makes keeping them safe: a done step's outputs are written in the
    transaction that marks it done and are never updated or deleted; and only what a committed
    read or a committed write produced is kept (`remember` after the commit). Kept per database (a
    process may use several, and forgets one when its engine's pool goes) and per problem id
    and question.
    """

    def __init__(self, max_outputs: int) -> None:
        self.max_outputs = max_outputs
        # Reentrant: an engine's finalizer (below) may run in a garbage collection this lock's
        # holder set off.
        self._lock = threading.RLock()
        self._kept: OrderedDict[tuple[int, int, str], tuple[dict[int, list[tuple[str, OutputView]]], int]] = (
            OrderedDict()
        )
        self._size = 0
        self._pools: set[int] = set()

    @property
    def size(self) -> int:
        """How many outputs are kept."""
        return self._size

    def recall(self, session: Session, problem_id: int, question: str) -> OutputCache:
        """A cache to read the problem's state with, holding what this process has kept of it."""
        key = (id(_pool_of(session)), problem_id, question)
        with self._lock:
            kept = self._kept.get(key)
            if kept is None:
                return OutputCache()
            self._kept.move_to_end(key)
            return OutputCache(dict(kept[0]))

    def remember(self, session: Session, problem_id: int, question: str, cache: OutputCache) -> None:
        """Keep what `cache` read or was given, once the transaction that did so has committed."""
        pool = _pool_of(session)
        key = (id(pool), problem_id, question)
        count = sum(len(outs) for outs in cache.by_step.values())
        with self._lock:
            if key[0] not in self._pools:
                self._pools.add(key[0])
                weakref.finalize(pool, self._forget_pool, key[0])
            old = self._kept.pop(key, None)
            self._size -= old[1] if old is not None else 0
            if count > self.max_outputs:
                return
            self._kept[key] = (dict(cache.by_step), count)
            self._size += count
            while self._size > self.max_outputs:
                _key, (_outs, dropped) = self._kept.popitem(last=False)
                self._size -= dropped

    def _forget_pool(self, pool_id: int) -> None:
        with self._lock:
            for key in [k for k in self._kept if k[0] == pool_id]:
                self._size -= self._kept.pop(key)[1]
            self._pools.discard(pool_id)


def _pool_of(session: Session) -> Pool:
    """The database a session reads, as the connection pool its engine and that engine's variants
    (autocommit_scope's) share: one per engine, replaced when the engine is disposed."""
    bind = session.get_bind()
    return bind.pool if isinstance(bind, Engine) else bind.engine.pool


# About 1-2 KB an output (its text and payload): some 50-100 MB a worker process at most.
remembered_outputs = OutputMemo(max_outputs=50_000)


class Lazy(Mapping[str, V]):
    """A problem's outputs, read on first use; or its steps' views, made on first use.

    Most steps need none of the outputs: a plan usually looks only at the steps' statuses (the
    first of the models' steps to finish has nothing to plan), and a first-round step reads
    nothing to build its request. And rstar's request and parent need only the outputs, where its
    steps are hundreds. Outputs: valid only inside the transaction that read the steps.
    """

    def __init__(self, load: Callable[[], dict[str, V]]) -> None:
        self._load: Callable[[], dict[str, V]] | None = load
        self._data: dict[str, V] = {}

    def _items(self) -> dict[str, V]:
        if self._load is not None:
            self._data, self._load = self._load(), None
        return self._data

    def __getitem__(self, key: str) -> V:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    # The dict's own views and lookups: Mapping's generic ones call __getitem__ once per item,
    # and a search walks every output of its problem several times per step.
    def __contains__(self, key: object) -> bool:
        return key in self._items()

    def get(self, key: str, default: Any = None) -> Any:
        return self._items().get(key, default)

    def keys(self) -> KeysView[str]:
        return self._items().keys()

    def values(self) -> ValuesView[V]:
        return self._items().values()

    def items(self) -> ItemsView[str, V]:
        return self._items().items()


def load_state(
    *,
    session: Session,
    problem_id: int,
    question: str,
    models: Sequence[Mapping[str, Any]],
    steps: Sequence[Any] | None = None,
    cache: OutputCache | None = None,
) -> ProblemState:
    """The problem's state for its strategy; its outputs are read when first used, so use it
    inside the caller's transaction.

    `models` is the job's stored roster (`jobs.models`). `steps`, when the caller has just read
    them (Step objects or `STATE_STEPS` rows), saves reading them again. `cache`: the outputs an
    earlier read of this problem found (only the other steps' are read), filled in by this one.
    """
    conn = session.connection()
    params = {"problem_id": problem_id}
    if steps is None:
        steps = conn.execute(STATE_STEPS, params).all()

    def outputs() -> dict[str, OutputView]:
        known = cache.by_step if cache is not None else {}
        by_id = {s.id: s for s in steps}
        # An output is written in the transaction that marks its model step done: no done model
        # step, no output, and no need to ask.
        if not any(s.status == StepStatus.DONE and s.model is not None for s in steps):
            rows: Any = ()
        elif known:
            # Only a done step has outputs (see above).
            unknown = [s.id for s in steps if s.id not in known and s.status == StepStatus.DONE]
            rows = conn.execute(_STATE_OUTPUTS_OF_STEPS, {**params, "step_ids": unknown}) if unknown else ()
        else:
            rows = conn.execute(_STATE_OUTPUTS, params)
        fresh: dict[int, list[tuple[str, OutputView]]] = {}
        for out in rows:
            if out.step_id not in by_id:
                continue  # its step came after the steps were read (no transaction: autocommit_scope)
            key = by_id[out.step_id].key
            view = OutputView(
                id=out.id,
                step_key=key,
                kind=out.kind,
                model=out.model,
                round=out.round,
                parent_id=out.parent_id,
                payload=out.payload or {},
                answer=out.answer,
                text=out.text,
                parse_error=out.parse_error,
                seq=out.seq,
                endpoint=out.endpoint,
            )
            fresh.setdefault(out.step_id, []).append((output_key(key, out.seq), view))
        if cache is not None:
            for s in steps:
                if s.id in fresh or (s.status == StepStatus.DONE and s.id not in known):
                    cache.by_step[s.id] = fresh.get(s.id, [])
        pairs = [kv for s in steps for kv in (known.get(s.id) or fresh.get(s.id) or ())]
        # In the order they were written, as one read gives them (strategies break ties by it).
        pairs.sort(key=lambda kv: kv[1].id)
        return dict(pairs)

    return ProblemState(
        question=question,
        models=roster.names(models),
        steps=Lazy(lambda: {s.key: StepView(s.key, s.kind, s.model, s.round, s.status) for s in steps}),
        outputs=Lazy(outputs),
    )
