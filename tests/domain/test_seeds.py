"""Every step a strategy can plan for a job samples with a seed of its own, the same in every process.

Each strategy is driven through its own `plan()` to the end of a problem that never converges
(every answer differs, every review says "incorrect"), with the largest rounds and samples it
accepts, and every request it builds is collected: no hand-made list of keys to fall out of date.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rstar.strategies import STRATEGIES, get_strategy
from rstar.strategies.base import OutputView, ProblemState, StepSpec, StepView, step_seed
from rstar.strategies.self_consistency import MAX_SAMPLES
from rstar.types import StepKind, Verdict
from tests.domain.strategy_state import review_out, solution_out

ROUNDS_LIMIT = 10
BASES = (0, 1, 5, 1000, 2**31 - 1)
REPO = Path(__file__).resolve().parents[2]


class Outputs:
    """The persisted state of one problem whose models never agree."""

    def __init__(self, models: tuple[str, ...]) -> None:
        self.models = models
        self.steps: dict[str, StepView] = {}
        self.outputs: dict[str, OutputView] = {}
        self.next_id = 1

    def finish(self, step: StepSpec, parent: int | None) -> None:
        n, self.next_id = self.next_id, self.next_id + 1
        assert step.model is not None
        self.steps[step.key] = StepView(step.key, str(step.kind), step.model, step.round, "done")
        if step.kind == StepKind.REVIEW:
            self.outputs[step.key] = review_out(
                n, step.key, step.round, step.model, parent or 0, Verdict.INCORRECT, (1, 1, 1), "incorrect"
            )
        else:  # a distinct answer each time: no vote margin, no agreement
            work = ("first", "second", "third", f"So the answer is {n}.")
            self.outputs[step.key] = solution_out(
                n,
                step.key,
                step.round,
                step.model,
                str(step.kind),
                work,
                str(n),
                "\n".join(work),
                parent_id=parent,
            )

    def state(self) -> ProblemState:
        return ProblemState("What is 2 + 2?", self.models, dict(self.steps), dict(self.outputs))


ROSTERS = {"pair": ("A", "B"), "three, all peers": ("A", "B", "C")}


def widest_params(name: str, base: int | None, models: tuple[str, ...] = ("A", "B")) -> dict[str, object]:
    """The parameters under which `name` plans the most steps."""
    params = get_strategy(name).params
    wide: dict[str, object] = {"seed": base}
    if "peers" in params and len(models) > 2:
        wide["peers"] = "all"
    if "max_rounds" in params:
        wide["max_rounds"] = ROUNDS_LIMIT
    if "samples" in params:
        wide["samples"] = MAX_SAMPLES
    return wide


def planned_seeds(name: str, base: int | None, models: tuple[str, ...] = ("A", "B")) -> dict[str, int | None]:
    """Step key -> the seed of the request built for it, for every step of one problem."""
    strategy = get_strategy(name, widest_params(name, base, models), max_rounds_limit=ROUNDS_LIMIT)
    models = models[: strategy.max_models] if strategy.max_models else models
    out = Outputs(models)
    seeds: dict[str, int | None] = {}
    while True:
        plan = strategy.plan(out.state())
        if plan.finished:
            return seeds
        todo = [s for s in plan.steps if s.key not in out.steps]
        assert todo, f"{name}: plan neither finished nor asks for a new step"
        for step in todo:
            seeds[step.key] = strategy.build_request(step, out.state()).seed
            out.finish(step, strategy.parent(step, out.state()))


@pytest.mark.parametrize("roster", sorted(ROSTERS))
@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("base", BASES)
def test_every_step_a_strategy_plans_has_its_own_seed(name: str, base: int, roster: str) -> None:
    seeds = planned_seeds(name, base, ROSTERS[roster])
    if name in ("mutual", "mutual-consistency"):  # really went through every round
        assert {int(key.split(".")[0][1:]) for key in seeds} == set(range(1, ROUNDS_LIMIT + 1))
    if name == "self-consistency":
        assert len(seeds) == MAX_SAMPLES
    values = list(seeds.values())
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in values), seeds
    clashes = {s: [k for k, v in seeds.items() if v == s] for s in values if values.count(s) > 1}
    assert not clashes, f"{name}, base {base}: steps sharing a seed: {clashes}"


def test_the_collision_of_r1_complete_b_and_r2_generate_a_is_gone() -> None:
    # Both are steps of mutual-consistency; the old arithmetic gave both 20 with base 0.
    complete_b = StepSpec("r1.complete.B", StepKind.COMPLETE, "B", 1)
    generate_a = StepSpec("r2.generate.A", StepKind.GENERATE, "A", 2)
    assert step_seed(0, complete_b) != step_seed(0, generate_a)


def test_no_base_seed_means_no_seed() -> None:
    for name in STRATEGIES:
        assert set(planned_seeds(name, None).values()) == {None}


SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.domain.test_seeds import planned_seeds
from rstar.strategies import STRATEGIES
print(json.dumps({n: planned_seeds(n, 7) for n in sorted(STRATEGIES)}))
"""


def test_seeds_are_the_same_in_every_process() -> None:
    """A redelivered step must send the very request it sent before (reuse matches on it): no
    per-process salt (Python's hash() has one) may enter the seed."""
    here = {n: planned_seeds(n, 7) for n in sorted(STRATEGIES)}
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(REPO)], env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(done.stdout) == here
    # And across versions: a change of derivation would stop `--resume-from` matching old calls.
    assert step_seed(0, StepSpec("r1.generate.A", StepKind.GENERATE, "A", 1)) == 23460033
