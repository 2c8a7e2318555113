"""Exports for analysis and training, the pure part: a job's rows in, flat records out (no I/O).

`db/exports.py` reads the rows, `cli/export.py` writes them as JSONL, CSV or Parquet.

* One record per problem: question, reference, answer, correct (`rstar.reports.judge`), the model
  whose output was chosen, the strategy, calls and tokens.
* With trajectories, one record per solution (generated, refined or completed): its text (its
  steps and final answer, as peers were shown them), the reply as received, its answer, whether
  the selection chose it, whether it is mutually consistent (a generated solution completed by
  peers: at least half of the completions reach its answer; None where the strategy completes
  nothing) and whether it is right. `verified_only` keeps the right ones: the shape a
  fine-tuning set of verified trajectories needs.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rstar import prompts
from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER
from rstar.reports import judge

PROBLEM_FIELDS = (
    "job_id", "strategy", "item_id", "question", "reference", "answer", "correct", "status", "model",
    "rounds_used", "model_calls", "prompt_tokens", "completion_tokens", "meta",
)  # fmt: skip
TRAJECTORY_FIELDS = (
    "job_id", "strategy", "item_id", "question", "reference", "output_id", "step_key", "model", "kind",
    "round", "parent_id", "text", "reply", "answer", "selected", "mutually_consistent", "correct", "meta",
)  # fmt: skip


@dataclass(frozen=True)
class SolutionOut:
    """A solution output as stored: its payload's steps, and the reply when nothing parsed."""

    id: int
    step_key: str
    model: str
    kind: str
    round: int
    parent_id: int | None
    steps: tuple[str, ...]
    answer: str | None
    reply: str | None
    search_path: bool = False
    """A search's candidate trajectory (rstar): `steps` is the whole path from the root."""
    consistent: bool | None = None
    """For a search path: whether the discriminator found it mutually consistent (None: not checked)."""


@dataclass(frozen=True)
class ProblemExport:
    item_id: str
    question: str
    reference: str | None
    answer: str | None
    status: str
    rounds_used: int | None
    chosen_output_id: int | None
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    solutions: tuple[SolutionOut, ...] = ()
    meta: dict[str, Any] | None = None
    kind: ProblemType = NUMBER
    """Its job's problem type: how answers compare."""


def _problem(job_id: int, strategy: str, p: ProblemExport) -> dict[str, Any]:
    """The columns every record of a problem starts with."""
    return {
        "job_id": job_id,
        "strategy": strategy,
        "item_id": p.item_id,
        "question": p.question,
        "reference": p.reference,
        "meta": p.meta,
    }


def problem_records(
    job_id: int, strategy: str, problems: Iterable[ProblemExport]
) -> Iterator[dict[str, Any]]:
    """One record per problem, as the problems come."""
    for p in problems:
        chosen = next((s for s in p.solutions if s.id == p.chosen_output_id), None)
        yield (
            {
                **_problem(job_id, strategy, p),
                "answer": p.answer,
                "correct": judge(p.status, p.answer, p.reference, p.kind)
                if p.reference is not None
                else None,
                "status": p.status,
                "model": chosen.model if chosen is not None else None,
                "rounds_used": p.rounds_used,
                "model_calls": p.model_calls,
                "prompt_tokens": p.prompt_tokens,
                "completion_tokens": p.completion_tokens,
            }
        )


def mutually_consistent(
    solution: SolutionOut, solutions: Sequence[SolutionOut], kind: ProblemType = NUMBER
) -> bool | None:
    """At least half of the peers' completions of this generated solution reach its answer (None:
    it was not completed, or it is itself a refinement or a completion). A search path says it
    itself (the discriminator's verdict)."""
    if solution.search_path:
        return solution.consistent
    if solution.kind != "generate":
        return None
    done = [s for s in solutions if s.kind == "complete" and s.parent_id == solution.id]
    if not done:
        return None
    agree = sum(1 for c in done if kind.equal(solution.answer, c.answer))
    return 2 * agree >= len(done)


def _text(s: SolutionOut) -> str | None:
    if s.search_path:  # the path as the search's prompts showed it, one line per step
        return "\n".join(s.steps)
    return prompts.render_solution(s.steps, s.answer, s.reply) if s.steps else s.reply


def trajectory_records(
    job_id: int, strategy: str, problems: Iterable[ProblemExport], *, verified_only: bool = False
) -> Iterator[dict[str, Any]]:
    """One record per solution (a search's candidate path), as the problems come."""
    for p in problems:
        for s in p.solutions:
            correct = p.kind.equal(s.answer, p.reference) if p.reference is not None else None
            if verified_only and not correct:
                continue
            yield (
                {
                    **_problem(job_id, strategy, p),
                    "output_id": s.id,
                    "step_key": s.step_key,
                    "model": s.model,
                    "kind": s.kind,
                    "round": s.round,
                    "parent_id": s.parent_id,
                    # Its steps as the peers saw them; the reply itself when none were parsed.
                    "text": _text(s),
                    "reply": s.reply,
                    "answer": s.answer,
                    "selected": s.id == p.chosen_output_id,
                    "mutually_consistent": mutually_consistent(s, p.solutions, p.kind),
                    "correct": correct,
                }
            )


# -- CSV for spreadsheets ------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text, never runs: a string that starts with =, +, -, @,
    tab or carriage return gets a leading apostrophe (OWASP's rule against CSV injection: a model's
    answer `=HYPERLINK(...)` would otherwise be a live formula). A plain number ("-12", "+3.5")
    is left alone: it is no formula, and answers are often negative. Other values pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class SpreadsheetCsv:
    """`csv.writer` / `csv.DictWriter` with every cell passed through `spreadsheet_safe`: the one
    way the project writes CSV (results, exports, reports)."""

    def __init__(
        self, out: Any, fieldnames: Sequence[str] | None = None, *, lineterminator: str = "\n"
    ) -> None:
        self._rows = csv.writer(out, lineterminator=lineterminator)
        self.fieldnames = list(fieldnames) if fieldnames is not None else None

    def writeheader(self) -> None:
        assert self.fieldnames is not None
        self.writerow(self.fieldnames)

    def writerow(self, row: Iterable[Any] | Mapping[str, Any]) -> None:
        if isinstance(row, Mapping):
            assert self.fieldnames is not None
            row = [row.get(f, "") for f in self.fieldnames]
        self._rows.writerow([spreadsheet_safe(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[Any] | Mapping[str, Any]]) -> None:
        for row in rows:
            self.writerow(row)
