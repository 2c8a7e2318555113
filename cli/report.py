"""`rstar report`: render an evaluation report (`rstar.reports`) as a Rich table, Markdown, CSV and PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.cells import cell_len
from rich.console import Console, Group
from rich.table import Table

from cli.render import SafeText, make_console, print_error, visible
from db import migrate
from db.models import MAX_ROW_ID
from db.reports import UnknownJobError, load_report
from db.session import session_scope
from rstar.exports import SpreadsheetCsv
from rstar.plots import cost_points, plot_accuracy_per_round, plot_accuracy_vs_calls, plot_accuracy_vs_tokens
from rstar.reports import (
    CompletionStats,
    JobSummary,
    Report,
    ReviewStats,
    TreeStats,
    is_correct,
)
from workers.settings import get_settings

SUMMARY_HEAD = (
    "job", "strategy", "parameters", "problems", "accuracy (95% CI)", "answered / unanswered / failed",
    "calls / problem", "requests / problem", "sequences / problem", "prompt tokens / problem",
    "generated tokens / problem", "wall s / problem", "model s / problem",
)  # fmt: skip
TREE_HEAD = (
    "job", "rollouts", "nodes / problem (max)", "depth (mean / max)", "requests / problem",
    "sequences / problem", "generated tokens / problem",
)  # fmt: skip
ROUNDS_HEAD = (
    "job", "rounds used", "stopped early", "threshold met", "refinement wrong→right / right→wrong",
    "verdicts right", "mutually consistent (right)", "accuracy after round 1, 2, ...",
)  # fmt: skip
SEARCH_HEAD = (
    "job", "right answer among the candidates", "generator @maj", "root A2 @maj",
    "final choice (the job's answer)",
)  # fmt: skip
ACTION_HEAD = (
    "job", "action", "generated tokens / problem", "share of tokens", "candidates right / found",
    "final choices from it (right)",
)  # fmt: skip
PAIRED_HEAD = (
    "first", "second", "shared", "both right", "only first", "only second", "neither",
    "difference", "McNemar exact p",
)  # fmt: skip
DEFINITIONS = """\
- accuracy: right answers (`rstar.answers.answers_equal` against the reference) over all problems;
  failed and unanswered problems count as wrong. 95% CI: Wilson score interval.
- calls: model calls recorded per problem (one per step attempt, failed attempts included);
  requests: the HTTP requests they took (a call that sampled n sequences from a server that ignores
  `n` sent n); sequences: the sequences generated (a call that sampled n counts n); tokens as the
  server counted them; wall s: from a problem's first step to its selection (queueing included);
  model s: the sum of its calls' latencies.
- threshold met: in the last round both reviews accepted and the two answers agree. Refinement
  wrong→right / right→wrong: refined solutions whose parent was wrong and which are right, and the
  reverse. Verdicts right: accepting a right answer or rejecting a wrong one ("uncertain" is not right).
- mutually consistent: the peer, given the first part of a solution, finished it with the same
  answer; (right): how many of those answers are right.
- accuracy after round r: the answer the strategy selects from rounds 1..r only.
- search (rstar): candidates are the search's final answers, one per distinct trajectory (found:
  how many, right: how many right), grouped by the action that ended the trajectory; tokens per
  action are the generated tokens of its steps (the discriminator's completions apart); generator
  @maj: the answer the candidates favour before the discriminator (the paper's "generator
  @maj"); root A2 @maj: the majority vote of the root's A2 samples alone (the search's own
  self-consistency); final choice: the job's answer.
- paired: jobs compared on the problems they share (by item id); difference = first minus second;
  McNemar's exact test is a two-sided binomial test on the problems only one of them got right.
"""


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _params(s: JobSummary) -> str:
    names = {"samples": "k", "max_rounds": "rounds ≤", "temperature": "T", "margin": "margin"}
    shown = [f"type={s.problem_type}"] if s.problem_type != "number" else []  # a number job reads as before
    shown += [
        f"{short}{'' if short.endswith('≤') else '='}{s.params[key]}"
        for key, short in names.items()
        if s.params.get(key) is not None
    ]
    return ", ".join(shown).replace("≤", "≤ ")


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summary_cells(s: JobSummary) -> list[str]:
    return [
        s.label,
        s.strategy,
        _params(s),
        str(s.problems),
        f"{_pct(s.accuracy)} ({s.correct}/{s.judged}) [{_pct(s.ci_low)}, {_pct(s.ci_high)}]",
        f"{s.answered} / {s.unanswered} / {s.failed}" + (f" (+{s.other} other)" if s.other else ""),
        f"{s.calls_per_problem:.2f}",
        f"{s.requests_per_problem:.2f}",
        f"{s.sequences_per_problem:.2f}",
        f"{s.prompt_tokens_per_problem:.0f}",
        f"{s.generated_tokens_per_problem:.0f}",
        _num(s.wall_s_per_problem),
        _num(s.model_s_per_problem),
    ]


def tree_cells(s: JobSummary) -> list[str]:
    t = s.tree
    assert t is not None
    return [
        s.label,
        str(s.params.get("rollouts", "-")),
        f"{t.nodes_mean:.1f} ({t.nodes_max})",
        f"{t.depth_mean:.1f} / {t.depth_max}",
        f"{s.requests_per_problem:.1f}",
        f"{s.sequences_per_problem:.1f}",
        f"{s.generated_tokens_per_problem:.0f}",
    ]


def rounds_cells(s: JobSummary) -> list[str]:
    rv, cp = s.reviews, s.completions
    return [
        s.label,
        ", ".join(f"{r}: {n}" for r, n in s.rounds.items()) or "-",
        f"{s.stopped_early}/{s.problems}",
        f"{rv.threshold_met}/{s.problems}" if rv else "-",
        f"{rv.wrong_to_right} / {rv.right_to_wrong} of {rv.refinements}" if rv else "-",
        f"{rv.verdicts_right}/{rv.verdicts} ({rv.uncertain} uncertain)" if rv else "-",
        f"{cp.consistent}/{cp.completed} ({cp.consistent_right} right)" if cp else "-",
        ", ".join(_pct(a) for a in s.accuracy_by_round) or "-",
    ]


def _of(right: int, judged: int) -> str:
    return f"{_pct(right / judged) if judged else '-'} ({right}/{judged})"


def search_cells(s: JobSummary) -> list[str]:
    x = s.search
    assert x is not None
    return [
        s.label,
        _of(x.right_held, x.judged),
        _of(x.majority_right, x.judged),
        _of(x.root_a2_right, x.judged),
        _of(x.chosen_right, x.judged),
    ]


def action_cells(s: JobSummary) -> list[list[str]]:
    assert s.search is not None
    return [
        [
            s.label,
            a.action,
            f"{a.generated_tokens_per_problem:.0f}",
            _pct(a.token_share),
            f"{a.candidates_right} / {a.candidates}" if a.candidates else "-",
            f"{a.chosen} ({a.chosen_right})" if a.chosen else "-",
        ]
        for a in s.search.actions
    ]


def _searches(report: Report) -> list[JobSummary]:
    return [s for s in report.jobs if s.search is not None]


def paired_cells(report: Report) -> list[list[str]]:
    return [
        [
            c.first, c.second, str(c.shared), str(c.both_right), str(c.only_first), str(c.only_second),
            str(c.neither), f"{100 * c.difference:+.1f} pp", f"{c.p_value:.3g}",
        ]
        for c in report.comparisons
    ]  # fmt: skip


MODELS_HEAD = (
    "job",
    "model",
    "answered",
    "right (its latest own answer)",
    "accuracy",
    "answers right (all outputs)",
)


def models_cells(report: Report) -> list[list[str]]:
    return [
        [s.label, m.name, f"{m.answered}/{s.problems}", f"{m.right}/{m.judged}", _pct(m.accuracy),
         f"{m.outputs_right}/{m.outputs}"]
        for s in report.jobs
        for m in s.models
    ]  # fmt: skip


ENDPOINTS_HEAD = (
    "job", "model", "endpoint", "calls", "failed", "requests", "sequences", "generated tokens",
    "mean latency",
)  # fmt: skip


def endpoints_cells(report: Report) -> list[list[str]]:
    """Per job whose roster has replicas: each server's share of each model's calls."""
    return [
        [f"{job.job_id} {job.name}", e.model, e.endpoint, str(e.calls), str(e.failed), str(e.requests),
         str(e.sequences), str(e.completion_tokens), f"{e.mean_latency_ms / 1000:.2f} s"]
        for job in report.rows
        for e in job.endpoints
    ]  # fmt: skip


def _agreement_cell(s: JobSummary, x: str, y: str) -> str:
    if x == y:
        return "-"
    agree, both = s.agreement.get((x, y)) or s.agreement.get((y, x)) or (0, 0)
    return f"{agree}/{both} ({_pct(agree / both)})" if both else "0/0"


def agreement_tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per job with two models or more: (title, head, rows) of its agreement matrix."""
    out = []
    for s in report.jobs:
        names = [m.name for m in s.models]
        if len(names) < 2:
            continue

        rows = [[x, *(_agreement_cell(s, x, y) for y in names)] for x in names]
        out.append((f"answer agreement, job {s.label}", ["", *names], rows))
    return out


def _multi_round(report: Report) -> list[JobSummary]:
    return [s for s in report.jobs if s.rounds]


# -- Rich ------------------------------------------------------------------------------------------


def _widths(head: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[int] | None:
    """Column widths (text only) for a table of `width` columns in all that break no word, or
    None when there are none: a column narrower than its longest word folds it ("unanswere d"),
    which Rich does to any column when the table is too wide."""
    columns = list(zip(head, *rows, strict=True))
    least = [max((cell_len(w) for c in col for w in c.split()), default=1) for col in columns]
    widths = [
        max(max((cell_len(line) for line in c.splitlines()), default=0), 1)
        for c in ("\n".join(col) for col in columns)
    ]
    room = width - (3 * len(columns) + 1)  # a border left of each column and at the end, padding 1 + 1
    if sum(least) > room:
        return None
    while sum(widths) > room:  # narrow the widest column that still can
        i = max(range(len(widths)), key=lambda j: (widths[j] > least[j], widths[j]))
        widths[i] -= 1
    return widths


def fitted_tables(title: str, head: Sequence[str], rows: list[list[str]], width: int) -> list[Table]:
    """The table as it is when its words fit `width` columns; else turned, the fields down the
    side and a column per row; else one turned table per row (folded only if even that is too
    wide)."""

    def table(head: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[int | None]) -> Table:
        t = Table(title=title)
        for h, w in zip(head, widths, strict=True):
            t.add_column(h, width=w, overflow="fold")
        for r in rows:
            t.add_row(*r)
        return t

    def fitted(head: Sequence[str], rows: Sequence[Sequence[str]]) -> Table | None:
        widths = _widths(head, rows, width)
        return None if widths is None else table(head, rows, widths)

    def turned(rows: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
        return [head[0], *(r[0] for r in rows)], [[h, *(r[i] for r in rows)] for i, h in enumerate(head) if i]

    whole = fitted(head, rows) or fitted(*turned(rows))
    if whole is not None:
        return [whole]
    out = []
    for r in rows:
        one_head, one_rows = turned([r])
        out.append(fitted(one_head, one_rows) or table(one_head, one_rows, [None] * len(one_head)))
    return out


def print_report(console: Console, report: Report) -> None:
    def table(title: str, head: Sequence[str], rows: list[list[str]]) -> Group:
        return Group(*fitted_tables(title, head, rows, console.width))

    console.print(table("accuracy and cost per job", SUMMARY_HEAD, [summary_cells(s) for s in report.jobs]))
    if report.groups:
        console.print(table("accuracy by problem type and data set", GROUPS_HEAD, groups_cells(report)))
    multi = _multi_round(report)
    if multi:
        console.print(table("rounds, reviews and consistency", ROUNDS_HEAD, [rounds_cells(s) for s in multi]))
    trees = [s for s in report.jobs if s.tree is not None]
    if trees:
        console.print(table("search trees", TREE_HEAD, [tree_cells(s) for s in trees]))
    searches = _searches(report)
    if searches:
        console.print(table("search answers", SEARCH_HEAD, [search_cells(s) for s in searches]))
        rows = [r for s in searches for r in action_cells(s)]
        console.print(table("where a search's tokens went", ACTION_HEAD, rows))
    if report.comparisons:
        console.print(table("paired comparisons (same problems)", PAIRED_HEAD, paired_cells(report)))
    if any(s.models for s in report.jobs):
        console.print(table("accuracy per model", MODELS_HEAD, models_cells(report)))
    for title, head, rows in agreement_tables(report):
        console.print(table(title, head, rows))
    if any(j.endpoints for j in report.rows):
        console.print(table("calls per endpoint (replicas)", ENDPOINTS_HEAD, endpoints_cells(report)))


# -- Markdown and CSV ------------------------------------------------------------------------------


GROUPS_HEAD = ["job", "problem type", "data set", "problems", "accuracy"]


def groups_cells(report: Report) -> list[list[str]]:
    return [
        [
            g.job,
            g.problem_type,
            g.dataset or "-",
            str(g.problems),
            f"{_pct(g.accuracy)} ({g.correct}/{g.judged})",
        ]
        for g in report.groups
    ]


def render_groups_csv(report: Report) -> str:
    buf = io.StringIO()
    w = SpreadsheetCsv(buf)
    w.writerow(["job", "problem_type", "dataset", "problems", "judged", "correct", "accuracy"])
    for g in report.groups:
        w.writerow([g.job, g.problem_type, g.dataset, g.problems, g.judged, g.correct, f"{g.accuracy:.4f}"])
    return buf.getvalue()


def _md_table(head: Sequence[str], rows: list[list[str]]) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row(head), row(["---"] * len(head)), *(row(r) for r in rows)])


def render_markdown(report: Report, *, preamble: str | None = None, plots: Sequence[str] = ()) -> str:
    parts = ["# Accuracy report", ""]
    if preamble:
        parts += [preamble.strip(), ""]
    parts += [
        "## Accuracy and cost per job",
        "",
        _md_table(SUMMARY_HEAD, [summary_cells(s) for s in report.jobs]),
    ]
    if report.groups:
        parts += [
            "",
            "## Accuracy by problem type and data set",
            "",
            _md_table(GROUPS_HEAD, groups_cells(report)),
        ]
    multi = _multi_round(report)
    if multi:
        parts += ["", "## Rounds, reviews and consistency", ""]
        parts += [_md_table(ROUNDS_HEAD, [rounds_cells(s) for s in multi])]
    trees = [s for s in report.jobs if s.tree is not None]
    if trees:
        parts += ["", "## Search trees", "", _md_table(TREE_HEAD, [tree_cells(s) for s in trees])]
    searches = _searches(report)
    if searches:
        parts += ["", "## Search answers", "", _md_table(SEARCH_HEAD, [search_cells(s) for s in searches])]
        rows = [r for s in searches for r in action_cells(s)]
        parts += ["", "## Where a search's tokens went", "", _md_table(ACTION_HEAD, rows)]
    if report.comparisons:
        parts += [
            "",
            "## Paired comparisons (same problems)",
            "",
            _md_table(PAIRED_HEAD, paired_cells(report)),
        ]
    if any(s.models for s in report.jobs):
        parts += ["", "## Accuracy per model", "", _md_table(MODELS_HEAD, models_cells(report))]
    agreement = agreement_tables(report)
    if agreement:
        parts += ["", "## Answer agreement between models", ""]
        for title, head, rows in agreement:
            parts += [f"{title} (both answered alike / both answered):", "", _md_table(head, rows), ""]
    if any(j.endpoints for j in report.rows):
        parts += [
            "",
            "## Calls per endpoint (replicas)",
            "",
            _md_table(ENDPOINTS_HEAD, endpoints_cells(report)),
        ]
    if plots:
        parts += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    parts += ["", "## Definitions", "", DEFINITIONS]
    return visible("\n".join(parts))  # job names and ids come from users: no live controls


def _flat(s: JobSummary) -> dict[str, Any]:
    row: dict[str, Any] = {
        k: v
        for k, v in asdict(s).items()
        if k not in ("params", "rounds", "reviews", "completions", "models", "agreement", "tree", "search")
    }
    row["accuracy"] = round(s.accuracy, 4)
    row["ci_low"], row["ci_high"] = round(s.ci_low, 4), round(s.ci_high, 4)
    row["params"] = _params(s)
    row["rounds"] = " ".join(f"{r}:{n}" for r, n in s.rounds.items())
    row["accuracy_by_round"] = " ".join(f"{a:.4f}" for a in s.accuracy_by_round)
    tree = asdict(s.tree) if s.tree is not None else {}
    row.update({f"tree_{f.name}": tree.get(f.name, "") for f in fields(TreeStats)})
    search = s.search
    for name in ("judged", "right_held", "majority_right", "root_a2_right"):
        row[f"search_{name}"] = getattr(search, name) if search is not None else ""
    for name, kind in (("reviews", ReviewStats), ("completions", CompletionStats)):
        stats = getattr(s, name)
        # Every column always, empty where it does not apply: the same header for every report.
        values = asdict(stats) if stats is not None else {}
        row.update({f"{name}_{f.name}": values.get(f.name, "") for f in fields(kind)})
    return row


def render_summary_csv(report: Report) -> str:
    rows = [_flat(s) for s in report.jobs]
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    out = io.StringIO()
    writer = SpreadsheetCsv(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def render_problems_csv(report: Report) -> str:
    out = io.StringIO()
    writer = SpreadsheetCsv(out)
    writer.writerow(
        ["job_id", "job", "strategy", "item_id", "status", "final_answer", "reference_answer", "correct",
         "rounds_used", "model_calls", "prompt_tokens", "completion_tokens", "wall_time_s", "model_seconds"]
    )  # fmt: skip
    for job in report.rows:
        for p in job.problems:
            writer.writerow(
                [job.job_id, job.name, job.strategy, p.item_id, p.status, p.final_answer, p.reference_answer,
                 is_correct(p), p.rounds_used, p.model_calls, p.prompt_tokens, p.completion_tokens,
                 p.wall_time_s, p.model_seconds]
            )  # fmt: skip
    return out.getvalue()


def render_models_csv(report: Report) -> str:
    out = io.StringIO()
    writer = SpreadsheetCsv(out)
    writer.writerow(
        ["job_id", "job", "model", "answered", "right", "judged", "accuracy", "outputs", "outputs_right"]
    )
    for s in report.jobs:
        for m in s.models:
            writer.writerow(
                [s.job_id, s.label, m.name, m.answered, m.right, m.judged, round(m.accuracy, 4), m.outputs,
                 m.outputs_right]
            )  # fmt: skip
    return out.getvalue()


def render_endpoints_csv(report: Report) -> str:
    out = io.StringIO()
    writer = SpreadsheetCsv(out)
    writer.writerow(
        ["job_id", "job", "model", "endpoint", "calls", "failed", "requests", "sequences",
         "completion_tokens", "mean_latency_ms"]
    )  # fmt: skip
    for job in report.rows:
        for e in job.endpoints:
            writer.writerow(
                [job.job_id, job.name, e.model, e.endpoint, e.calls, e.failed, e.requests, e.sequences,
                 e.completion_tokens, e.mean_latency_ms]
            )  # fmt: skip
    return out.getvalue()


def render_agreement_csv(report: Report) -> str:
    out = io.StringIO()
    writer = SpreadsheetCsv(out)
    writer.writerow(["job_id", "model", "other", "agree", "both_answered"])
    for s in report.jobs:
        for (x, y), (agree, both) in s.agreement.items():
            writer.writerow([s.job_id, x, y, agree, both])
    return out.getvalue()


def render_actions_csv(report: Report) -> str:
    out = io.StringIO()
    writer = SpreadsheetCsv(out)
    writer.writerow(["job_id", "job", "action", "generated_tokens_per_problem", "token_share", "candidates",
                     "candidates_right", "chosen", "chosen_right"])  # fmt: skip
    for s in _searches(report):
        assert s.search is not None
        for a in s.search.actions:
            writer.writerow([s.job_id, s.label, a.action, round(a.generated_tokens_per_problem, 1),
                             round(a.token_share, 4), a.candidates, a.candidates_right, a.chosen,
                             a.chosen_right])  # fmt: skip
    return out.getvalue()


def render_paired_csv(report: Report) -> str:
    out = io.StringIO()
    writer = SpreadsheetCsv(out)
    writer.writerow(["first", "second", "shared", "both_right", "only_first", "only_second", "neither",
                     "difference", "mcnemar_exact_p"])  # fmt: skip
    for c in report.comparisons:
        writer.writerow([c.first, c.second, c.shared, c.both_right, c.only_first, c.only_second, c.neither,
                         round(c.difference, 4), round(c.p_value, 6)])  # fmt: skip
    return out.getvalue()


def write_report(report: Report, out_dir: Path, *, preamble: str | None = None) -> list[Path]:
    """report.md, summary.csv, problems.csv, paired.csv, models.csv, agreement.csv, actions.csv
    (searches), endpoints.csv (replicas) and the PNG plots; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = ["accuracy_vs_calls.png", "accuracy_vs_tokens.png"]
    plot_accuracy_vs_calls(cost_points(report), out_dir / plots[0])
    plot_accuracy_vs_tokens(report, out_dir / plots[1])
    if plot_accuracy_per_round(report, out_dir / "accuracy_per_round.png"):
        plots.append("accuracy_per_round.png")
    files = {
        "report.md": render_markdown(report, preamble=preamble, plots=plots),
        "summary.csv": render_summary_csv(report),
        "problems.csv": render_problems_csv(report),
        "paired.csv": render_paired_csv(report),
        "models.csv": render_models_csv(report),
        "agreement.csv": render_agreement_csv(report),
    }
    if _searches(report):
        files["actions.csv"] = render_actions_csv(report)
    if report.groups:
        files["groups.csv"] = render_groups_csv(report)
    if any(j.endpoints for j in report.rows):
        files["endpoints.csv"] = render_endpoints_csv(report)
    for name, text in files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    return [out_dir / n for n in [*files, *plots]]


def generate_report(
    database_url: str, job_ids: Sequence[int], out_dir: Path | None, *, preamble: str | None = None,
    console: Console | None = None,
) -> Report:  # fmt: skip
    """Load, aggregate, print and (with `out_dir`) write the report of these jobs."""
    with session_scope(database_url) as session:
        report = load_report(
            session=session, job_ids=job_ids, max_rounds_limit=get_settings().max_rounds_limit
        )
    print_report(console or make_console(), report)
    if out_dir is not None:
        write_report(report, out_dir, preamble=preamble)
    return report


def report_command(
    jobs: Annotated[
        list[int],
        typer.Argument(help="Job ids; jobs on the same problems are compared.", min=1, max=MAX_ROW_ID),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write report.md, CSVs and PNG plots here.")
    ] = None,
) -> None:
    """Accuracy (95% CI), answered/failed counts, calls, tokens and time per problem for each job;
    rounds, refinements and reviewers for mutual; paired McNemar tests between jobs."""
    err = make_console(stderr=True)
    url = get_settings().database_url
    try:
        migrate.ensure_current(url)
        generate_report(url, jobs, output)
    except (UnknownJobError, migrate.SchemaOutOfDateError) as exc:
        print_error(err, exc)
        raise typer.Exit(2) from None
    if output is not None:
        err.print(SafeText(f"report written to {output}/report.md (with CSV and PNG files)"))
