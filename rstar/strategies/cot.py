"""The "cot" baseline: one chain-of-thought sample per problem, by model A.

The same solve prompt as mutual's first round, so the comparison isolates the strategy. Greedy by
default (temperature 0): the usual single-sample chain-of-thought baseline, and the strongest one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rstar import prompts
from rstar.strategies.base import (
    Plan,
    ProblemState,
    Selection,
    StepLinks,
    StepSpec,
    choice_param,
    float_param,
    int_param,
    seed_param,
    step_key,
    step_seed,
)
from rstar.types import ModelRequest, StepKind

DEFAULTS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 512, "seed": 0, "solution_format": "json"}
SOLVE = StepSpec(step_key(1, StepKind.GENERATE, "A"), StepKind.GENERATE, "A", 1)


class CotStrategy:
    name: ClassVar[str] = "cot"

    def __init__(self, params: Mapping[str, Any] | None = None, **_: Any) -> None:
        p = {**DEFAULTS, **(params or {})}
        self.temperature = float_param(p, "temperature", 0.0, low=0.0, high=2.0)
        self.max_tokens = int_param(p, "max_tokens", 512, low=16, high=32768)
        self.seed = seed_param(p)
        self.solution_format = choice_param(p, "solution_format", "json", choices=prompts.SOLUTION_FORMATS)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "solution_format": self.solution_format,
            "prompt_version": prompts.PROMPT_VERSION,
        }

    def plan(self, state: ProblemState) -> Plan:
        return Plan((SOLVE,), finished=state.done(SOLVE.key))

    def build_request(self, step: StepSpec, state: ProblemState) -> ModelRequest:
        return ModelRequest(
            messages=prompts.solve_messages(state.question, style=self.solution_format),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=step_seed(self.seed, step),
            json_schema=prompts.solution_schema(self.solution_format),
        )

    def links(self, step: StepSpec, state: ProblemState) -> StepLinks:
        return StepLinks()

    def select(self, state: ProblemState) -> Selection:
        solution = state.solutions.get(SOLVE.key)
        if solution is None or solution.answer is None:
            return Selection(None, None, "A's solution gave no parsable final answer.", 1)
        return Selection(solution.id, solution.answer, "Single chain-of-thought sample by A.", 1)
