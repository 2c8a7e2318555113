"""End to end, per problem type: the rStar authors' data files (a JSON array of {"id", "problem",
"solution"}) submitted as they are published, the type guessed from the references, through a real
Celery worker, real Redis, SQLite and two fake servers that answer only a prompt asking for the
type's answer; then `results`, `report` and `export` judge by the type.

The fake models answer in the type's own forms, differently written from the reference (yes/no for
true/false, `\\dfrac` and `\\left(` for MATH's `\\frac` and `(`), and wrong on the second problem.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sqlalchemy import select

from db.models import Job, Problem
from db.session import session_scope
from tests.fakeserver import FakeInferenceServer, FakeRequest, Reply
from tests.support import celery_worker, question_of, rstar, service_env, wait_until
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint

STRATEGYQA = [
    {"id": "stg-1", "problem": "Could a sloth cross a football field in one minute?", "solution": "false"},
    {"id": "stg-2", "problem": "Is the Eiffel Tower taller than a giraffe?", "solution": "true"},
    {"id": "stg-3", "problem": "Did Julius Caesar ever use a telephone?", "solution": "false"},
]
# (reply's answer when right, when wrong)
STRATEGYQA_REPLIES = {"false": ("No", "Yes"), "true": ("Yes", "No")}

MATH = [
    {
        "id": "m-1",
        "problem": "Convert the point $(0,3)$ to polar coordinates.",
        "solution": "We get $r = 3$ and $\\theta = \\frac{\\pi}{2}.$ "
        "So $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
        "source": "MATH500",
    },
    {
        "id": "m-2",
        "problem": "What is $\\frac{1}{3} + \\frac{1}{3} + \\frac{8}{3}$?",
        "solution": "The sum is $\\frac{10}{3}$, so the answer is $\\boxed{\\frac{10}{3}}$.",
        "source": "MATH500",
    },
    {
        "id": "m-3",
        "problem": "Simplify $\\sqrt{52}$.",
        "solution": "$\\sqrt{52} = \\boxed{2\\sqrt{13}}$.",
        "source": "MATH500",
    },
]
MATH_REPLIES = {
    "m-1": ("\\left(3,\\dfrac{\\pi}{2}\\right)", "(3,\\pi)"),
    "m-2": ("\\dfrac{10}{3}", "\\frac{11}{3}"),
    "m-3": ("2 \\sqrt{13}", "\\sqrt{13}"),
}


def _oracle(records: list[dict[str, str]], answer_format: str, replies: dict[str, tuple[str, str]]):  # type: ignore[no-untyped-def]
    index = {r["problem"]: (j, r) for j, r in enumerate(records)}

    def respond(request: FakeRequest) -> Reply | str:
        found = index.get(question_of(request.prompt))
        if found is None:
            return Reply(status=422, error="unknown question")
        if answer_format not in request.prompt:
            return Reply(status=422, error="the prompt does not ask for this type's answer")
        j, record = found
        right, wrong = replies.get(record["id"]) or replies[record["solution"]]
        return f"Let me think.\nFirst fact.\nSecond fact.\n\\boxed{{{wrong if j == 1 else right}}}"

    return respond


def _finished(db_url: str, job_id: int) -> bool:
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        return job is not None and job.finished_at is not None


def _run_type(
    tmp_path: Path,
    db_url: str,
    redis_url: str,
    records: list[dict[str, str]],
    *,
    name: str,
    answer_format: str,
    replies: dict[str, tuple[str, str]],
    want_type: str,
) -> dict[str, int]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    oracle = _oracle(records, answer_format, replies)
    jobs: dict[str, int] = {}
    with FakeInferenceServer(oracle, kind="tgi") as a, FakeInferenceServer(oracle, kind="tgi") as b:
        env = service_env(db_url, redis_url, RSTAR_MODEL_A_URL=a.url, RSTAR_MODEL_B_URL=b.url)
        assert rstar(["db", "upgrade"], env).returncode == 0
        refused = rstar(["submit", str(path), "--strategy", "rstar"], env)
        assert refused.returncode == 2 and f"number problems only, not '{want_type}'" in refused.stderr
        for strategy, args in [("cot", []), ("self-consistency", ["--samples", "3"])]:
            sub = rstar(
                ["submit", str(path), "--name", f"{name}-{strategy}", "--strategy", strategy,
                 "--solution-format", "prose", *args],
                env,
            )  # fmt: skip
            assert sub.returncode == 0, sub.stderr
            assert f"problem type: {want_type} (guessed:" in sub.stderr
            assert "question from 'problem', answer from 'solution'" in sub.stderr
            jobs[strategy] = int(sub.stdout.strip())
        with celery_worker(env, [CONTROL_QUEUE, queue_for_endpoint(a.url), queue_for_endpoint(b.url)]):
            for job_id in jobs.values():
                wait_until(lambda j=job_id: _finished(db_url, j), timeout=120, what=f"job {job_id}")
        assert a.status_counts[200] + b.status_counts[200] == 3 + 9  # no 422: every prompt asked rightly

        out = tmp_path / f"report-{name}"
        rep = rstar(["report", *(str(j) for j in jobs.values()), "-o", str(out)], env)
        assert rep.returncode == 0, rep.stderr
        summary = {r["strategy"]: r for r in csv.DictReader((out / "summary.csv").open())}
        assert (summary["cot"]["correct"], summary["cot"]["judged"]) == ("2", "3")
        results = rstar(["results", str(jobs["cot"]), "--format", "jsonl"], env)
        assert [json.loads(line)["correct"] for line in results.stdout.splitlines()] == [True, False, True]
        status = rstar(["status", str(jobs["cot"])], env)
        assert status.returncode == 0, status.stderr
        assert f"{name}-cot, cot, {want_type} answers; models" in " ".join(status.stdout.split())
        exported = rstar(["export", str(jobs["cot"])], env)
        assert exported.returncode == 0, exported.stderr
        assert [json.loads(line)["correct"] for line in exported.stdout.splitlines()] == [True, False, True]
    return jobs


def test_strategyqa_as_published_runs_as_a_yes_no_job(
    sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    jobs = _run_type(
        tmp_path, sqlite_url, redis_url, STRATEGYQA, name="strategyqa", want_type="yes-no",
        answer_format="End with yes or no alone in \\boxed{}.", replies=STRATEGYQA_REPLIES,
    )  # fmt: skip
    with session_scope(sqlite_url) as s:
        assert {s.get(Job, j).problem_type for j in jobs.values()} == {"yes-no"}  # type: ignore[union-attr]
        problems = s.scalars(select(Problem).where(Problem.job_id == jobs["cot"]).order_by(Problem.id)).all()
        assert [(p.reference_answer, p.final_answer, p.correct) for p in problems] == [
            ("no", "no", True), ("yes", "no", False), ("no", "no", True),
        ]  # fmt: skip


def test_math_as_published_runs_as_a_latex_job(sqlite_url: str, redis_url: str, tmp_path: Path) -> None:
    jobs = _run_type(
        tmp_path, sqlite_url, redis_url, MATH, name="math",
        answer_format="as a LaTeX expression in simplest form", replies=MATH_REPLIES, want_type="latex",
    )  # fmt: skip
    with session_scope(sqlite_url) as s:
        problems = s.scalars(select(Problem).where(Problem.job_id == jobs["self-consistency"])).all()
        got = {p.item_id: (p.reference_answer, p.final_answer, p.correct, p.meta) for p in problems}
    assert got == {
        "m-1": ("(3,\\frac{\\pi}{2})", "(3,\\frac{\\pi}{2})", True, {"source": "MATH500"}),
        "m-2": ("10/3", "11/3", False, {"source": "MATH500"}),
        "m-3": ("2\\sqrt{13}", "2\\sqrt{13}", True, {"source": "MATH500"}),
    }
