"""Stage 1: a model solves the problem on its own."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.orm import Session

from db.calls import NewCall
from db.claims import Claim
from db.outputs import save_solution
from rstar.parsing import parse_solution
from tasks.base import StepTask, run_model_step


def write_solution(session: Session, claim: Claim, text: str, call: int | NewCall) -> None:
    """Store the parsed solution; an unparsable one is kept and flagged, and reviewed like any other."""
    save_solution(
        session=session,
        claim=claim,
        parsed=parse_solution(text),
        model_call=call,
        parent_id=claim.links.parent_solution_id,
    )


@shared_task(bind=True, base=StepTask, name="rstar.generate")
def generate(self: StepTask, step_id: int) -> str:
    return run_model_step(self, step_id, write_solution)
