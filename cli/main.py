"""The `rstar` command: a thin layer that parses arguments, calls one function, prints the result."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from cli import problems_file
from cli.demo import demo_command
from cli.export import export_command, write_records
from cli.local import models_app, serve_local_command
from cli.render import SafeText, make_console, print_error, shown_title
from cli.report import report_command
from cli.ui import ui_command
from db import migrate
from db.jobs import ProblemResult, iter_problem_results, rollout_progress, status_counts
from db.models import MAX_ROW_ID, TERMINAL_PROBLEM_STATES, Job, ProblemStatus, utcnow
from db.session import session_scope
from rstar.inputs import FieldNames, InputError, ProblemReader, guess_fields
from rstar.problem_types import GUESS_SAMPLE, PROBLEM_TYPES, get_problem_type, guess_problem_type
from rstar.roster import ModelEntry, RosterError, check_url, describe, pair, parse_model_spec
from rstar.strategies import STRATEGIES, ParamError, get_strategy
from workers.redact import url_credentials
from workers.settings import Settings, get_settings

app = typer.Typer(help="Batch mutual reasoning with two small language models.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.command("serve-local")(serve_local_command)
app.command("demo")(demo_command)
app.command("report")(report_command)
app.command("export")(export_command)
app.command("ui")(ui_command)

console = make_console()
err = make_console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    print_error(err, message)
    return typer.Exit(code)


def _job_or_fail(session: Any, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise fail(f"no job {job_id} in {migrate.redact_url(get_settings().database_url)}")
    return job


def _ensure_schema() -> None:
    try:
        migrate.ensure_current(get_settings().database_url)
    except migrate.SchemaOutOfDateError as exc:
        raise fail(str(exc)) from None


# -- strategies --------------------------------------------------------------------------------


def _default(strategy: str, param: str) -> Any:
    return STRATEGIES[strategy].parameters.model_fields[param].default


@app.command("strategies")
def strategies_command(
    name: Annotated[str | None, typer.Argument(help="One strategy (default: every one).")] = None,
) -> None:
    """List the strategies and each one's parameters: what a value must be, its default, its use."""
    if name is not None and name not in STRATEGIES:
        raise fail(f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}")
    for key in [name] if name else sorted(STRATEGIES):
        cls = STRATEGIES[key]
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0]
        most = "any number of" if cls.max_models is None else f"at most {cls.max_models}"
        table = Table(title=f"{key}: {cls.min_models} model(s) at least, {most}", title_justify="left")
        for column in ("parameter", "value", "default", "what it does"):
            table.add_column(column, overflow="fold")
        for param, must, default, meaning in cls.parameters.help():
            table.add_row(param, must, json.dumps(default), meaning)
        console.print(SafeText(" ".join(doc.split())))
        console.print(table)


# -- submit ------------------------------------------------------------------------------------


@app.command()
def submit(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSONL: one {question, id?, answer?, meta?} per line; or a JSON array of records, as"
            ' the rStar authors publish their sets ({"id", "problem", "solution"}).'
        ),
    ],
    name: Annotated[str | None, typer.Option(help="A name for the job (default: the file name).")] = None,
    resume_from: Annotated[
        int | None,
        typer.Option(
            help="Reuse the replies recorded in this job for identical model requests.", min=1, max=MAX_ROW_ID
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="A model of the roster as NAME=URL, repeatable, in order (e.g. --model A=http://tgi-a:8080 "
            '--model B=... --model C=...) [env RSTAR_MODELS="A=url,B=url"].',
        ),
    ] = None,
    model_a: Annotated[
        str | None, typer.Option(help="Shorthand for --model A=URL [env RSTAR_MODEL_A_URL].")
    ] = None,
    model_b: Annotated[
        str | None, typer.Option(help="Shorthand for --model B=URL [env RSTAR_MODEL_B_URL]; default A's URL.")
    ] = None,
    check_models: Annotated[
        bool | None,
        typer.Option(
            help="Refuse the job when a model's server does not answer HTTP (default) "
            "[env RSTAR_CHECK_MODELS].",
        ),
    ] = None,
    strategy: Annotated[str, typer.Option(help=f"One of: {', '.join(sorted(STRATEGIES))}.")] = "mutual",
    problem_type: Annotated[
        str | None,
        typer.Option(
            "--type",
            help="The form of the answers: "
            + "; ".join(f"{t.name}: {t.summary}" for t in PROBLEM_TYPES.values())
            + ". Default: guessed from the file's first reference answers (printed).",
        ),
    ] = None,
    question_field: Annotated[
        str | None,
        typer.Option(
            help='The field holding the question (default "question", or "problem" in the authors\' files).'
        ),
    ] = None,
    answer_field: Annotated[
        str | None,
        typer.Option(help='The field holding the reference answer (default "answer", or "solution").'),
    ] = None,
    id_field: Annotated[str | None, typer.Option(help='The field holding the id (default "id").')] = None,
    max_rounds: Annotated[
        int | None, typer.Option(help=f"Review rounds at most (default {_default('mutual', 'max_rounds')}).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature for solutions.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Max new tokens per solution.")] = None,
    seed: Annotated[int | None, typer.Option(help="Base seed; each step derives its own.")] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            help=f"self-consistency: samples per problem (default {_default('self-consistency', 'samples')})."
        ),
    ] = None,
    solution_format: Annotated[
        str | None,
        typer.Option(help="How solutions are written: json (default) or prose (answer in \\boxed{})."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="Any other strategy parameter as NAME=VALUE, VALUE in JSON (e.g. margin=3, "
            "greedy_first=false); repeatable. `rstar strategies` lists each strategy's parameters, "
            "`rstar show` a job's.",
        ),
    ] = None,
) -> None:
    """Validate FILE, create the job and its problems in one transaction, and enqueue the work."""
    from tasks.submit import BrokerUnavailableError, ResumeFromError, SendError, submit_job

    settings = get_settings()
    try:
        models = _roster(model or [], model_a, model_b, settings)
    except RosterError as exc:
        raise fail(f"{exc}; nothing was submitted") from None
    limits = {
        "max_question_chars": settings.max_question_chars,
        "max_problems": settings.max_problems_per_job,
    }
    max_bytes = settings.max_input_bytes
    with ExitStack() as stack:
        try:
            path = stack.enter_context(problems_file.readable_twice(file, max_bytes=max_bytes))
            reading = _reading(path, problem_type, question_field, answer_field, id_field, limits, max_bytes)
            count = problems_file.check(path, ProblemReader(**reading, **limits), max_bytes=max_bytes)
        except OSError as exc:
            raise fail(f"cannot read {file}: {exc.strerror}") from None
        except problems_file.TooLarge:
            raise fail(
                f"{file}: nothing was submitted: it is larger than {max_bytes:,} bytes"
                " (RSTAR_MAX_INPUT_BYTES); split it into several jobs"
            ) from None
        except problems_file.ArrayTooLarge:
            raise fail(
                f"{file}: nothing was submitted: a JSON array is read whole, and this one is larger than"
                f" {problems_file.MAX_ARRAY_BYTES:,} bytes; write it as JSONL (one record a line)"
            ) from None
        except InputError as exc:
            raise fail(f"{file}: nothing was submitted.\n{exc}") from None
        # Read again while the job's transaction inserts them; the database's unique key on
        # (job, id) stands in for the first pass's check of repeated ids.
        again = ProblemReader(check_duplicates=False, **reading, **limits)
        problems = problems_file.read_again(path, again, max_bytes=max_bytes, expected=count)
        given = {
            "max_rounds": max_rounds,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "samples": samples,
            "solution_format": solution_format,
        }
        params = {k: v for k, v in given.items() if v is not None}
        for item in param or []:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise fail(f"--param {item!r}: expected NAME=VALUE")
            try:
                params[key.strip()] = json.loads(raw)
            except json.JSONDecodeError:
                params[key.strip()] = raw  # a bare word is a string
        try:  # what a problem may cost, before anything runs
            budget = get_strategy(strategy, params, kind=reading["kind"]).budget()
        except ParamError as exc:
            raise fail(str(exc)) from None
        if budget:
            err.print(budget, markup=False, highlight=False, soft_wrap=True)
        try:
            done = submit_job(
                settings=settings,
                name=name or file.stem,
                strategy_name=strategy,
                params=params,
                models=models,
                source=str(file),
                problems=problems,
                problem_type=reading["kind"].name,
                resume_from=resume_from,
                check_models=settings.check_models if check_models is None else check_models,
                # The id first, on stdout: an interrupted submit still leaves the user its job.
                on_stored=lambda job_id: print(job_id, flush=True),
            )
        except SendError as exc:
            raise fail(str(exc), code=1) from None
        except (ParamError, migrate.SchemaOutOfDateError, ResumeFromError) as exc:
            raise fail(str(exc)) from None
        except RosterError as exc:
            raise fail(f"{exc}; nothing was submitted") from None
        except BrokerUnavailableError as exc:
            raise fail(str(exc), code=1) from None
        except problems_file.FileChanged as exc:
            raise fail(f"{file}: nothing was submitted: it changed while being submitted ({exc})") from None
        err.print(
            f"job {done.job_id}: {done.problems} problem{'s' if done.problems != 1 else ''} enqueued on"
            f" {', '.join(done.queues)} "
            f"(models {', '.join(done.models)})"
        )
        if done.window < done.problems:
            err.print(
                f"window: {done.window} problems at once ({done.why_window}); the others start in"
                " input order as those end",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if done.unused:
            err.print(
                f"strategy {strategy} uses {len(done.models)} model(s); not used: {', '.join(done.unused)}"
            )
        if any(url_credentials(u) for m in models for u in m.urls):
            err.print(
                "the credentials in the endpoint URLs were not stored: give them to the workers "
                "(`rstar worker --endpoint URL`, or RSTAR_MODELS)"
            )


def _reading(
    path: Path,
    type_name: str | None,
    question_field: str | None,
    answer_field: str | None,
    id_field: str | None,
    limits: dict[str, int],
    max_bytes: int,
) -> dict[str, Any]:
    """How to read the file (`ProblemReader`'s kind, fields and unit), the type and the field
    names guessed where not given, and said on stderr."""
    unit = problems_file.unit_of(path)
    head = problems_file.head(path, count=GUESS_SAMPLE, max_bytes=max_bytes)
    guessed = guess_fields(problems_file.first_value(head))
    fields = FieldNames(
        question=question_field or guessed.question,
        answer=answer_field or guessed.answer,
        id=id_field or guessed.id,
    )
    if fields.renamed:
        err.print(
            f"fields: question from {fields.question!r}, answer from {fields.answer!r},"
            f" id from {fields.id!r}; the others are kept in meta",
            markup=False,
            highlight=False,
        )
    if type_name is not None:
        try:
            kind = get_problem_type(type_name)
        except ValueError as exc:
            raise fail(f"--type: {exc}") from None
        err.print(f"problem type: {kind.name}", markup=False, highlight=False)
    else:
        sample = ProblemReader(fields=fields, unit=unit, keep_references=GUESS_SAMPLE, **limits)
        for _ in sample.read(head):  # errors are left to the full check
            pass
        kind, why = guess_problem_type(sample.references)
        err.print(
            f"problem type: {kind.name} (guessed: {why}; --type to choose)", markup=False, highlight=False
        )
    return {"kind": kind, "fields": fields, "unit": unit}


def _roster(
    specs: list[str], model_a: str | None, model_b: str | None, settings: Settings
) -> list[ModelEntry]:
    """--model NAME=URL entries, then --model-a / --model-b; none given: the environment's."""
    entries = [parse_model_spec(spec) for spec in specs]
    if model_a or model_b:
        url_a = model_a or settings.model_a_url
        if not url_a:
            raise RosterError("--model-b without model A: pass --model-a URL too")
        if model_b or not specs:  # alone, --model-a is a pair: B serves from A's URL by default
            shorthand = pair(url_a, model_b or settings.model_b_url, what_a="--model-a", what_b="--model-b")
        else:
            shorthand = [ModelEntry("A", check_url(url_a, what="--model-a"))]
        entries = shorthand + entries
    return entries or settings.roster()


# -- worker ------------------------------------------------------------------------------------


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(
            help="Serve this endpoint's queue and call it (repeatable; give every replica of a model,"
            " its first URL included); default: every server of RSTAR_MODELS."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Threads [env RSTAR_WORKER_CONCURRENCY]; default: a quarter more than the in-flight "
            "slots of every endpoint (their limits from /info or /props), plus one."
        ),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker (threads pool) on the endpoints' queues and the control queue.

    Extra arguments go to `celery worker` unchanged.
    """
    # Imported here: Celery and the Redis transport are a third of every other command's start-up.
    from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint

    settings = get_settings()
    try:
        endpoints = endpoint or [u for m in settings.roster() for u in m.urls]
    except RosterError as exc:  # a malformed RSTAR_MODELS is refused, not skipped
        raise fail(str(exc)) from None
    if not endpoints:
        raise fail("no endpoints: pass --endpoint URL or set RSTAR_MODELS (or RSTAR_MODEL_A_URL / _B_URL)")
    queues = sorted({CONTROL_QUEUE, *(queue_for_endpoint(u) for u in endpoints)})
    if concurrency is not None:
        threads, sizing = concurrency, f"worker: {concurrency} threads (--concurrency)"
    elif settings.worker_concurrency is not None:
        threads = settings.worker_concurrency
        sizing = f"worker: {threads} threads (RSTAR_WORKER_CONCURRENCY)"
    else:
        threads, sizing = _size_pool(list(dict.fromkeys(endpoints)), settings)
    err.print(sizing, markup=False, highlight=False, soft_wrap=True)
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "--pool", "threads",
        "--concurrency", str(threads),
        "--queues", ",".join(queues),
        "--loglevel", loglevel,
        *(["--task-events"] if settings.task_events else []),
        *ctx.args,
    ]  # fmt: skip
    err.print(f"worker on {', '.join(queues)}")
    if endpoint:  # their credentials, for the Celery process (its environment: argv shows in `ps`)
        os.environ["RSTAR_WORKER_ENDPOINTS"] = " ".join(endpoint)
    os.execvp(argv[0], argv)


def _size_pool(endpoints: list[str], settings: Settings) -> tuple[int, str]:
    """The default pool: every endpoint's in-flight share for this process, asked of the servers
    (at once: an unreachable one may take the probe's timeout), a quarter more, plus the control
    queue's. Returns the threads and the start-up line that explains them."""
    from concurrent.futures import ThreadPoolExecutor

    from workers.celery_app import CONTROL_QUEUE
    from workers.client import InFlightShare, in_flight_share
    from workers.errors import UnavailableError
    from workers.redact import scrub, url_password
    from workers.settings import CONTROL_THREADS, FALLBACK_SLOTS, pool_threads

    token = settings.api_token.get_secret_value() if settings.api_token else None

    def share_of(url: str) -> InFlightShare:
        try:
            return in_flight_share(
                url, max_in_flight=settings.max_in_flight, share=settings.workers_per_endpoint, token=token
            )
        except UnavailableError as exc:
            return InFlightShare(None, f"not reachable: {exc.__cause__ or exc.message}")

    with ThreadPoolExecutor(max_workers=len(endpoints)) as pool:
        shares = list(pool.map(share_of, endpoints))
    threads = pool_threads((s.slots for s in shares), fallback=FALLBACK_SLOTS, control=CONTROL_THREADS)
    parts = [
        f"{s.slots} for {url} ({s.source})"
        if s.slots is not None
        else f"{FALLBACK_SLOTS} for {url} ({s.source}; {FALLBACK_SLOTS} assumed)"
        for url, s in zip(endpoints, shares, strict=True)
    ]
    line = f"worker: {threads} threads = 1.25 x ({' + '.join(parts)}) + {CONTROL_THREADS} for {CONTROL_QUEUE}"
    if any(s.slots is None for s in shares):
        line += (
            "\nworker: an endpoint did not say its limit; to fill it, pass --concurrency or set "
            "RSTAR_MAX_IN_FLIGHT (or restart the worker once the server is up)"
        )
    # The URLs (and a probe's error) may carry a password; the token too.
    return threads, scrub(line, token, *(url_password(u) for u in endpoints))


# -- status ------------------------------------------------------------------------------------


def _status_view(job_id: int) -> tuple[Table, bool]:
    with session_scope(get_settings().database_url) as session:
        job = _job_or_fail(session, job_id)
        counts = status_counts(session=session, job_id=job_id)
        job_status, name, strategy, problem_type = job.status, job.name, job.strategy, job.problem_type
        elapsed = ((job.finished_at or utcnow()) - job.created_at).total_seconds() if job.created_at else 0.0
        models = ", ".join(describe(m) for m in job.models)
        searching = strategy in STRATEGIES and STRATEGIES[strategy].searches
        rollouts = (job.params or {}).get("rollouts") if searching else None
        rolled = rollout_progress(session=session, job_id=job_id, rollouts=rollouts) if rollouts else None
    total = sum(counts.values())
    finished = sum(counts[s.value] for s in TERMINAL_PROBLEM_STATES)
    kind = f", {problem_type} answers" if problem_type != "number" else ""  # a number job reads as before
    table = Table(
        title=shown_title(f"job {job_id} ({name}, {strategy}{kind}; models {models}): {job_status}")
    )
    states = [s.value for s in ProblemStatus]
    for state in states:
        table.add_column(state, justify="right")
    table.add_row(*(str(counts.get(s, 0)) for s in states))
    # The job's own time since submit (a Progress made per view would always say 0:00:00).
    clock = f"{int(elapsed) // 3600}:{int(elapsed) // 60 % 60:02d}:{int(elapsed) % 60:02d}"
    progress = Progress(TextColumn("done"), BarColumn(), MofNCompleteColumn(), TextColumn(clock))
    progress.add_task("", total=total or 1, completed=finished)
    grid = Table.grid()
    grid.add_row(table)
    grid.add_row(progress.get_renderable())
    if rolled is not None:
        grid.add_row(
            Text(
                f"rollouts done per problem: mean {rolled.mean:.1f} of {rollouts}"
                f" (min {rolled.least}, max {rolled.most}); {rolled.judging} in the discriminator"
            )
        )
    return grid, total > 0 and finished == total


@app.command()
def status(
    job: Annotated[int, typer.Argument(help="Job id.", min=1, max=MAX_ROW_ID)],
    watch: Annotated[bool, typer.Option(help="Follow live until the job finishes.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 1.0,
) -> None:
    """Counts per state and a progress bar."""
    _ensure_schema()
    view, done = _status_view(job)
    if not watch:
        console.print(view)
        return
    if not console.is_terminal:
        # A pipe or a log has no screen to redraw: a new view whenever the counts move.
        console.print(view)
        last = _counts_line(view)
        while not done:
            time.sleep(interval)
            view, done = _status_view(job)
            if _counts_line(view) != last or done:
                console.print(view)
                last = _counts_line(view)
        return
    with Live(view, console=console, refresh_per_second=4) as live:
        while not done:
            time.sleep(interval)
            view, done = _status_view(job)
            live.update(view)


def _counts_line(view: Table) -> str:
    """The view's text without its clock: what changed since the last one printed."""
    capture = Console(width=200, markup=False)
    with capture.capture() as text:
        capture.print(view)
    return re.sub(r"\d+:\d\d:\d\d", "", text.get())


# -- results -----------------------------------------------------------------------------------


@app.command()
def results(
    job: Annotated[int, typer.Argument(help="Job id.", min=1, max=MAX_ROW_ID)],
    format: Annotated[str, typer.Option("--format", "-f", help="jsonl or csv.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File (default: stdout).")] = None,
) -> None:
    """One record per problem: answer, reference, match, rounds, calls, tokens, time, status, error."""
    if format not in ("jsonl", "csv"):
        raise fail(f"--format must be jsonl or csv, not {format!r}")
    _ensure_schema()
    with session_scope(get_settings().database_url) as session:
        _job_or_fail(session, job)
        # Streamed: a batch of problems at a time from the database to the file.
        rows = (asdict(r) for r in iter_problem_results(session=session, job_id=job))
        written = write_records(rows, tuple(ProblemResult.__dataclass_fields__), format, output)
    if output:
        err.print(SafeText(f"{written} records written to {output}"))


# -- show --------------------------------------------------------------------------------------


@app.command()
def show(
    job: Annotated[int, typer.Argument(help="Job id.", min=1, max=MAX_ROW_ID)],
    item: Annotated[str, typer.Argument(help="Problem id (the input's `id`, or its line number).")],
    calls: Annotated[bool, typer.Option(help="Include every model call's prompt and response.")] = True,
) -> None:
    """The whole audit trail of one problem."""
    from cli.trail import print_trail
    from db import audit

    _ensure_schema()
    with session_scope(get_settings().database_url) as session:
        _job_or_fail(session, job)
        trail = audit.problem_trail(session=session, job_id=job, item_id=item)
        search = (
            audit.problem_search(session=session, job=trail.job, problem=trail.problem)
            if trail is not None
            else None
        )
    if trail is None:
        raise fail(f"job {job} has no problem with id {item!r}")
    print_trail(console, trail, with_calls=calls, search=search)


# -- job control -------------------------------------------------------------------------------


@app.command()
def cancel(job: Annotated[int, typer.Argument(help="Job id.", min=1, max=MAX_ROW_ID)]) -> None:
    """Stop a job: workers skip its steps from now on; calls in flight finish and are recorded."""
    from db.recovery import cancel_job

    _ensure_schema()
    with session_scope(get_settings().database_url) as session:
        _job_or_fail(session, job)
        done = cancel_job(session=session, job_id=job)
    err.print(
        f"job {job} cancelled: {done.problems} open problem(s) stopped, {done.in_flight} call(s) in "
        f"flight will be recorded. `rstar resume {job}` continues it."
    )


@app.command()
def resume(job: Annotated[int, typer.Argument(help="Job id.", min=1, max=MAX_ROW_ID)]) -> None:
    """Continue a cancelled or stuck job: re-send its queued steps and those of dead workers."""
    from tasks.recovery import resume_job

    _ensure_schema()
    with session_scope(get_settings().database_url) as session:
        _job_or_fail(session, job)
    reopened, done = resume_job(job)
    err.print(
        f"job {job} resumed: {reopened} problem(s) reopened, {done.resent} queued step(s) re-sent, "
        f"{done.reclaimed} step(s) of dead workers re-sent, {done.advanced} problem(s) moved on, "
        f"{done.started} first step(s) of waiting problems sent"
    )


@app.command()
def retry(job: Annotated[int, typer.Argument(help="Job id.", min=1, max=MAX_ROW_ID)]) -> None:
    """Re-run the job's failed problems only, from their failed steps (recorded calls are kept)."""
    from db.recovery import retry_failed
    from tasks.recovery import recover

    _ensure_schema()
    with session_scope(get_settings().database_url) as session:
        _job_or_fail(session, job)
        done = retry_failed(session=session, job_id=job)
    if not done.problems:
        err.print(f"job {job} has no failed problems")
        return
    recover(job_id=job, resend_queued=True, expired_before=None)
    err.print(f"job {job}: {done.problems} failed problem(s) re-run from {done.steps} failed step(s)")


# -- db ----------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply the Alembic migrations to RSTAR_DATABASE_URL."""
    url = get_settings().database_url
    migrate.upgrade(url, revision)
    err.print(f"{migrate.redact_url(url)} is at revision {migrate.current_revision(url)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. 0002 or -1.")]) -> None:
    """Undo migrations down to REVISION; refused, with nothing changed, if it would lose data."""
    url = get_settings().database_url
    try:
        migrate.downgrade(url, revision)
    except migrate.DowngradeRefusedError as exc:
        raise fail(str(exc)) from None
    err.print(f"{migrate.redact_url(url)} is at revision {migrate.current_revision(url)}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the code's."""
    url = get_settings().database_url
    print(f"database: {migrate.current_revision(url)}  code: {migrate.head_revision(url)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
