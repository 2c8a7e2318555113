"""What the fault tests share: fast recovery settings, a private redis-server, a TCP proxy that can
cut the database off, slow oracle servers, the audit of a finished job, and the results table.

Each fault test ends with `report(...)`: it prints the table row and, when
RSTAR_RELIABILITY_REPORT=1, stores it in docs/results/reliability.json and rewrites
docs/results/reliability.md from all stored rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from db.models import Job, ModelCall, Output, Problem, Selection, Step
from db.session import session_scope
from tests.fakeserver import FakeInferenceServer, FakeRequest, Reply
from tests.support import (
    REPO,
    Oracle,
    count_errors,
    gsm8k_rows,
    oracle_pair,
    review_rows,
    rstar,
    service_env,
    solution_rows,
    tally_errors,
    wait_until,
    write_jsonl,
)
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint

# Short everything, so a dead worker's lease runs out in 2 s, its reserved messages come back ~1 s
# after their 6 s visibility, and a step whose message was lost (a worker killed between the
# commit of its next steps and their messages, or in the middle of kombu's look for unacked
# messages, whose lock then holds for 300 s) is sent again once it has waited 10 s with its queue
# empty; the defaults give a lost message 180 s, longer than the tests wait for a job.
FAST = {
    "RSTAR_REQUEST_TIMEOUT": "2",
    "RSTAR_MAX_RETRIES": "6",
    "RSTAR_RETRY_BACKOFF": "0.2",
    "RSTAR_RETRY_BACKOFF_MAX": "1",
    "RSTAR_LEASE_SECONDS": "2",
    "RSTAR_VISIBILITY_TIMEOUT": "6",
    "RSTAR_RECOVERY_INTERVAL": "1",
    "RSTAR_REQUEUE_GRACE": "10",
    "RSTAR_DB_OUTAGE_GRACE": "60",
}

RESULTS_JSON = REPO / "docs" / "results" / "reliability.json"
RESULTS_MD = REPO / "docs" / "results" / "reliability.md"


# -- services ------------------------------------------------------------------------------------


class TcpProxy:
    """A TCP forwarder to 127.0.0.1:`target`; `cut()` drops every connection and refuses new ones
    until `restore()`: the database is unreachable, as a network partition would make it."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._open.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            conns = list(self._open)
        for s in conns:
            self._drop(s)

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


# -- models and jobs -----------------------------------------------------------------------------


def slow(responder: Callable[[FakeRequest], Reply | str], delay: float) -> Callable[[FakeRequest], Reply]:
    """The responder's replies, each after `delay` seconds (so calls are in flight for a while)."""

    def respond(request: FakeRequest) -> Reply:
        out = responder(request)
        return Reply(text=out, delay=delay) if isinstance(out, str) else out

    return respond


@dataclass
class Setup:
    rows: list[dict[str, str]]
    path: Path
    oracle_a: Oracle
    oracle_b: Oracle

    def expected_rounds(self) -> list[int]:
        # oracle_pair(b_wrong_every=2): B is wrong first on even problems, fixed in round 2.
        return [2 if i % 2 == 0 else 1 for i in range(len(self.rows))]

    def expected_calls(self) -> int:
        return sum(8 if r == 2 else 4 for r in self.expected_rounds())


def gsm_job(tmp: Path, n: int, *, offset: int = 0) -> Setup:
    rows = gsm8k_rows(n, offset=offset)
    a, b = oracle_pair(rows, b_wrong_every=2)
    items = [{"id": f"gsm-{i}", "question": r["question"], "answer": r["answer"]} for i, r in enumerate(rows)]
    return Setup(rows, write_jsonl(tmp / "problems.jsonl", items), a, b)


def queues_for(*servers: FakeInferenceServer) -> list[str]:
    return [CONTROL_QUEUE, *(queue_for_endpoint(s.url) for s in servers)]


def env_for(
    db_url: str, broker: str, a: FakeInferenceServer, b: FakeInferenceServer, **extra: str
) -> dict[str, str]:
    return service_env(db_url, broker, RSTAR_MODEL_A_URL=a.url, RSTAR_MODEL_B_URL=b.url, **{**FAST, **extra})


def submit(env: dict[str, str], path: Path, *args: str) -> int:
    out = rstar(["submit", str(path), "--name", path.stem, *args], env)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def job_finished(db_url: str, job_id: int) -> bool:
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        return job is not None and job.finished_at is not None


def wait_finished(db_url: str, job_id: int, timeout: float = 120) -> None:
    try:
        wait_until(lambda: job_finished(db_url, job_id), timeout=timeout, what=f"job {job_id} to finish")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; where it stands:\n{describe(db_url, job_id)}") from None


def describe(db_url: str, job_id: int) -> str:
    """Every open step of the job, for a failure message."""
    with session_scope(db_url) as s:
        rows = s.execute(
            select(Problem.item_id, Problem.status, Step.key, Step.status, Step.attempts, Step.lease_until)
            .join(Step, Step.problem_id == Problem.id)
            .where(Problem.job_id == job_id, Step.status != "done")
            .order_by(Problem.id, Step.id)
        ).all()
    return "\n".join(" ".join(str(x) for x in row) for row in rows) or "(no open step)"


def ok_calls(db_url: str, job_id: int | None = None) -> int:
    with session_scope(db_url) as s:
        q = select(func.count()).select_from(ModelCall).where(ModelCall.outcome == "ok")
        if job_id is not None:
            q = q.join(Problem, Problem.id == ModelCall.problem_id).where(Problem.job_id == job_id)
        return s.scalar(q) or 0


def served_ok(*servers: FakeInferenceServer) -> int:
    """Replies with status 200 the fake servers sent (paid GPU work)."""
    return sum(s.status_counts[200] for s in servers)


# -- the audit ------------------------------------------------------------------------------------


@dataclass
class Audit:
    submitted: int
    answered: int
    failed: int
    cancelled: int
    open: int
    duplicate_calls: int
    """Model steps with more than one successful call recorded, plus extra output rows of a step
    and extra selections of a problem."""
    rows_lost: int
    """Input lines without a problem row, finished problems without their rows: answered without
    a selection, done model steps without their output, outputs without their recorded call."""
    reused_calls: int
    paid_calls: int
    """Successful calls recorded that were sent to a server (not copied from an earlier job)."""
    retryable_errors: int
    permanent_errors: int
    round_errors: list[str] = field(default_factory=list)


def audit(db_url: str, job_id: int, *, lines: int | None = None) -> Audit:
    with session_scope(db_url) as s:
        problems = s.scalars(select(Problem).where(Problem.job_id == job_id)).all()
        pids = [p.id for p in problems]
        steps = s.scalars(select(Step).where(Step.problem_id.in_(pids))).all()
        calls = s.scalars(select(ModelCall).where(ModelCall.problem_id.in_(pids))).all()
        sols = solution_rows(s, Output.problem_id.in_(pids))
        revs = review_rows(s, Output.problem_id.in_(pids))
        sels = s.scalars(select(Selection).where(Selection.problem_id.in_(pids))).all()
        kept_counts = count_errors(s)
    status = Counter(p.status for p in problems)
    ok = [c for c in calls if c.outcome == "ok"]
    ok_per_step = Counter(c.step_id for c in ok)
    out_per_step = Counter([x.step_id for x in sols] + [x.step_id for x in revs])
    sel_per_problem = Counter(x.problem_id for x in sels)
    duplicates = (
        sum(n - 1 for n in ok_per_step.values() if n > 1)
        + sum(n - 1 for n in out_per_step.values() if n > 1)
        + sum(n - 1 for n in sel_per_problem.values() if n > 1)
    )
    call_ids = {c.id for c in calls}
    lost = 0
    if lines is not None:
        lost += max(0, lines - len(problems))
    lost += sum(1 for p in problems if p.status == "answered" and sel_per_problem[p.id] == 0)
    lost += sum(1 for st in steps if st.kind != "select" and st.status == "done" and out_per_step[st.id] == 0)
    lost += sum(1 for st in steps if st.kind != "select" and st.status == "done" and ok_per_step[st.id] == 0)
    lost += sum(1 for x in [*sols, *revs] if x.model_call_id not in call_ids)

    # Rounds: each round up to rounds_used has both solutions and both reviews, and links agree.
    errors: list[str] = []
    by_id = {x.id: x for x in sols}
    for p in problems:
        if p.status != "answered":
            continue
        mine = [x for x in sols if x.problem_id == p.id]
        reviews = [r for r in revs if r.problem_id == p.id]
        for r in range(1, (p.rounds_used or 0) + 1):
            if sorted(x.author for x in mine if x.round == r) != ["A", "B"]:
                errors.append(f"{p.item_id}: round {r} solutions")
            if sorted(x.reviewer for x in reviews if x.round == r) != ["A", "B"]:
                errors.append(f"{p.item_id}: round {r} reviews")
        if max((x.round for x in mine), default=0) != p.rounds_used:
            errors.append(f"{p.item_id}: rounds_used {p.rounds_used}")
        for rev in reviews:
            target = by_id.get(rev.target_solution_id)
            if target is None or target.round != rev.round or target.author == rev.reviewer:
                errors.append(f"{p.item_id}: review {rev.id} target")
        for sol in mine:
            if sol.kind == "refine":
                parent = by_id.get(sol.parent_id or -1)
                if parent is None or parent.author != sol.author or parent.round != sol.round - 1:
                    errors.append(f"{p.item_id}: refinement {sol.id} parent")
    errors += tally_errors(problems, calls)
    errors += kept_counts
    return Audit(
        submitted=len(problems) if lines is None else lines,
        answered=status["answered"],
        failed=status["failed"],
        cancelled=status["cancelled"],
        open=len(problems) - status["answered"] - status["failed"] - status["cancelled"],
        duplicate_calls=duplicates,
        rows_lost=lost,
        reused_calls=sum(1 for c in ok if c.reused_from_id is not None),
        paid_calls=sum(1 for c in ok if c.reused_from_id is None),
        retryable_errors=sum(1 for c in calls if c.outcome == "retryable_error"),
        permanent_errors=sum(1 for c in calls if c.outcome == "permanent_error"),
        round_errors=errors,
    )


def assert_clean(a: Audit) -> None:
    assert a.duplicate_calls == 0, a
    assert a.rows_lost == 0, a
    assert a.round_errors == [], a.round_errors


# -- the results table ----------------------------------------------------------------------------

COLUMNS = [
    ("fault", "fault"),
    ("injected", "what was injected"),
    ("submitted", "problems submitted"),
    ("answered", "answered"),
    ("failed", "failed"),
    ("duplicate_calls", "duplicate calls found"),
    ("rows_lost", "rows lost"),
    ("notes", "notes (from the same run)"),
]


def report(order: int, fault: str, injected: str, a: Audit, notes: str = "", **shown: object) -> None:
    """`shown` replaces a column's value in the table (e.g. "2 → 0 after retry")."""
    row = {
        "order": order,
        "fault": fault,
        "injected": injected,
        **{k: v for k, v in asdict(a).items() if k != "round_errors"},
        **shown,
        "notes": notes,
        "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print("\nRELIABILITY " + json.dumps(row))
    if os.environ.get("RSTAR_RELIABILITY_REPORT") != "1":
        return
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    rows[fault] = row
    RESULTS_JSON.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    table = sorted(rows.values(), key=lambda r: (r["order"], r["fault"]))
    lines = [
        "# Reliability: faults injected and what came out",
        "",
        "Generated by `RSTAR_RELIABILITY_REPORT=1 pytest tests/reliability` (each row is one test run",
        "with real worker processes, Redis, PostgreSQL and fake inference servers over HTTP; see",
        "tests/reliability/). *Duplicate calls*: model steps with more than one successful call",
        "recorded, extra output rows of a step, extra selections of a problem. *Rows lost*: input lines",
        "without a problem, answered problems without a selection, finished steps without their output",
        "or call, outputs without their call.",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in table:
        lines.append("| " + " | ".join(str(r.get(k, "")).replace("|", "\\|") for k, _ in COLUMNS) + " |")
    RESULTS_MD.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def servers(
    a_responder: Callable[[FakeRequest], Reply | str], b_responder: Callable[[FakeRequest], Reply | str]
) -> Iterator[tuple[FakeInferenceServer, FakeInferenceServer]]:
    with FakeInferenceServer(a_responder, kind="tgi") as a, FakeInferenceServer(b_responder, kind="tgi") as b:
        yield a, b
