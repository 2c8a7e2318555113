"""The "mutual-consistency" strategy: rStar's check (Qi et al., 2024, arXiv 2408.06195, section 3.3).

Instead of asking the peer for a verdict, cut a solution part-way and let the peer finish it; a
solution whose completions reach its answer (at least half of them) is *mutually consistent*.
  round r:   every model of the roster (two or more) solves on its own (generate); as soon as one
             has solved, its peers complete that solution from its cut-off point (complete): the
             next model in the roster (`peers=next`, the default; with A and B, each completes
             the other's), or every other model (`peers=all`).
The first model's first solution is its greedy one (temperature 0, `greedy_first`): the answer a
single chain-of-thought sample would give is always among the votes, and wins ties, so the other
samples and the completions have to outvote it. Every solution and every completion, of every
round and every model, is a vote for its answer.
Stop after round r when the leading answer has at least `margin` votes more than any other (with
the default 2 and two models: three of the first round's four answers agree), or after
`max_rounds` rounds; a new round adds fresh solutions and their completions. Selection: the most
votes, then the most mutually consistent solutions, then the answer seen first; it says why in
words.
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
from rstar.strategies.mutual import judge_key, judged_model, peer_pairs
from rstar.strategies.params import MaxRounds, Params, Peers, Seed, SolutionFormat, Temperature, Tokens
from rstar.types import ModelRequest, ParsedOutput, StepKind


class ConsistencyParams(Params):
    max_rounds: MaxRounds = 3
    temperature: Temperature = 0.7
    completion_temperature: Temperature = 0.7
    max_tokens: Tokens = 512
    margin: int = Field(
        2, ge=1, le=1000, description="votes the leading answer must lead by to stop before max_rounds"
    )
    cut: float = Field(0.5, ge=0.1, le=0.9, description="where a solution is cut for the peer to complete")
    greedy_first: bool = Field(True, description="the first model's round-1 solution greedy (temperature 0)")
    seed: Seed = 0
    solution_format: SolutionFormat = "json"
    peers: Peers = "next"


def solve_step(round_: int, model: str) -> StepSpec:
    return StepSpec(step_key(round_, StepKind.GENERATE, model), StepKind.GENERATE, model, round_)


def complete_step(round_: int, completer: str, target: str, peers: str = "next") -> StepSpec:
    """`completer` completes `target`'s round-`round_` solution."""
    key = judge_key(round_, StepKind.COMPLETE, completer, target, peers)
    return StepSpec(key, StepKind.COMPLETE, completer, round_)


def cut_point(n_steps: int, cut: float) -> int:
    """How many of a solution's steps the completer sees: about `cut` of them, never the last one
    (which usually states the answer); none for a one-step (or unparsed) solution."""
    if n_steps <= 1:
        return 0
    return min(n_steps - 1, max(1, int(n_steps * cut)))


def completions_of(state: ProblemState, solution: SolutionView) -> list[SolutionView]:
    return [
        s
        for s in state.solutions.values()
        if s.kind == StepKind.COMPLETE.value and s.parent_id == solution.id
    ]


def consistent(state: ProblemState, solution: SolutionView, kind: ProblemType = NUMBER) -> bool:
    """Whether at least half of the peers' completions of this (generated) solution (and at least
    one) reached its answer."""
    if solution.kind != StepKind.GENERATE.value:
        return False
    done = completions_of(state, solution)
    agree = sum(1 for c in done if kind.equal(solution.answer, c.answer))
    return bool(done) and 2 * agree >= len(done)


def _ordered(state: ProblemState, up_to_round: int | None = None) -> list[SolutionView]:
    """Solutions in a stable order: by round, then generations before completions, then the
    roster's order (A before B)."""
    order = {StepKind.GENERATE.value: 0, StepKind.COMPLETE.value: 1}
    place = {m: i for i, m in enumerate(state.models)}
    sols = [s for s in state.solutions.values() if up_to_round is None or s.round <= up_to_round]
    return sorted(sols, key=lambda s: (s.round, order.get(s.kind, 2), place.get(s.author, len(place)), s.id))


def vote_margin(state: ProblemState, up_to_round: int, kind: ProblemType = NUMBER) -> int:
    """Votes of the leading answer minus those of the runner-up (all its votes if it is alone)."""
    sizes = sorted((len(g) for g in answer_groups(_ordered(state, up_to_round), kind)), reverse=True)
    if not sizes:
        return 0
    return sizes[0] - (sizes[1] if len(sizes) > 1 else 0)


class MutualConsistencyStrategy(StrategyBase):
    name: ClassVar[str] = "mutual-consistency"
    parameters: ClassVar[type[Params]] = ConsistencyParams
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
        self.p = ConsistencyParams.read(params, max_rounds_limit=max_rounds_limit)

    @property
    def params(self) -> dict[str, Any]:
        return {**self.p.stored(), "prompt_version": prompts.PROMPT_VERSION}

    # -- which steps come next ---------------------------------------------------------------

    def plan(self, state: ProblemState) -> Plan:
        models = state.models
        pairs = peer_pairs(models, self.p.peers)
        wanted: list[StepSpec] = []
        for round_ in range(1, self.p.max_rounds + 1):
            this_round = [solve_step(round_, m) for m in models]
            wanted.extend(this_round)
            # A completion needs only the solution it completes: no waiting for the other models.
            for completer, target in pairs:
                if state.done(solve_step(round_, target).key):
                    this_round.append(complete_step(round_, completer, target, self.p.peers))
                    wanted.append(this_round[-1])
            if len(this_round) < len(models) + len(pairs) or not all(state.done(s.key) for s in this_round):
                return Plan(tuple(wanted))
            if self.threshold_met(state, round_) or round_ == self.p.max_rounds:
                return Plan(tuple(wanted), finished=True)
        return Plan(tuple(wanted), finished=True)  # unreachable: the loop returns at max_rounds

    def threshold_met(self, state: ProblemState, round_: int) -> bool:
        return vote_margin(state, round_, self.kind) >= self.p.margin

    # -- what to ask ----------------------------------------------------------------------------

    def build_request(self, step: StepSpec, state: ProblemState) -> ModelRequest:
        seed = step_seed(self.p.seed, step)
        if step.kind == StepKind.COMPLETE:
            target = state.solutions[solve_step(step.round, judged_model(step, state.models)).key]
            shown = target.steps[: cut_point(len(target.steps), self.p.cut)]
            return ModelRequest(
                messages=prompts.complete_messages(
                    state.question, shown, style=self.p.solution_format, kind=self.kind
                ),
                temperature=self.p.completion_temperature,
                max_tokens=self.p.max_tokens,
                seed=seed,
                json_schema=prompts.solution_schema(self.p.solution_format),
            )
        greedy = self.p.greedy_first and step.round == 1 and step.model == state.models[0]
        return ModelRequest(
            messages=prompts.solve_messages(state.question, style=self.p.solution_format, kind=self.kind),
            temperature=0.0 if greedy else self.p.temperature,
            max_tokens=self.p.max_tokens,
            seed=seed,
            json_schema=prompts.solution_schema(self.p.solution_format),
        )

    def parse(self, step: StepSpec, text: str) -> ParsedOutput:
        return solution_output(parse_solution(text, self.kind))

    def parent(self, step: StepSpec, state: ProblemState) -> int | None:
        if step.kind == StepKind.COMPLETE:
            return state.solutions[solve_step(step.round, judged_model(step, state.models)).key].id
        return None

    # -- the answer -----------------------------------------------------------------------------

    def select(self, state: ProblemState) -> Selection:
        ordered = _ordered(state)
        rounds = max((s.round for s in ordered), default=0)
        groups = answer_groups(ordered, self.kind)
        if not groups:
            return Selection(None, None, "No solution or completion gave a parsable final answer.", rounds)

        def n_consistent(group: list[SolutionView]) -> int:
            return sum(1 for s in group if consistent(state, s, self.kind))

        # max() keeps the first of equal keys: ties go to the answer seen first.
        best = max(groups, key=lambda g: (len(g), n_consistent(g)))
        chosen = max(
            best,
            key=lambda s: (
                consistent(state, s, self.kind),
                s.kind == StepKind.GENERATE.value,
                -ordered.index(s),
            ),
        )
        total = sum(len(g) for g in groups)
        met = self.threshold_met(state, rounds)
        head = f"Consensus after {rounds} round(s)" if met else f"No clear consensus after {rounds} round(s)"
        how = "mutually consistent" if consistent(state, chosen, self.kind) else "not confirmed by the peer"
        which = "both models" if len(state.models) == 2 else f"all {len(state.models)} models"
        reason = (
            f"{head}: answer {chosen.answer} has {len(best)} of {total} votes (solutions and peer "
            f"completions, all rounds, {which}); {n_consistent(best)} of its solutions are mutually "
            f"consistent. Chose {chosen.author}'s round-{chosen.round} {chosen.kind} ({how})."
        )
        if len(groups) > 1:
            others = ", ".join(f"{g[0].answer} ({len(g)})" for g in groups if g is not best)
            reason += f" Other answers: {others}."
        return Selection(chosen.id, chosen.answer, reason, rounds)
