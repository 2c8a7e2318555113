"""Problem types by name: one module each (see `base.py` for what a type owns)."""

from __future__ import annotations

from collections.abc import Iterable

from rstar.problem_types.base import ProblemType
from rstar.problem_types.choice import CHOICE
from rstar.problem_types.latex import LATEX
from rstar.problem_types.number import NUMBER
from rstar.problem_types.yes_no import YES_NO

PROBLEM_TYPES: dict[str, ProblemType] = {t.name: t for t in (NUMBER, LATEX, YES_NO, CHOICE)}
DEFAULT_TYPE = NUMBER.name
"""Every job before problem types existed, and a file with no references to guess from."""
GUESS_SAMPLE = 200
"""References read for the guess: the first ones of the file."""


def get_problem_type(name: str | None) -> ProblemType:
    """The type of that name (None: the default); ValueError naming the known ones."""
    if name is None:
        return NUMBER
    try:
        return PROBLEM_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown problem type {name!r}; choose one of {', '.join(PROBLEM_TYPES)}") from None


def guess_problem_type(references: Iterable[str | None]) -> tuple[ProblemType, str]:
    """The type a file's references have, and why (printed at submit).

    yes-no, choice or number (in that order) when it reads every reference seen; references in
    LaTeX (worked solutions with a \\boxed{} answer, as MATH's) that are not all numbers, latex.
    Otherwise, and with no reference at all, the default (`number`).
    """
    seen = [r for r in references if r is not None and r.strip()][:GUESS_SAMPLE]
    if not seen:
        return NUMBER, "no reference answers to guess from: the default"
    for kind in (YES_NO, CHOICE, NUMBER):
        if all(kind.looks_like(r) for r in seen):
            return kind, f"all {len(seen)} reference answers read looked like {kind.summary}"
    if any("\\" in r for r in seen) and all(LATEX.looks_like(r) for r in seen):
        return LATEX, f"the {len(seen)} reference answers read are not all numbers: {LATEX.summary}"
    return NUMBER, "the reference answers have no single form: the default"


__all__ = ["DEFAULT_TYPE", "PROBLEM_TYPES", "ProblemType", "get_problem_type", "guess_problem_type"]
