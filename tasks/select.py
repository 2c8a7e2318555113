"""Stage 4: choose the final answer from every round, and record why it won.

The selection needs no model, so it is made by `tasks.dispatch.plan_next` in the transaction of
the step that finished the problem: no message, no claim, no transaction of its own. This task
serves a select step still queued (by a release that ran the selection as a task, or re-sent by
`rstar resume`): it moves its problem on, which makes the selection and marks that step done.
"""

from __future__ import annotations

from celery import shared_task
from sqlalchemy import select as sql_select
from sqlalchemy.exc import DBAPIError

from db.models import Step
from db.session import session_scope
from tasks.base import StepTask
from tasks.dispatch import advance_and_enqueue
from workers.settings import get_settings


@shared_task(bind=True, base=StepTask, name="rstar.select")
def select(self: StepTask, step_id: int) -> str:
    try:
        with session_scope(get_settings().database_url) as session:
            problem_id = session.scalar(
                sql_select(Step.problem_id).where(Step.id == step_id, Step.kind == "select")
            )
        if problem_id is None:
            return "missing"
        advance_and_enqueue(problem_id)
    except DBAPIError as exc:
        self.retry_on_database_error(exc)
        raise
    return "done"
