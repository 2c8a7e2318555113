"""Bytes per problem of a job's audit trail, column by column, as stored and as this release stores it.

    python -m bench.record_bytes sqlite:///path/to/accuracy.db 2 [3 ...]

For each job: the JSON or text of every model call (request, raw response, response_text) and
every output (text, payload) per problem, with the raw response measured twice: as the database
holds it (a database written by an earlier release keeps each text in the response too) and as
`rstar.records.compact_response` stores it now. Measured as the UTF-8 bytes of the values, not
the database's pages (which add per-row overhead and, on PostgreSQL, compress large values).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

COLUMNS = ("request", "response as stored", "response now", "response_text", "output text", "output payload")


def _size(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def measure(db_url: str, job_id: int) -> dict[str, float]:
    from sqlalchemy import func, select

    from db.models import ModelCall, Output, Problem
    from db.session import session_scope
    from rstar.records import compact_response

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
        for request, response, text, sequences in calls:
            n_calls += 1
            sizes["request"] += _size(request)
            sizes["response as stored"] += _size(response)
            sizes["response now"] += _size(compact_response(response, text, sequences))
            sizes["response_text"] += _size(text)
        for text, payload in s.execute(
            select(Output.text, Output.payload)
            .join(Problem, Problem.id == Output.problem_id)
            .where(Problem.job_id == job_id)
            .execution_options(yield_per=500)
        ):
            sizes["output text"] += _size(text)
            sizes["output payload"] += _size(payload)
    per = {k: v / max(problems, 1) for k, v in sizes.items()}
    per["problems"], per["calls per problem"] = problems, n_calls / max(problems, 1)
    return per


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("database_url")
    parser.add_argument("jobs", type=int, nargs="+")
    args = parser.parse_args(argv)
    print("| job | problems | calls / problem | " + " | ".join(f"{c} (KB / problem)" for c in COLUMNS) + " |")
    print("|---:|---:|---:|" + "---:|" * len(COLUMNS))
    for job in args.jobs:
        m = measure(args.database_url, job)
        cells = " | ".join(f"{m[c] / 1024:.1f}" for c in COLUMNS)
        print(f"| {job} | {m['problems']:.0f} | {m['calls per problem']:.1f} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
