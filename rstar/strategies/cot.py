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
    solution_output,
    step_key,
    step_seed,
)
from rstar.strategies.params import Params, Seed, SolutionFormat, Temperature, Tokens
from rstar.types import ModelRequest, ParsedOutput, StepKind


class CotParams(Params):
    temperature: Temperature = 0.0
    max_tokens: Tokens = 512
    seed: Seed = 0
    solution_format: SolutionFormat = "json"


def solve_step(models: tuple[str, ...]) -> StepSpec:
    return StepSpec(step_key(1, StepKind.GENERATE, models[0]), StepKind.GENERATE, models[0], 1)


class CotStrategy(StrategyBase):
    name: ClassVar[str] = "cot"
    parameters: ClassVar[type[Params]] = CotParams
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = 1

    def __init__(
        self, params: Mapping[str, Any] | None = None, *, kind: ProblemType = NUMBER, **_: Any
    ) -> None:
        self.kind = kind
        self.p = CotParams.read(params)

    @property
    def params(self) -> dict[str, Any]:
        return {**self.p.stored(), "prompt_version": prompts.PROMPT_VERSION}

    def plan(self, state: ProblemState) -> Plan:
        solve = solve_step(state.models)
        return Plan((solve,), finished=state.done(solve.key))

    def build_request(self, step: StepSpec, state: ProblemState) -> ModelRequest:
        return ModelRequest(
            messages=prompts.solve_messages(state.question, style=self.p.solution_format, kind=self.kind),
            temperature=self.p.temperature,
            max_tokens=self.p.max_tokens,
            seed=step_seed(self.p.seed, step),
            json_schema=prompts.solution_schema(self.p.solution_format),
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
