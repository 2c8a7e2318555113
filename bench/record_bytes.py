"""Bytes per problem of a job's audit trail, column by column, as stored and as this release stores it.

    python -m bench.record_bytes sqlite:///path/to/accuracy.db 2 [3 ...]

For each job: the JSON or text of every model call (request, raw response, response_text) and
every output (text, payload) per problem, with the request and the raw response measured twice:
as the database holds them (a database written by an earlier release keeps each system prompt in
every request and each text in the response too) and as this release stores them
(`rstar.records.compact_request`, `compact_response`), the job's shared texts counted once.
Measured as the UTF-8 bytes of the values, not the database's pages (which add per-row overhead
and, on PostgreSQL, compress large values).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

COLUMNS = (
    "request as stored",
    "request now",
    "shared texts",
    "response as stored",
    "response now",
    "response_text",
    "output text",
    "output payload",
)
BEFORE = ("request as stored", "response as stored", "response_text", "output text", "output payload")
NOW = ("request now", "shared texts", "response now", "response_text", "output text", "output payload")


def _size(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def measure(db_url: str, job_id: int) -> dict[str, float]:
    from sqlalchemy import func, select

    from db.calls import shared_texts
    from db.models import ModelCall, Output, Problem
    from db.session import session_scope
    from rstar.records import compact_request, compact_response, shared_digests

    sizes = dict.fromkeys(COLUMNS, 0)
    with session_scope(db_url) as s:
        problems = s.scalar(select(func.count()).select_from(Problem).where(Problem.job_id == job_id)) or 0
        calls = s.execute(
            select(ModelCall.request, ModelCall.response, ModelCall.response_text, ModelCall.sequences)
            .join(Problem, Problem.id == ModelCall.problem_id)
            .where(Problem.job_id == job_id)
            .execution_options(yield_per=500)
        )
        n_calls = 0
        shared: dict[str, str | None] = {}  # each text the job's requests name, counted once
        for request, response, text, sequences in calls:
            n_calls += 1
            sizes["request as stored"] += _size(request)
            stored, texts = compact_request(request)
            sizes["request now"] += _size(stored)
            shared.update(texts)
            shared.update((d, shared.get(d)) for d in shared_digests(stored))
            sizes["response as stored"] += _size(response)
            sizes["response now"] += _size(compact_response(response, text, sequences))
            sizes["response_text"] += _size(text)
        shared.update(shared_texts(session=s, digests=[d for d, t in shared.items() if t is None]))
        sizes["shared texts"] = sum(_size(t) + len(d) for d, t in shared.items())
        for text, payload in s.execute(
            select(Output.text, Output.payload)
            .join(Problem, Problem.id == Output.problem_id)
            .where(Problem.job_id == job_id)
            .execution_options(yield_per=500)
        ):
            sizes["output text"] += _size(text)
            sizes["output payload"] += _size(payload)
    per = {k: v / max(problems, 1) for k, v in sizes.items()}
    per["before"], per["now"] = sum(per[k] for k in BEFORE), sum(per[k] for k in NOW)
    per["problems"], per["calls per problem"] = problems, n_calls / max(problems, 1)
    return per


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("database_url")
    parser.add_argument("jobs", type=int, nargs="+")
    args = parser.parse_args(argv)
    shown = (*COLUMNS, "before", "now")
    print("| job | problems | calls / problem | " + " | ".join(f"{c} (KB / problem)" for c in shown) + " |")
    print("|---:|---:|---:|" + "---:|" * len(shown))
    for job in args.jobs:
        m = measure(args.database_url, job)
        cells = " | ".join(f"{m[c] / 1024:.1f}" for c in shown)
        print(f"| {job} | {m['problems']:.0f} | {m['calls per problem']:.1f} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
