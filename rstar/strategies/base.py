"""The strategy contract: given a problem's persisted state, which model calls come next, what
to ask in each, and which answer to select at the end.

A strategy is pure. The dispatcher (`tasks/dispatch.py`) loads a `ProblemState` from the database,
asks `plan()`, inserts the steps that do not exist yet (a unique key makes that race-free) and
enqueues them; the one model-step task (`tasks/step.py`) asks `build_request()` for its step's
prompt, sends it, and stores `parse()` of the reply as one output row linked to `parent()`.
Adding a strategy means adding a module here (and its prompts) and registering it in
`__init__.py`; nothing else changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Protocol, TypeVar

from rstar import prompts
from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER
from rstar.strategies.params import ParamError, Params
from rstar.types import (
    ModelRequest,
    ParsedOutput,
    ParsedReview,
    ParsedSolution,
    ReviewIssue,
    StepKind,
    Verdict,
)

SELECT_KEY = "select"
SEED_MASK = 2**31 - 1
"""Seeds are non-negative and below 2**31: every server takes them (some read a signed int32)."""


@dataclass(frozen=True)
class StepSpec:
    """A step a strategy wants to exist. Its key is unique per problem."""

    key: str
    kind: str
    """A kind the strategy owns (the seed's: `StepKind`); "select" is the selection's."""
    model: str | None
    """The roster name of the model that runs it (None: the selection, which calls no model)."""
    round: int


def step_key(round_: int, kind: str, model: str, *more: str) -> str:
    """ "r2.review.A": round 2, A reviews; further parts name what it works on ("r1.review.A.C")."""
    return ".".join((f"r{round_}", str(kind), model, *more))


@dataclass(frozen=True)
class StepView:
    key: str
    kind: str
    model: str | None
    round: int
    status: str


@dataclass(frozen=True)
class OutputView:
    """One row of the outputs table: what a step's reply said, as its strategy parsed it."""

    id: int
    step_key: str
    kind: str
    model: str
    round: int
    parent_id: int | None
    """The output this one extends or judges (a review's solution, a refinement's draft...)."""
    payload: Mapping[str, Any]
    answer: str | None
    text: str | None
    """The reply as received (what a reader sees when nothing could be parsed)."""
    parse_error: str | None = None
    seq: int = 0
    """Its place among its step's outputs (a step that samples several may write several)."""
    endpoint: str | None = None
    """The server whose call produced it (a reused call's: the original's); the worker prefers it
    for the steps that extend this output, whose prompts share its prefix."""


def output_key(step_key: str, seq: int = 0) -> str:
    """An output's key in `ProblemState.outputs`: its step's key, "#seq" after for the second
    and later outputs of a step."""
    return step_key if seq == 0 else f"{step_key}#{seq}"


# The seed strategies' two forms of output. Their kinds are fixed here so that reports and
# `rstar show` can read any of their jobs; a strategy with other kinds reads `state.outputs`.
SOLUTION_KINDS = frozenset({StepKind.GENERATE.value, StepKind.REFINE.value, StepKind.COMPLETE.value})
REVIEW_KINDS = frozenset({StepKind.REVIEW.value})


def solution_output(parsed: ParsedSolution) -> ParsedOutput:
    return ParsedOutput(
        payload={
            "steps": list(parsed.steps),
            "answer_raw": parsed.answer_raw,
            "structured": parsed.structured,
        },
        answer=parsed.answer,
        parse_error=parsed.parse_error,
    )


def review_output(parsed: ParsedReview) -> ParsedOutput:
    return ParsedOutput(
        payload={
            "verdict": parsed.verdict.value,
            "scores": [parsed.logical_consistency, parsed.calculation_accuracy, parsed.step_completeness],
            "issues": [{"step": i.step, "description": i.description} for i in parsed.issues],
            "suggested_answer": parsed.suggested_answer,
            "structured": parsed.structured,
        },
        parse_error=parsed.parse_error,
    )


@dataclass(frozen=True)
class SolutionView:
    id: int
    step_key: str
    round: int
    author: str
    kind: str
    steps: tuple[str, ...]
    answer: str | None
    response_text: str | None
    """The model's reply as received: what a reader sees when no steps could be parsed."""
    parse_error: str | None = None
    parent_id: int | None = None
    """The solution a refinement revises or a completion finishes."""

    @classmethod
    def of(cls, out: OutputView) -> SolutionView:
        return cls(
            id=out.id,
            step_key=out.step_key,
            round=out.round,
            author=out.model,
            kind=out.kind,
            steps=tuple(str(s) for s in out.payload.get("steps") or ()),
            answer=out.answer,
            response_text=out.text,
            parse_error=out.parse_error,
            parent_id=out.parent_id,
        )

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
    reviewer: str
    target_solution_id: int
    verdict: Verdict
    scores: tuple[int | None, int | None, int | None]
    issues: tuple[ReviewIssue, ...]
    suggested_answer: str | None
    response_text: str | None
    """The model's reply as received: what a reader sees of a review that did not parse."""
    structured: bool
    """True when the reply was the JSON object asked for."""

    @classmethod
    def of(cls, out: OutputView) -> ReviewView:
        p = out.payload
        scores = list(p.get("scores") or [])[:3]
        scores += [None] * (3 - len(scores))
        try:
            verdict = Verdict(p.get("verdict"))
        except ValueError:
            verdict = Verdict.UNCERTAIN
        return cls(
            id=out.id,
            step_key=out.step_key,
            round=out.round,
            reviewer=out.model,
            target_solution_id=out.parent_id or 0,
            verdict=verdict,
            scores=(scores[0], scores[1], scores[2]),
            issues=tuple(
                ReviewIssue(i.get("step"), str(i.get("description", ""))) for i in p.get("issues") or ()
            ),
            suggested_answer=p.get("suggested_answer"),
            response_text=out.text,
            structured=bool(p.get("structured")),
        )

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
    """A problem as its strategy sees it: the job's models, the steps made so far and their
    outputs (a tree by parent ids), keyed by the key of the step that produced each."""

    question: str
    models: tuple[str, ...]
    """The job's roster names, in order."""
    steps: Mapping[str, StepView]
    outputs: Mapping[str, OutputView]

    def done(self, key: str) -> bool:
        step = self.steps.get(key)
        return step is not None and step.status == "done"

    @cached_property
    def solutions(self) -> Mapping[str, SolutionView]:
        """The outputs that are solutions (generated, refined or completed), as solution views."""
        return {k: SolutionView.of(o) for k, o in self.outputs.items() if o.kind in SOLUTION_KINDS}

    @cached_property
    def reviews(self) -> Mapping[str, ReviewView]:
        return {k: ReviewView.of(o) for k, o in self.outputs.items() if o.kind in REVIEW_KINDS}

    @classmethod
    def empty(cls, models: Sequence[str], question: str = "") -> ProblemState:
        """Before any step: what a strategy plans from at submit."""
        return cls(question=question, models=tuple(models), steps={}, outputs={})


@dataclass(frozen=True)
class Plan:
    steps: tuple[StepSpec, ...]
    """Every step whose inputs exist; the dispatcher creates the missing ones."""
    finished: bool = False
    """True when no more model calls are needed and the selection can run."""


@dataclass(frozen=True)
class Selection:
    output_id: int | None
    answer: str | None
    reason: str
    rounds_used: int


class Strategy(Protocol):
    name: ClassVar[str]
    kind: ProblemType
    """The job's problem type: what its prompts ask for and how its answers compare."""
    min_models: ClassVar[int]
    """How many models of the roster it needs at least..."""
    max_models: ClassVar[int | None]
    """...and uses at most (None: any number); a longer roster is cut to this at submit."""
    parameters: ClassVar[type[Params]]
    """Its parameters' model: names, types, defaults, ranges and meanings."""

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter, defaults resolved: stored on the job."""
        ...

    def plan(self, state: ProblemState) -> Plan: ...

    def build_request(self, step: StepSpec, state: ProblemState) -> ModelRequest: ...

    def parse(self, step: StepSpec, text: str) -> ParsedOutput:
        """The step's reply as an output row: pure, and never raises on bad model text."""
        ...

    def parent(self, step: StepSpec, state: ProblemState) -> int | None:
        """The output the step's output extends or judges (None: none)."""
        ...

    def select(self, state: ProblemState) -> Selection: ...

    searches: ClassVar[bool]
    """Whether it grows a search tree and gives an account of it (`report`)."""

    def budget(self) -> str | None:
        """What a problem may cost at most, said at submit (None: nothing to say)."""
        ...

    def parse_samples(self, step: StepSpec, texts: tuple[str, ...]) -> list[ParsedOutput]:
        """A step's sequences as output rows."""
        ...

    def report(self, state: ProblemState) -> Any:
        """A search's account (visits, values, candidates) of a problem's state."""
        ...

    def plans_after(self, kind: str, others_open: bool) -> bool:
        """Whether a step of this kind finishing can change the plan while `others_open` (other
        model steps of the problem queued or running). False lets the machinery skip the plan:
        the step that finishes last plans in any case, so a wrong False delays, never stalls."""
        ...


class StrategyBase:
    """What every strategy module's class starts from: the optional capabilities of `Strategy`,
    declared with what a strategy that lacks one does, so callers ask rather than probe."""

    searches: ClassVar[bool] = False
    parameters: ClassVar[type[Params]] = Params
    """The strategy's parameters, stated once (`rstar strategies` lists them)."""
    kind: ProblemType = NUMBER

    def parse(self, step: StepSpec, text: str) -> ParsedOutput:
        raise NotImplementedError

    def budget(self) -> str | None:
        return None

    def parse_samples(self, step: StepSpec, texts: tuple[str, ...]) -> list[ParsedOutput]:
        """One sample per step: `parse` of its reply."""
        return [self.parse(step, texts[0] if texts else "")]

    def report(self, state: ProblemState) -> Any:
        raise TypeError(f"strategy {type(self).__name__} does not search: it has no search report")

    def plans_after(self, kind: str, others_open: bool) -> bool:
        """Plan after every step."""
        return True


def fit_roster(strategy: Strategy, models: Sequence[str]) -> tuple[str, ...]:
    """The roster names the strategy will use: refused when too few, cut when too many."""
    if len(models) < strategy.min_models:
        raise ParamError(
            f"strategy {strategy.name!r} needs at least {strategy.min_models} models, got {len(models)}"
            + (f" ({', '.join(models)})" if models else "")
            + ": pass --model NAME=URL for each"
        )
    if strategy.max_models is not None:
        return tuple(models[: strategy.max_models])
    return tuple(models)


def next_model(models: Sequence[str], name: str, offset: int = 1) -> str:
    """The model `offset` places after `name` in the roster, round the end."""
    return models[(models.index(name) + offset) % len(models)]


class HasAnswer(Protocol):
    @property
    def answer(self) -> str | None: ...


A = TypeVar("A", bound=HasAnswer)


def answer_groups(items: Iterable[A], kind: ProblemType = NUMBER) -> list[list[A]]:
    """Items with an answer (solutions, samples, search candidates), grouped by equal answers
    (the problem type's `equal`), groups and members in order of first appearance: the one
    grouping every strategy votes with."""
    groups: list[list[A]] = []
    for item in items:
        if item.answer is None:
            continue
        for group in groups:
            if kind.equal(group[0].answer, item.answer):
                group.append(item)
                break
        else:
            groups.append([item])
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


def parse_reply(strategy: Strategy, step: StepSpec, texts: Sequence[str]) -> list[ParsedOutput]:
    """A step's sequences as output rows (`Strategy.parse_samples`)."""
    return list(strategy.parse_samples(step, tuple(texts)))


def output_views(
    strategy: Strategy,
    step: StepSpec,
    parent: int | None,
    texts: Sequence[str],
    new_id: Callable[[], int],
) -> dict[str, OutputView]:
    """A step's outputs as the state holds them, for drivers that keep the state in memory (the
    benchmark's bare driver, the domain tests): what `db.outputs.save_outputs` writes and
    `db.state.load_state` reads back."""
    return {
        output_key(step.key, seq): OutputView(
            id=new_id(),
            step_key=step.key,
            kind=str(step.kind),
            model=step.model or "",
            round=step.round,
            parent_id=parent,
            payload=parsed.payload,
            answer=parsed.answer,
            text=parsed.text if parsed.text is not None else (texts[0] if texts else ""),
            parse_error=parsed.parse_error,
            seq=seq,
        )
        for seq, parsed in enumerate(parse_reply(strategy, step, texts))
    }
