"""Make the previous release's database and printed outputs, for testing schema migrations.

Run it from a checkout of commit 1e2d32c, with that checkout (not this repository's newer code) on
PYTHONPATH and a Python that has the release's dependencies:

    git worktree add --detach /tmp/rstar-1e2d32c 1e2d32c
    cd /tmp/rstar-1e2d32c
    PYTHONPATH=/tmp/rstar-1e2d32c python /path/to/tests/data/previous_release/make_db.py

It needs Redis at 127.0.0.1:6379 and uses only its database 13 (flushed before and after;
--broker to change it), and the TCP ports 18461 and 18462 for two fake inference servers
(--port-a, --port-b). It writes, beside this file (--out to change it):

* jobs.sqlite: a fresh SQLite database at the release's schema head (`rstar db upgrade`), holding the
  jobs below, each run to its end by a real `rstar worker` (a Celery process) against two fake TGI
  servers (tests/fakeserver.py, real HTTP) scripted as a strong model A and a weaker model B on the
  first six problems of tests/data/gsm8k_train_head.jsonl (plus the seventh, which B refuses), with
  wrong first solutions, refinements, an "uncertain" and a lenient verdict, a review in prose, JSON
  in a code fence, and one problem (gsm-4) that both models get wrong the same way;
  checkpointed out of WAL mode and VACUUMed, one file.
* inputs/*.jsonl: the files submitted (jobs.source holds these relative paths).
* golden/: what the release prints for them: `rstar results JOB` (jsonl and csv) for every job,
  `rstar show JOB ITEM` for every problem of every job, `rstar report ALL-JOBS` (its table, and the
  report.md and CSVs of `-o`; not the PNG plots), and jobs.json listing the jobs.

The jobs, submitted and finished one at a time:
  cot, self-consistency --samples 4, mutual --max-rounds 3 (problems going to 2 and 3 rounds),
  mutual-consistency, mutual --param solution_format="prose", self-consistency --samples 6
  --resume-from the k=4 job (samples 1-4 reused, 5-6 paid), and a mutual job on three problems and
  the seventh, whose reviews model B rejects with HTTP 422 for good (that problem ends `failed`).

Every `rstar` command runs as `python -m cli.main ...` in a temporary build directory (so jobs.source
is relative), the worker with one thread, in its own process group, killed whole at the end (also
on an error or SIGTERM). Standard library and the release's own modules only (tests.fakeserver,
and its dependencies' redis client to flush the broker database).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RELEASE = "1e2d32c"
HERE = Path(__file__).resolve().parent


def checkout_root() -> Path:
    """The checkout whose code is imported (PYTHONPATH), refusing this script's own repository's."""
    import cli

    root = Path(cli.__file__).resolve().parent.parent
    if root == HERE.parent.parent.parent:
        sys.exit(f"{root} is this script's repository: put a checkout of {RELEASE} on PYTHONPATH")
    return root


ROOT = checkout_root()
sys.path.insert(0, str(ROOT))

from tests.fakeserver import FakeInferenceServer, FakeRequest, Reply  # noqa: E402

GSM8K = ROOT / "tests" / "data" / "gsm8k_train_head.jsonl"

# -- the two scripted models --------------------------------------------------------------------

# Chance that a model's own solution (generate, complete, self-consistency sample) of problem j is
# wrong, decided by a stable hash of the model, j, the kind of step and the request's seed: the
# seeds are stable per step key, so every run gives the same replies. Problem 6 (the seventh line)
# is the one B refuses in the failing job.
P_WRONG = {
    "A": [0.0, 0.0, 0.5, 0.0, 0.25, 0.0, 0.0],
    "B": [0.5, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
}
# Problem 3: both models make the same mistake (right + 1) in every fresh solution, and accept it as
# reviewers; completing someone else's cut-off solution they get it right. Every strategy's answer
# there is wrong (mutual agrees on it in round 1; mutual-consistency ties 2-2 to its last round).
COMMON_MISTAKE = 3
WRONG_BY = {"A": 1, "B": 10}  # a model's wrong answer: the right one plus this
STUBBORN_B = 5  # B's first refinement of problem 5 is wrong again (right + 20): it needs round 3
UNCERTAIN_B = 4  # B is "uncertain" about the first solutions of problem 4 (not about refinements)
LENIENT_A = 1  # A accepts B's wrong first solution of problem 1
PROSE_REVIEW_B = 2  # B reviews first solutions of problem 2 in prose, not JSON (parsed from free text)
DOOMED = 6  # B answers HTTP 422 to every review of problem 6
REFINED_MARK = "Checked the peer's review"


def stable_fraction(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def _block(prompt: str, label: str) -> str:
    m = re.search(re.escape(label) + r"\n<<<\n(.*?)\n>>>", prompt, re.S)
    return m.group(1) if m else ""


def _shown_answer(solution_text: str) -> str | None:
    m = re.search(r"Final answer: (\S+)", solution_text)
    if m:
        return m.group(1)
    m = re.search(r"\\boxed\{([^}]*)\}", solution_text)
    return m.group(1) if m else None


def _kind(prompt: str) -> str:
    if "Review another student's solution" in prompt:
        return "review"
    if "Here is your earlier solution" in prompt:
        return "refine"
    if "Here is the beginning of a solution" in prompt:
        return "complete"
    return "generate"


@dataclass
class ScriptedModel:
    name: str  # "A" or "B"
    problems: dict[str, tuple[int, str]]  # question -> (index, right answer)

    def __call__(self, request: FakeRequest) -> Reply | str:
        prompt = request.prompt
        found = self.problems.get(_block(prompt, "Problem:"))
        if found is None:
            return Reply(status=422, error="Input validation error: unknown question")
        j, right = found
        kind = _kind(prompt)
        if kind == "review":
            if self.name == "B" and j == DOOMED:
                return Reply(status=422, error="Input validation error: review prompt refused by policy")
            return self.review(j, right, _block(prompt, "Solution to review:"))
        prose = "\\boxed{}" in prompt
        if kind == "refine":
            own = _shown_answer(_block(prompt, "Your solution:"))
            stubborn = self.name == "B" and j == STUBBORN_B and own == str(int(right) + WRONG_BY["B"])
            answer = str(int(right) + 2 * WRONG_BY["B"]) if stubborn else right
            return self.solution(j, answer, prose=prose, refined=True)
        if j == COMMON_MISTAKE:
            return self.solution(
                j, right if kind == "complete" else str(int(right) + 1), prose=prose, refined=False
            )
        seed = (request.body or {}).get("seed")
        wrong = stable_fraction(self.name, j, kind, seed) < P_WRONG[self.name][j]
        answer = str(int(right) + WRONG_BY[self.name]) if wrong else right
        return self.solution(j, answer, prose=prose, refined=False)

    def solution(self, j: int, answer: str, *, prose: bool, refined: bool) -> str:
        steps = [
            f"Problem {j + 1}: list the quantities the question gives.",
            "Combine them in the order the question asks.",
            f"Compute the result: {answer}.",
        ]
        if refined:
            steps.insert(2, f"{REFINED_MARK}: recomputed every step.")
        if prose:
            return "\n".join(steps) + f"\nSo the answer is \\boxed{{{answer}}}."
        body = json.dumps({"steps": steps, "final_answer": answer})
        # B wraps its JSON in a fence with a sentence before it, as chat models often do.
        return f"Here is my solution.\n```json\n{body}\n```" if self.name == "B" else body

    def review(self, j: int, right: str, shown: str) -> str:
        given = _shown_answer(shown)
        first = REFINED_MARK not in shown
        verdict = "correct" if given == right else "incorrect"
        if j == COMMON_MISTAKE:
            right = str(int(right) + 1)  # what the reviewer believes
            verdict = "correct" if given == right else "incorrect"
        if self.name == "A" and j == LENIENT_A and first:
            verdict = "correct"
        if self.name == "B" and j == UNCERTAIN_B and first:
            verdict = "uncertain"
        if self.name == "B" and j == PROSE_REVIEW_B and first:
            return (
                f"I recomputed each step. Verdict: {verdict}\nLogical consistency: 5/5\n"
                f"Calculation accuracy: {5 if verdict == 'correct' else 2}/5\nStep completeness: 4/5\n"
                f"The correct answer is {right}"
            )
        body = {
            "issues": []
            if verdict == "correct"
            else [{"step": 3, "description": f"the result should be {right}, not {given}"}],
            "scores": {
                "logical_consistency": 5 if verdict == "correct" else 3,
                "calculation_accuracy": 5 if verdict == "correct" else 2,
                "step_completeness": 4,
            },
            "verdict": verdict,
            "correct_answer": right,
        }
        return json.dumps(body)


# -- the jobs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    name: str
    input: str  # file under inputs/
    args: tuple[str, ...]
    resume_from: str | None = None  # the name of an earlier job
    expect_failed: tuple[str, ...] = ()  # item ids that must end failed


JOBS = (
    JobSpec("cot", "gsm6.jsonl", ("--strategy", "cot")),
    JobSpec("self-consistency-k4", "gsm6.jsonl", ("--strategy", "self-consistency", "--samples", "4")),
    JobSpec("mutual-3-rounds", "gsm6.jsonl", ("--strategy", "mutual", "--max-rounds", "3")),
    JobSpec("mutual-consistency", "gsm6.jsonl", ("--strategy", "mutual-consistency")),
    JobSpec(
        "mutual-prose",
        "gsm6.jsonl",
        ("--strategy", "mutual", "--max-rounds", "3", "--param", 'solution_format="prose"'),
    ),
    JobSpec(
        "self-consistency-k6-resumed",
        "gsm6.jsonl",
        ("--strategy", "self-consistency", "--samples", "6"),
        resume_from="self-consistency-k4",
    ),
    JobSpec(
        "mutual-one-refused",
        "gsm4-refused.jsonl",
        ("--strategy", "mutual", "--max-rounds", "3"),
        expect_failed=("gsm-7",),
    ),
)


def gsm_rows() -> list[dict[str, str]]:
    lines = GSM8K.read_text(encoding="utf-8").splitlines()[:7]
    return [json.loads(line) for line in lines]


def reference(answer: str) -> str:
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def write_inputs(inputs: Path, rows: list[dict[str, str]]) -> None:
    inputs.mkdir(parents=True, exist_ok=True)
    items = [
        {"id": f"gsm-{i + 1}", "question": r["question"], "answer": r["answer"]} for i, r in enumerate(rows)
    ]
    for name, chosen in (("gsm6.jsonl", items[:6]), ("gsm4-refused.jsonl", [*items[:3], items[DOOMED]])):
        (inputs / name).write_text("".join(json.dumps(x) + "\n" for x in chosen), encoding="utf-8")


# -- processes ----------------------------------------------------------------------------------


def cli_env(db_url: str, broker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
    for k in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(k, None)
    env.update(
        RSTAR_DATABASE_URL=db_url,
        RSTAR_BROKER_URL=broker,
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        # Stable printing: a fixed width, no colour, no terminal.
        COLUMNS="200",
        LINES="60",
        NO_COLOR="1",
        TERM="dumb",
    )
    return env


def rstar(args: list[str], env: dict[str, str], cwd: Path, *, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"rstar {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


@contextlib.contextmanager
def worker(env: dict[str, str], cwd: Path, urls: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`rstar worker --endpoint A --endpoint B` in its own process group, stopped with it."""
    args = [sys.executable, "-m", "cli.main", "worker"]
    for url in urls:
        args += ["--endpoint", url]
    # One thread: a job's steps run in nearly the same order every time, so most ids repeat.
    args += ["--concurrency", "1", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Anything left in the group (there should be nothing) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def flush_broker(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def wait_finished(db: Path, job_id: int, proc: subprocess.Popen[bytes], *, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}) before job {job_id} finished")
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
            row = con.execute("SELECT finished_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row and row[0] is not None:
            return
        time.sleep(0.3)
    raise RuntimeError(f"job {job_id} did not finish within {timeout} s")


# -- checks and golden outputs ------------------------------------------------------------------


def job_rows(db: Path) -> list[dict[str, object]]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.row_factory = sqlite3.Row
        columns = {r[1] for r in con.execute("PRAGMA table_info(jobs)")}
        # A release from 0003 on keeps the roster in jobs.models: its A and B are listed the same.
        urls = "model_a_url, model_b_url" if "model_a_url" in columns else "models"
        query = f"SELECT id, name, strategy, params, status, resume_from_id, {urls}, source FROM jobs"
        query += " ORDER BY id"
        jobs = [dict(r) for r in con.execute(query)]
        for job in jobs:
            if "models" in job:
                roster = {m["name"]: m["url"] for m in json.loads(str(job.pop("models")))}
                job["model_a_url"], job["model_b_url"] = roster.get("A"), roster.get("B")
            job["params"] = json.loads(str(job["params"]))
            job["problems"] = [
                dict(r)
                for r in con.execute(
                    "SELECT item_id, status, final_answer, reference_answer, rounds_used, error "
                    "FROM problems WHERE job_id = ? ORDER BY id",
                    (job["id"],),
                )
            ]
            job["model_calls"] = dict(
                con.execute(
                    "SELECT CASE WHEN c.reused_from_id IS NULL THEN c.outcome ELSE 'reused' END, count(*) "
                    "FROM model_calls c JOIN problems p ON p.id = c.problem_id WHERE p.job_id = ? GROUP BY 1",
                    (job["id"],),
                ).fetchall()
            )
    return jobs


def check(jobs: list[dict[str, object]], ids: dict[str, int]) -> list[str]:
    """What must hold for the fixture to be useful; returns the problems found."""
    bad: list[str] = []
    by_name = {str(j["name"]): j for j in jobs}
    for spec in JOBS:
        job = by_name[spec.name]
        if job["status"] != "finished":
            bad.append(f"{spec.name}: job status {job['status']}")
        for p in job["problems"]:  # type: ignore[attr-defined]
            want = "failed" if p["item_id"] in spec.expect_failed else "answered"
            if p["status"] != want:
                bad.append(f"{spec.name} {p['item_id']}: {p['status']}, expected {want} ({p['error']})")
    mutual = by_name["mutual-3-rounds"]["problems"]
    rounds = sorted(p["rounds_used"] or 0 for p in mutual)  # type: ignore[attr-defined]
    if rounds[-1] < 3 or not any(r == 2 for r in rounds):
        bad.append(f"mutual-3-rounds: rounds {rounds}, expected some 2 and some 3")
    for spec in JOBS[:6]:  # the common mistake: a wrong answer on gsm-4, whatever the strategy
        p4 = next(p for p in by_name[spec.name]["problems"] if p["item_id"] == "gsm-4")  # type: ignore[attr-defined]
        if p4["final_answer"] == p4["reference_answer"]:
            bad.append(f"{spec.name} gsm-4: answered {p4['final_answer']}, expected the common mistake")
    calls = by_name["self-consistency-k6-resumed"]["model_calls"]
    if not (calls.get("reused") and calls.get("ok")):  # type: ignore[attr-defined]
        bad.append(f"self-consistency-k6-resumed: calls {calls}, expected reused and paid ones")
    refused = [p for p in by_name["mutual-one-refused"]["problems"] if p["status"] == "failed"]  # type: ignore[attr-defined]
    if not refused or "422" not in (refused[0]["error"] or ""):
        bad.append(f"mutual-one-refused: failed problem {refused}, expected an HTTP 422 error")
    return bad


GOLDEN_README = """\
# What the release (1e2d32c) printed for jobs.sqlite

Written by ../make_db.py (see ../README.md); do not edit by hand. Printed with COLUMNS=200,
NO_COLOR=1, TERM=dumb, standard output not a terminal.

- `results-<id>-<name>.jsonl`, `.csv`: `rstar results ID --format jsonl` and `--format csv` (the
  two formats it has).
- `show-<id>-<name>-<item>.txt`: `rstar show ID ITEM` (every model call included, the default).
- `report.txt`: the tables `rstar report 1 2 3 4 5 6 7 -o DIR` prints; `report.md`, `summary.csv`,
  `problems.csv`, `paired.csv`: the files it writes in DIR (its PNG plots are left out).
- `jobs.json`: each job's id, name, strategy, parameters, resumed-from job, status, source,
  endpoints, problem statuses and model calls by outcome (read from the database, not printed by
  rstar).

## Time-dependent: differs on every regeneration

- results (jsonl, csv): `wall_time_s`.
- show: the latency in each model call's first line (`... · tokens 95+23 · 2 ms · finish stop`),
  and with it that line's padding before the closing border; reused calls always say `0 ms`.
- report.txt, report.md: the columns `wall s / problem` and `model s / problem` (one decimal, so
  they change only sometimes).
- summary.csv: `wall_s_per_problem`, `model_s_per_problem`, `job_wall_s`.
- problems.csv: `wall_time_s`, `model_seconds`.
- jobs.json: nothing.

## Order-dependent: the same on most regenerations, not guaranteed

Ids are given in the order the worker ran the steps (one worker thread, one job at a time). In
`show-4-mutual-consistency-*` the ids of model calls and solutions (`model call #N`,
`selection (solution #N)`) have differed between regenerations: a completion step is queued as soon
as the peer's solution is in, so A's and B's steps interleave differently. In the other jobs they
were the same in every regeneration tried. Everything else (answers, verdicts, texts, token counts,
counts, statuses, errors, accuracy, rounds) is the same every time.
"""


def check_reviews(db: Path, job_id: int) -> list[str]:
    """The mutual job has an "uncertain" verdict, a wrong answer accepted and a review in prose."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # Releases from 0003 on keep reviews as outputs (verdict and structured in the payload).
        reviews = (
            "reviews r JOIN solutions s ON s.id = r.target_solution_id"
            if "reviews" in tables
            else "(SELECT o.*, json_extract(o.payload, '$.verdict') AS verdict,"
            " json_extract(o.payload, '$.structured') AS structured FROM outputs o WHERE o.kind = 'review') r"
            " JOIN outputs s ON s.id = r.parent_id"
        )
        found = con.execute(
            "SELECT sum(r.verdict = 'uncertain'), "
            # the lenient verdict, not the common mistake (which both models accept)
            "sum(r.verdict = 'correct' AND s.answer != p.reference_answer AND p.line != ?), "
            f"sum(NOT r.structured) FROM {reviews} "
            "JOIN problems p ON p.id = r.problem_id WHERE p.job_id = ?",
            (COMMON_MISTAKE + 1, job_id),
        ).fetchone()
    names = ("an uncertain verdict", "a wrong answer accepted", "a review in prose")
    return [f"job {job_id}: no {name}" for name, n in zip(names, found, strict=True) if not n]


def capture_golden(golden: Path, jobs: list[dict[str, object]], env: dict[str, str], cwd: Path) -> None:
    golden.mkdir(parents=True, exist_ok=True)
    (golden / "README.md").write_text(GOLDEN_README, encoding="utf-8")
    for job in jobs:
        tag = f"{job['id']}-{job['name']}"
        for fmt in ("jsonl", "csv"):
            (golden / f"results-{tag}.{fmt}").write_text(
                rstar(["results", str(job["id"]), "--format", fmt], env, cwd), encoding="utf-8"
            )
        for p in job["problems"]:  # type: ignore[attr-defined]
            (golden / f"show-{tag}-{p['item_id']}.txt").write_text(
                rstar(["show", str(job["id"]), str(p["item_id"])], env, cwd), encoding="utf-8"
            )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report"
        table = rstar(["report", *(str(j["id"]) for j in jobs), "-o", str(out)], env, cwd)
        (golden / "report.txt").write_text(table, encoding="utf-8")
        for name in ("report.md", "summary.csv", "problems.csv", "paired.csv"):
            shutil.copy(out / name, golden / name)
    listing = [
        {
            "id": j["id"],
            "name": j["name"],
            "strategy": j["strategy"],
            "params": j["params"],
            "resume_from_id": j["resume_from_id"],
            "status": j["status"],
            "source": j["source"],
            "model_a_url": j["model_a_url"],
            "model_b_url": j["model_b_url"],
            "problems": {p["item_id"]: p["status"] for p in j["problems"]},  # type: ignore[attr-defined]
            "model_calls": j["model_calls"],
        }
        for j in jobs
    ]
    (golden / "jobs.json").write_text(json.dumps(listing, indent=2) + "\n", encoding="utf-8")


def compact(db: Path) -> None:
    """Out of WAL mode into one file, VACUUMed."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("VACUUM")
        if con.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise RuntimeError(f"{db}: integrity check failed")


def git_head(root: Path) -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where jobs.sqlite, inputs/, golden/ go")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/13", help="flushed before and after")
    parser.add_argument("--port-a", type=int, default=18461)
    parser.add_argument("--port-b", type=int, default=18462)
    parser.add_argument(
        "--any-commit", action="store_true", help=f"run even if the checkout is not {RELEASE}"
    )
    args = parser.parse_args(argv)

    # SIGTERM unwinds like an error, so the worker's process group and the servers are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    head = git_head(ROOT)
    if not head.startswith(RELEASE) and not args.any_commit:
        sys.exit(f"{ROOT} is at {head or 'an unknown commit'}, not {RELEASE} (--any-commit to run anyway)")
    print(f"code: {ROOT} at {head}", flush=True)

    rows = gsm_rows()
    problems = {r["question"]: (i, reference(r["answer"])) for i, r in enumerate(rows)}
    out: Path = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="rstar-previous-release-") as tmp:
        build = Path(tmp)
        write_inputs(build / "inputs", rows)
        db = build / "jobs.sqlite"
        env = cli_env(f"sqlite:///{db}", args.broker)
        flush_broker(args.broker)
        rstar(["db", "upgrade"], env, build)
        ids: dict[str, int] = {}
        a = FakeInferenceServer(
            ScriptedModel("A", problems), kind="tgi", model_id="fake-org/model-a", port=args.port_a
        )
        b = FakeInferenceServer(
            ScriptedModel("B", problems), kind="tgi", model_id="fake-org/model-b", port=args.port_b
        )
        try:
            with a, b:
                print(f"model A at {a.url}, model B at {b.url}", flush=True)
                with worker(env, build, [a.url, b.url], build / "worker.log") as proc:
                    for spec in JOBS:
                        sub = ["submit", f"inputs/{spec.input}", "--name", spec.name,
                               "--model-a", a.url, "--model-b", b.url, *spec.args]  # fmt: skip
                        if spec.resume_from:
                            sub += ["--resume-from", str(ids[spec.resume_from])]
                        ids[spec.name] = int(rstar(sub, env, build).strip())
                        wait_finished(db, ids[spec.name], proc)
                        print(f"job {ids[spec.name]} {spec.name}: finished", flush=True)
                print(f"requests served: A {a.request_count}, B {b.request_count}", flush=True)
        except Exception:
            log = build / "worker.log"
            if log.exists():
                sys.stderr.write(log.read_text(errors="replace")[-6000:])
            raise
        finally:
            flush_broker(args.broker)

        jobs = job_rows(db)
        problems_found = check(jobs, ids) + check_reviews(db, ids["mutual-3-rounds"])
        for j in jobs:
            states = " ".join(f"{p['item_id']}={p['status']}/r{p['rounds_used']}" for p in j["problems"])  # type: ignore[attr-defined]
            print(f"  {j['id']} {j['name']} ({j['strategy']}): {states}; calls {j['model_calls']}")
        if problems_found:
            sys.exit("not the fixture intended:\n  " + "\n  ".join(problems_found))

        golden = build / "golden"
        capture_golden(golden, jobs, env, build)
        compact(db)
        # Reading the compacted file gives the same results (and puts it back into WAL mode).
        for j in jobs:
            again = rstar(["results", str(j["id"]), "--format", "jsonl"], env, build)
            if again != (golden / f"results-{j['id']}-{j['name']}.jsonl").read_text(encoding="utf-8"):
                sys.exit(f"job {j['id']}: results differ after VACUUM")
        compact(db)

        out.mkdir(parents=True, exist_ok=True)
        for name in ("jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm"):
            (out / name).unlink(missing_ok=True)
        for name in ("golden", "inputs"):
            shutil.rmtree(out / name, ignore_errors=True)
        shutil.copy(db, out / "jobs.sqlite")
        shutil.copytree(golden, out / "golden")
        shutil.copytree(build / "inputs", out / "inputs")
    size = (out / "jobs.sqlite").stat().st_size
    print(f"wrote {out}/jobs.sqlite ({size / 1024:.0f} KiB), {out}/inputs/, {out}/golden/ "
          f"({len(list((out / 'golden').iterdir()))} files)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
