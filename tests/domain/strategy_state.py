"""Hand-built persisted state for strategy tests: what the database would hold after some steps."""

from __future__ import annotations

from collections.abc import Sequence

from rstar.strategies.base import OutputView, ProblemState, StepView
from rstar.types import Verdict

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
PAIR = ("A", "B")


def solution_out(
    id_: int,
    key: str,
    round_: int,
    model: str,
    kind: str,
    steps: Sequence[str],
    answer: str | None,
    text: str | None = None,
    *,
    parent_id: int | None = None,
) -> OutputView:
    """A solution's output row, as the seed strategies' `parse` stores it."""
    return OutputView(
        id=id_,
        step_key=key,
        kind=kind,
        model=model,
        round=round_,
        parent_id=parent_id,
        payload={"steps": list(steps), "answer_raw": answer, "structured": True},
        answer=answer,
        text=text,
    )


def review_out(
    id_: int,
    key: str,
    round_: int,
    model: str,
    target_id: int,
    verdict: Verdict,
    scores: tuple[int | None, int | None, int | None] = (4, 4, 4),
    text: str | None = None,
    *,
    structured: bool = True,
    suggested_answer: str | None = None,
) -> OutputView:
    return OutputView(
        id=id_,
        step_key=key,
        kind="review",
        model=model,
        round=round_,
        parent_id=target_id,
        payload={
            "verdict": verdict.value,
            "scores": list(scores),
            "issues": [],
            "suggested_answer": suggested_answer,
            "structured": structured,
        },
        answer=None,
        text=text,
    )


class StateBuilder:
    def __init__(self, models: tuple[str, ...] = PAIR) -> None:
        self.models = models
        self.steps: dict[str, StepView] = {}
        self.outputs: dict[str, OutputView] = {}
        self.next_id = 1

    def solution(
        self,
        key: str,
        answer: str | None,
        *,
        round_: int = 1,
        steps: tuple[str, ...] = ("work",),
        parent_id: int | None = None,
    ) -> OutputView:
        """A done step `key` ("r1.generate.A", "s3.generate.A", ...) and the solution it produced.

        A completion's parent, unless given, is the solution it completes, as the worker links it:
        "r1.complete.A" completes the model before A (B, of A and B); "r1.complete.A.C" C's."""
        parts = key.split(".")
        kind, model = parts[1], parts[2]
        if kind == "complete" and parent_id is None:
            target = parts[3] if len(parts) > 3 else self.models[self.models.index(model) - 1]
            done = self.outputs.get(f"{parts[0]}.generate.{target}")
            parent_id = done.id if done is not None else None
        out = solution_out(
            self.next_id, key, round_, model, kind, steps, answer,
            "\n".join(steps) + f"\nFinal answer: {answer}", parent_id=parent_id,
        )  # fmt: skip
        self.next_id += 1
        self.steps[key] = StepView(key, kind, model, round_, "done")
        self.outputs[key] = out
        return out

    def pending(self, key: str, *, round_: int = 1) -> None:
        kind, model = key.split(".")[1], key.split(".")[2]
        self.steps[key] = StepView(key, kind, model, round_, "queued")

    def state(self) -> ProblemState:
        return ProblemState(QUESTION, self.models, dict(self.steps), dict(self.outputs))


def keys(plan_steps: tuple) -> list[str]:  # type: ignore[type-arg]
    return [s.key for s in plan_steps]
