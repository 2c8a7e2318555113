"""The model-step task: one task for every strategy and every kind of step (tasks/base.py).

The names of the per-kind tasks of earlier releases stay registered, so their messages still
queued when the workers are upgraded are served; each touches only steps of its own kind, as
it did.
"""

from __future__ import annotations

from celery import shared_task

from tasks.base import StepTask, run_model_step
from tasks.dispatch import MODEL_STEP_TASK

LEGACY_TASKS = {
    "rstar.generate": "generate",
    "rstar.cross_validate": "review",
    "rstar.refine": "refine",
    "rstar.complete": "complete",
}


@shared_task(bind=True, base=StepTask, name=MODEL_STEP_TASK)
def model_step(self: StepTask, step_id: int) -> str:
    return run_model_step(self, step_id)


def _legacy(task_name: str, kind: str) -> None:
    @shared_task(bind=True, base=StepTask, name=task_name)
    def legacy_step(self: StepTask, step_id: int) -> str:
        return run_model_step(self, step_id, kind)


for _name, _kind in LEGACY_TASKS.items():
    _legacy(_name, _kind)
