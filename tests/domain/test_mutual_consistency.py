"""The mutual-consistency strategy's decisions, from hand-built persisted state (no I/O)."""

from __future__ import annotations

import pytest

from rstar import prompts
from rstar.strategies.mutual_consistency import MutualConsistencyStrategy, cut_point
from rstar.types import StepKind
from tests.domain.strategy_state import StateBuilder, keys

STEPS = ("3 apples to start", "4 more: 3 + 4 = 7", "He has 7 apples")


def round_done(
    b: StateBuilder, r: int, a: str | None, b_: str | None, ca: str | None, cb: str | None
) -> None:
    """Round r: A answers a, B answers b_; A's completion of B's solution answers ca, B's of A's cb."""
    b.solution(f"r{r}.generate.A", a, round_=r, steps=STEPS)
    b.solution(f"r{r}.generate.B", b_, round_=r, steps=STEPS)
    b.solution(f"r{r}.complete.A", ca, round_=r)
    b.solution(f"r{r}.complete.B", cb, round_=r)


def test_first_plan_is_two_independent_solutions() -> None:
    plan = MutualConsistencyStrategy().plan(StateBuilder().state())
    assert keys(plan.steps) == ["r1.generate.A", "r1.generate.B"] and not plan.finished


def test_a_completion_starts_as_soon_as_the_solution_it_completes_exists() -> None:
    b = StateBuilder()
    b.solution("r1.generate.A", "7", steps=STEPS)
    plan = MutualConsistencyStrategy().plan(b.state())
    # B completes A's solution; A's own completion of B waits for B's solution.
    assert keys(plan.steps) == ["r1.generate.A", "r1.generate.B", "r1.complete.B"]
    step = plan.steps[-1]
    assert step.kind == StepKind.COMPLETE and step.model == "B" and step.round == 1


def test_completion_request_shows_the_peer_solution_up_to_the_cut() -> None:
    b = StateBuilder()
    sol = b.solution("r1.generate.A", "7", steps=STEPS)
    strategy = MutualConsistencyStrategy()
    step = strategy.plan(b.state()).steps[-1]
    request = strategy.build_request(step, b.state())
    # 3 steps, cut 0.5 -> the first one only; never the step that states the answer.
    assert request.messages == prompts.complete_messages(b.state().question, STEPS[:1])
    assert "Step 1: 3 apples to start" in request.messages[-1].content
    assert "3 + 4" not in request.messages[-1].content
    assert strategy.parent(step, b.state()) == sol.id


@pytest.mark.parametrize(
    ("n", "cut", "shown"),
    [(0, 0.5, 0), (1, 0.5, 0), (2, 0.5, 1), (3, 0.5, 1), (4, 0.5, 2), (4, 0.9, 3), (5, 0.2, 1)],
)
def test_cut_point(n: int, cut: float, shown: int) -> None:
    assert cut_point(n, cut) == shown


def test_unanimous_first_round_finishes_after_four_calls() -> None:
    b = StateBuilder()
    round_done(b, 1, "7", "7.0", "7", "$7")
    strategy = MutualConsistencyStrategy()
    plan = strategy.plan(b.state())
    assert plan.finished and len(plan.steps) == 4
    chosen = strategy.select(b.state())
    assert chosen.answer == "7" and chosen.rounds_used == 1
    assert chosen.output_id == b.outputs["r1.generate.A"].id
    assert "Consensus after 1 round(s): answer 7 has 4 of 4 votes" in chosen.reason
    assert "2 of its solutions are mutually consistent" in chosen.reason


def test_disagreement_starts_a_fresh_round() -> None:
    b = StateBuilder()
    round_done(b, 1, "7", "8", "8", "7")  # 2 votes each: margin 0
    plan = MutualConsistencyStrategy().plan(b.state())
    assert keys(plan.steps)[4:] == ["r2.generate.A", "r2.generate.B"] and not plan.finished
    # Fresh solutions use the solve prompt with seeds of their own.
    strategy = MutualConsistencyStrategy()
    r1 = strategy.build_request(plan.steps[0], b.state())
    r2 = strategy.build_request(plan.steps[4], b.state())
    assert r1.messages == r2.messages and r1.seed != r2.seed


def test_three_to_one_is_enough_with_the_default_margin() -> None:
    b = StateBuilder()
    round_done(b, 1, "7", "7", "7", "9")  # 3 - 1 = 2
    assert MutualConsistencyStrategy().plan(b.state()).finished
    assert not MutualConsistencyStrategy({"margin": 3}).plan(b.state()).finished
    b = StateBuilder()
    round_done(b, 1, "7", "8", "7", None)  # 2 - 1 = 1: another round
    assert not MutualConsistencyStrategy().plan(b.state()).finished


def test_votes_across_rounds_can_stop_the_second_round() -> None:
    b = StateBuilder()
    round_done(b, 1, "7", "9", "8", "7")  # 7: 2, 9: 1, 8: 1 -> margin 1
    assert not MutualConsistencyStrategy().plan(b.state()).finished
    round_done(b, 2, "9", "7", "8", "7")  # 7: 4, 9: 2, 8: 2 -> margin 2
    plan = MutualConsistencyStrategy().plan(b.state())
    assert plan.finished and len(plan.steps) == 8


def test_round_limit_stops_and_selects_by_votes_then_consistency() -> None:
    b = StateBuilder()
    round_done(b, 1, "5", "6", "6", "9")  # A's 5 completed by B as 9; B's 6 completed by A as 6
    round_done(b, 2, "5", "8", "8", "5")  # A's 5 is consistent now
    strategy = MutualConsistencyStrategy({"max_rounds": 2})
    assert strategy.plan(b.state()).finished
    # 5: 3 votes (1 consistent), 6: 2, 8: 2, 9: 1.
    chosen = strategy.select(b.state())
    assert chosen.answer == "5" and chosen.rounds_used == 2
    assert chosen.output_id == b.outputs["r2.generate.A"].id  # the consistent one
    assert "No clear consensus after 2 round(s)" in chosen.reason
    assert "Other answers: 6 (2), 9 (1), 8 (2)" in chosen.reason


def test_equal_votes_go_to_more_consistent_solutions() -> None:
    b = StateBuilder()
    round_done(b, 1, "5", "6", "6", "4")  # 5 inconsistent, 6 consistent: 5 (1), 6 (2), 4 (1)
    round_done(b, 2, "5", "3", "1", "5")  # 5 consistent now: 5 (3), 6 (2), 3, 1, 4
    chosen = MutualConsistencyStrategy({"max_rounds": 2}).select(b.state())
    assert chosen.answer == "5"
    b2 = StateBuilder()
    round_done(b2, 1, "5", "6", "6", "4")  # 5: 1 vote, 6: 2 votes, 4: 1
    round_done(b2, 2, "5", "2", "2", "9")  # 5, 6 and 2: 2 votes each; 6 and 2 have a consistent one
    # 6 and 2 tie on votes and consistency: the answer seen first wins.
    chosen = MutualConsistencyStrategy({"max_rounds": 2}).select(b2.state())
    assert chosen.answer == "6"


def test_no_answer_anywhere_selects_nothing() -> None:
    b = StateBuilder()
    round_done(b, 1, None, None, None, None)
    strategy = MutualConsistencyStrategy({"max_rounds": 1})
    assert strategy.plan(b.state()).finished
    chosen = strategy.select(b.state())
    assert chosen.answer is None and chosen.output_id is None


def test_first_solution_of_a_is_greedy_and_the_rest_sample() -> None:
    b = StateBuilder()
    b.solution("r1.generate.A", "7", steps=STEPS)
    b.solution("r1.generate.B", "8", steps=STEPS)
    strategy = MutualConsistencyStrategy({"temperature": 0.6})
    state = b.state()
    temps = {s.key: strategy.build_request(s, state).temperature for s in strategy.plan(state).steps}
    assert temps == {"r1.generate.A": 0.0, "r1.generate.B": 0.6, "r1.complete.A": 0.7, "r1.complete.B": 0.7}
    later = MutualConsistencyStrategy({"temperature": 0.6})
    round_done(b, 1, "7", "8", "9", "10")
    step = next(s for s in later.plan(b.state()).steps if s.key == "r2.generate.A")
    assert later.build_request(step, b.state()).temperature == 0.6
    off = MutualConsistencyStrategy({"temperature": 0.6, "greedy_first": False})
    first = off.plan(StateBuilder().state()).steps[0]
    assert off.build_request(first, StateBuilder().state()).temperature == 0.6


def test_a_tie_goes_to_the_greedy_answer() -> None:
    # Two votes each: A's greedy 7 (and B's completion of it), B's sample 8 (and A's completion).
    b = StateBuilder()
    round_done(b, 1, "7", "8", "8", "7")
    strategy = MutualConsistencyStrategy({"max_rounds": 1})
    assert strategy.plan(b.state()).finished
    chosen = strategy.select(b.state())
    assert chosen.answer == "7" and "A's round-1 generate" in chosen.reason
