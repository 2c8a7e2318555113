"""Bytes per problem of a job's audit trail, column by column, as releases before 4d378d5 stored
it and as this release stores it.

    python -m bench.record_bytes sqlite:///path/to/accuracy.db 2 [3 ...]

For each job, per problem: every model call's request, raw response and `response_text`, and
every output's text and payload. Before: the request as sent, the response as received (each text
in it again) and JSON as `json.dumps` writes it by default. Now: the request without its system
prompt (`rstar.records.compact_request`; the job's shared texts counted once, with their digests),
the response without the texts `response_text` holds (`compact_response`), packed
(`pack_json`, migration 0011: its compact JSON, zlib-compressed), an output's text
only where it is not its call's sequence (`sequence_index`), JSON without the spaces after
separators (`db.session.compact_json`). The database may have been written by any release
(upgraded to this one's schema: `rstar db upgrade`): each value is first put back as sent and
received. Measured as the UTF-8 bytes of the values, not the database's pages (which add per-row
overhead and, on PostgreSQL, compress large values).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

COLUMNS = (
    "request before",
    "request now",
    "shared texts",
    "response before",
    "response now",
    "response_text",
    "output text before",
    "output text now",
    "output payload before",
    "output payload now",
)
BEFORE = ("request before", "response before", "response_text", "output text before", "output payload before")
NOW = (
    "request now",
    "shared texts",
    "response now",
    "response_text",
    "output text now",
    "output payload now",
)


def _size(value: Any, *, compact: bool) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    return len(json.dumps(value, separators=(",", ":") if compact else None).encode())


def measure(db_url: str, job_id: int) -> dict[str, float]:
    from sqlalchemy import func, select

    from db.calls import requests_as_sent
    from db.models import ModelCall, Output, Problem
    from db.session import session_scope
    from rstar.records import compact_request, compact_response, expanded_response, pack_json, sequence_index

    sizes = dict.fromkeys(COLUMNS, 0)
    shared: dict[str, str] = {}  # each text the job's requests name, counted once
    with session_scope(db_url) as s:
        problems = s.scalar(select(func.count()).select_from(Problem).where(Problem.job_id == job_id)) or 0
        n_calls, after = 0, 0
        while calls := s.scalars(
            select(ModelCall)
            .join(Problem, Problem.id == ModelCall.problem_id)
            .where(Problem.job_id == job_id, ModelCall.id > after)
            .order_by(ModelCall.id)
            .limit(500)
        ).all():
            sent = requests_as_sent(session=s, calls=calls)
            for c in calls:
                received = expanded_response(c.response, c.response_text, c.sequences)
                stored, texts = compact_request(sent[c.id])
                shared.update(texts)
                sizes["request before"] += _size(sent[c.id], compact=False)
                sizes["request now"] += _size(stored, compact=True)
                sizes["response before"] += _size(received, compact=False)
                stored_response = compact_response(received, c.response_text, c.sequences)
                sizes["response now"] += 0 if stored_response is None else len(pack_json(stored_response))
                sizes["response_text"] += _size(c.response_text, compact=True)
            n_calls += len(calls)
            after = calls[-1].id
            s.expunge_all()
        for text, seq, payload, response_text, sequences in s.execute(
            select(Output.text, Output.seq, Output.payload, ModelCall.response_text, ModelCall.sequences)
            .join(Problem, Problem.id == Output.problem_id)
            .outerjoin(ModelCall, ModelCall.id == Output.model_call_id)
            .where(Problem.job_id == job_id)
            .execution_options(yield_per=500)
        ):
            sizes["output text before"] += _size(text, compact=True)
            if sequence_index(text, response_text, sequences, first=seq) is None:
                sizes["output text now"] += _size(text, compact=True)
            sizes["output payload before"] += _size(payload, compact=False)
            sizes["output payload now"] += _size(payload, compact=True)
    sizes["shared texts"] = sum(_size(t, compact=True) + len(d) for d, t in shared.items())
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
