"""`rstar ui`: a read-only browser view of the results database.

Server-rendered pages (FastAPI, Jinja2 with autoescaping: model text is untrusted and is only ever
shown escaped), htmx (vendored in static/, no build step) for the parts that refresh while a job
runs. Reads go through `read_scope`, which cannot write. The only writes are the cancel and resume
buttons, present only with `allow_control`, and answering only htmx's own requests (a cross-site
form cannot set the HX-Request header), so another site cannot press them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from db import audit, browse
from db.audit import ProblemTrail, StepTrail
from db.models import MAX_ROW_ID, Job, JobStatus
from db.reports import load_report
from db.session import read_scope, session_scope
from rstar import roster
from rstar.problem_types import get_problem_type
from rstar.records import expanded_response
from rstar.strategies.base import REVIEW_KINDS, SOLUTION_KINDS
from rstar.strategies.mcts.view import tree_view
from workers.settings import get_settings

HERE = Path(__file__).resolve().parent
PER_PAGE = 50
MAX_PER_PAGE = 500
PLOT_CACHE = 32
ROUNDS_PLOT_PROBLEMS = 20_000
"""A job with more problems gets no accuracy-per-round plot on its page: it replays every problem's
rounds (a million problems: minutes); `rstar report` draws it."""
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every page, every value: model text holds markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda x: "–" if x is None else f"{100 * x:.1f}%"
    env.filters["num"] = lambda x, d=1: "–" if x is None else f"{x:,.{d}f}"
    env.filters["pretty"] = lambda x: json.dumps(x, indent=2, ensure_ascii=False, default=str)
    # A call's response as the server sent it (stored without the texts response_text holds).
    env.filters["received"] = lambda c: expanded_response(c.response, c.response_text, c.sequences)
    env.filters["clip"] = _clip
    env.globals.update(
        answer=_answer,
        SOLUTION_KINDS=SOLUTION_KINDS,
        REVIEW_KINDS=REVIEW_KINDS,
        OUTCOMES=browse.OUTCOMES,
    )
    return Jinja2Templates(env=env)


def _answer(value: str | None, problem_type: str, none: str = "–", *, source: bool = True) -> Markup:
    """An answer as its problem type shows it: a LaTeX one rendered (static/math.js) with its
    source a click away (`source=False`: rendered only, for inside a link), any other as text;
    escaped either way."""
    if value is None:
        return escape(none)
    if _markup(problem_type) != "tex":
        return escape(value)
    tex = escape(value)
    drawn = f'<span class="math" data-tex="{tex}">{tex}</span>'
    if not source:
        return Markup(drawn)
    return Markup(f'<details class="tex"><summary>{drawn}</summary><code>{tex}</code></details>')


def _markup(problem_type: str | None) -> str | None:
    """How a job's answers are drawn (`ProblemType.markup`); None for text or a type unknown here."""
    try:
        return get_problem_type(problem_type).markup if problem_type else None
    except ValueError:
        return None


def _clip(text: str | None, limit: int = 120) -> str:
    one_line = " ".join((text or "").split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


@dataclass(frozen=True)
class RoundView:
    number: int
    cells: list[list[StepTrail]]
    """One list of steps per roster model, in roster order."""


def _rounds(trail: ProblemTrail, models: list[str]) -> list[RoundView]:
    """The steps as a timeline: per round, each model's steps side by side."""
    by_round: dict[int, dict[str, list[StepTrail]]] = {}
    for st in trail.steps:
        if st.step.kind == "select":
            continue
        by_round.setdefault(st.step.round, {}).setdefault(st.step.model or "", []).append(st)
    return [RoundView(r, [by_round[r].get(m, []) for m in models]) for r in sorted(by_round)]


def _query(request: Request, **changes: Any) -> str:
    """The current query string with `changes` applied (None drops a key)."""
    params = dict(request.query_params)
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = str(value)
    return "?" + urlencode(params) if params else "?"


def _int_or_none(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number, not {value!r}") from None


def _job_id(value: int | None) -> int | None:
    """A job id from a URL, or 404 when no row can have it (above 2**63 it would overflow)."""
    if value is not None and not 0 < value <= MAX_ROW_ID:
        raise HTTPException(404, f"no job {value}")
    return value


def create_app(
    *,
    database_url: str | None = None,
    allow_control: bool = False,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The viewer on `database_url` (default: the settings'). With `token`, every request must
    carry it, as the password of HTTP basic auth or as a bearer token. With `allowed_hosts`, a
    request must name one of them in its Host header, and a control request's Origin must be one
    of them: a page of another site that resolves its own name to 127.0.0.1 (DNS rebinding) gets
    nothing, and cannot press the buttons."""
    url = database_url or get_settings().database_url
    templates = _templates()
    drawn_plots: OrderedDict[tuple[int, str, Any], bytes | None] = OrderedDict()
    drawing = threading.Lock()
    app = FastAPI(title="rstar viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if token is not None and not _authorized(request.headers.get("authorization"), token):
            return Response(
                "authentication required\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="rstar ui"'},
                media_type="text/plain",
            )
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        context.setdefault("allow_control", allow_control)
        # KaTeX (273 KB) only on the pages of a job whose answers are mathematics.
        context.setdefault("math", _markup(getattr(context.get("job"), "problem_type", None)) == "tex")
        return templates.TemplateResponse(request, name, context)

    # -- jobs --------------------------------------------------------------------------------

    def jobs_context() -> dict[str, Any]:
        with read_scope(url) as s:
            jobs = browse.job_overviews(session=s)
        return {"jobs": jobs, "live": any(j.status == JobStatus.ACTIVE for j in jobs)}

    @app.get("/", response_class=HTMLResponse)
    async def jobs_page(request: Request) -> HTMLResponse:
        return page(request, "jobs.html", **await run_in_threadpool(jobs_context))

    @app.get("/fragments/jobs", response_class=HTMLResponse)
    async def jobs_fragment(request: Request) -> HTMLResponse:
        return page(request, "_jobs_table.html", **await run_in_threadpool(jobs_context))

    # -- one job -----------------------------------------------------------------------------

    def job_context(request: Request, job_id: int) -> dict[str, Any]:
        _job_id(job_id)
        q = request.query_params
        outcome = q.get("outcome") or None
        if outcome is not None and outcome not in browse.OUTCOMES:
            raise HTTPException(400, f"outcome must be one of {', '.join(browse.OUTCOMES)}, not {outcome!r}")
        sort = q.get("sort") or "line"
        if sort not in browse.SORTS:
            raise HTTPException(400, f"sort must be one of {', '.join(browse.SORTS)}, not {sort!r}")
        with read_scope(url) as s:
            found = browse.job_view(
                session=s,
                job_id=job_id,
                outcome=outcome,
                model=q.get("model") or None,
                rounds=_int_or_none(q.get("rounds"), "rounds"),
                sort=sort,
                descending=q.get("order") == "desc",
                page=_int_or_none(q.get("page"), "page") or 1,
                per_page=min(max(1, _int_or_none(q.get("per_page"), "per_page") or PER_PAGE), MAX_PER_PAGE),
            )
            if found is None:
                raise HTTPException(404, f"no job {job_id}")
            overview, listing = found
            job = s.get(Job, job_id)
            assert job is not None
            others = browse.comparable_jobs(session=s, job_id=job_id)
            return {
                "job": overview,
                "params": dict(job.params),
                "roster": list(job.models),
                "listing": listing,
                "others": others,
                "filters": {k: q.get(k) or "" for k in ("outcome", "model", "rounds")},
                "sort": sort,
                "order": q.get("order") or "asc",
                "query": lambda **kw: _query(request, **kw),
                "live": overview.status == JobStatus.ACTIVE,
            }

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job_page(request: Request, job_id: int) -> HTMLResponse:
        return page(request, "job.html", **await run_in_threadpool(job_context, request, job_id))

    @app.get("/jobs/{job_id}/progress", response_class=HTMLResponse)
    async def job_progress(request: Request, job_id: int) -> HTMLResponse:
        _job_id(job_id)

        def load() -> dict[str, Any]:
            with read_scope(url) as s:
                found = browse.job_overviews(session=s, job_ids=[job_id])
            if not found:
                raise HTTPException(404, f"no job {job_id}")
            return {"job": found[0], "live": found[0].status == JobStatus.ACTIVE}

        return page(request, "_progress.html", **await run_in_threadpool(load))

    @app.get("/jobs/{job_id}/plots/{name}.png")
    async def job_plot(job_id: int, name: str) -> Response:
        _job_id(job_id)
        from rstar.plots import CostPoint, plot_accuracy_per_round, plot_accuracy_vs_calls, plot_message

        if name not in ("accuracy", "rounds"):
            raise HTTPException(404, f"no plot {name!r}")

        def figure(s: Session) -> Callable[[BinaryIO], object]:
            """What to draw, read inside the session (the drawing comes after it)."""
            found = browse.job_overviews(session=s, job_ids=[job_id])
            if not found:
                raise HTTPException(404, f"no job {job_id}")
            job = found[0]
            if name == "accuracy":  # from the counts the database keeps: fast at any size
                point = CostPoint.of_counts(
                    job_id=job.id, label=f"{job.id} {job.name}", strategy=job.strategy, right=job.right,
                    judged=job.judged, sequences=job.sequences, problems=job.problems,
                )  # fmt: skip
                return lambda out: plot_accuracy_vs_calls([point], out)
            if job.problems > ROUNDS_PLOT_PROBLEMS:  # replaying every problem's rounds takes minutes
                return lambda out: plot_message(
                    f"Too many problems to replay here: `rstar report {job_id}`.", out
                )
            report = load_report(
                session=s,
                job_ids=[job_id],
                max_rounds_limit=get_settings().max_rounds_limit,
                searches=False,  # the plot needs no search's account
            )

            def rounds(out: BinaryIO) -> None:
                if not plot_accuracy_per_round(report, out):  # drew nothing; a page's image is never broken
                    plot_message("No problem of this job has used more than one round yet.", out)

            return rounds

        def draw() -> bytes:
            with read_scope(url) as s:
                finished = s.scalar(select(Job.finished_at).where(Job.id == job_id))
                key = (job_id, name, finished)
                if finished is not None and key in drawn_plots:  # a finished job's plot is final
                    return drawn_plots[key]
                draw_into = figure(s)
            out = io.BytesIO()
            with drawing:  # pyplot keeps global state: one figure at a time
                draw_into(out)
                png = out.getvalue()
            if finished is not None:
                drawn_plots[key] = png
                while len(drawn_plots) > PLOT_CACHE:
                    drawn_plots.popitem(last=False)
            return png

        png = await run_in_threadpool(draw)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/jobs/{job_id}/{action}", response_class=HTMLResponse)
    async def control(request: Request, job_id: int, action: str) -> HTMLResponse:
        _job_id(job_id)
        if not allow_control:
            raise HTTPException(403, "this viewer is read-only (start it with --allow-control)")
        if request.headers.get("hx-request") != "true":
            raise HTTPException(403, "control requests come from the viewer's buttons only")
        if allowed_hosts is not None and urlsplit(request.headers.get("origin") or "").hostname not in {
            h.strip("[]") for h in allowed_hosts
        }:
            raise HTTPException(403, "control requests come from the viewer's own pages only")
        if action not in ("cancel", "resume"):
            raise HTTPException(404, f"no action {action!r}")

        def act() -> None:
            from db.recovery import cancel_job
            from tasks.recovery import resume_job

            with session_scope(url) as s:
                if s.get(Job, job_id) is None:
                    raise HTTPException(404, f"no job {job_id}")
                if action == "cancel":
                    cancel_job(session=s, job_id=job_id)
            if action == "resume":
                resume_job(job_id)

        await run_in_threadpool(act)
        if request.query_params.get("view") == "jobs":  # pressed in the jobs table
            return await jobs_fragment(request)
        return await job_progress(request, job_id)

    # -- one problem ---------------------------------------------------------------------------

    @app.get("/jobs/{job_id}/problems/{item_id:path}", response_class=HTMLResponse)
    async def problem_page(request: Request, job_id: int, item_id: str) -> HTMLResponse:
        _job_id(job_id)

        def load() -> dict[str, Any]:
            with read_scope(url) as s:
                trail = audit.problem_trail(session=s, job_id=job_id, item_id=item_id)
                if trail is None:
                    raise HTTPException(404, f"job {job_id} has no problem {item_id!r}")
                search = audit.problem_search(session=s, job=trail.job, problem=trail.problem)
                models = roster.names(trail.job.models)
                outputs = {o.id: o for st in trail.steps for o in st.outputs}
                chosen = trail.selection.output_id if trail.selection is not None else None
                return {
                    "trail": trail,
                    "job": trail.job,
                    "problem": trail.problem,
                    "models": models,
                    "rounds": _rounds(trail, models),
                    "outputs": outputs,
                    "search": search,
                    "tree": tree_view(search, chosen) if search is not None else None,
                    "outcome": browse.outcome_of(trail.problem),
                }

        return page(request, "problem.html", **await run_in_threadpool(load))

    # -- two jobs ----------------------------------------------------------------------------

    @app.get("/compare", response_class=HTMLResponse)
    async def compare_page(request: Request) -> HTMLResponse:
        first = _job_id(_int_or_none(request.query_params.get("a"), "a"))
        second = _job_id(_int_or_none(request.query_params.get("b"), "b"))
        if first is None or second is None:
            raise HTTPException(400, "compare needs two jobs: ?a=JOB&b=JOB")

        def load() -> dict[str, Any]:
            with read_scope(url) as s:
                jobs = {j.id: j for j in browse.job_overviews(session=s, job_ids=[first, second])}
                missing = [i for i in (first, second) if i not in jobs]
                if missing:
                    raise HTTPException(404, f"no job {missing[0]}")
                cmp = browse.compare_jobs(session=s, first=first, second=second)
            math = any(_markup(j.problem_type) == "tex" for j in (jobs[first], jobs[second]))
            return {"a": jobs[first], "b": jobs[second], "cmp": cmp, "math": math}

        return page(request, "compare.html", **await run_in_threadpool(load))

    @app.exception_handler(HTTPException)
    async def error_page(request: Request, exc: HTTPException) -> HTMLResponse:
        response = page(request, "error.html", status=exc.status_code, message=str(exc.detail))
        response.status_code = exc.status_code
        return response

    return app


def _authorized(header: str | None, token: str) -> bool:
    """`Authorization: Basic` with the token as password (any user name), or `Bearer <token>`."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return secrets.compare_digest(value.strip().encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return secrets.compare_digest(decoded.partition(":")[2].encode(), token.encode())
    return False
