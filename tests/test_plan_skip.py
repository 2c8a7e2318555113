"""The plan skipped inside a batch of rstar's steps (`Strategy.plans_after`), on SQLite and
PostgreSQL: a step that finishes while others of its batch are open plans nothing, the last one
plans the next batch, and a step of the batch that failed for good fails the problem at the next
finish rather than being skipped over. Two problems, one driven and one left open: a problem's
steps are counted apart from the other's.

Tasks run in this process with `.apply()` (the real task code), against a fake server over HTTP.
"""

from __future__ import annotations

import json

from celery import Celery
from sqlalchemy import select, update

from db.models import Problem, Step
from db.session import session_scope
from rstar.inputs import parse_problems
from rstar.roster import ModelEntry
from tasks.step import model_step
from tasks.submit import submit_job
from tests.fakeserver import FakeInferenceServer, FakeRequest
from tests.support import gsm8k_rows
from workers.settings import get_settings

PARAMS = {"rollouts": 2, "max_depth": 2}


def _any_step(request: FakeRequest) -> str:
    return "Step 1: Adding it up. The answer is 7."


def _submit(url: str) -> int:
    """Two problems; returns the first's id (the second's is the next)."""
    data = "".join(
        json.dumps({"id": str(i), "question": r["question"], "answer": r["answer"]}) + "\n"
        for i, r in enumerate(gsm8k_rows(2))
    ).encode()
    submit_job(
        settings=get_settings(),
        name="plan-skip",
        strategy_name="rstar",
        params=PARAMS,
        models=[ModelEntry("A", url), ModelEntry("B", url + "/")],
        source=None,
        problems=parse_problems(data),
    )
    with session_scope(get_settings().database_url) as s:
        return min(s.scalars(select(Problem.id)))


def _steps(problem_id: int) -> dict[int, tuple[str, str]]:
    """The problem's model steps: id -> (status, kind)."""
    with session_scope(get_settings().database_url) as s:
        rows = s.scalars(select(Step).where(Step.problem_id == problem_id, Step.model.is_not(None)))
        return {st.id: (st.status, st.kind) for st in rows}


def _queued(problem_id: int) -> list[int]:
    # A sub-question first: its end adds its answers' steps to the batch (it plans).
    steps = _steps(problem_id)
    return sorted(
        (i for i, (status, _) in steps.items() if status == "queued"),
        key=lambda i: (steps[i][1] != "a3_question", i),
    )


def _first_batch(problem_id: int) -> list[int]:
    """The root's expansion, its sub-questions answered: steps that each leave the plan alone."""
    batch = _queued(problem_id)
    while _steps(problem_id)[batch[0]][1] == "a3_question":
        model_step.apply(args=[batch[0]]).get()
        batch = _queued(problem_id)
    assert len(batch) > 2, "the root's expansion is a batch of several steps"
    return batch


def test_a_batch_plans_once_at_its_last_step(app_env: Celery) -> None:
    with FakeInferenceServer(_any_step) as server:
        problem = _submit(server.url)
        # The other problem has outputs and open steps throughout: they are not this one's.
        other = _queued(problem + 1)
        assert model_step.apply(args=[other[0]]).get() == "done"
        batch = _first_batch(problem)
        known = set(_steps(problem))
        for step_id in batch[:-1]:
            assert model_step.apply(args=[step_id]).get() == "done"
            assert set(_steps(problem)) == known, "nothing new while the batch's other steps are open"
        assert model_step.apply(args=[batch[-1]]).get() == "done"
        following = _queued(problem)
        assert following and known.isdisjoint(following), "the last step of the batch planned the next"


def test_a_step_of_the_batch_failed_for_good_fails_the_problem_at_the_next_finish(app_env: Celery) -> None:
    """Its own plan never ran (a worker gone between the failure and its plan): the next step of
    the batch to finish fails the problem, though others of the batch are still open."""
    with FakeInferenceServer(_any_step) as server:
        problem = _submit(server.url)
        batch = _first_batch(problem)
        with session_scope(get_settings().database_url) as s:
            s.execute(update(Step).where(Step.id == batch[-1]).values(status="failed", error="gone for good"))
            other = s.scalar(select(Step.id).where(Step.problem_id != problem, Step.model.is_not(None)))
            # A failed step of the other problem is not this one's.
            s.execute(update(Step).where(Step.id == other).values(status="failed", error="not this one"))
        model_step.apply(args=[batch[0]]).get()  # batch[1] is still queued
        with session_scope(get_settings().database_url) as s:
            failed = s.get(Problem, problem)
            assert failed is not None and failed.status == "failed"
            assert failed.error is not None and "gone for good" in failed.error
