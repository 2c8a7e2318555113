"""The "mutual" strategy: models solve, review each other, refine, and repeat until they agree.

rStar (Qi et al., 2024, arXiv 2408.06195) in its simple form, for a roster of two or more models:
  round 1:   every model solves on its own (generate), then its solution is reviewed by its
             peers (review): the next model in the roster (`peers=next`, the default; with two
             models, A reviews B and B reviews A), or every other model (`peers=all`).
  round r>1: each model refines its own latest solution with its peers' reviews (refine), then
             the reviews again.
Stop when every latest solution is accepted by all its reviewers and all their answers agree
(the threshold), or after `max_rounds` review rounds. Selection weighs peer verdicts and agreement
across all rounds and all models, and says why in words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rstar import prompts
from rstar.parsing import parse_review, parse_solution
from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER
from rstar.strategies.base import (
    Plan,
    ProblemState,
    ReviewView,
    Selection,
    SolutionView,
    StepSpec,
    StrategyBase,
    answer_groups,
    next_model,
    review_output,
    solution_output,
    step_key,
    step_seed,
)
from rstar.strategies.params import MaxRounds, Params, Peers, Seed, SolutionFormat, Temperature, Tokens
from rstar.types import ModelRequest, ParsedOutput, StepKind, Verdict


class MutualParams(Params):
    max_rounds: MaxRounds = 3
    temperature: Temperature = 0.7
    review_temperature: Temperature = 0.2
    max_tokens: Tokens = 512
    review_max_tokens: Tokens = 384
    seed: Seed = 0
    solution_format: SolutionFormat = "json"
    peers: Peers = "next"


def peer_pairs(models: tuple[str, ...], peers: str) -> list[tuple[str, str]]:
    """(judge, judged) pairs of models, in roster order of the judge: who reviews (or completes)
    whose solution. `next`: each model judges the one before it, so each solution is judged by the
    next model (with A and B: A judges B, B judges A)."""
    if peers == "all":
        return [(j, t) for j in models for t in models if t != j]
    return [(j, next_model(models, j, -1)) for j in models] if len(models) > 1 else []


def judge_key(round_: int, kind: str, judge: str, judged: str, peers: str) -> str:
    """ "r1.review.A" (next: whom A judges follows from the roster), "r1.review.A.C" (all)."""
    return step_key(round_, kind, judge, judged) if peers == "all" else step_key(round_, kind, judge)


def judged_model(step: StepSpec, models: tuple[str, ...]) -> str:
    """The model whose solution a review (or completion) step judges, from its key."""
    parts = step.key.split(".")
    if len(parts) > 3:
        return parts[3]
    assert step.model is not None
    return next_model(models, step.model, -1)


class MutualStrategy(StrategyBase):
    name: ClassVar[str] = "mutual"
    parameters: ClassVar[type[Params]] = MutualParams
    min_models: ClassVar[int] = 2
    max_models: ClassVar[int | None] = None

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        max_rounds_limit: int = 10,
        kind: ProblemType = NUMBER,
    ) -> None:
        self.kind = kind
        self.p = MutualParams.read(params, max_rounds_limit=max_rounds_limit)

    @property
    def params(self) -> dict[str, Any]:
        return {**self.p.stored(), "prompt_version": prompts.PROMPT_VERSION}

    # -- which steps come next ---------------------------------------------------------------

    def plan(self, state: ProblemState) -> Plan:
        models = state.models
        wanted: list[StepSpec] = [
            StepSpec(step_key(1, StepKind.GENERATE, m), StepKind.GENERATE, m, 1) for m in models
        ]
        for round_ in range(1, self.p.max_rounds + 1):
            if not all(state.done(_solution_key(round_, m)) for m in models):
                return Plan(tuple(wanted))
            reviews = self.review_steps(models, round_)
            wanted.extend(reviews)
            if not all(state.done(s.key) for s in reviews):
                return Plan(tuple(wanted))
            if threshold_met(state, round_, self.kind) or round_ == self.p.max_rounds:
                return Plan(tuple(wanted), finished=True)
            wanted.extend(
                StepSpec(step_key(round_ + 1, StepKind.REFINE, m), StepKind.REFINE, m, round_ + 1)
                for m in models
            )
        return Plan(tuple(wanted), finished=True)  # unreachable: the loop returns at max_rounds

    def review_steps(self, models: tuple[str, ...], round_: int) -> list[StepSpec]:
        return [
            StepSpec(judge_key(round_, StepKind.REVIEW, j, t, self.p.peers), StepKind.REVIEW, j, round_)
            for j, t in peer_pairs(models, self.p.peers)
        ]

    # -- what to ask, and what the reply says ------------------------------------------------------

    def build_request(self, step: StepSpec, state: ProblemState) -> ModelRequest:
        seed = step_seed(self.p.seed, step)
        if step.kind == StepKind.GENERATE:
            return ModelRequest(
                messages=prompts.solve_messages(state.question, style=self.p.solution_format, kind=self.kind),
                temperature=self.p.temperature,
                max_tokens=self.p.max_tokens,
                seed=seed,
                json_schema=prompts.solution_schema(self.p.solution_format),
            )
        if step.kind == StepKind.REVIEW:
            target = state.solutions[_solution_key(step.round, judged_model(step, state.models))]
            return ModelRequest(
                messages=prompts.review_messages(state.question, target.text, kind=self.kind),
                temperature=self.p.review_temperature,
                max_tokens=self.p.review_max_tokens,
                seed=seed,
                json_schema=prompts.REVIEW_SCHEMA,
            )
        assert step.model is not None
        own = state.solutions[_solution_key(step.round - 1, step.model)]
        reviews = [(r.reviewer, r.text) for r in reviews_of(state, own)]
        return ModelRequest(
            messages=prompts.refine_messages(
                state.question,
                own.text,
                prompts.join_reviews(reviews),
                style=self.p.solution_format,
                kind=self.kind,
            ),
            temperature=self.p.temperature,
            max_tokens=self.p.max_tokens,
            seed=seed,
            json_schema=prompts.solution_schema(self.p.solution_format),
        )

    def parse(self, step: StepSpec, text: str) -> ParsedOutput:
        if step.kind == StepKind.REVIEW:
            return review_output(parse_review(text, self.kind))
        return solution_output(parse_solution(text, self.kind))

    def parent(self, step: StepSpec, state: ProblemState) -> int | None:
        if step.kind == StepKind.REVIEW:
            return state.solutions[_solution_key(step.round, judged_model(step, state.models))].id
        if step.kind == StepKind.REFINE:
            assert step.model is not None
            return state.solutions[_solution_key(step.round - 1, step.model)].id
        return None

    # -- the answer -----------------------------------------------------------------------------

    def select(self, state: ProblemState) -> Selection:
        rounds = last_review_round(state)
        if rounds and threshold_met(state, rounds, self.kind):
            first, *others = (state.solutions[_solution_key(rounds, m)] for m in state.models)
            if len(others) == 1:
                reason = (
                    f"Threshold met in round {rounds}: each model accepted the other's solution and both "
                    f"answer {first.answer}. Chose {first.author}'s round-{rounds} solution "
                    f"({others[0].author}'s agrees: {others[0].answer})."
                )
            else:
                agree = ", ".join(f"{o.author} {o.answer}" for o in others)
                reason = (
                    f"Threshold met in round {rounds}: every model's solution was accepted by its reviewers "
                    f"and all {len(others) + 1} answer {first.answer}. Chose {first.author}'s "
                    f"round-{rounds} solution (the others agree: {agree})."
                )
            return Selection(first.id, first.answer, reason, rounds)
        return select_by_support(state, rounds, self.kind)


def _solution_key(round_: int, model: str) -> str:
    """The step that produced `model`'s latest solution as of `round_`."""
    kind = StepKind.GENERATE if round_ == 1 else StepKind.REFINE
    return step_key(round_, kind, model)


def reviews_of(state: ProblemState, solution: SolutionView) -> list[ReviewView]:
    """The peer reviews of a solution, in the order they were made."""
    return [r for r in state.reviews.values() if r.target_solution_id == solution.id]


def threshold_met(state: ProblemState, round_: int, kind: ProblemType = NUMBER) -> bool:
    """Every round-`round_` solution reviewed, accepted by all its reviewers, and all answers agree."""
    sols = [state.solutions.get(_solution_key(round_, m)) for m in state.models]
    if any(s is None for s in sols) or len(sols) < 2:
        return False
    for sol in sols:
        assert sol is not None
        reviews = reviews_of(state, sol)
        if not reviews or any(r.verdict is not Verdict.CORRECT for r in reviews):
            return False
    first = sols[0]
    assert first is not None
    return all(s is not None and kind.equal(first.answer, s.answer) for s in sols[1:])


def last_review_round(state: ProblemState) -> int:
    return max((r.round for r in state.reviews.values()), default=0)


def select_by_support(state: ProblemState, rounds: int, kind: ProblemType = NUMBER) -> Selection:
    """Group all answers (every round, every model) and take the best-supported group.

    Support, in order: how many peer reviews accepted the group's solutions, how many solutions
    give that answer, fewest rejections, then the best mean review score; within the group the
    latest solution with the best review wins.
    """
    with_answer = [s for s in state.solutions.values() if s.answer is not None]
    if not with_answer:
        return Selection(None, None, "No solution in any round gave a parsable final answer.", rounds)
    groups = answer_groups(with_answer, kind)
    reviews = {s.id: reviews_of(state, s) for s in with_answer}

    def verdict_count(group: list[SolutionView], verdict: Verdict) -> int:
        return sum(1 for s in group for r in reviews[s.id] if r.verdict is verdict)

    def best_score(group: list[SolutionView]) -> float:
        scores = [r.mean_score for s in group for r in reviews[s.id] if r.mean_score is not None]
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
        accepted = sum(1 for r in reviews[s.id] if r.verdict is Verdict.CORRECT)
        score = max((r.mean_score for r in reviews[s.id] if r.mean_score is not None), default=0.0)
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
