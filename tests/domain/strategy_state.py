"""Hand-built persisted state for strategy tests: what the database would hold after some steps."""

from __future__ import annotations

from rstar.strategies.base import ProblemState, SolutionView, StepView

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


class StateBuilder:
    def __init__(self) -> None:
        self.steps: dict[str, StepView] = {}
        self.solutions: dict[str, SolutionView] = {}
        self.next_id = 1

    def solution(
        self, key: str, answer: str | None, *, round_: int = 1, steps: tuple[str, ...] = ("work",)
    ) -> SolutionView:
        """A done step `key` ("r1.generate.A", "s3.generate.A", ...) and the solution it produced."""
        kind, role = key.split(".")[1], key.split(".")[2]
        sol = SolutionView(
            id=self.next_id,
            step_key=key,
            round=round_,
            author=role,  # type: ignore[arg-type]
            kind=kind,
            steps=steps,
            answer=answer,
            response_text="\n".join(steps) + f"\nFinal answer: {answer}",
        )
        self.next_id += 1
        self.steps[key] = StepView(key, kind, role, round_, "done")  # type: ignore[arg-type]
        self.solutions[key] = sol
        return sol

    def pending(self, key: str, *, round_: int = 1) -> None:
        kind, role = key.split(".")[1], key.split(".")[2]
        self.steps[key] = StepView(key, kind, role, round_, "queued")  # type: ignore[arg-type]

    def state(self) -> ProblemState:
        return ProblemState(QUESTION, dict(self.steps), dict(self.solutions), {})


def keys(plan_steps: tuple) -> list[str]:  # type: ignore[type-arg]
    return [s.key for s in plan_steps]
