"""A strategy run in memory: plan, build each request, answer it with a function, parse, store
the outputs, until the strategy selects. The machinery's loop without the machinery, for testing a
strategy's logic on hand-made replies (the real path is tested end to end through the workers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rstar.strategies.base import (
    OutputView,
    ProblemState,
    Selection,
    StepSpec,
    StepView,
    Strategy,
    output_views,
)
from rstar.types import ModelRequest

Answerer = Callable[[StepSpec, ModelRequest], list[str]]


@dataclass
class MemoryRun:
    strategy: Strategy
    question: str
    models: tuple[str, ...] = ("A", "B")
    steps: dict[str, StepView] = field(default_factory=dict)
    outputs: dict[str, OutputView] = field(default_factory=dict)
    requests: list[tuple[StepSpec, ModelRequest]] = field(default_factory=list)
    _ids: int = 0

    def _new_id(self) -> int:
        self._ids += 1
        return self._ids

    def state(self) -> ProblemState:
        return ProblemState(self.question, self.models, dict(self.steps), dict(self.outputs))

    def run_step(self, spec: StepSpec, answer: Answerer) -> None:
        state = self.state()
        request = self.strategy.build_request(spec, state)
        parent = self.strategy.parent(spec, state)
        self.requests.append((spec, request))
        texts = answer(spec, request)
        assert len(texts) == request.n, f"{spec.key}: {len(texts)} texts for n={request.n}"
        self.outputs.update(output_views(self.strategy, spec, parent, texts, self._new_id))
        self.steps[spec.key] = StepView(spec.key, str(spec.kind), spec.model, spec.round, "done")

    def run(
        self, answer: Answerer, *, stop_after: int | None = None, max_steps: int = 10_000
    ) -> Selection | None:
        """Run to the selection (or until `stop_after` steps ran: None then)."""
        ran = 0
        while ran < max_steps:
            plan = self.strategy.plan(self.state())
            todo = [s for s in plan.steps if s.key not in self.steps]
            if plan.finished and not todo:
                return self.strategy.select(self.state())
            assert todo, "nothing to run and not finished"
            for spec in todo:
                if stop_after is not None and ran >= stop_after:
                    return None
                self.run_step(spec, answer)
                ran += 1
        raise AssertionError("too many steps")
