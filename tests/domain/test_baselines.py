"""The baselines' decisions (cot, self-consistency) and the registry, from hand-built state."""

from __future__ import annotations

import pytest

from rstar import prompts
from rstar.strategies import STRATEGIES, ParamError, get_strategy
from rstar.strategies.base import step_seed
from rstar.strategies.cot import CotStrategy
from rstar.strategies.mutual import MutualStrategy
from rstar.strategies.self_consistency import SelfConsistencyStrategy, sample_seed, sample_step
from rstar.types import StepKind
from tests.domain.strategy_state import StateBuilder, keys

# -- registry ---------------------------------------------------------------------------------


def test_every_strategy_is_registered_and_round_trips_its_stored_params() -> None:
    assert set(STRATEGIES) == {"mutual", "mutual-consistency", "cot", "self-consistency", "rstar"}
    for name in STRATEGIES:
        strategy = get_strategy(name)
        # A job stores strategy.params; workers rebuild the strategy from them.
        assert get_strategy(name, strategy.params).params == strategy.params


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("cot", {"max_rounds": 3}, "takes no max_rounds"),
        ("cot", {"samples": 4}, "takes no samples"),
        ("mutual", {"samples": 4}, "takes no samples"),
        ("self-consistency", {"samples": 0}, "samples must be an integer from 1 to 64"),
        ("self-consistency", {"samples": 65}, "samples must be"),
        ("self-consistency", {"samples": 2.5}, "samples must be"),
        ("self-consistency", {"greedy_first": "yes"}, "greedy_first must be true or false"),
        ("mutual-consistency", {"greedy_first": 1}, "greedy_first must be true or false"),
        ("nope", {}, "unknown strategy 'nope'"),
    ],
)
def test_bad_parameters_are_refused(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ParamError, match=message):
        get_strategy(name, params)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("mutual", {"max_rounds": 0}, "max_rounds must be an integer from 1 to 10, got 0"),
        ("mutual", {"max_rounds": 11}, "max_rounds must be an integer from 1 to 10, got 11"),
        ("cot", {"seed": -1}, "seed must be an integer from 0 to 2147483647, or null, got -1"),
        ("cot", {"temperature": True}, "temperature must be a number from 0.0 to 2.0, got True"),
        ("cot", {"solution_format": "xml"}, "solution_format must be one of json, prose, got 'xml'"),
        ("mutual", {"peers": "some"}, "peers must be one of next, all"),
        ("rstar", {"cut_low": 0.6, "cut_high": 0.5}, r"cut_low \(0.6\) must not be above cut_high \(0.5\)"),
        (
            "rstar",
            {"completion_temperature": "hot"},
            "completion_temperature must be a number from 0.0 to 2.0, or",
        ),
    ],
)
def test_a_parameter_error_names_the_parameter_what_it_must_be_and_the_value(
    name: str, params: dict[str, object], message: str
) -> None:
    with pytest.raises(ParamError, match=message):
        get_strategy(name, params)


def test_each_parameter_is_stated_once_in_the_strategys_model() -> None:
    for name, cls in STRATEGIES.items():
        stored = get_strategy(name).params
        helped = {p: default for p, _, default, _ in cls.parameters.help()}
        # Stored params are the model's fields with their defaults, and the prompt version.
        assert {k: v for k, v in stored.items() if k != "prompt_version"} == helped, name
        assert all(meaning for *_, meaning in cls.parameters.help()), f"{name}: a parameter without a meaning"
    assert get_strategy("cot", {"temperature": 1}).params["temperature"] == 1.0  # an integer is a number
    # The limit on rounds comes from the settings (RSTAR_MAX_ROUNDS_LIMIT), not the model.
    assert get_strategy("mutual", {"max_rounds": 12}, max_rounds_limit=20).params["max_rounds"] == 12


# -- cot --------------------------------------------------------------------------------------


def test_cot_asks_model_a_once_then_stops() -> None:
    b = StateBuilder()
    plan = CotStrategy().plan(b.state())
    assert keys(plan.steps) == ["r1.generate.A"] and not plan.finished
    assert plan.steps[0].kind == StepKind.GENERATE and plan.steps[0].model == "A"
    b.solution("r1.generate.A", "7")
    plan = CotStrategy().plan(b.state())
    assert keys(plan.steps) == ["r1.generate.A"] and plan.finished


def test_cot_request_is_the_solve_prompt_greedy_by_default() -> None:
    cot = CotStrategy()
    request = cot.build_request(cot.plan(StateBuilder().state()).steps[0], StateBuilder().state())
    assert request.messages == prompts.solve_messages(StateBuilder().state().question)
    assert request.temperature == 0.0 and request.json_schema == prompts.SOLUTION_SCHEMA
    assert CotStrategy({"temperature": 0.7}).params["temperature"] == 0.7


def test_cot_selects_the_one_answer_or_none() -> None:
    b = StateBuilder()
    sol = b.solution("r1.generate.A", "7")
    chosen = CotStrategy().select(b.state())
    assert (chosen.output_id, chosen.answer, chosen.rounds_used) == (sol.id, "7", 1)
    b = StateBuilder()
    b.solution("r1.generate.A", None)
    chosen = CotStrategy().select(b.state())
    assert chosen.answer is None and chosen.output_id is None and "no parsable" in chosen.reason


# -- self-consistency -------------------------------------------------------------------------


def test_self_consistency_dispatches_all_samples_at_once_alternating_models() -> None:
    sc = SelfConsistencyStrategy({"samples": 5})
    plan = sc.plan(StateBuilder().state())
    assert keys(plan.steps) == [
        "s1.generate.A",
        "s2.generate.B",
        "s3.generate.A",
        "s4.generate.B",
        "s5.generate.A",
    ]
    assert not plan.finished
    assert len(SelfConsistencyStrategy().plan(StateBuilder().state()).steps) == 8  # the default


def test_self_consistency_finishes_only_when_every_sample_is_done() -> None:
    sc = SelfConsistencyStrategy({"samples": 3})
    b = StateBuilder()
    b.solution("s1.generate.A", "7")
    b.solution("s3.generate.A", "7")
    b.pending("s2.generate.B")
    assert not sc.plan(b.state()).finished
    b.solution("s2.generate.B", "8")
    assert sc.plan(b.state()).finished


def test_each_sample_has_its_own_seed_independent_of_k() -> None:
    a = SelfConsistencyStrategy({"samples": 8, "seed": 3})
    b = SelfConsistencyStrategy({"samples": 3, "seed": 3})
    state = StateBuilder().state()
    seeds_a = [a.build_request(s, state).seed for s in a.plan(state).steps]
    seeds_b = [b.build_request(s, state).seed for s in b.plan(state).steps]
    assert len(set(seeds_a)) == 8 and seeds_a[:3] == seeds_b
    # Samples 1 and 2 are mutual's round-1 solutions (same prompt, same seed).
    mutual = MutualStrategy({"seed": 3})
    mutual_r1 = mutual.plan(state).steps
    assert [s.key for s in mutual_r1] == ["r1.generate.A", "r1.generate.B"]
    assert seeds_a[:2] == [mutual.build_request(s, state).seed for s in mutual_r1]
    pair = ("A", "B")
    firsts = [sample_seed(3, sample_step(i, pair), pair) for i in (1, 2)]
    assert seeds_a[:2] == [step_seed(3, s) for s in mutual_r1] == firsts
    assert SelfConsistencyStrategy({"seed": None}).build_request(a.plan(state).steps[0], state).seed is None


def test_greedy_first_makes_only_sample_one_greedy() -> None:
    strategy = SelfConsistencyStrategy({"samples": 4, "temperature": 0.5, "greedy_first": True})
    state = StateBuilder().state()
    requests = [strategy.build_request(s, state) for s in strategy.plan(state).steps]
    assert [r.temperature for r in requests] == [0.0, 0.5, 0.5, 0.5]
    # The seeds do not change: sample 1 is the request cot (greedy, A) sends.
    plain = SelfConsistencyStrategy({"samples": 4, "temperature": 0.5})
    assert [r.seed for r in requests] == [plain.build_request(s, state).seed for s in plain.plan(state).steps]


def test_majority_vote_over_normalised_answers() -> None:
    b = StateBuilder()
    b.solution("s1.generate.A", "18")
    b.solution("s2.generate.B", "20")
    b.solution("s3.generate.A", "$20.00")  # equal to 20 after normalisation
    b.solution("s4.generate.B", None)
    b.solution("s5.generate.A", "20 dollars")
    chosen = SelfConsistencyStrategy({"samples": 5}).select(b.state())
    assert chosen.answer == "20" and chosen.output_id == b.outputs["s2.generate.B"].id
    assert "3 of 5 samples answer 20 (A 2, B 1)" in chosen.reason
    assert "Other answers: 18 (1)" in chosen.reason and "1 without a parsable answer" in chosen.reason


def test_a_tie_goes_to_the_answer_seen_first() -> None:
    b = StateBuilder()
    b.solution("s1.generate.A", "5")
    b.solution("s2.generate.B", "6")
    b.solution("s3.generate.A", "6")
    b.solution("s4.generate.B", "5")
    chosen = SelfConsistencyStrategy({"samples": 4}).select(b.state())
    assert chosen.answer == "5" and "Tied" in chosen.reason


def test_no_parsable_answer_selects_nothing() -> None:
    b = StateBuilder()
    b.solution("s1.generate.A", None)
    b.solution("s2.generate.B", None)
    chosen = SelfConsistencyStrategy({"samples": 2}).select(b.state())
    assert chosen.answer is None and chosen.output_id is None


# -- solution format (every strategy) ---------------------------------------------------------


# rstar is not among them: its prompts are the paper's step-by-step prose, with no schema (its own
# tests check its requests).
@pytest.mark.parametrize("name", sorted(n for n in STRATEGIES if "solution_format" in get_strategy(n).params))
def test_prose_solutions_are_asked_for_without_a_schema(name: str) -> None:
    state = StateBuilder().state()
    for style, schema in (("json", prompts.SOLUTION_SCHEMA), ("prose", None)):
        strategy = get_strategy(name, {"solution_format": style})
        request = strategy.build_request(strategy.plan(state).steps[0], state)
        assert request.json_schema == schema
        assert request.messages == prompts.solve_messages(state.question, style=style)
        assert ("\\boxed{}" in request.messages[-1].content) is (style == "prose")
    assert get_strategy(name).params["solution_format"] == "json"  # the default is unchanged
    with pytest.raises(ParamError, match="solution_format must be one of json, prose"):
        get_strategy(name, {"solution_format": "yaml"})
