"""Stage 3: a model revises its own latest solution given the peer's review."""

from __future__ import annotations

from celery import shared_task

from tasks.base import StepTask, run_model_step
from tasks.generate import write_solution


@shared_task(bind=True, base=StepTask, name="rstar.refine")
def refine(self: StepTask, step_id: int) -> str:
    return run_model_step(self, step_id, write_solution)
