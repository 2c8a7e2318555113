"""The counts `rstar status` and the viewer read, on hand-built rows (SQLite and PostgreSQL): rstar's
rollouts done per problem, read from the steps of problems in progress only, and a job's overview,
which adds the calls of open problems to the tallies finished ones keep."""

from __future__ import annotations

import sqlalchemy as sa

from db import browse
from db.jobs import fail_problem, rollout_progress, status_counts
from db.models import Job, JobCount, ModelCall, Problem, Step
from db.recovery import cancel_job, reopen_job, retry_failed
from db.session import session_scope
from tests.support import count_errors

_pt, _st, _ct = Problem.__table__, Step.__table__, ModelCall.__table__


def _job(
    url: str, problems: list[dict[str, object]], steps: dict[int, list[int]], calls: dict[int, int]
) -> int:
    """A rstar job (4 rollouts): `problems` (status and tallies), each problem's model steps by the
    round that asked for them (`steps`, by index), and each problem's recorded calls of 100
    completion tokens (`calls`, on its first step)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        job_id = conn.execute(
            sa.insert(Job.__table__).returning(Job.__table__.c.id),
            {
                "name": "j",
                "strategy": "rstar",
                "params": {"rollouts": 4},
                "models": [{"name": "A", "url": "u"}],
            },
        ).scalar_one()
        for i, p in enumerate(problems):
            pid = conn.execute(
                sa.insert(_pt).returning(_pt.c.id),
                {"job_id": job_id, "item_id": f"p{i}", "line": i + 1, "question": "q", **p},
            ).scalar_one()
            step_ids = [
                conn.execute(
                    sa.insert(_st).returning(_st.c.id),
                    {"problem_id": pid, "key": f"k{k}", "kind": "a2_answer", "model": "A", "round": r},
                ).scalar_one()
                for k, r in enumerate(steps.get(i, []))
            ]
            for attempt in range(calls.get(i, 0)):
                conn.execute(
                    sa.insert(_ct),
                    {"step_id": step_ids[0], "problem_id": pid, "attempt": attempt + 1, "endpoint": "u",
                     "outcome": "ok", "request": {}, "requests": 1, "sequences": 2, "prompt_tokens": 10,
                     "completion_tokens": 100},
                )  # fmt: skip
    engine.dispose()
    return int(job_id)


def test_rollouts_done_count_answered_as_all_pending_as_none_and_the_rest_by_their_steps(
    migrated: str,
) -> None:
    answered = {"status": "answered", "final_answer": "1", "calls": 3, "requests": 3, "sequences": 6,
                "prompt_tokens": 30, "completion_tokens": 300}  # fmt: skip
    failed = {"status": "failed", "error": "x", "calls": 1, "requests": 1, "sequences": 2,
              "prompt_tokens": 10, "completion_tokens": 100}  # fmt: skip
    job_id = _job(
        migrated,
        [
            answered,  # 4 done
            {"status": "pending"},  # 0 done (its first step is queued in round 1)
            {"status": "running"},  # in rollout 3: 2 done
            {"status": "running"},  # past the last rollout: 4 done, in the discriminator
            failed,  # in rollout 2 when it failed: 1 done
        ],
        steps={0: [1, 2, 3, 4, 5], 1: [1], 2: [1, 2, 3], 3: [1, 5], 4: [1, 2]},
        calls={0: 3, 2: 2, 3: 1, 4: 1},
    )
    with session_scope(migrated) as s:
        progress = rollout_progress(session=s, job_id=job_id, rollouts=4)
        (overview,) = browse.job_overviews(session=s, job_ids=[job_id])
    assert progress is not None
    # 4 + 0 + 2 + 4 + 1 (failed in rollout 2) over 5 problems.
    assert progress.mean == 11 / 5 and progress.least == 0 and progress.most == 4
    assert progress.judging == 1
    # Finished problems from their tallies, open ones (the two running) counted from their calls.
    assert overview.model_calls == 3 + 1 + 2 + 1
    assert overview.sequences == 6 + 2 + 2 * 3
    assert overview.tokens == (300 + 30) + (100 + 10) + 3 * 110
    assert overview.problems == 5 and overview.done == 2


def test_a_job_without_problems_has_no_rollout_progress(migrated: str) -> None:
    job_id = _job(migrated, [], {}, {})
    with session_scope(migrated) as s:
        assert rollout_progress(session=s, job_id=job_id, rollouts=4) is None


def _kept(url: str) -> list[tuple[object, ...]]:
    with session_scope(url) as s:
        return [tuple(r) for r in s.execute(sa.select(JobCount.__table__).order_by(*JobCount.__table__.c))]


def test_the_database_keeps_a_jobs_counts_through_every_change_of_its_problems(migrated: str) -> None:
    """Whatever statement changes problems (many rows at once or one, by the code's own functions
    or by hand), `job_counts` says what a count over the problems says, in the same transaction."""
    url = migrated
    job_id = _job(
        url, [{"status": "waiting", "reference_answer": "1" if i % 3 else None} for i in range(6)], {}, {}
    )
    checks = []

    def check(stage: str) -> None:
        with session_scope(url) as s:
            checks.append((stage, count_errors(s)))
            assert status_counts(session=s, job_id=job_id).total() == 6 - ("deleted" in stage)

    check("inserted")
    with session_scope(url) as s:
        s.execute(sa.update(_pt).where(_pt.c.job_id == job_id).values(status="pending"))
    check("all pending, one statement")
    before = _kept(url)
    with session_scope(url) as s:  # a claim's start time: nothing counted changes
        s.execute(sa.update(_pt).where(_pt.c.job_id == job_id).values(started_at=sa.func.now()))
    assert _kept(url) == before
    with session_scope(url) as s:
        s.execute(sa.update(_pt).where(_pt.c.item_id.in_(["p0", "p1", "p2", "p3"])).values(status="running"))
        s.execute(
            sa.update(_pt)
            .where(_pt.c.item_id.in_(["p1", "p2"]))
            .values(status="answered", final_answer="1", correct=_pt.c.item_id == "p1", rounds_used=2,
                    calls=3, requests=3, sequences=5, prompt_tokens=40, completion_tokens=70)
        )  # fmt: skip
        pid = s.scalar(sa.select(_pt.c.id).where(_pt.c.item_id == "p3"))
        fail_problem(session=s, problem_id=pid, error="gone")
    check("answered, wrong, failed")
    with session_scope(url) as s:
        cancel_job(session=s, job_id=job_id)
    check("cancelled")
    with session_scope(url) as s:
        reopen_job(session=s, job_id=job_id)
        retry_failed(session=s, job_id=job_id)
    check("reopened, retried")
    with session_scope(url) as s:
        s.execute(sa.delete(_pt).where(_pt.c.item_id == "p4"))
    check("one deleted")
    with session_scope(url) as s:
        s.execute(sa.delete(Job.__table__).where(Job.__table__.c.id == job_id))
    with session_scope(url) as s:
        assert count_errors(s) == [] and s.scalar(sa.select(sa.func.count()).select_from(JobCount)) == 0
    assert [(stage, errors) for stage, errors in checks if errors] == []
