"""The "self-consistency" baseline (Wang et al., 2022): k independent samples, majority vote.

Samples go round the roster's models (with A and B: 1: A, 2: B, 3: A, ...), all dispatched at
once. With `greedy_first`, sample 1 is the first model's greedy (temperature 0) solution, as in
mutual-consistency. Answers are grouped with `answers_equal`; the largest group wins, ties going
to the group whose first sample came first. Sample i has a seed of its own that does not depend
on k, and the first sample of each model uses the seed of its round-1 solution in mutual, so runs
with different k (and mutual) share their samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from rstar import prompts
from rstar.parsing import parse_solution
from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER
from rstar.strategies.base import (
    Plan,
    ProblemState,
    Selection,
    SolutionView,
    StepSpec,
    StrategyBase,
    answer_groups,
    solution_output,
    step_key,
    step_seed,
)
from rstar.strategies.params import Params, Seed, SolutionFormat, Temperature, Tokens
from rstar.types import ModelRequest, ParsedOutput, StepKind

MAX_SAMPLES = 64


class SelfConsistencyParams(Params):
    samples: int = Field(8, ge=1, le=MAX_SAMPLES, description="solutions sampled per problem (k)")
    temperature: Temperature = 0.7
    max_tokens: Tokens = 512
    seed: Seed = 0
    solution_format: SolutionFormat = "json"
    greedy_first: bool = Field(False, description="the first sample greedy (temperature 0), as cot's")


def sample_step(i: int, models: tuple[str, ...]) -> StepSpec:
    """The i-th sample (1-based), by the roster's models in turn (A, B, A, B, ... for two)."""
    model = models[(i - 1) % len(models)]
    return StepSpec(f"s{i}.{StepKind.GENERATE.value}.{model}", StepKind.GENERATE, model, 1)


def sample_index(step: StepSpec) -> int:
    return int(step.key.split(".")[0][1:])


def sample_seed(base: int | None, step: StepSpec, models: tuple[str, ...]) -> int | None:
    if base is None:
        return None
    i = sample_index(step)
    if i <= len(models):  # the seed of mutual's r1.generate.<model>
        model = models[i - 1]
        return step_seed(base, StepSpec(step_key(1, StepKind.GENERATE, model), StepKind.GENERATE, model, 1))
    return step_seed(base, step)  # s3.generate.A, ...: keys no other sample has


def majority(solutions: list[SolutionView], kind: ProblemType = NUMBER) -> list[list[SolutionView]]:
    """Answer groups, largest first; ties keep the order of each group's first member."""
    return sorted(answer_groups(solutions, kind), key=len, reverse=True)  # sorted() is stable


class SelfConsistencyStrategy(StrategyBase):
    name: ClassVar[str] = "self-consistency"
    parameters: ClassVar[type[Params]] = SelfConsistencyParams
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None

    def __init__(
        self, params: Mapping[str, Any] | None = None, *, kind: ProblemType = NUMBER, **_: Any
    ) -> None:
        self.kind = kind
        self.p = SelfConsistencyParams.read(params)

    @property
    def params(self) -> dict[str, Any]:
        return {**self.p.stored(), "prompt_version": prompts.PROMPT_VERSION}

    def samples_of(self, models: tuple[str, ...]) -> tuple[StepSpec, ...]:
        return tuple(sample_step(i, models) for i in range(1, self.p.samples + 1))

    def plan(self, state: ProblemState) -> Plan:
        steps = self.samples_of(state.models)
        return Plan(steps, finished=all(state.done(s.key) for s in steps))

    def build_request(self, step: StepSpec, state: ProblemState) -> ModelRequest:
        return ModelRequest(
            messages=prompts.solve_messages(state.question, style=self.p.solution_format, kind=self.kind),
            temperature=0.0 if self.p.greedy_first and sample_index(step) == 1 else self.p.temperature,
            max_tokens=self.p.max_tokens,
            seed=sample_seed(self.p.seed, step, state.models),
            json_schema=prompts.solution_schema(self.p.solution_format),
        )

    def parse(self, step: StepSpec, text: str) -> ParsedOutput:
        return solution_output(parse_solution(text, self.kind))

    def parent(self, step: StepSpec, state: ProblemState) -> int | None:
        return None

    def select(self, state: ProblemState) -> Selection:
        samples = [state.solutions[s.key] for s in self.samples_of(state.models) if s.key in state.solutions]
        groups = majority(samples, self.kind)
        if not groups:
            return Selection(None, None, f"None of the {len(samples)} samples gave a parsable answer.", 1)
        best = groups[0]
        chosen = best[0]
        by_model = ", ".join(f"{m} {sum(1 for s in best if s.author == m)}" for m in state.models)
        reason = f"Majority vote: {len(best)} of {len(samples)} samples answer {chosen.answer} ({by_model})."
        if len(groups) > 1:
            others = ", ".join(f"{g[0].answer} ({len(g)})" for g in groups[1:])
            tie = " Tied with the first; the answer seen first wins." if len(groups[1]) == len(best) else ""
            reason += f" Other answers: {others}.{tie}"
        unanswered = sum(1 for s in samples if s.answer is None)
        if unanswered:
            reason += f" {unanswered} without a parsable answer."
        return Selection(chosen.id, chosen.answer, reason, 1)
