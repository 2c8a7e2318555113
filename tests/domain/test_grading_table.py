"""Issue 26's grading table: each problem type against the answer shapes that really occur.

tests/data/grading/<type>.jsonl holds (reference as the data set gives it, model answer, our
decision) with how the rStar authors' evaluator and plain math-verify decide the same pair;
tests/data/grading/README.md says how the table was made and sums up where the three differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rstar.problem_types import get_problem_type

TABLE = Path(__file__).resolve().parents[1] / "data" / "grading"
TYPES = ("number", "latex", "yes-no", "choice")
FIELDS = {"reference", "answer", "equal", "authors", "math_verify", "note"}
MIN_ROWS = 60


def _rows(kind: str) -> list[dict[str, Any]]:
    lines = (TABLE / f"{kind}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


ROWS = [(kind, line, row) for kind in TYPES for line, row in enumerate(_rows(kind), 1)]


@pytest.mark.parametrize(("kind", "line", "row"), ROWS, ids=[f"{k}:{n}" for k, n, _ in ROWS])
def test_our_type_decides_the_row_as_the_table_says(kind: str, line: int, row: dict[str, Any]) -> None:
    problem_type = get_problem_type(kind)
    reference = problem_type.reference(row["reference"])
    assert reference is not None, "the type reads no answer in the reference"
    assert problem_type.equal(reference, row["answer"]) == row["equal"], row["note"]


@pytest.mark.parametrize("kind", TYPES)
def test_every_type_has_enough_rows_and_every_difference_is_explained(kind: str) -> None:
    rows = _rows(kind)
    assert len(rows) >= MIN_ROWS
    assert any(row["equal"] for row in rows) and not all(row["equal"] for row in rows)
    unexplained = []
    for line, row in enumerate(rows, 1):
        assert set(row) == FIELDS, f"{kind}:{line}"
        assert isinstance(row["equal"], bool), f"{kind}:{line}"
        assert all(row[c] is None or isinstance(row[c], bool) for c in ("authors", "math_verify"))
        differs = any(row[c] is not None and row[c] != row["equal"] for c in ("authors", "math_verify"))
        if differs and not row["note"].strip():
            unexplained.append(line)
    assert unexplained == [], f"{kind}: rows that differ from the authors or math-verify without a note"


def test_the_columns_are_null_only_where_there_is_nothing_to_compare_with() -> None:
    # The authors have no grader for option letters; math-verify reads no word and no bare letter.
    for kind in TYPES:
        rows = _rows(kind)
        assert all((row["authors"] is None) == (kind == "choice") for row in rows), kind
        assert all((row["math_verify"] is None) == (kind in ("yes-no", "choice")) for row in rows), kind
