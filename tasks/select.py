"""Stage 4: choose the final answer from every round, and record why it won."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from sqlalchemy.exc import DBAPIError

from db import queries
from db.session import session_scope
from rstar.strategies import get_strategy
from tasks.base import StepTask
from tasks.dispatch import advance_and_enqueue
from workers.settings import get_settings


@shared_task(bind=True, base=StepTask, name="rstar.select")
def select(self: StepTask, step_id: int) -> str:
    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            claim = queries.claim_step(
                session=session,
                step_id=step_id,
                task_id=self.request.id or "",
                lease=timedelta(seconds=settings.lease_seconds),
                kind="select",
            )
            if claim is None:
                return "missing"
            if isinstance(claim, int):
                problem_id = claim
            else:
                strategy = get_strategy(
                    claim.strategy, claim.params, max_rounds_limit=settings.max_rounds_limit
                )
                chosen = strategy.select(claim.state)
                queries.save_selection(
                    session=session,
                    claim=claim,
                    solution_id=chosen.solution_id,
                    answer=chosen.answer,
                    reason=chosen.reason,
                    rounds_used=chosen.rounds_used,
                )
        if not isinstance(claim, int):
            # In its own transaction, after the commit: two problems finishing together must each
            # see the other's final state, or neither would close the job.
            with session_scope(settings.database_url) as session:
                queries.maybe_finish_job(session=session, job_id=claim.job_id)
            return "done"
    except DBAPIError as exc:
        self.retry_on_database_error(exc)
        raise
    advance_and_enqueue(problem_id)
    return "skipped"
