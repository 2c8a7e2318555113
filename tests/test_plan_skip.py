"""The plan skipped inside a batch of rstar's steps (`Strategy.plans_after`), on SQLite and
PostgreSQL: a step that finishes while others of its batch are open plans nothing, the last one
plans the next batch, and a step of the batch that failed for good fails the problem at the next
finish rather than being skipped over.

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
    row = gsm8k_rows(1)[0]
    data = json.dumps({"id": "0", "question": row["question"], "answer": row["answer"]}).encode() + b"\n"
    done = submit_job(
        settings=get_settings(),
        name="plan-skip",
        strategy_name="rstar",
        params=PARAMS,
        models=[ModelEntry("A", url), ModelEntry("B", url + "/")],
        source=None,
        problems=parse_problems(data),
    )
    return done.job_id


def _steps(db_url: str) -> dict[int, tuple[str, str]]:
    """The model steps: id -> (status, kind)."""
    with session_scope(db_url) as s:
        return {st.id: (st.status, st.kind) for st in s.scalars(select(Step).where(Step.model.is_not(None)))}


def _queued(db_url: str) -> list[int]:
    # A sub-question first: its end adds its answers' steps to the batch (it plans).
    steps = _steps(db_url)
    return sorted(
        (i for i, (status, _) in steps.items() if status == "queued"),
        key=lambda i: (steps[i][1] != "a3_question", i),
    )


def _first_batch(db_url: str) -> list[int]:
    """The root's expansion, its sub-questions answered: steps that each leave the plan alone."""
    batch = _queued(db_url)
    while _steps(db_url)[batch[0]][1] == "a3_question":
        model_step.apply(args=[batch[0]]).get()
        batch = _queued(db_url)
    assert len(batch) > 2, "the root's expansion is a batch of several steps"
    return batch


def test_a_batch_plans_once_at_its_last_step(app_env: Celery) -> None:
    db_url = get_settings().database_url
    with FakeInferenceServer(_any_step) as server:
        _submit(server.url)
        batch = _first_batch(db_url)
        known = set(_steps(db_url))
        for step_id in batch[:-1]:
            assert model_step.apply(args=[step_id]).get() == "done"
            assert set(_steps(db_url)) == known, "nothing new while the batch's other steps are open"
        assert model_step.apply(args=[batch[-1]]).get() == "done"
        following = _queued(db_url)
        assert following and known.isdisjoint(following), "the last step of the batch planned the next"


def test_a_step_of_the_batch_failed_for_good_fails_the_problem_at_the_next_finish(app_env: Celery) -> None:
    """Its own plan never ran (a worker gone between the failure and its plan): the next step of
    the batch to finish fails the problem, though others of the batch are still open."""
    db_url = get_settings().database_url
    with FakeInferenceServer(_any_step) as server:
        _submit(server.url)
        batch = _first_batch(db_url)
        with session_scope(db_url) as s:
            s.execute(update(Step).where(Step.id == batch[-1]).values(status="failed", error="gone for good"))
        model_step.apply(args=[batch[0]]).get()  # batch[1] is still queued
        with session_scope(db_url) as s:
            problem = s.scalars(select(Problem)).one()
            assert problem.status == "failed"
            assert problem.error is not None and "gone for good" in problem.error
