"""Strategies by name. Each module is one strategy with the same shape (see `base.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rstar.strategies.base import ParamError, Strategy
from rstar.strategies.mutual import MutualStrategy

STRATEGIES: dict[str, type[Any]] = {MutualStrategy.name: MutualStrategy}


def get_strategy(name: str, params: Mapping[str, Any] | None = None, **kwargs: Any) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ParamError(
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}"
        ) from None
    strategy: Strategy = cls(params, **kwargs)
    return strategy


__all__ = ["STRATEGIES", "ParamError", "Strategy", "get_strategy"]
