"""The recovery pieces one at a time, in process (SQLite and PostgreSQL): lease renewal, who may
take a leased step, the sweep's three repairs, and job control (cancel, reopen, retry)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from celery import Celery
from sqlalchemy import delete, select, update

from db import recovery as q
from db.claims import claim_step
from db.models import Job, ModelCall, Problem, Step, utcnow
from db.session import session_scope
from rstar.inputs import parse_problems
from rstar.roster import ModelEntry
from tasks.leases import LeaseKeeper
from tasks.recovery import recover
from tasks.step import model_step as generate
from tasks.submit import submit_job
from tests.fakeserver import FakeInferenceServer
from tests.support import gsm8k_rows, oracle_pair
from workers.settings import get_settings

LEASE = timedelta(seconds=60)


@pytest.fixture
def job(app_env: Celery):  # type: ignore[no-untyped-def]
    rows = gsm8k_rows(1)
    oa, ob = oracle_pair(rows, b_wrong_every=2)
    with FakeInferenceServer(oa) as a, FakeInferenceServer(ob) as b:
        data = "".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows)
        done = submit_job(
            settings=get_settings(),
            name="units",
            strategy_name="mutual",
            params={},
            models=[ModelEntry("A", a.url), ModelEntry("B", b.url)],
            source=None,
            problems=parse_problems(data.encode()),
        )
        yield get_settings().database_url, done.job_id


def _steps(db_url: str) -> dict[str, Step]:
    with session_scope(db_url) as s:
        return {st.key: st for st in s.scalars(select(Step))}


def _claim(db_url: str, step_id: int, task_id: str) -> object:
    with session_scope(db_url) as s:
        return claim_step(session=s, step_id=step_id, task_id=task_id, lease=LEASE)


def test_same_task_id_takes_back_only_an_unrenewed_lease(job) -> None:  # type: ignore[no-untyped-def]
    db_url, _ = job
    step = _steps(db_url)["r1.generate.A"]
    assert not isinstance(_claim(db_url, step.id, "t1"), int)
    # A duplicate of the same message while the first run lives (and renews): skipped.
    assert isinstance(_claim(db_url, step.id, "t1"), int)
    # Another task id: skipped until the lease is over.
    assert isinstance(_claim(db_url, step.id, "t2"), int)
    with session_scope(db_url) as s:  # no renewal for over half the lease: the run is gone
        s.execute(update(Step).where(Step.id == step.id).values(lease_until=utcnow() + LEASE / 3))
    assert isinstance(_claim(db_url, step.id, "t2"), int)
    assert not isinstance(_claim(db_url, step.id, "t1"), int)
    with session_scope(db_url) as s:  # expired: anyone may take it
        s.execute(update(Step).where(Step.id == step.id).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert not isinstance(_claim(db_url, step.id, "t2"), int)


def test_a_claims_state_holds_the_problems_steps_as_they_are_with_its_own_running(job) -> None:  # type: ignore[no-untyped-def]
    """On PostgreSQL the claim's UPDATE reads the steps in its own snapshot, from before it took
    the step: the state must still show that step running, and every other step as it is."""
    from db.claims import Claim

    db_url, _ = job
    steps = _steps(db_url)
    claim = _claim(db_url, steps["r1.generate.A"].id, "t1")
    assert isinstance(claim, Claim)
    assert {k: (v.kind, v.model, v.round, v.status) for k, v in claim.state.steps.items()} == {
        k: (v.kind, v.model, v.round, v.status) for k, v in _steps(db_url).items()
    }
    assert claim.state.steps["r1.generate.A"].status == "running"
    assert claim.state.steps["r1.generate.B"].status == "queued"


def test_a_cancelled_job_leaves_its_steps_unclaimed(job) -> None:  # type: ignore[no-untyped-def]
    db_url, job_id = job
    with session_scope(db_url) as s:
        cancelled = q.cancel_job(session=s, job_id=job_id)
    assert cancelled.problems == 1
    step = _steps(db_url)["r1.generate.A"]
    assert isinstance(_claim(db_url, step.id, "t1"), int)
    assert _steps(db_url)["r1.generate.A"].status == "queued"  # no lease taken
    with session_scope(db_url) as s:
        assert q.reopen_job(session=s, job_id=job_id) == 1
        assert s.get(Job, job_id).status == "active"  # type: ignore[union-attr]
        assert s.scalars(select(Problem.status)).one() == "pending"


def test_lease_keeper_renews_what_it_holds(job) -> None:  # type: ignore[no-untyped-def]
    db_url, _ = job
    step = _steps(db_url)["r1.generate.A"]
    assert not isinstance(_claim(db_url, step.id, "t1"), int)
    with session_scope(db_url) as s:
        s.execute(update(Step).where(Step.id == step.id).values(lease_until=utcnow()))
    keeper = LeaseKeeper()
    with keeper.hold(step.id, "t1"):
        assert keeper.renew() == 1
    assert keeper.renew() == 0 and keeper.held() == []
    lease_until = _steps(db_url)["r1.generate.A"].lease_until
    assert lease_until is not None and lease_until > utcnow() + timedelta(
        seconds=get_settings().lease_seconds - 5
    )
    with keeper.hold(step.id, "someone-else"):  # a lease taken over by another run is not renewed
        assert keeper.renew() == 0


def test_a_redelivered_message_leaves_the_step_to_the_run_in_this_process_that_holds_it(job) -> None:  # type: ignore[no-untyped-def]
    """Redis gives an unacknowledged message back after its visibility timeout, e.g. while the
    database is down and the run that called the model waits to record the paid reply; its lease,
    unrenewed meanwhile, has lapsed. The second delivery (same task id, same process) took the
    step and called the model again: one reply paid twice (the database outage fault test, on a
    loaded machine). It now leaves the step to the run that holds it."""
    from tasks.leases import keeper

    db_url, _ = job
    step = _steps(db_url)["r1.generate.A"]
    assert not isinstance(_claim(db_url, step.id, "t1"), int)
    with session_scope(db_url) as s:
        s.execute(update(Step).where(Step.id == step.id).values(lease_until=utcnow() - timedelta(seconds=1)))
    with keeper.hold(step.id, "t1"):  # the first delivery's run, still holding its reply
        assert generate.apply(args=[step.id], task_id="t1").get() == "skipped"
    with session_scope(db_url) as s:
        assert s.scalars(select(ModelCall)).all() == []  # no second call
        again = s.get(Step, step.id)
        assert again is not None and (again.status, again.task_id) == ("running", "t1")


def test_recover_reclaims_expired_leases_and_moves_stalled_problems(job) -> None:  # type: ignore[no-untyped-def]
    db_url, job_id = job
    steps = _steps(db_url)
    # A dead worker's step: running, lease run out.
    with session_scope(db_url) as s:
        s.execute(
            update(Step)
            .where(Step.id == steps["r1.generate.A"].id)
            .values(status="running", task_id="dead", lease_until=utcnow() - timedelta(seconds=5))
        )
    done = recover(resend_queued=False, expired_before=utcnow())
    assert (done.reclaimed, done.resent, done.advanced) == (1, 0, 0)
    assert _steps(db_url)["r1.generate.A"].status == "queued"
    # Both solutions written, then a crash before the reviews were created: stalled.
    for key in ("r1.generate.A", "r1.generate.B"):
        generate.apply(args=[_steps(db_url)[key].id])
    with session_scope(db_url) as s:
        s.execute(delete(Step).where(Step.key.like("r1.review.%")))
    assert recover(resend_queued=False, expired_before=None).advanced == 1
    assert {k: st.status for k, st in _steps(db_url).items() if "review" in k} == {
        "r1.review.A": "queued",
        "r1.review.B": "queued",
    }
    # Broker data lost: every queued step of the active jobs is sent again.
    assert recover(resend_queued=True, expired_before=None).resent == 2
    with session_scope(db_url) as s:
        assert q.queued_steps(session=s, job_id=job_id + 1) == []


def test_retry_failed_gives_a_fresh_budget_and_keeps_the_rest(job) -> None:  # type: ignore[no-untyped-def]
    db_url, job_id = job
    steps = _steps(db_url)
    with session_scope(db_url) as s:
        s.execute(
            update(Step)
            .where(Step.id == steps["r1.generate.B"].id)
            .values(status="failed", attempts=6, error="x")
        )
        s.execute(update(Problem).values(status="failed", error="r1.generate.B: x"))
        s.execute(update(Job).values(status="finished", finished_at=utcnow()))
    with session_scope(db_url) as s:
        retried = q.retry_failed(session=s, job_id=job_id)
    assert (retried.problems, retried.steps) == (1, 1)
    after = _steps(db_url)
    assert after["r1.generate.B"].status == "queued" and after["r1.generate.B"].retry_base == 6
    assert after["r1.generate.A"].status == "queued" and after["r1.generate.A"].retry_base == 0
    with session_scope(db_url) as s:
        assert s.get(Job, job_id).status == "active"  # type: ignore[union-attr]
        assert s.scalars(select(Problem.status)).one() == "running"


def test_lost_connection_tells_an_outage_from_a_refused_statement() -> None:
    from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError

    from tasks.base import lost_connection

    cause = Exception("x")
    assert lost_connection(OperationalError("SELECT 1", {}, cause))
    # psycopg's "connection already closed" on a connection the server dropped: retry, don't raise
    # (raising would drop a reply not yet recorded, and the retry would pay for the call again).
    assert lost_connection(InterfaceError("SELECT 1", {}, cause))
    assert lost_connection(DataError("SELECT 1", {}, cause, connection_invalidated=True))
    assert not lost_connection(IntegrityError("INSERT", {}, cause))
    assert not lost_connection(DataError("INSERT", {}, cause))


def _queue(step: Step) -> str:
    from tasks.dispatch import dispatch_for

    with session_scope(get_settings().database_url) as s:
        job = s.scalar(select(Job))
        return dispatch_for(step, job).queue


def test_a_queued_step_whose_message_is_gone_is_sent_again_once_its_queue_is_empty(job) -> None:  # type: ignore[no-untyped-def]
    """A worker killed holding reserved messages, or a submit killed while sending: the steps stay
    queued with no message anywhere. The sweep sends them again once they have waited the grace
    with their queue empty; a step waiting in a queue that still holds messages is left alone."""
    import redis

    from tasks.recovery import LOCK_KEY, Sweeper, queue_length

    db_url, _ = job
    steps = _steps(db_url)
    a, b = steps["r1.generate.A"], steps["r1.generate.B"]
    client = redis.Redis.from_url(get_settings().broker_url)
    qa, qb = _queue(a), _queue(b)  # A and B are served from two endpoints: two queues
    assert queue_length(client, qa) == queue_length(client, qb) == 1
    sweeper = Sweeper()

    def sweep() -> object:
        client.delete(LOCK_KEY)  # a sweep per recovery interval: these are three intervals
        return sweeper.sweep()

    with session_scope(db_url) as s:  # they have waited long...
        s.execute(update(Step).values(updated_at=utcnow() - timedelta(hours=1)))
    assert not sweep()  # ...but their queues hold their messages: no duplicates
    assert queue_length(client, qa) == queue_length(client, qb) == 1
    client.delete(qa, qb)  # the messages are gone (reserved by a worker that was killed)
    with session_scope(db_url) as s:
        s.execute(update(Step).where(Step.id == b.id).values(updated_at=utcnow()))  # b: just queued
    done = sweep()
    assert done is not None and done.resent == 1
    assert (queue_length(client, qa), queue_length(client, qb)) == (1, 0)
    assert json.loads(client.lindex(qa, 0))["headers"]["argsrepr"] == f"[{a.id}]"
    # Sent again means waiting again: the next sweep, within the grace, sends nothing more.
    client.delete(qa)
    assert not sweep()
    client.close()


def test_a_submit_that_fails_to_send_has_stored_its_job_and_said_its_id(app_env: Celery) -> None:
    """The job id comes out before the messages go (minutes for a large file); a submit whose
    sending fails leaves a job the sweep completes, and says so."""
    from unittest import mock

    from tasks import submit as submitting

    rows = gsm8k_rows(3)
    data = "".join(json.dumps({"question": r["question"]}) + "\n" for r in rows).encode()
    told: list[int] = []
    with (
        mock.patch.object(submitting, "enqueue", side_effect=ConnectionError("broker gone")),
        pytest.raises(
            submitting.SendError, match=r"job \d+ is stored, but sending its steps failed"
        ) as failed,
    ):
        submit_job(
            settings=get_settings(), name="cut", strategy_name="cot", params={},
            models=[ModelEntry("A", "http://127.0.0.1:9")], source=None, problems=parse_problems(data),
            check_models=False, on_stored=told.append,
        )  # fmt: skip
    assert told == [failed.value.job_id]
    with session_scope(get_settings().database_url) as s:
        assert len(list(s.scalars(select(Step).where(Step.status == "queued")))) == 3
