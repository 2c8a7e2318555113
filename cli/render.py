"""Rich rendering of an audit trail for `rstar show`."""

from __future__ import annotations

import os

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from db.audit import ProblemTrail, StepTrail
from db.models import ModelCall, Output
from rstar.reports import judge
from rstar.strategies.base import REVIEW_KINDS, SOLUTION_KINDS

TITLES = {
    "generate": "solves",
    "review": "reviews the peer's solution ({parent})",
    "refine": "refines its solution ({parent})",
    "complete": "completes the peer's solution ({parent}) from its cut-off point",
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
    roster = ", ".join(f"{m['name']} {m['url']}" for m in trail.job.models)
    head.append(f"job {trail.job.id} ({trail.job.strategy}) · models: {roster}\n", style="dim")
    head.append(p.question + "\n")
    head.append(
        f"reference answer: {p.reference_answer}   final answer: {p.final_answer}   rounds: {p.rounds_used}"
    )
    if p.reference_answer is not None and p.status == "answered":
        # The same judgement as `rstar results` and `rstar report`.
        head.append(f"   correct: {'yes' if judge(p.status, p.final_answer, p.reference_answer) else 'no'}")
    if p.error:
        head.append(f"\nerror: {p.error}", style="red")
    console.print(Panel(head, title="problem"))
    for st in trail.steps:
        if st.step.kind != "select":  # the selection panel below says it all
            _print_step(console, st, with_calls=with_calls)
    if trail.selection is not None:
        chosen = trail.chosen
        by = f"{chosen.model}'s {chosen.kind} #{chosen.id}" if chosen is not None else "no output"
        console.print(
            Panel(
                Text(f"answer: {trail.selection.answer}\n{trail.selection.reason}"),
                title=f"selection ({by})",
                border_style="green",
            )
        )


def _describe(out: Output | None) -> str:
    return f"{out.model}'s #{out.id}" if out is not None else "an earlier output"


def _print_step(console: Console, st: StepTrail, *, with_calls: bool) -> None:
    s = st.step
    who = f"{s.model} " if s.model else ""
    what = TITLES.get(s.kind, s.kind).format(parent=_describe(st.parent))
    if s.kind not in TITLES and st.parent is not None:
        what += f" (from {_describe(st.parent)})"
    title = f"round {s.round} · {who}{what} · {s.status} · step {s.key}"
    if st.output is not None:
        title += f" · output #{st.output.id}"
    body = Text()
    if st.output is not None:
        _print_output(body, st.output)
    if s.error:
        body.append(f"\nerror: {s.error}", style="red")
    console.print(Panel(body, title=escape(title)))
    if with_calls:
        for call in st.calls:
            _print_call(console, call, s.model)


def _print_output(body: Text, out: Output) -> None:
    p = out.payload or {}
    if out.kind in SOLUTION_KINDS:
        for i, line in enumerate(p.get("steps") or [], 1):
            body.append(f"{i}. {line}\n")
        body.append(f"final answer: {p.get('answer_raw')!r} → {out.answer}", style="bold")
    elif out.kind in REVIEW_KINDS:
        scores = list(p.get("scores") or [None, None, None]) + [None] * 3
        body.append(f"verdict: {p.get('verdict')}", style="bold")
        body.append(f"   scores: logic {scores[0]}, calculation {scores[1]}, completeness {scores[2]}\n")
        for issue in p.get("issues") or []:
            body.append(f"- step {issue.get('step')}: {issue.get('description')}\n")
        if p.get("suggested_answer") is not None:
            body.append(f"reviewer's answer: {p.get('suggested_answer')}\n")
    else:  # a kind of another strategy: its payload as it is
        for key, value in p.items():
            body.append(f"{key}: {value}\n")
        body.append(f"answer: {out.answer}", style="bold")
    if out.parse_error:
        body.append(f"\nparse: {out.parse_error}", style="yellow")


def _print_call(console: Console, call: ModelCall, model: str | None) -> None:
    text = Text()
    latency = f"{call.latency_ms:.0f} ms" if call.latency_ms is not None else "?"
    text.append(
        f"attempt {call.attempt} · model {model} · {call.outcome} · {call.endpoint} · served {call.model} · "
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
