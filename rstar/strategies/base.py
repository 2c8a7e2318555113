"""The strategy contract: given a problem's persisted state, which model calls come next, what
to ask in each, and which answer to select at the end.

A strategy is pure. The dispatcher (`tasks/dispatch.py`) loads a `ProblemState` from the database,
asks `plan()`, inserts the steps that do not exist yet (a unique key makes that race-free) and
enqueues them; a task asks `build_request()` for its step's prompt. Adding a strategy means adding
a module here and registering it; nothing else changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Protocol

from rstar import prompts
from rstar.answers import answers_equal
from rstar.types import ModelRequest, ReviewIssue, Role, StepKind, Verdict

SELECT_KEY = "select"
SEED_MASK = 2**31 - 1
"""Seeds are non-negative and below 2**31: every server takes them (some read a signed int32)."""


@dataclass(frozen=True)
class StepSpec:
    """A step a strategy wants to exist. Its key is unique per problem."""

    key: str
    kind: StepKind
    role: Role
    round: int


def step_key(round_: int, kind: StepKind, role: Role) -> str:
    return f"r{round_}.{kind.value}.{role}"


@dataclass(frozen=True)
class StepView:
    key: str
    kind: str
    role: Role | None
    round: int
    status: str


@dataclass(frozen=True)
class SolutionView:
    id: int
    step_key: str
    round: int
    author: Role
    kind: str
    steps: tuple[str, ...]
    answer: str | None
    response_text: str | None
    """The model's reply as received: what a reader sees when no steps could be parsed."""
    parse_error: str | None = None

    @cached_property
    def text(self) -> str:
        """The solution rendered for a reader (a reviewer, or its author refining it).

        Rendered on first use: most loaded states build no request that shows it.
        """
        return prompts.render_solution(self.steps, self.answer, self.response_text)


@dataclass(frozen=True)
class ReviewView:
    id: int
    step_key: str
    round: int
    reviewer: Role
    target_solution_id: int
    verdict: Verdict
    scores: tuple[int | None, int | None, int | None]
    issues: tuple[ReviewIssue, ...]
    suggested_answer: str | None
    response_text: str | None
    """The model's reply as received: what a reader sees of a review that did not parse."""
    structured: bool
    """True when the reply was the JSON object asked for."""

    @cached_property
    def text(self) -> str:
        """The review rendered for the author of the reviewed solution (on first use)."""
        return prompts.render_review(
            self.verdict.value,
            self.scores,
            [(i.step, i.description) for i in self.issues],
            self.suggested_answer,
            self.response_text,
            self.structured,
        )

    @property
    def mean_score(self) -> float | None:
        known = [s for s in self.scores if s is not None]
        return sum(known) / len(known) if known else None


@dataclass(frozen=True)
class ProblemState:
    question: str
    steps: Mapping[str, StepView]
    solutions: Mapping[str, SolutionView]
    """Keyed by the key of the step that produced each."""
    reviews: Mapping[str, ReviewView]

    def done(self, key: str) -> bool:
        step = self.steps.get(key)
        return step is not None and step.status == "done"


@dataclass(frozen=True)
class Plan:
    steps: tuple[StepSpec, ...]
    """Every step whose inputs exist; the dispatcher creates the missing ones."""
    finished: bool = False
    """True when no more model calls are needed and the selection can run."""


@dataclass(frozen=True)
class StepLinks:
    """How a step's output links to earlier outputs, for the audit trail."""

    target_solution_id: int | None = None
    """The solution a review judges."""
    parent_solution_id: int | None = None
    """The solution a refinement revises."""


@dataclass(frozen=True)
class Selection:
    solution_id: int | None
    answer: str | None
    reason: str
    rounds_used: int


class Strategy(Protocol):
    name: ClassVar[str]

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter, defaults resolved: stored on the job."""
        ...

    def plan(self, state: ProblemState) -> Plan: ...

    def build_request(self, step: StepSpec, state: ProblemState) -> ModelRequest: ...

    def links(self, step: StepSpec, state: ProblemState) -> StepLinks: ...

    def select(self, state: ProblemState) -> Selection: ...


class ParamError(ValueError):
    """A strategy parameter is missing, of the wrong type or out of range."""


def int_param(params: Mapping[str, Any], name: str, default: int, *, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParamError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def float_param(params: Mapping[str, Any], name: str, default: float, *, low: float, high: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ParamError(f"{name} must be a number from {low} to {high}, got {value!r}")
    return float(value)


def choice_param(params: Mapping[str, Any], name: str, default: str, *, choices: tuple[str, ...]) -> str:
    value = params.get(name, default)
    if value not in choices:
        raise ParamError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def seed_param(params: Mapping[str, Any], default: int = 0) -> int | None:
    """The base seed: an integer, or None (the server samples freely)."""
    if params.get("seed", default) is None:
        return None
    return int_param(params, "seed", default, low=0, high=2**31 - 1)


def bool_param(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise ParamError(f"{name} must be true or false, got {value!r}")
    return value


def answer_groups(solutions: Iterable[SolutionView]) -> list[list[SolutionView]]:
    """Solutions with an answer, grouped by equal answers (`answers_equal`), groups and members in
    order of first appearance: the one grouping every strategy votes with."""
    groups: list[list[SolutionView]] = []
    for sol in solutions:
        if sol.answer is None:
            continue
        for group in groups:
            if answers_equal(group[0].answer, sol.answer):
                group.append(sol)
                break
        else:
            groups.append([sol])
    return groups


def step_seed(base: int | None, step: StepSpec) -> int | None:
    """A distinct, reproducible seed per step, so A and B (and each round) do not sample alike.

    A stable hash of the job's seed and the step's key (unique per problem), not arithmetic on
    round, role and kind, where fields overlap (r1.complete.B and r2.generate.A both got 20). Two of
    a job's k keys hash alike with odds ~k^2/2^32 (1e-6 for 64 steps); tests/domain/test_seeds.py
    checks every strategy's steps. blake2b, not `hash()`, which is salted per process: a redelivered
    step must send the request it sent before. 31 bits, non-negative: what every server takes.
    """
    if base is None:
        return None
    digest = hashlib.blake2b(f"{base}:{step.key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & SEED_MASK
