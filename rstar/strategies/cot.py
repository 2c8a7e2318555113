"""The "cot" baseline: one chain-of-thought sample per problem, by the roster's first model.

The same solve prompt as mutual's first round, so the comparison isolates the strategy. Greedy by
default (temperature 0): the usual single-sample chain-of-thought baseline, and the strongest one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rstar import prompts
from rstar.parsing import parse_solution
from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER
from rstar.strategies.base import (
    Plan,
    ProblemState,
    Selection,
    StepSpec,
    StrategyBase,
    choice_param,
    float_param,
    int_param,
    seed_param,
    solution_output,
    step_key,
    step_seed,
)
from rstar.types import ModelRequest, ParsedOutput, StepKind

DEFAULTS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 512, "seed": 0, "solution_format": "json"}


def solve_step(models: tuple[str, ...]) -> StepSpec:
    return StepSpec(step_key(1, StepKind.GENERATE, models[0]), StepKind.GENERATE, models[0], 1)


class CotStrategy(StrategyBase):
    name: ClassVar[str] = "cot"
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = 1

    def __init__(
        self, params: Mapping[str, Any] | None = None, *, kind: ProblemType = NUMBER, **_: Any
    ) -> None:
        p = {**DEFAULTS, **(params or {})}
        self.kind = kind
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
        solve = solve_step(state.models)
        return Plan((solve,), finished=state.done(solve.key))

    def build_request(self, step: StepSpec, state: ProblemState) -> ModelRequest:
        return ModelRequest(
            messages=prompts.solve_messages(state.question, style=self.solution_format, kind=self.kind),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=step_seed(self.seed, step),
            json_schema=prompts.solution_schema(self.solution_format),
        )

    def parse(self, step: StepSpec, text: str) -> ParsedOutput:
        return solution_output(parse_solution(text, self.kind))

    def parent(self, step: StepSpec, state: ProblemState) -> int | None:
        return None

    def select(self, state: ProblemState) -> Selection:
        model = state.models[0]
        solution = state.solutions.get(solve_step(state.models).key)
        if solution is None or solution.answer is None:
            return Selection(None, None, f"{model}'s solution gave no parsable final answer.", 1)
        return Selection(solution.id, solution.answer, f"Single chain-of-thought sample by {model}.", 1)
