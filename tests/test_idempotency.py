"""Redelivered and duplicated tasks: no extra model calls, no duplicate rows (on SQLite and PostgreSQL).

Tasks run in this process with `.apply()` (the real task code, eagerly), driven step by step from
what the database says is queued, against fake TGI servers over HTTP.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from celery import Celery
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from db.models import ModelCall, Output, Problem, Selection, Step, utcnow
from db.session import session_scope
from rstar.inputs import parse_problems
from rstar.roster import ModelEntry
from tasks.select import select as select_task
from tasks.step import model_step
from tasks.submit import submit_job
from tests.fakeserver import FakeInferenceServer
from tests.support import gsm8k_rows, oracle_pair
from workers.settings import get_settings

generate = model_step  # the first steps are the models' solutions


def task_for(kind: str):  # type: ignore[no-untyped-def]
    return select_task if kind == "select" else model_step


def _submit(rows: list[dict[str, str]], url_a: str, url_b: str) -> int:
    data = "".join(
        json.dumps({"id": str(i), "question": r["question"], "answer": r["answer"]}) + "\n"
        for i, r in enumerate(rows)
    ).encode()
    done = submit_job(
        settings=get_settings(),
        name="idem",
        strategy_name="mutual",
        params={},
        models=[ModelEntry("A", url_a), ModelEntry("B", url_b)],
        source=None,
        problems=parse_problems(data),
    )
    return done.job_id


def _queued(db_url: str) -> list[tuple[int, str]]:
    with session_scope(db_url) as s:
        return [
            (st.id, st.kind)
            for st in s.scalars(select(Step).where(Step.status == "queued").order_by(Step.id))
        ]


def _drive(db_url: str) -> None:
    """Run queued steps until none is left, as a worker would."""
    for _ in range(100):
        queued = _queued(db_url)
        if not queued:
            return
        for step_id, kind in queued:
            task_for(kind).apply(args=[step_id])
    raise AssertionError("steps kept coming")


def _counts(db_url: str) -> dict[str, int]:
    with session_scope(db_url) as s:
        return {
            m.__tablename__: s.scalar(select(func.count()).select_from(m)) or 0
            for m in (Step, ModelCall, Output, Selection)
        }


@pytest.fixture
def servers(app_env: Celery):  # type: ignore[no-untyped-def]
    rows = gsm8k_rows(2)
    oa, ob = oracle_pair(rows, b_wrong_every=2)
    with FakeInferenceServer(oa) as a, FakeInferenceServer(ob) as b:
        yield rows, a, b


def test_rerunning_every_task_of_a_finished_problem_changes_nothing(servers) -> None:  # type: ignore[no-untyped-def]
    rows, a, b = servers
    db_url = get_settings().database_url
    _submit(rows, a.url, b.url)
    _drive(db_url)
    before, served = _counts(db_url), a.request_count + b.request_count
    assert before["selections"] == 2 and before["model_calls"] == served == 12
    with session_scope(db_url) as s:
        steps = [(st.id, st.kind) for st in s.scalars(select(Step))]
    for step_id, kind in steps * 2:  # every task of both problems, twice
        task_for(kind).apply(args=[step_id])
    assert _counts(db_url) == before
    assert a.request_count + b.request_count == served


def test_redelivery_after_the_call_reuses_the_recorded_reply(servers) -> None:  # type: ignore[no-untyped-def]
    """A worker died after recording the model's reply but before writing the solution."""
    rows, a, b = servers
    db_url = get_settings().database_url
    _submit(rows[:1], a.url, b.url)
    step_id = _queued(db_url)[0][0]
    generate.apply(args=[step_id], task_id="delivery-1")
    assert a.request_count + b.request_count == 1
    with session_scope(db_url) as s:  # undo what the dead worker had not committed
        s.execute(delete(Output).where(Output.step_id == step_id))
        s.execute(
            update(Step)
            .where(Step.id == step_id)
            .values(status="running", task_id="delivery-1", lease_until=utcnow() + timedelta(hours=1))
        )
    generate.apply(args=[step_id], task_id="delivery-1")  # the same message, redelivered
    assert a.request_count + b.request_count == 1
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Output).where(Output.step_id == step_id)) == 1
        assert s.scalar(select(func.count()).select_from(ModelCall).where(ModelCall.step_id == step_id)) == 1
        assert s.get(Step, step_id).status == "done"  # type: ignore[union-attr]


def test_a_duplicate_message_does_not_call_while_the_step_is_leased(servers) -> None:  # type: ignore[no-untyped-def]
    rows, a, b = servers
    db_url = get_settings().database_url
    _submit(rows[:1], a.url, b.url)
    step_id = _queued(db_url)[0][0]
    with session_scope(db_url) as s:
        s.execute(
            update(Step)
            .where(Step.id == step_id)
            .values(status="running", task_id="other-run", lease_until=utcnow() + timedelta(hours=1))
        )
    result = generate.apply(args=[step_id], task_id="duplicate")
    assert result.get() == "skipped"
    assert a.request_count + b.request_count == 0
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(ModelCall)) == 0


def test_unique_constraints_refuse_duplicate_rows(servers) -> None:  # type: ignore[no-untyped-def]
    rows, a, b = servers
    db_url = get_settings().database_url
    _submit(rows[:1], a.url, b.url)
    _drive(db_url)
    with session_scope(db_url) as s:
        problem = s.scalars(select(Problem)).one()
        sol = s.scalars(select(Output)).first()
        call = s.scalars(select(ModelCall)).first()
        assert sol is not None and call is not None
    dupes = [
        Step(problem_id=problem.id, key="r1.generate.A", kind="generate", model="A", round=1),
        ModelCall(
            step_id=call.step_id,
            problem_id=problem.id,
            attempt=call.attempt,
            endpoint="x",
            request={},
            outcome="ok",
        ),
        Output(problem_id=problem.id, step_id=sol.step_id, round=1, model="A", kind="generate", payload={}),
        Selection(problem_id=problem.id, answer="1", reason="again"),
    ]
    for row in dupes:
        with pytest.raises(IntegrityError), session_scope(db_url) as s:
            s.add(row)


def test_a_bug_after_the_call_keeps_the_paid_reply(servers, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The reply, the output and the next steps share one transaction; if writing the output or
    planning fails (a bug, not the database), the reply is still recorded, and the redelivered
    task uses it instead of calling again."""
    rows, a, b = servers
    db_url = get_settings().database_url
    _submit(rows[:1], a.url, b.url)
    step_id = _queued(db_url)[0][0]

    def broken_plan(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in planning")

    with monkeypatch.context() as m:
        m.setattr("tasks.base.plan_next", broken_plan)
        result = generate.apply(args=[step_id], task_id="delivery-1")
    assert isinstance(result.result, RuntimeError)
    assert a.request_count + b.request_count == 1
    with session_scope(db_url) as s:
        calls = s.scalars(select(ModelCall).where(ModelCall.step_id == step_id)).all()
        assert [(c.attempt, c.outcome) for c in calls] == [(1, "ok")]
        assert s.scalar(select(func.count()).select_from(Output)) == 0  # rolled back with the plan
        # The lease of the run that failed has run out (as if its worker had gone away).
        s.execute(update(Step).where(Step.id == step_id).values(lease_until=utcnow()))
    generate.apply(args=[step_id], task_id="delivery-2")
    assert a.request_count + b.request_count == 1  # no second call
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(ModelCall)) == 1
        assert s.scalar(select(Step.status).where(Step.id == step_id)) == "done"
        assert s.scalar(select(func.count()).select_from(Output).where(Output.step_id == step_id)) == 1


def test_messages_of_the_per_kind_tasks_of_earlier_releases_are_still_served(servers) -> None:  # type: ignore[no-untyped-def]
    """Messages queued by a release with a task per kind ("rstar.generate", ...) when the workers
    are upgraded: each is served by the one model step, and touches only steps of its own kind."""
    from celery import current_app

    rows, a, b = servers
    db_url = get_settings().database_url
    _submit(rows[:1], a.url, b.url)
    step_id = _queued(db_url)[0][0]
    legacy = current_app.tasks
    assert legacy["rstar.cross_validate"].apply(args=[step_id]).get() == "missing"  # not a review step
    assert a.request_count + b.request_count == 0
    assert legacy["rstar.generate"].apply(args=[step_id]).get() == "done"
    assert a.request_count + b.request_count == 1
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Output).where(Output.step_id == step_id)) == 1
