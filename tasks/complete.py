"""Stage for rStar's mutual consistency: a model finishes the peer's solution from a cut-off point.

The completion is a solution like any other (its parent is the solution it completes); the
strategy compares its answer with the original's.
"""

from __future__ import annotations

from celery import shared_task

from tasks.base import StepTask, run_model_step
from tasks.generate import write_solution


@shared_task(bind=True, base=StepTask, name="rstar.complete")
def complete(self: StepTask, step_id: int) -> str:
    return run_model_step(self, step_id, write_solution)
