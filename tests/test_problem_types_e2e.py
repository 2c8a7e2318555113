"""End to end, per problem type: the rStar authors' data files (a JSON array of {"id", "problem",
"solution"}) submitted as they are published, the type guessed from the references, through a real
Celery worker, real Redis, SQLite and two fake servers that answer only a prompt asking for the
type's answer; then `results`, `report` and `export` judge by the type.

The fake models answer in the type's own forms, differently written from the reference (yes/no for
true/false, `\\dfrac` and `\\left(` for MATH's `\\frac` and `(`), and wrong on the second problem.
An rstar job runs too: its few-shot prompts (steps, decompositions, rephrasing) must be the type's,
and a request with the number type's few-shots is refused (aime's are the number type's). The
`number` type's own end-to-end tests are the pipeline's, the strategies' and rstar's.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from sqlalchemy import select

from db.models import Job, Problem
from db.session import session_scope
from rstar.problem_types import get_problem_type
from rstar.problem_types.number import NUMBER
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


RSTAR_PARAMS = [
    "rollouts=2",
    "max_depth=2",
    "a1_samples=1",
    "votes=2",
    "last_votes=2",
    "subquestions=1",
    "cuts=2",
]
FIRST_SUBQUESTION = "What does the question depend on first?"


def _oracle(records: list[dict[str, str]], answer_format: str, replies: dict[str, tuple[str, str]]):  # type: ignore[no-untyped-def]
    index = {r["problem"]: (j, r) for j, r in enumerate(records)}

    def respond(request: FakeRequest) -> Reply | str:
        asked = question_of(request.prompt)
        # rstar's A2 below the root asks the question with the decomposition's answers as hints.
        found = index.get(asked) or next(
            (v for q, v in index.items() if asked.startswith(f"{q}\n\nHint")), None
        )
        if asked == FIRST_SUBQUESTION and answer_format in request.prompt:
            return "It depends on one fact."  # rstar's A4: the sub-question asked again on its own
        if found is None:
            return Reply(status=422, error="unknown question")
        if answer_format not in request.prompt:
            return Reply(status=422, error="the prompt does not ask for this type's answer")
        j, record = found
        right, wrong = replies.get(record["id"]) or replies[record["solution"]]
        return f"Let me think.\nFirst fact.\nSecond fact.\n\\boxed{{{wrong if j == 1 else right}}}"

    return respond


def _search_oracle(kind_name: str, solve):  # type: ignore[no-untyped-def]
    """rstar's few-shot prompts answered by their instruction, if they are the job's type's; the
    rest (A2, A4, the discriminator's completions) by `solve`."""
    shots = get_problem_type(kind_name).search
    assert shots is not None and NUMBER.search is not None

    def respond(request: FakeRequest) -> Reply | str:
        system = next((m["content"] for m in request.messages if m.get("role") == "system"), "")
        prompt = request.prompt
        if shots is not NUMBER.search and system in (NUMBER.search.steps, NUMBER.search.decompose):
            return Reply(status=422, error="a few-shot prompt of the number type")
        if system == shots.steps and "Rewrite the question" in prompt:
            return prompt.removeprefix("Question: ").split("\n\n")[0]  # its own words: the oracle knows them
        if system == shots.steps:
            k = re.findall(r'Write only "Step (\d+):"', prompt)
            return f"Step {k[0]}: A fact the question needs."
        if system == shots.decompose:
            if k := re.findall(r'Write "Question 5\.(\d+):" and the first', prompt):
                return f"Question 5.{k[0]}: {FIRST_SUBQUESTION}"
            if k := re.findall(r'Write "Question 5\.(\d+):" and the next', prompt):
                return f"Question 5.{k[0]}: Now we can answer the question: the question itself?"
            if k := re.findall(r'Write "Answer 5\.(\d+):"', prompt):
                return f"Answer 5.{k[0]}: It depends on one fact."
            return Reply(status=422, error="unknown instruction")
        return solve(request)

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
    chosen: bool = False,
) -> dict[str, int]:
    """`chosen`: the type is given with --type rather than guessed."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    oracle = _search_oracle(want_type, _oracle(records, answer_format, replies))
    jobs: dict[str, int] = {}
    with FakeInferenceServer(oracle, kind="tgi") as a, FakeInferenceServer(oracle, kind="tgi") as b:
        env = service_env(db_url, redis_url, RSTAR_MODEL_A_URL=a.url, RSTAR_MODEL_B_URL=b.url)
        assert rstar(["db", "upgrade"], env).returncode == 0
        prose = ["--solution-format", "prose"]  # rstar's chains of thought are prose
        runs = [
            ("cot", prose),
            ("self-consistency", [*prose, "--samples", "3"]),
            ("rstar", [a for p in RSTAR_PARAMS for a in ("--param", p)]),
        ]
        for strategy, args in runs:
            sub = rstar(
                ["submit", str(path), "--name", f"{name}-{strategy}", "--strategy", strategy, *args,
                 *(["--type", want_type] if chosen else [])],
                env,
            )  # fmt: skip
            assert sub.returncode == 0, sub.stderr
            assert f"problem type: {want_type}" + ("\n" if chosen else " (guessed:") in sub.stderr
            assert "question from 'problem', answer from 'solution'" in sub.stderr
            jobs[strategy] = int(sub.stdout.strip())
        with celery_worker(env, [CONTROL_QUEUE, queue_for_endpoint(a.url), queue_for_endpoint(b.url)]):
            for job_id in jobs.values():
                wait_until(lambda j=job_id: _finished(db_url, j), timeout=120, what=f"job {job_id}")
        seen = a.requests + b.requests
        assert set(a.status_counts) | set(b.status_counts) == {200}  # no 422: every prompt asked rightly
        systems = [next((m["content"] for m in r.messages if m.get("role") == "system"), "") for r in seen]
        shots = get_problem_type(want_type).search
        assert shots is not None and shots.steps in systems and shots.decompose in systems

        out = tmp_path / f"report-{name}"
        rep = rstar(["report", *(str(j) for j in jobs.values()), "-o", str(out)], env)
        assert rep.returncode == 0, rep.stderr
        summary = {r["strategy"]: r for r in csv.DictReader((out / "summary.csv").open())}
        assert (summary["cot"]["correct"], summary["cot"]["judged"]) == ("2", "3")
        assert (summary["rstar"]["correct"], summary["rstar"]["judged"]) == ("2", "3")
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


CHOICE = [
    {"id": "c-1", "problem": "Which number is even? (A) 3 (B) 4 (C) 5", "solution": "B"},
    {"id": "c-2", "problem": "What is 2 + 2?\nA. 3\nB. 5\nC. 4", "solution": "4"},
    {"id": "c-3", "problem": "Which is a colour? (A) red (B) dog (C) tree", "solution": "red"},
]
# Replies by an option's text or its letter; references too.
CHOICE_REPLIES = {"c-1": ("4", "5"), "c-2": ("C", "A"), "c-3": ("Red", "dog")}


def test_a_choice_job_reads_answers_and_references_given_as_an_options_text(
    sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    jobs = _run_type(
        tmp_path, sqlite_url, redis_url, CHOICE, name="choice", want_type="choice", chosen=True,
        answer_format="End with the letter of the right option alone in \\boxed{}.", replies=CHOICE_REPLIES,
    )  # fmt: skip
    with session_scope(sqlite_url) as s:
        for job_id in jobs.values():
            problems = s.scalars(select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)).all()
            assert [(p.reference_answer, p.final_answer, p.correct) for p in problems] == [
                ("B", "B", True), ("C", "A", False), ("A", "A", True),
            ]  # fmt: skip


AIME = [
    {"id": "a-1", "problem": "Find the remainder when $2^{10}$ is divided by $1000$.", "solution": "24"},
    {"id": "a-2", "problem": "How many positive divisors does $360$ have?", "solution": "024"},
    {"id": "a-3", "problem": "What is $1001 - 1000$?", "solution": "1"},
]
# An AIME answer is an integer from 0 to 999: "024" and "001" are 24 and 1, 1024 is none.
AIME_REPLIES = {"a-1": ("024", "1024"), "a-2": ("24", "23"), "a-3": ("001", "1001")}


def test_an_aime_job_judges_integers_from_0_to_999(sqlite_url: str, redis_url: str, tmp_path: Path) -> None:
    beyond = tmp_path / "beyond.json"
    beyond.write_text(json.dumps([*AIME[:2], {**AIME[2], "solution": "1001"}]), encoding="utf-8")
    env = service_env(
        sqlite_url, redis_url, RSTAR_MODEL_A_URL="http://127.0.0.1:9", RSTAR_CHECK_MODELS="false"
    )
    assert rstar(["db", "upgrade"], env).returncode == 0
    refused = rstar(["submit", str(beyond), "--type", "aime", "--strategy", "cot"], env)
    assert refused.returncode == 2 and "record 3" in refused.stderr and "no aime answer" in refused.stderr
    jobs = _run_type(
        tmp_path, sqlite_url, redis_url, AIME, name="aime", want_type="aime", chosen=True,
        answer_format="an integer from 0 to 999, alone in \\boxed{}", replies=AIME_REPLIES,
    )  # fmt: skip
    with session_scope(sqlite_url) as s:
        problems = s.scalars(select(Problem).where(Problem.job_id == jobs["cot"]).order_by(Problem.id)).all()
        assert [(p.reference_answer, p.final_answer, p.correct) for p in problems] == [
            ("24", "24", True), ("24", "23", False), ("1", "1", True),
        ]  # fmt: skip
