"""Strategies by name. Each module is one strategy with the same shape (see `base.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rstar.problem_types import ProblemType, get_problem_type
from rstar.strategies.base import ParamError, Strategy, fit_roster
from rstar.strategies.cot import CotStrategy
from rstar.strategies.mcts import RStarStrategy
from rstar.strategies.mutual import MutualStrategy
from rstar.strategies.mutual_consistency import MutualConsistencyStrategy
from rstar.strategies.self_consistency import SelfConsistencyStrategy

STRATEGIES: dict[str, type[Any]] = {
    cls.name: cls
    for cls in (
        MutualStrategy,
        MutualConsistencyStrategy,
        CotStrategy,
        SelfConsistencyStrategy,
        RStarStrategy,
    )
}


def get_strategy(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    kind: ProblemType | str | None = None,
    **kwargs: Any,
) -> Strategy:
    """The strategy of that name, for problems of type `kind` (a type or its name; None: `number`)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ParamError(
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}"
        ) from None
    try:
        problem_type = kind if isinstance(kind, ProblemType) else get_problem_type(kind)
    except ValueError as exc:
        raise ParamError(str(exc)) from None
    strategy: Strategy = cls(params, kind=problem_type, **kwargs)
    unknown = sorted(set(params or {}) - set(strategy.params))
    if unknown:
        known = ", ".join(sorted(k for k in strategy.params if k != "prompt_version"))
        raise ParamError(f"strategy {name!r} takes no {', '.join(unknown)}; it takes {known}")
    return strategy


__all__ = ["STRATEGIES", "ParamError", "Strategy", "fit_roster", "get_strategy"]
