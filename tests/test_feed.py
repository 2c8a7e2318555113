"""A job's problems start a window at a time (tasks/dispatch.py, `feed`): the broker holds the
window's steps, not the whole job's; problems start in input order as others end; a crash between
an end and the next start is repaired by the recovery sweep; cancel and resume keep the rest
waiting. In process (steps run with `.apply()`) and through a real worker, SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import func, select, update

from db import recovery as q
from db.models import Job, ModelCall, Problem, Step, utcnow
from db.session import session_scope
from rstar.inputs import parse_problems
from rstar.roster import ModelEntry
from tasks.recovery import queue_length, recover, resume_job
from tasks.step import model_step
from tasks.submit import submit_job
from tests.fakeserver import FakeInferenceServer, Reply
from tests.support import celery_worker, gsm8k_rows, rstar, service_env, wait_until, write_jsonl
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint
from workers.settings import get_settings

WINDOW = 2
ANSWER = Reply(text="3 + 4 = 7. The answer is \\boxed{7}.")


def _problems_file(n: int) -> bytes:
    return "".join(
        json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in gsm8k_rows(n)
    ).encode()


@pytest.fixture
def cot_job(app_env: Celery, settings_env: pytest.MonkeyPatch) -> Iterator[tuple[str, int, str]]:
    """Five cot problems submitted with a window of two: (database URL, job id, the model's queue)."""
    settings_env.setenv("RSTAR_JOB_WINDOW", str(WINDOW))
    with FakeInferenceServer(lambda _: ANSWER) as a:
        done = submit_job(
            settings=get_settings(),
            name="window",
            strategy_name="cot",
            params={},
            models=[ModelEntry("A", a.url)],
            source=None,
            problems=parse_problems(_problems_file(5)),
        )
        yield get_settings().database_url, done.job_id, queue_for_endpoint(a.url)


def _statuses(db_url: str) -> list[str]:
    with session_scope(db_url) as s:
        return list(s.scalars(select(Problem.status).order_by(Problem.id)))


def _steps_per_problem(db_url: str) -> list[int]:
    with session_scope(db_url) as s:
        counted = dict(s.execute(select(Step.problem_id, func.count()).group_by(Step.problem_id)).all())
        return [counted.get(pid, 0) for pid in s.scalars(select(Problem.id).order_by(Problem.id))]


def _queued_step_ids(db_url: str) -> list[int]:
    with session_scope(db_url) as s:
        return list(s.scalars(select(Step.id).where(Step.status == "queued").order_by(Step.id)))


def test_submit_starts_the_window_and_each_end_starts_the_next_in_input_order(
    cot_job: tuple[str, int, str],
) -> None:
    db_url, job_id, queue = cot_job
    assert _statuses(db_url) == ["pending", "pending", "waiting", "waiting", "waiting"]
    assert _steps_per_problem(db_url) == [1, 1, 0, 0, 0]
    client = redis.Redis.from_url(get_settings().broker_url)
    try:
        assert queue_length(client, queue) == WINDOW  # the broker holds the window, not the job

        started_order: list[int] = []
        while todo := _queued_step_ids(db_url):
            with session_scope(db_url) as s:
                open_started = s.scalar(
                    select(func.count())
                    .select_from(Problem)
                    .where(Problem.status.in_(["pending", "running"]))
                )
                started_order.append(s.get(Step, todo[0]).problem_id)  # type: ignore[union-attr]
            assert open_started is not None and open_started <= WINDOW
            model_step.apply(args=[todo[0]])
        # Every message sent was for a step that existed, once: the window's two, then one per end.
        assert queue_length(client, queue) == 5
    finally:
        client.close()
    with session_scope(db_url) as s:
        ids = list(s.scalars(select(Problem.id).order_by(Problem.id)))
        assert started_order == ids  # input order
        assert s.scalar(select(func.count()).select_from(ModelCall)) == 5  # one call each, none twice
        job = s.get(Job, job_id)
        assert job is not None and job.status == "finished"
    assert _statuses(db_url) == ["answered"] * 5


def test_the_sweep_starts_what_a_crash_between_an_end_and_the_next_start_left_waiting(
    cot_job: tuple[str, int, str],
) -> None:
    db_url, _, _ = cot_job
    model_step.apply(args=[_queued_step_ids(db_url)[0]])  # problem 1 ends, problem 3 starts
    assert _statuses(db_url) == ["answered", "pending", "pending", "waiting", "waiting"]
    # A problem that ended in a crash before the next one started: the window is one short.
    with session_scope(db_url) as s:
        second = s.scalars(select(Problem).order_by(Problem.id)).all()[1]
        s.execute(update(Step).where(Step.problem_id == second.id).values(status="done"))
        s.execute(
            update(Problem).where(Problem.id == second.id).values(status="failed", finished_at=utcnow())
        )
    done = recover(resend_queued=False, expired_before=None)
    assert (done.started, done.advanced) == (1, 0)  # a waiting problem is not a stalled one
    assert _statuses(db_url) == ["answered", "failed", "pending", "pending", "waiting"]
    assert recover(resend_queued=False, expired_before=None).started == 0  # the window is full


def test_cancel_then_resume_keeps_the_unstarted_problems_waiting(cot_job: tuple[str, int, str]) -> None:
    db_url, job_id, _ = cot_job
    with session_scope(db_url) as s:
        assert q.cancel_job(session=s, job_id=job_id).problems == 5
    reopened, done = resume_job(job_id)
    assert reopened == 5 and done.resent == WINDOW and done.started == 0
    assert _statuses(db_url) == ["pending", "pending", "waiting", "waiting", "waiting"]
    assert _steps_per_problem(db_url) == [1, 1, 0, 0, 0]


def test_a_real_worker_keeps_at_most_the_window_in_progress(
    db_url: str, redis_url: str, tmp_path: Path
) -> None:
    window, n = 3, 12
    items = [
        {"id": f"q{i}", "question": r["question"], "answer": r["answer"]} for i, r in enumerate(gsm8k_rows(n))
    ]
    path = write_jsonl(tmp_path / "problems.jsonl", items)
    slow = Reply(text=ANSWER.text, delay=0.2)
    with FakeInferenceServer(lambda _: slow, kind="tgi") as a:
        env = service_env(db_url, redis_url, RSTAR_MODEL_A_URL=a.url, RSTAR_JOB_WINDOW=str(window))
        assert rstar(["db", "upgrade"], env).returncode == 0
        sub = rstar(["submit", str(path), "--strategy", "cot"], env)
        assert sub.returncode == 0, sub.stderr
        job_id = int(sub.stdout.strip())
        status = rstar(["status", str(job_id)], env)
        assert status.returncode == 0 and "waiting" in status.stdout, status.stdout
        with celery_worker(env, [CONTROL_QUEUE, queue_for_endpoint(a.url)], log=tmp_path / "worker.log"):

            def finished() -> bool:
                with session_scope(db_url) as s:
                    job = s.get(Job, job_id)
                    return job is not None and job.finished_at is not None

            wait_until(finished, timeout=120, what="the job to finish")
        assert a.request_count == n and a.peak_in_flight <= window
    with session_scope(db_url) as s:
        problems = s.scalars(select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)).all()
        assert [p.status for p in problems] == ["answered"] * n
        first_step = dict(
            s.execute(select(Step.problem_id, func.min(Step.id)).group_by(Step.problem_id)).all()
        )
    # Started in input order, and never more than the window at once (a worker takes a problem's
    # step only after the feeder started it, which it does only once another one ended).
    assert [first_step[p.id] for p in problems] == sorted(first_step.values())
    for p in problems:
        assert p.started_at is not None and p.finished_at is not None
        at_once = sum(1 for o in problems if o.started_at <= p.started_at < o.finished_at)  # type: ignore[operator]
        assert at_once <= window, (p.item_id, at_once)


def test_unset_the_window_is_twice_the_slots_of_the_jobs_servers_and_stored_with_it(
    app_env: Celery, settings_env: pytest.MonkeyPatch
) -> None:
    """A TGI server of 20 requests and a llama-server of 8 slots: 2 x 28 = 56 problems at once,
    stored on the job; RSTAR_JOB_WINDOW set wins; at least 32 whatever the servers."""
    from tasks.submit import MIN_WINDOW, job_window

    settings_env.delenv("RSTAR_JOB_WINDOW", raising=False)
    with (
        FakeInferenceServer(lambda _: ANSWER, kind="tgi", max_concurrent_requests=20) as a,
        FakeInferenceServer(lambda _: ANSWER, kind="llama-server", slots=8) as b,
    ):
        roster = [ModelEntry("A", a.url), ModelEntry("B", b.url)]
        done = submit_job(
            settings=get_settings(), name="w", strategy_name="mutual", params={}, models=roster,
            source=None, problems=parse_problems(_problems_file(60)),
        )  # fmt: skip
        assert (done.window, done.why_window) == (
            56,
            "2 x the 28 in-flight slots of its servers; RSTAR_JOB_WINDOW to set",
        )
        assert job_window([ModelEntry("A", b.url)], get_settings()) == (
            MIN_WINDOW,
            "2 x the 8 in-flight slots of its servers; RSTAR_JOB_WINDOW to set",
        )
        settings_env.setenv("RSTAR_JOB_WINDOW", "7")
        assert job_window(roster, get_settings()) == (7, "RSTAR_JOB_WINDOW")
    db_url = get_settings().database_url
    with session_scope(db_url) as s:
        job = s.get(Job, done.job_id)
        assert job is not None and job.job_window == 56
    assert _statuses(db_url).count("pending") == 56


def test_a_job_keeps_its_stored_window_and_one_from_before_the_workers_setting(
    cot_job: tuple[str, int, str], settings_env: pytest.MonkeyPatch
) -> None:
    """The workers' RSTAR_JOB_WINDOW changed to 3 after submit: the job keeps the 2 it was given;
    one whose window is null (written before 0012) is topped up to the workers' 3."""
    db_url, job_id, _ = cot_job
    settings_env.setenv("RSTAR_JOB_WINDOW", "3")
    model_step.apply(args=[_queued_step_ids(db_url)[0]])  # one ends: its stored window says one starts
    assert _statuses(db_url) == ["answered", "pending", "pending", "waiting", "waiting"]
    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(job_window=None))
    model_step.apply(args=[_queued_step_ids(db_url)[0]])  # one ends: the workers' 3 say two start
    assert _statuses(db_url) == ["answered", "answered", "pending", "pending", "pending"]
