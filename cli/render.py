"""Rich rendering of an audit trail for `rstar show`."""

from __future__ import annotations

import os

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from db.audit import ProblemTrail, StepTrail
from db.models import ModelCall
from rstar.answers import answers_equal

TITLES = {
    "generate": "solves",
    "review": "reviews the peer's solution",
    "refine": "refines",
    "complete": "completes the peer's solution from its cut-off point",
    "select": "selection",
}


def make_console(*, stderr: bool = False) -> Console:
    """A Rich console; piped to a file or a CI log it is 160 columns wide instead of Rich's 80,
    so result tables are not squeezed (COLUMNS still wins when set)."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=160)
    return console


def print_trail(console: Console, trail: ProblemTrail, *, with_calls: bool) -> None:
    p = trail.problem
    head = Text()
    head.append(f"problem {p.item_id} (line {p.line}) — {p.status}\n", style="bold")
    head.append(p.question + "\n")
    head.append(
        f"reference answer: {p.reference_answer}   final answer: {p.final_answer}   rounds: {p.rounds_used}"
    )
    if p.reference_answer is not None and p.status == "answered":
        # The same judgement as `rstar results` and `rstar report`.
        head.append(f"   correct: {'yes' if answers_equal(p.final_answer, p.reference_answer) else 'no'}")
    if p.error:
        head.append(f"\nerror: {p.error}", style="red")
    console.print(Panel(head, title="problem"))
    for st in trail.steps:
        if st.step.kind != "select":  # the selection panel below says it all
            _print_step(console, st, with_calls=with_calls)
    if trail.selection is not None:
        console.print(
            Panel(
                Text(f"answer: {trail.selection.answer}\n{trail.selection.reason}"),
                title=f"selection (solution #{trail.selection.solution_id})",
                border_style="green",
            )
        )


def _print_step(console: Console, st: StepTrail, *, with_calls: bool) -> None:
    s = st.step
    who = f"{s.role} " if s.role else ""
    title = f"round {s.round} · {who}{TITLES.get(s.kind, s.kind)} · {s.status} · step {s.key}"
    body = Text()
    if st.solution is not None:
        sol = st.solution
        for i, line in enumerate(sol.steps or [], 1):
            body.append(f"{i}. {line}\n")
        body.append(f"final answer: {sol.answer_raw!r} → {sol.answer}", style="bold")
        if sol.parse_error:
            body.append(f"\nparse: {sol.parse_error}", style="yellow")
    if st.review is not None:
        r = st.review
        body.append(f"verdict: {r.verdict}", style="bold")
        body.append(
            f"   scores: logic {r.logical_consistency}, calculation {r.calculation_accuracy}, "
            f"completeness {r.step_completeness}\n"
        )
        for issue in r.issues or []:
            body.append(f"- step {issue.get('step')}: {issue.get('description')}\n")
        if r.suggested_answer is not None:
            body.append(f"reviewer's answer: {r.suggested_answer}\n")
        if r.parse_error:
            body.append(f"parse: {r.parse_error}", style="yellow")
    if s.error:
        body.append(f"\nerror: {s.error}", style="red")
    console.print(Panel(body, title=escape(title)))
    if with_calls:
        for call in st.calls:
            _print_call(console, call)


def _print_call(console: Console, call: ModelCall) -> None:
    text = Text()
    latency = f"{call.latency_ms:.0f} ms" if call.latency_ms is not None else "?"
    text.append(
        f"attempt {call.attempt} · {call.outcome} · {call.endpoint} · {call.model} · "
        f"tokens {call.prompt_tokens}+{call.completion_tokens} · {latency} · finish {call.finish_reason}\n",
        style="dim",
    )
    if call.error:
        text.append(f"error: {call.error}\n", style="red")
    for message in (call.request or {}).get("messages", []):
        text.append(f"[{message.get('role')}] ", style="cyan")
        text.append(str(message.get("content")) + "\n")
    if call.response_text is not None:
        text.append("[response] ", style="magenta")
        text.append(call.response_text)
    console.print(Panel(text, title=f"model call #{call.id}", border_style="dim"))
