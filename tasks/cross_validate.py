"""Stage 2: a model reviews the peer's latest solution."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.orm import Session

from db.calls import NewCall
from db.claims import Claim
from db.outputs import save_review
from rstar.parsing import parse_review
from tasks.base import StepTask, run_model_step


def write_review(session: Session, claim: Claim, text: str, call: int | NewCall) -> None:
    target = claim.links.target_solution_id
    assert target is not None, f"strategy gave no target solution for review step {claim.key}"
    save_review(
        session=session,
        claim=claim,
        parsed=parse_review(text),
        model_call=call,
        target_solution_id=target,
    )


@shared_task(bind=True, base=StepTask, name="rstar.cross_validate")
def cross_validate(self: StepTask, step_id: int) -> str:
    return run_model_step(self, step_id, write_review)
