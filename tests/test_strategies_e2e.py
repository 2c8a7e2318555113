"""End to end, per strategy: `rstar submit --strategy ...` through a real Celery worker, real Redis,
SQLite and two fake TGI servers; then `rstar report` on those jobs, checked against a hand count.

One scripted model pair serves every strategy. It knows the answers and errs by seed:
* the seed of r1.generate.A (A's first solution: mutual's r1.generate.A, cot's only sample,
  self-consistency's sample 1) is wrong (right + 1) on odd problems;
* the seed of r1.generate.B (B's first solution, self-consistency's sample 2) is wrong (right + 1)
  when j % 3 == 2;
* every other solution, and every completion of a cut-off solution, is right.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import Job, Output, Problem, Selection, Step
from db.session import session_scope
from rstar.strategies.base import StepSpec, step_seed
from rstar.types import StepKind
from tests.fakeserver import FakeInferenceServer, FakeRequest, Reply
from tests.support import (
    celery_worker,
    gsm8k_rows,
    question_of,
    reference,
    rstar,
    service_env,
    solution_json,
    solution_rows,
    wait_until,
    write_jsonl,
)
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint

N = 6
# The seeds of A's and B's first solutions with the default base seed (0).
SEED_A1 = step_seed(0, StepSpec("r1.generate.A", StepKind.GENERATE, "A", 1))
SEED_B1 = step_seed(0, StepSpec("r1.generate.B", StepKind.GENERATE, "B", 1))


class SeededOracle:
    def __init__(self, rows: list[dict[str, str]]) -> None:
        self.index = {r["question"]: (j, reference(r["answer"])) for j, r in enumerate(rows)}

    def __call__(self, request: FakeRequest) -> Reply | str:
        found = self.index.get(question_of(request.prompt))
        if found is None:
            return Reply(status=422, error="unknown question")
        j, right = found
        seed = (request.body or {}).get("seed")
        completing = "Here is the beginning of a solution" in request.prompt
        wrong = not completing and ((seed == SEED_A1 and j % 2 == 1) or (seed == SEED_B1 and j % 3 == 2))
        return solution_json(str(int(right) + 1) if wrong else right)


def _finished(db_url: str, job_id: int) -> bool:
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        return job is not None and job.finished_at is not None


def test_cot_self_consistency_and_mutual_consistency_end_to_end_with_report(
    sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    db_url = sqlite_url
    rows = gsm8k_rows(N, offset=100)
    refs = [reference(r["answer"]) for r in rows]
    items = [{"id": f"q{j}", "question": r["question"], "answer": r["answer"]} for j, r in enumerate(rows)]
    path = write_jsonl(tmp_path / "problems.jsonl", items)
    oracle = SeededOracle(rows)
    with FakeInferenceServer(oracle, kind="tgi") as a, FakeInferenceServer(oracle, kind="tgi") as b:
        env = service_env(db_url, redis_url, RSTAR_MODEL_A_URL=a.url, RSTAR_MODEL_B_URL=b.url)
        assert rstar(["db", "upgrade"], env).returncode == 0
        jobs = {}
        for name, args in [
            ("cot", ["--strategy", "cot"]),
            ("sc", ["--strategy", "self-consistency", "--samples", "3"]),
            ("mc", ["--strategy", "mutual-consistency"]),
        ]:
            sub = rstar(["submit", str(path), "--name", name, *args], env)
            assert sub.returncode == 0, sub.stderr
            jobs[name] = int(sub.stdout.strip())
        refused = rstar(["submit", str(path), "--strategy", "cot", "--samples", "3"], env)
        assert refused.returncode == 2 and "takes no samples" in refused.stderr
        queues = [CONTROL_QUEUE, queue_for_endpoint(a.url), queue_for_endpoint(b.url)]
        with celery_worker(env, queues, log=tmp_path / "worker.log"):
            for job_id in jobs.values():
                wait_until(lambda j=job_id: _finished(db_url, j), timeout=120, what=f"job {job_id}")
        served = a.request_count + b.request_count

    with session_scope(db_url) as s:

        def problems(job: str) -> list[Problem]:
            return list(s.scalars(select(Problem).where(Problem.job_id == jobs[job]).order_by(Problem.id)))

        def step_keys(p: Problem) -> list[str]:
            return sorted(st.key for st in s.scalars(select(Step).where(Step.problem_id == p.id)))

        # cot: one call by A per problem; SEED_A1 is wrong on odd problems.
        cot = problems("cot")
        assert all(step_keys(p) == ["r1.generate.A", "select"] for p in cot)
        assert [p.final_answer for p in cot] == [
            r if j % 2 == 0 else str(int(r) + 1) for j, r in enumerate(refs)
        ]

        # self-consistency, k = 3: only problem 5 has two wrong (equal) samples out of three.
        sc = problems("sc")
        assert all(step_keys(p) == ["s1.generate.A", "s2.generate.B", "s3.generate.A", "select"] for p in sc)
        assert [p.final_answer for p in sc] == [*refs[:5], str(int(refs[5]) + 1)]
        reason = s.scalar(select(Selection.reason).where(Selection.problem_id == sc[1].id))
        assert reason is not None and reason.startswith("Majority vote: 2 of 3 samples answer")

        # mutual-consistency: round 1 has 4-0 or 3-1 votes (margin 2: stop) except on problem 5,
        # where both solutions are wrong and both completions right (2-2): a second round there.
        mc = problems("mc")
        assert [p.final_answer for p in mc] == refs
        assert [p.rounds_used for p in mc] == [1, 1, 1, 1, 1, 2]
        assert step_keys(mc[0]) == [
            "r1.complete.A",
            "r1.complete.B",
            "r1.generate.A",
            "r1.generate.B",
            "select",
        ]
        sols = solution_rows(s, Output.problem_id == mc[5].id)
        completions = [x for x in sols if x.kind == "complete"]
        by_id = {x.id: x for x in sols}
        assert len(sols) == 8 and len(completions) == 4
        for c in completions:  # each completes the peer's solution of its round
            parent = by_id[c.parent_id]  # type: ignore[index]
            assert parent.kind == "generate" and parent.author != c.author and parent.round == c.round
        reason = s.scalar(select(Selection.reason).where(Selection.problem_id == mc[5].id))
        assert reason is not None and "Consensus after 2 round(s)" in reason and "6 of 8 votes" in reason
        reason = s.scalar(select(Selection.reason).where(Selection.problem_id == mc[1].id))
        assert reason is not None and "Consensus after 1 round(s)" in reason and "3 of 4 votes" in reason
        # One call per model step, nothing paid twice.
        assert served == N * 1 + N * 3 + (5 * 4 + 8)

    shown = rstar(["show", str(jobs["mc"]), "q1"], env)
    assert shown.returncode == 0 and "completes the peer's solution" in shown.stdout
    assert "correct: yes" in shown.stdout

    out = tmp_path / "report"
    ids = [str(jobs[k]) for k in ("cot", "sc", "mc")]
    rep = rstar(["report", *ids, "-o", str(out)], env)
    assert rep.returncode == 0, rep.stderr
    assert "accuracy and cost per job" in rep.stdout
    summary = {r["strategy"]: r for r in csv.DictReader((out / "summary.csv").open())}
    # Hand count, from the oracle's rules above.
    assert (summary["cot"]["correct"], summary["cot"]["judged"]) == ("3", "6")
    assert (summary["self-consistency"]["correct"], summary["mutual-consistency"]["correct"]) == ("5", "6")
    assert float(summary["cot"]["calls_per_problem"]) == 1.0
    assert float(summary["self-consistency"]["calls_per_problem"]) == 3.0
    assert float(summary["mutual-consistency"]["calls_per_problem"]) == pytest.approx(28 / 6)
    assert summary["cot"]["answered"] == "6" and summary["cot"]["failed"] == "0"
    mcs = summary["mutual-consistency"]
    assert (mcs["rounds"], mcs["stopped_early"]) == ("1:5 2:1", "6")
    # Solutions completed: 2 per round (14); consistent: all but the wrong ones (A's on problems 1,
    # 3 and 5, B's on 2 and 5), which the peer completed rightly; all consistent ones are right.
    assert (mcs["completions_completed"], mcs["completions_consistent"]) == ("14", "9")
    assert (mcs["completions_consistent_right"], mcs["completions_inconsistent_right"]) == ("9", "0")
    # After round 1, problem 5 is a 2-2 tie that goes to A's wrong answer (seen first).
    assert mcs["accuracy_by_round"] == "0.8333 1.0000"
    assert float(mcs["ci_low"]) == 0.6097  # Wilson, 6 of 6
    paired = {(r["first"], r["second"]): r for r in csv.DictReader((out / "paired.csv").open())}
    cot_mc = paired[(f"{jobs['cot']} cot", f"{jobs['mc']} mc")]
    assert (cot_mc["both_right"], cot_mc["only_first"], cot_mc["only_second"], cot_mc["neither"]) == (
        "3", "0", "3", "0",
    )  # fmt: skip
    assert float(cot_mc["mcnemar_exact_p"]) == 0.25
    per_problem = list(csv.DictReader((out / "problems.csv").open()))
    assert len(per_problem) == 3 * N
    assert sum(r["correct"] == "True" for r in per_problem) == 3 + 5 + 6
    md = (out / "report.md").read_text()
    assert re.search(rf"\| {jobs['mc']} mc \| mutual-consistency \|", md)
    assert "100.0% (6/6)" in md and "50.0% (3/6)" in md
    for png in ("accuracy_vs_calls.png", "accuracy_per_round.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
