"""A roster of three models of different accuracy (`--model A=... --model B=... --model C=...`,
three fake TGI servers), through a real Celery worker, real Redis and SQLite: `mutual` (each
solution reviewed by the next model, and by every other one with `peers=all`) and
`mutual-consistency` (each solution completed by the next model). `rstar show` names the model of
every output and call; `rstar report` has accuracy per model and the agreement matrix, checked
against a hand count of what the three scripted models answer.

The models know the answers. A never errs; B writes the right answer plus one in every solution it
starts itself (generate, completion) on even problems, C on problems 0 and 3; refinements are
right; as reviewers all three accept right answers and reject wrong ones.
"""

from __future__ import annotations

import csv
from pathlib import Path

from sqlalchemy import select

from db.models import Job, Output, Problem, Step
from db.session import session_scope
from tests.fakeserver import FakeInferenceServer
from tests.support import (
    Oracle,
    celery_worker,
    gsm8k_rows,
    reference,
    rstar,
    service_env,
    solution_rows,
    wait_until,
    write_jsonl,
)
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint

N = 6
WRONG = {"A": set(), "B": {0, 2, 4}, "C": {0, 3}}


def _finished(db_url: str, job_id: int) -> bool:
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        return job is not None and job.finished_at is not None


def _rows(path: Path, job_id: int) -> list[dict[str, str]]:
    with path.open() as f:
        return [r for r in csv.DictReader(f) if r["job_id"] == str(job_id)]


def test_three_models_run_mutual_and_mutual_consistency_end_to_end(
    sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    db_url = sqlite_url
    rows = gsm8k_rows(N, offset=50)
    refs = [reference(r["answer"]) for r in rows]
    items = [{"id": f"q{j}", "question": r["question"], "answer": r["answer"]} for j, r in enumerate(rows)]
    path = write_jsonl(tmp_path / "problems.jsonl", items)
    answers = {r["question"]: ref for r, ref in zip(rows, refs, strict=True)}
    oracles = {m: Oracle(answers, {rows[j]["question"] for j in wrong}) for m, wrong in WRONG.items()}
    with (
        FakeInferenceServer(oracles["A"]) as a,
        FakeInferenceServer(oracles["B"]) as b,
        FakeInferenceServer(oracles["C"]) as c,
    ):
        env = service_env(db_url, redis_url)
        assert rstar(["db", "upgrade"], env).returncode == 0
        roster = ["--model", f"A={a.url}", "--model", f"B={b.url}", "--model", f"C={c.url}"]
        jobs = {}
        for name, args in [
            ("mutual", ["--strategy", "mutual"]),
            ("mutual-all", ["--strategy", "mutual", "--param", "peers=all"]),
            ("mc", ["--strategy", "mutual-consistency"]),
        ]:
            sub = rstar(["submit", str(path), "--name", name, *roster, *args], env)
            assert sub.returncode == 0, sub.stderr
            assert "models A, B, C" in sub.stderr
            jobs[name] = int(sub.stdout.strip())
        queues = [CONTROL_QUEUE, *(queue_for_endpoint(s.url) for s in (a, b, c))]
        worker_env = {**env, "RSTAR_MODELS": f"A={a.url},B={b.url},C={c.url}"}
        with celery_worker(worker_env, queues, log=tmp_path / "worker.log"):
            for job_id in jobs.values():
                wait_until(lambda j=job_id: _finished(db_url, j), timeout=180, what=f"job {job_id}")
        assert min(srv.request_count for srv in (a, b, c)) > 0

    with session_scope(db_url) as s:

        def problems(job: str) -> list[Problem]:
            return list(s.scalars(select(Problem).where(Problem.job_id == jobs[job]).order_by(Problem.id)))

        def keys(p: Problem, round_: int) -> list[str]:
            steps = s.scalars(select(Step).where(Step.problem_id == p.id, Step.round == round_))
            return sorted(st.key for st in steps if st.kind != "select")

        for name, per_solution in (("mutual", 1), ("mutual-all", 2)):
            ps = problems(name)
            # Every problem with a wrong first solution is put right by a refinement round.
            assert [p.final_answer for p in ps] == refs, name
            assert [p.rounds_used for p in ps] == [2, 1, 2, 2, 2, 1], name
            sols = {x.id: x for x in solution_rows(s, Output.problem_id.in_([p.id for p in ps]))}
            reviews = list(
                s.scalars(
                    select(Output).where(Output.kind == "review", Output.problem_id.in_([p.id for p in ps]))
                )
            )
            # Each solution reviewed by `per_solution` other models, each in its own round.
            for sol in sols.values():
                judges = [r.model for r in reviews if r.parent_id == sol.id]
                assert len(judges) == per_solution and sol.author not in judges, (name, sol.author, judges)
                assert all(r.round == sol.round for r in reviews if r.parent_id == sol.id)
            if name == "mutual":  # the next model reviews: B reviews A's, C reviews B's, A reviews C's
                assert keys(ps[1], 1) == [f"r1.{k}.{m}" for k in ("generate", "review") for m in "ABC"]
                pairs = {(sols[r.parent_id].author, r.model) for r in reviews}
                assert pairs == {("A", "B"), ("B", "C"), ("C", "A")}

        # mutual-consistency: each model answers twice per round (its solution, its completion of
        # the previous model's); problem 0 has four wrong votes of six, the others at most two.
        mc = problems("mc")
        assert [p.final_answer for p in mc] == [str(int(refs[0]) + 1), *refs[1:]]
        assert all(p.rounds_used == 1 for p in mc)
        assert keys(mc[0], 1) == [f"r1.{k}.{m}" for k in ("complete", "generate") for m in "ABC"]
        sols = {x.id: x for x in solution_rows(s, Output.problem_id.in_([p.id for p in mc]))}
        completions = [x for x in sols.values() if x.kind == "complete"]
        assert len(completions) == 3 * N
        assert {(sols[x.parent_id].author, x.author) for x in completions} == {
            ("A", "B"),
            ("B", "C"),
            ("C", "A"),
        }

    # show: the roster, and the model of every output and of every call.
    shown = rstar(["show", str(jobs["mutual"]), "q0"], {**env, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert f"models: A {a.url}, B {b.url}, C {c.url}" in shown.stdout
    assert "round 1 · B reviews the peer's solution (A's #" in shown.stdout
    assert "round 2 · C refines its solution (C's #" in shown.stdout
    assert shown.stdout.count("attempt 1 · model ") == 12  # 3 solutions, 3 reviews, 3 refinements, 3 reviews
    assert "selection (A's refine #" in shown.stdout

    # report: accuracy per model and agreement, as counted by hand from WRONG.
    out = tmp_path / "report"
    done = rstar(["report", *(str(j) for j in jobs.values()), "-o", str(out)], {**env, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "accuracy per model" in done.stdout and "answer agreement" in done.stdout
    # mutual-consistency: a model's answer is its own solution's (completions start from another's).
    per_model = _rows(out / "models.csv", jobs["mc"])
    assert {r["model"]: (r["right"], r["judged"]) for r in per_model} == {
        "A": ("6", "6"), "B": ("3", "6"), "C": ("4", "6")
    }  # fmt: skip
    pairs = _rows(out / "agreement.csv", jobs["mc"])
    assert {(r["model"], r["other"]): (r["agree"], r["both_answered"]) for r in pairs} == {
        ("A", "B"): ("3", "6"), ("A", "C"): ("4", "6"), ("B", "C"): ("3", "6")
    }  # fmt: skip
    # mutual: every model's latest solution is its right refinement.
    agreed = _rows(out / "agreement.csv", jobs["mutual"])
    assert len(agreed) == 3 and all((r["agree"], r["both_answered"]) == ("6", "6") for r in agreed)
    md = (out / "report.md").read_text()
    assert f"| {jobs['mc']} mc | B | 6/6 | 3/6 | 50.0% |" in md
