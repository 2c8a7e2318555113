"""Reusing recorded model calls: a re-submitted job (`rstar submit --resume-from JOB`) pays for no
GPU work that JOB already did.

Every recorded call carries `request_hash`: the sha256 of the endpoint and the request exactly as
sent (messages, sampling parameters, seed, structured-output format). Before a step of a resuming
job calls its model, it looks for an `ok` call with the same hash in the job it resumes (or that
job's own resumed-from chain). If there is one, the reply is copied into a new call row of this
step, marked with `reused_from_id` and a latency of 0, and no request is sent. Identical request
means identical inputs: the same question, the same earlier solutions and reviews (themselves
reused), the same parameters and seed, so the copy is what the call would have been asked for.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select

from db.calls import new_call, record_call
from db.claims import Claim
from db.models import CallOutcome, Job, ModelCall, Problem
from db.session import session_scope
from rstar.records import recorded_texts
from rstar.types import ModelRequest
from workers.client import ModelClient
from workers.settings import Settings

MAX_CHAIN = 20
"""How many resumed-from jobs back a lookup goes."""


def request_hash(endpoint: str, payload: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"endpoint": endpoint.rstrip("/"), "request": payload},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _chain(session: Any, job_id: int) -> list[int]:
    jobs: list[int] = []
    current: int | None = job_id
    while current is not None and current not in jobs and len(jobs) < MAX_CHAIN:
        jobs.append(current)
        current = session.scalar(select(Job.resume_from_id).where(Job.id == current))
    return jobs


def reuse_recorded(
    claim: Claim, attempt: int, request: ModelRequest, client: ModelClient, settings: Settings
) -> tuple[int, tuple[str, ...]] | None:
    """Record a copy of an identical call answered in the resumed job: (call id, its sequences),
    or None."""
    if claim.resume_from is None:
        return None
    payload = client.build_payload(request)
    # The model's first URL, whichever replica would serve the call (rstar/roster.py).
    digest = request_hash(claim.endpoint or client.base_url, payload)
    with session_scope(settings.database_url) as session:
        old = session.scalar(
            select(ModelCall)
            .join(Problem, Problem.id == ModelCall.problem_id)
            .where(
                ModelCall.request_hash == digest,
                ModelCall.outcome == CallOutcome.OK,
                Problem.job_id.in_(_chain(session, claim.resume_from)),
            )
            .order_by(ModelCall.id)
            .limit(1)
        )
        if old is None:
            return None
        call = new_call(
            step_id=claim.step_id,
            problem_id=claim.problem_id,
            attempt=attempt,
            endpoint=old.endpoint,
            server_kind=old.server_kind,
            model=old.model,
            request=old.request,
            response=old.response,
            response_text=old.response_text,
            finish_reason=old.finish_reason,
            prompt_tokens=old.prompt_tokens,
            completion_tokens=old.completion_tokens,
            latency_ms=0.0,
            outcome=CallOutcome.OK,
            request_hash=digest,
            reused_from_id=old.reused_from_id or old.id,
            requests=old.requests or 1,
            sequences=old.sequences,
        )
        return record_call(session=session, call=call), recorded_texts(old.response_text, old.sequences)
