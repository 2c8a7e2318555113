"""Problem types by name (see `base.py` for what a type owns).

Every module of this package that defines a `ProblemType` instance adds that type: a new type is
one new module and nothing else (the registry, `--type`'s choices and help, and the guess read it
from here).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER


def _discover() -> dict[str, ProblemType]:
    found: dict[str, ProblemType] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, ProblemType) and value.name:
                found.setdefault(value.name, value)
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


PROBLEM_TYPES: dict[str, ProblemType] = _discover()
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
    """The type a file's references have, and why (printed at submit): the first type, by
    `guess_order`, that reads every one of the file's first references (`ProblemType.reads_all`);
    with no reference at all, or none that fits, the default (`number`)."""
    seen = [r for r in references if r is not None and r.strip()][:GUESS_SAMPLE]
    if not seen:
        return NUMBER, "no reference answers to guess from: the default"
    tried = sorted(
        (k for k in PROBLEM_TYPES.values() if k.guess_order is not None), key=lambda k: k.guess_order or 0
    )
    for kind in tried:
        if kind.reads_all(seen):
            return kind, f"all {len(seen)} reference answers read look like {kind.summary}"
    return NUMBER, "the reference answers have no single form: the default"


__all__ = ["PROBLEM_TYPES", "ProblemType", "get_problem_type", "guess_problem_type"]
