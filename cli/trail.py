"""Rich rendering of an audit trail for `rstar show`: each step, its output and its model call,
and a search's tree. Imported by `show` only: the trail needs the strategies and the audit queries,
which the other commands' start-up should not pay for.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text
from rich.tree import Tree as RichTree

from cli.render import SafeText, shown_title
from db.audit import ProblemTrail, StepTrail
from db.jobs import stored_judgement
from db.models import ModelCall, Output
from rstar.roster import describe
from rstar.strategies.base import REVIEW_KINDS, SOLUTION_KINDS
from rstar.strategies.mcts.view import NodeView, tree_view

TITLES = {
    "generate": "solves",
    "review": "reviews the peer's solution ({parent})",
    "refine": "refines its solution ({parent})",
    "complete": "completes the peer's solution ({parent}) from its cut-off point",
    "select": "selection",
}


def print_trail(console: Console, trail: ProblemTrail, *, with_calls: bool, search: Any = None) -> None:
    """The problem, then its steps (a search: its tree and the discriminator's completions; with
    `with_calls`, its steps and calls too), then the selection."""
    p = trail.problem
    head = SafeText()
    head.append(f"problem {p.item_id} (line {p.line}) — {p.status}\n", style="bold")
    roster = ", ".join(describe(m) for m in trail.job.models)
    kind = f", {trail.job.problem_type} answers" if trail.job.problem_type != "number" else ""
    head.append(f"job {trail.job.id} ({trail.job.strategy}{kind}) · models: {roster}\n", style="dim")
    head.append(p.question + "\n")
    head.append(
        f"reference answer: {_known(p.reference_answer)}   final answer: {_known(p.final_answer)}"
        f"   rounds: {_known(p.rounds_used)}"
    )
    if p.reference_answer is not None and p.status == "answered":
        # The same judgement as `rstar results` and `rstar report`.
        head.append(f"   correct: {'yes' if stored_judgement(p) else 'no'}")
    if p.meta is not None:
        head.append(f"\nmeta: {json.dumps(p.meta, ensure_ascii=False)}", style="dim")
    if p.error:
        head.append(f"\nerror: {p.error}", style="red")
    console.print(Panel(head, title="problem"))
    if search is not None:
        print_search(console, search, chosen=trail.selection.output_id if trail.selection else None)
    for st in trail.steps:
        if st.step.kind != "select" and (search is None or with_calls):  # the selection says it all
            _print_step(console, st, with_calls=with_calls, sent=trail.sent)
    if trail.selection is not None:
        chosen = trail.chosen
        by = f"{chosen.model}'s {chosen.kind} #{chosen.id}" if chosen is not None else "no output"
        console.print(
            Panel(
                SafeText(f"answer: {trail.selection.answer}\n{trail.selection.reason}"),
                title=shown_title(f"selection ({by})"),
                border_style="green",
            )
        )


def _describe(out: Output | None) -> str:
    return f"{out.model}'s #{out.id}" if out is not None else "an earlier output"


def _print_step(console: Console, st: StepTrail, *, with_calls: bool, sent: dict[int, Any]) -> None:
    s = st.step
    who = f"{s.model} " if s.model else ""
    what = TITLES.get(s.kind, s.kind).format(parent=_describe(st.parent))
    if s.kind not in TITLES and st.parent is not None:
        what += f" (from {_describe(st.parent)})"
    title = f"round {s.round} · {who}{what} · {s.status} · step {s.key}"
    if st.output is not None:
        title += f" · output #{st.output.id}"
    body = SafeText()
    if st.output is not None:
        _print_output(body, st.output)
    if s.error:
        body.append(f"\nerror: {s.error}", style="red")
    console.print(Panel(body, title=shown_title(title)))
    if with_calls:
        for call in st.calls:
            _print_call(console, call, s.model, sent.get(call.id))


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


def _print_call(console: Console, call: ModelCall, model: str | None, request: Any) -> None:
    text = SafeText()
    latency = f"{call.latency_ms:.0f} ms" if call.latency_ms is not None else "?"
    text.append(
        f"attempt {call.attempt} · model {model} · {call.outcome} · {call.endpoint}"
        f" · served {_known(call.model)} · {_tokens(call)} · {latency}"
        f" · finish {_known(call.finish_reason)}\n",
        style="dim",
    )
    if call.error:
        text.append(f"error: {call.error}\n", style="red")
    for message in (request or {}).get("messages", []):
        text.append(f"[{message.get('role')}] ", style="cyan")
        text.append(str(message.get("content")) + "\n")
    if call.response_text is not None:
        text.append("[response] ", style="magenta")
        text.append(call.response_text)
    console.print(Panel(text, title=f"model call #{call.id}", border_style="dim"))


def print_search(console: Console, report: Any, *, chosen: int | None) -> None:
    """An rstar search (`RStarStrategy.report`): the tree with each node's action, depth, visits,
    Q and answer, the winning path marked; then the candidates and their completions. Model text
    is shown as plain Text, never as markup."""
    tree = report.tree
    done = len(report.search.rollouts)

    def label(node: NodeView) -> Text:
        t = SafeText()
        t.append(node.mark + node.name, style="bold green" if node.on_path else "bold")
        t.append(f" · depth {node.depth} · visits {node.visits} · Q {node.q:.2f}", style="dim")
        if node.value is not None:
            t.append(f" · value {node.value:.2f}", style="dim")
        if node.answer is not None:
            t.append(f" · answer {node.answer}")
        if node.expanding:
            t.append(" · expanding", style="yellow")
        if node.text:
            t.append("\n" + _clip(node.text), style=None)
        return t

    top = tree_view(report, chosen)
    root = RichTree(label(top))

    def add(parent: RichTree, node: NodeView) -> None:
        for child in node.children:
            add(parent.add(label(child)), child)

    add(root, top)
    title = f"search tree · {done} rollout(s) done · {len(tree.nodes) - 1} nodes"
    console.print(Panel(root, title=shown_title(title)))
    if not report.candidates:
        return
    body = SafeText()
    for c in report.candidates:
        verdict = report.verdicts.get(c.node) if report.verdicts is not None else None
        found = f" · found {c.freq} times" if c.freq > 1 else ""
        body.append(f"#{c.node} answers {c.answer} · reward {c.reward:.2f}{found}", style="bold")
        if verdict is not None:
            state = "consistent" if verdict.consistent else "not consistent"
            body.append(f" · {verdict.agreeing} of {verdict.completions} completions agree: {state}")
        body.append("\n")
        for prefix, answer in report.completions.get(c.node, []):
            body.append(f"  cut after {_clip(prefix, 80)!r} → {answer}\n", style="dim")
    if report.majority is not None:
        body.append(f"generator @maj (before the discriminator): {report.majority}\n", style="dim")
    skipped = " (skipped: one answer holds nearly all candidates)" if report.verdicts is None else ""
    console.print(
        Panel(body, title=shown_title(f"discriminator · {len(report.candidates)} candidates{skipped}"))
    )


def _tokens(call: ModelCall) -> str:
    """Tokens as every release printed them ("tokens PROMPT+GENERATED"); "tokens unknown" for a call
    that has none (a failed call; the server did not say)."""
    if call.prompt_tokens is None and call.completion_tokens is None:
        return "tokens unknown"
    return f"tokens {_known(call.prompt_tokens)}+{_known(call.completion_tokens)}"


def _known(value: object) -> str:
    """A stored value, or "-" where none is known (not Python's "None")."""
    return "-" if value is None else str(value)


def _clip(text: str, limit: int = 160) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
