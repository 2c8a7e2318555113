"""A problem's state for its strategy (`load_state`): the steps and their statuses, and the
solutions and reviews they produced, as the domain's views.

Like every query module in db/: keyword-only and typed, one transaction's worth of work each
(the caller owns the transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from db.models import ModelCall, Review, Solution, Step, StepStatus
from rstar.strategies.base import ProblemState, ReviewView, SolutionView, StepView
from rstar.types import ReviewIssue, StepKind, Verdict

# The state is read with prebuilt Core statements, as plain rows (no ORM objects, no statement
# building per call): every model step loads its problem's state twice (to build its request,
# then to plan what comes next), so this is the hottest read of the worker, and the ORM path cost
# about four times the CPU.
_steps_t = Step.__table__
_solutions_t = Solution.__table__
_reviews_t = Review.__table__
_calls_t = ModelCall.__table__
STATE_STEPS = select(
    _steps_t.c.id, _steps_t.c.key, _steps_t.c.kind, _steps_t.c.role, _steps_t.c.round, _steps_t.c.status
).where(_steps_t.c.problem_id == bindparam("problem_id"))
_STATE_SOLUTIONS = (
    select(
        _solutions_t.c.id,
        _solutions_t.c.step_id,
        _solutions_t.c.round,
        _solutions_t.c.author,
        _solutions_t.c.kind,
        _solutions_t.c.steps,
        _solutions_t.c.answer,
        _solutions_t.c.parse_error,
        _calls_t.c.response_text,
    )
    .select_from(_solutions_t.outerjoin(_calls_t, _calls_t.c.id == _solutions_t.c.model_call_id))
    .where(_solutions_t.c.problem_id == bindparam("problem_id"))
)
_STATE_REVIEWS = (
    select(
        _reviews_t.c.id,
        _reviews_t.c.step_id,
        _reviews_t.c.round,
        _reviews_t.c.reviewer,
        _reviews_t.c.target_solution_id,
        _reviews_t.c.verdict,
        _reviews_t.c.logical_consistency,
        _reviews_t.c.calculation_accuracy,
        _reviews_t.c.step_completeness,
        _reviews_t.c.issues,
        _reviews_t.c.suggested_answer,
        _reviews_t.c.structured,
        _calls_t.c.response_text,
    )
    .select_from(_reviews_t.outerjoin(_calls_t, _calls_t.c.id == _reviews_t.c.model_call_id))
    .where(_reviews_t.c.problem_id == bindparam("problem_id"))
)


# The kinds of step whose output is a solution (a review step's is a review, a select step's the
# selection).
_SOLUTION_KINDS = {StepKind.GENERATE.value, StepKind.REFINE.value, StepKind.COMPLETE.value}


V = TypeVar("V")


class LazyOutputs(Mapping[str, V]):
    """A problem's solutions or reviews, read on first use.

    Most steps need none of them: a plan usually looks only at the steps' statuses (the first of
    A's and B's steps to finish has nothing to plan), and a first-round step reads nothing to
    build its request. Valid only inside the transaction that made it.
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


def load_state(
    *, session: Session, problem_id: int, question: str, steps: Sequence[Any] | None = None
) -> ProblemState:
    """The problem's state for its strategy; its solutions and reviews are read when first used,
    so use it inside the caller's transaction.

    `steps`, when the caller has just read them (Step objects or `STATE_STEPS` rows), saves
    reading them again.
    """
    conn = session.connection()
    params = {"problem_id": problem_id}
    if steps is None:
        steps = conn.execute(STATE_STEPS, params).all()
    by_id = {s.id: s for s in steps}
    # An output is written in the transaction that marks its step done: no done step of a kind,
    # no output of that kind, and no need to ask.
    done_kinds = {s.kind for s in steps if s.status == StepStatus.DONE}

    def solutions() -> dict[str, SolutionView]:
        found: dict[str, SolutionView] = {}
        for sol in conn.execute(_STATE_SOLUTIONS, params) if done_kinds & _SOLUTION_KINDS else ():
            if sol.step_id not in by_id:
                continue  # its step came after the steps were read (no transaction: autocommit_scope)
            key = by_id[sol.step_id].key
            found[key] = SolutionView(
                id=sol.id,
                step_key=key,
                round=sol.round,
                author=sol.author,  # type: ignore[arg-type]
                kind=sol.kind,
                steps=tuple(sol.steps or ()),
                answer=sol.answer,
                response_text=sol.response_text,
                parse_error=sol.parse_error,
            )
        return found

    def reviews() -> dict[str, ReviewView]:
        found: dict[str, ReviewView] = {}
        for rev in conn.execute(_STATE_REVIEWS, params) if StepKind.REVIEW.value in done_kinds else ():
            if rev.step_id not in by_id:
                continue
            key = by_id[rev.step_id].key
            issues = tuple(
                ReviewIssue(i.get("step"), str(i.get("description", ""))) for i in rev.issues or []
            )
            found[key] = ReviewView(
                id=rev.id,
                step_key=key,
                round=rev.round,
                reviewer=rev.reviewer,  # type: ignore[arg-type]
                target_solution_id=rev.target_solution_id,
                verdict=Verdict(rev.verdict),
                scores=(rev.logical_consistency, rev.calculation_accuracy, rev.step_completeness),
                issues=issues,
                suggested_answer=rev.suggested_answer,
                response_text=rev.response_text,
                structured=rev.structured,
            )
        return found

    return ProblemState(
        question=question,
        steps={s.key: StepView(s.key, s.kind, s.role, s.round, s.status) for s in steps},  # type: ignore[arg-type]
        solutions=LazyOutputs(solutions),
        reviews=LazyOutputs(reviews),
    )
