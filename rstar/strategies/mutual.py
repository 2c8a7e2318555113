"""The "mutual" strategy: two models solve, review each other, refine, and repeat until they agree.

rStar (Qi et al., 2024, arXiv 2408.06195) in its simple form:
  round 1:   A and B solve on their own (generate), then each reviews the other (review).
  round r>1: each refines its own latest solution with the peer's review (refine), then review again.
Stop when both latest solutions are judged correct by the peer and their answers agree (the
threshold), or after `max_rounds` review rounds. Selection weighs peer verdicts and agreement
across all rounds and both models, and says why in words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rstar import prompts
from rstar.answers import answers_equal
from rstar.strategies.base import (
    Plan,
    ProblemState,
    ReviewView,
    Selection,
    SolutionView,
    StepLinks,
    StepSpec,
    answer_groups,
    choice_param,
    float_param,
    int_param,
    seed_param,
    step_key,
    step_seed,
)
from rstar.types import ROLES, ModelRequest, Role, StepKind, Verdict, peer

DEFAULTS: dict[str, Any] = {
    "max_rounds": 3,
    "temperature": 0.7,
    "review_temperature": 0.2,
    "max_tokens": 512,
    "review_max_tokens": 384,
    "seed": 0,
    "solution_format": "json",
}


@dataclass(frozen=True)
class MutualParams:
    max_rounds: int
    temperature: float
    review_temperature: float
    max_tokens: int
    review_max_tokens: int
    seed: int | None
    solution_format: str = "json"
    """How solutions are written: "json" (steps and final_answer) or "prose" (answer in \\boxed{})."""


class MutualStrategy:
    name: ClassVar[str] = "mutual"

    def __init__(self, params: Mapping[str, Any] | None = None, *, max_rounds_limit: int = 10) -> None:
        p = {**DEFAULTS, **(params or {})}
        self.p = MutualParams(
            max_rounds=int_param(p, "max_rounds", 3, low=1, high=max_rounds_limit),
            temperature=float_param(p, "temperature", 0.7, low=0.0, high=2.0),
            review_temperature=float_param(p, "review_temperature", 0.2, low=0.0, high=2.0),
            max_tokens=int_param(p, "max_tokens", 512, low=16, high=32768),
            review_max_tokens=int_param(p, "review_max_tokens", 384, low=16, high=32768),
            seed=seed_param(p),
            solution_format=choice_param(p, "solution_format", "json", choices=prompts.SOLUTION_FORMATS),
        )

    @property
    def params(self) -> dict[str, Any]:
        return {
            "max_rounds": self.p.max_rounds,
            "temperature": self.p.temperature,
            "review_temperature": self.p.review_temperature,
            "max_tokens": self.p.max_tokens,
            "review_max_tokens": self.p.review_max_tokens,
            "seed": self.p.seed,
            "solution_format": self.p.solution_format,
            "prompt_version": prompts.PROMPT_VERSION,
        }

    # -- which steps come next ---------------------------------------------------------------

    def plan(self, state: ProblemState) -> Plan:
        gens = tuple(StepSpec(step_key(1, StepKind.GENERATE, r), StepKind.GENERATE, r, 1) for r in ROLES)
        wanted: list[StepSpec] = list(gens)
        for round_ in range(1, self.p.max_rounds + 1):
            if not all(state.done(_solution_key(round_, r)) for r in ROLES):
                return Plan(tuple(wanted))
            reviews = tuple(
                StepSpec(step_key(round_, StepKind.REVIEW, r), StepKind.REVIEW, r, round_) for r in ROLES
            )
            wanted.extend(reviews)
            if not all(state.done(s.key) for s in reviews):
                return Plan(tuple(wanted))
            if threshold_met(state, round_) or round_ == self.p.max_rounds:
                return Plan(tuple(wanted), finished=True)
            wanted.extend(
                StepSpec(step_key(round_ + 1, StepKind.REFINE, r), StepKind.REFINE, r, round_ + 1)
                for r in ROLES
            )
        return Plan(tuple(wanted), finished=True)  # unreachable: the loop returns at max_rounds

    # -- what to ask ----------------------------------------------------------------------------

    def build_request(self, step: StepSpec, state: ProblemState) -> ModelRequest:
        seed = step_seed(self.p.seed, step)
        if step.kind is StepKind.GENERATE:
            return ModelRequest(
                messages=prompts.solve_messages(state.question, style=self.p.solution_format),
                temperature=self.p.temperature,
                max_tokens=self.p.max_tokens,
                seed=seed,
                json_schema=prompts.solution_schema(self.p.solution_format),
            )
        if step.kind is StepKind.REVIEW:
            target = state.solutions[_solution_key(step.round, peer(step.role))]
            return ModelRequest(
                messages=prompts.review_messages(state.question, target.text),
                temperature=self.p.review_temperature,
                max_tokens=self.p.review_max_tokens,
                seed=seed,
                json_schema=prompts.REVIEW_SCHEMA,
            )
        own = state.solutions[_solution_key(step.round - 1, step.role)]
        review = state.reviews[step_key(step.round - 1, StepKind.REVIEW, peer(step.role))]
        return ModelRequest(
            messages=prompts.refine_messages(
                state.question, own.text, review.text, style=self.p.solution_format
            ),
            temperature=self.p.temperature,
            max_tokens=self.p.max_tokens,
            seed=seed,
            json_schema=prompts.solution_schema(self.p.solution_format),
        )

    def links(self, step: StepSpec, state: ProblemState) -> StepLinks:
        if step.kind is StepKind.REVIEW:
            return StepLinks(
                target_solution_id=state.solutions[_solution_key(step.round, peer(step.role))].id
            )
        if step.kind is StepKind.REFINE:
            return StepLinks(parent_solution_id=state.solutions[_solution_key(step.round - 1, step.role)].id)
        return StepLinks()

    # -- the answer -----------------------------------------------------------------------------

    def select(self, state: ProblemState) -> Selection:
        rounds = last_review_round(state)
        if rounds and threshold_met(state, rounds):
            chosen = state.solutions[_solution_key(rounds, "A")]
            other = state.solutions[_solution_key(rounds, "B")]
            reason = (
                f"Threshold met in round {rounds}: each model accepted the other's solution and both answer "
                f"{chosen.answer}. Chose A's round-{rounds} solution (B's agrees: {other.answer})."
            )
            return Selection(chosen.id, chosen.answer, reason, rounds)
        return select_by_support(state, rounds)


def _solution_key(round_: int, role: Role) -> str:
    """The step that produced `role`'s latest solution as of `round_`."""
    kind = StepKind.GENERATE if round_ == 1 else StepKind.REFINE
    return step_key(round_, kind, role)


def review_of(state: ProblemState, solution: SolutionView) -> ReviewView | None:
    """The peer review of a solution, if one was made."""
    for review in state.reviews.values():
        if review.target_solution_id == solution.id:
            return review
    return None


def threshold_met(state: ProblemState, round_: int) -> bool:
    """Both round-`round_` solutions accepted by the peer and their answers agree."""
    sols = [state.solutions.get(_solution_key(round_, r)) for r in ROLES]
    revs = [state.reviews.get(step_key(round_, StepKind.REVIEW, r)) for r in ROLES]
    if any(s is None for s in sols) or any(r is None for r in revs):
        return False
    accepted = all(r.verdict is Verdict.CORRECT for r in revs if r is not None)
    a, b = (s.answer for s in sols if s is not None)
    return accepted and answers_equal(a, b)


def last_review_round(state: ProblemState) -> int:
    return max((r.round for r in state.reviews.values()), default=0)


def select_by_support(state: ProblemState, rounds: int) -> Selection:
    """Group all answers (every round, both models) and take the best-supported group.

    Support, in order: how many of the group's solutions a peer accepted, how many solutions give
    that answer, fewest rejections, then the best mean review score; within the group the latest
    solution with the best review wins.
    """
    with_answer = [s for s in state.solutions.values() if s.answer is not None]
    if not with_answer:
        return Selection(None, None, "No solution in any round gave a parsable final answer.", rounds)
    groups = answer_groups(with_answer)

    def verdict_count(group: list[SolutionView], verdict: Verdict) -> int:
        return sum(1 for s in group if (r := review_of(state, s)) is not None and r.verdict is verdict)

    def best_score(group: list[SolutionView]) -> float:
        scores = [r.mean_score for s in group if (r := review_of(state, s)) and r.mean_score is not None]
        return max(scores, default=0.0)

    def rank(group: list[SolutionView]) -> tuple[int, int, int, float]:
        return (
            verdict_count(group, Verdict.CORRECT),
            len(group),
            -verdict_count(group, Verdict.INCORRECT),
            best_score(group),
        )

    best = max(groups, key=rank)

    def member_rank(s: SolutionView) -> tuple[int, float, int]:
        review = review_of(state, s)
        accepted = int(review is not None and review.verdict is Verdict.CORRECT)
        score = review.mean_score if review is not None and review.mean_score is not None else 0.0
        return (accepted, score, s.round)

    chosen = max(best, key=member_rank)
    accepted, votes, rejected, _ = rank(best)
    total = len(with_answer)
    reason = (
        f"Threshold not met after {rounds} round(s). Answer {chosen.answer} has the most support: "
        f"{votes} of {total} solutions across rounds and models give it, {accepted} accepted by a peer, "
        f"{-rejected} rejected. Chose {chosen.author}'s round-{chosen.round} solution."
    )
    if len(groups) > 1:
        others = ", ".join(f"{g[0].answer} ({len(g)})" for g in groups if g is not best)
        reason += f" Other answers: {others}."
    return Selection(chosen.id, chosen.answer, reason, rounds)
