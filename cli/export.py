"""`rstar export`: a job's problems, or its solutions as trajectories, as JSONL, CSV or Parquet."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.render import SafeText, make_console, print_error
from db.exports import load_export
from db.models import MAX_ROW_ID
from db.reports import UnknownJobError
from db.session import session_scope
from rstar.exports import (
    PROBLEM_FIELDS,
    TRAJECTORY_FIELDS,
    SpreadsheetCsv,
    problem_records,
    trajectory_records,
)
from workers.settings import get_settings

FORMATS = ("jsonl", "csv", "parquet")
err = make_console(stderr=True)


def _flat(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value


def write_records(
    records: Iterable[dict[str, Any]], fields: tuple[str, ...], fmt: str, output: Path | None
) -> int:
    """Records as JSONL or CSV (to `output`, or standard output), written as they come, or Parquet
    (a file: it is binary; one table, so held whole). In CSV and Parquet a value that is an object
    or a list (a problem's "meta") is its JSON text. Returns how many were written."""
    if fmt != "jsonl":
        records = ({k: _flat(v) for k, v in r.items()} for r in records)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        assert output is not None
        held = list(records)
        columns = {f: [r[f] for r in held] for f in fields}
        pq.write_table(pa.table(columns), output)
        return len(held)
    written = 0
    out = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        if fmt == "jsonl":
            for r in records:
                out.write(json.dumps(r, ensure_ascii=False) + "\n")
                written += 1
        else:
            writer = SpreadsheetCsv(out, fieldnames=fields, lineterminator="\r\n")  # csv's own default
            writer.writeheader()
            for r in records:
                writer.writerow(r)
                written += 1
    finally:
        if output:
            out.close()
    return written


def export_command(
    job: Annotated[int, typer.Argument(help="Job id.", min=1, max=MAX_ROW_ID)],
    format: Annotated[str, typer.Option("--format", "-f", help="jsonl, csv or parquet.")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default: stdout; parquet needs one).")
    ] = None,
    trajectories: Annotated[
        bool,
        typer.Option(help="One row per solution (text, answer, selected, mutually consistent, correct)."),
    ] = False,
    verified_only: Annotated[
        bool, typer.Option(help="With --trajectories: only the solutions whose answer matches the reference.")
    ] = False,
) -> None:
    """One row per problem (question, reference, answer, correct, model, strategy, calls, tokens),
    or with --trajectories one per solution: the shape a fine-tuning set needs."""
    if format not in FORMATS:
        print_error(err, f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
        raise typer.Exit(2)
    if format == "parquet" and output is None:
        print_error(err, "--format parquet writes a file: pass -o FILE")
        raise typer.Exit(2)
    if verified_only and not trajectories:
        print_error(err, "--verified-only applies to --trajectories")
        raise typer.Exit(2)
    with session_scope(get_settings().database_url) as session:
        try:
            found, problems = load_export(session=session, job_id=job)
        except UnknownJobError as exc:
            print_error(err, exc)
            raise typer.Exit(2) from None
        strategy = found.strategy
        if trajectories:
            records = trajectory_records(job, strategy, problems, verified_only=verified_only)
            fields = TRAJECTORY_FIELDS
        else:
            records, fields = problem_records(job, strategy, problems), PROBLEM_FIELDS
        # Streamed: the problems are read in batches as the records are written.
        written = write_records(records, fields, format, output)
    if output:
        err.print(SafeText(f"{written} records written to {output}"))
