"""Figures of a report: accuracy against cost and per round, drawn with matplotlib (Agg, imported
on first use) into the path or binary stream the caller gives: the `rstar report` files and the
viewer's job page draw the same figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rstar.answers import visible
from rstar.reports import JobSummary, Report, wilson_interval


@dataclass(frozen=True)
class CostPoint:
    """One job on the accuracy-against-cost plot: from a report's summary, or from the counts
    the database keeps (the viewer: a million-problem job's point without reading its rows)."""

    job_id: int
    label: str
    strategy: str
    accuracy: float
    ci_low: float
    ci_high: float
    sequences_per_problem: float

    @classmethod
    def of_summary(cls, s: JobSummary) -> CostPoint:
        return cls(s.job_id, s.label, s.strategy, s.accuracy, s.ci_low, s.ci_high, s.sequences_per_problem)

    @classmethod
    def of_counts(
        cls, *, job_id: int, label: str, strategy: str, right: int, judged: int, sequences: int, problems: int
    ) -> CostPoint:
        low, high = wilson_interval(right, judged)
        return cls(
            job_id,
            label,
            strategy,
            right / judged if judged else 0.0,
            low,
            high,
            sequences / max(problems, 1),
        )


def cost_points(report: Report) -> list[CostPoint]:
    return [CostPoint.of_summary(s) for s in report.jobs]


def plot_accuracy_vs_calls(points: Sequence[CostPoint], path: Path | BinaryIO) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    markers = {"mutual": "o", "mutual-consistency": "D", "self-consistency": "s", "cot": "^", "rstar": "*"}
    for s in points:
        y = 100 * s.accuracy
        err = [[y - 100 * s.ci_low], [100 * s.ci_high - y]]
        ax.errorbar(
            s.sequences_per_problem,
            y,
            yerr=err,
            fmt=markers.get(s.strategy, "x"),
            capsize=4,
            label=visible(s.label),
        )
        # The job id only: the legend names it, and full labels of jobs at equal cost overlap.
        ax.annotate(
            str(s.job_id), (s.sequences_per_problem, y), textcoords="offset points", xytext=(5, 3), fontsize=8
        )
    # Sequences, not calls: one rstar call samples several (a one-sample strategy: one per call).
    ax.set_xlabel("generated sequences per problem (mean; = model calls for one-sample strategies)")
    ax.set_ylabel("accuracy, % (95% Wilson CI)")
    ax.set_title("Accuracy against cost, one point per job")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_accuracy_vs_tokens(report: Report, path: Path | BinaryIO) -> None:
    """Accuracy against generated tokens per problem, one point per job, the jobs of a strategy
    joined in order of cost (a budget sweep reads as a curve; a search without one of its actions
    is a series of its own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    markers = {"mutual": "o", "mutual-consistency": "D", "self-consistency": "s", "cot": "^", "rstar": "*"}
    series: dict[tuple[str, str], list[JobSummary]] = {}
    for s in report.jobs:
        off = [a.upper() for a in ("a1", "a3") if s.params.get(a) is False]
        series.setdefault((s.strategy, f" without {', '.join(off)}" if off else ""), []).append(s)
    for (strategy, without), jobs in series.items():
        jobs = sorted(jobs, key=lambda j: j.generated_tokens_per_problem)
        xs = [j.generated_tokens_per_problem for j in jobs]
        ys = [100 * j.accuracy for j in jobs]
        ax.plot(xs, ys, marker=markers.get(strategy, "x"), linestyle="-" if len(jobs) > 1 else "none",
                label=strategy + without, markersize=8, fillstyle="none" if without else "full")  # fmt: skip
        for j, x, y in zip(jobs, xs, ys, strict=True):
            ax.annotate(str(j.job_id), (x, y), textcoords="offset points", xytext=(5, 3), fontsize=8)
    logarithmic = all(s.generated_tokens_per_problem > 0 for s in report.jobs)  # none yet: linear
    if logarithmic:
        ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem (mean" + (", log scale)" if logarithmic else ")"))
    ax.set_ylabel("accuracy, %")
    ax.set_title("Accuracy against generated tokens, one point per job (job ids as in the tables)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_message(message: str, path: Path | BinaryIO) -> None:
    """A plot's place when there is nothing to plot yet: the reason, as a small image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 1.2), dpi=120)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="0.35")
    fig.savefig(path)
    plt.close(fig)


def plot_accuracy_per_round(report: Report, path: Path | BinaryIO) -> bool:
    jobs = [s for s in report.jobs if s.accuracy_by_round]
    if not jobs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for s in jobs:
        rounds = list(range(1, len(s.accuracy_by_round) + 1))
        ax.plot(rounds, [100 * a for a in s.accuracy_by_round], marker="o", label=visible(s.label))
    ax.set_xlabel("stopped after round")
    ax.set_ylabel("accuracy, %")
    ax.set_xticks(range(1, max(len(s.accuracy_by_round) for s in jobs) + 1))
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy had the job stopped after each round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
