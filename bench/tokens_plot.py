"""Accuracy against generated tokens per problem, across benchmark runs on the same problems.

    cd docs/results/accuracy/rstar
    python -m bench.tokens_plot v1=. v4 v4-no-a3 v5 -o accuracy_vs_tokens_all.png

Each directory (`NAME=DIR` names its run; else the directory's name) is a report `bench.accuracy`
(or `rstar report -o DIR`) wrote; its `summary.csv` gives every job's accuracy, 95% interval and
generated tokens per problem. One point per job, labelled with its run and the job's label, one
colour per strategy, the interval as a vertical bar; the jobs of every run share the axes, so an
rstar budget sits next to self-consistency at its tokens however many runs measured them. Every
rerun of greedy cot is drawn: their spread shows what the server's batched decoding alone moves.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Point:
    run: str
    label: str
    strategy: str
    tokens: float
    accuracy: float
    low: float
    high: float


def read_points(runs: Sequence[tuple[str, Path]]) -> list[Point]:
    points = []
    for name, directory in runs:
        with (directory / "summary.csv").open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                points.append(
                    Point(
                        run=name,
                        # "3 self-consistency k=6 (= rstar's 1589 tokens ...)": the job, not the why.
                        label=row["label"].split(" (")[0].split(" ", 1)[-1],
                        strategy=row["strategy"],
                        tokens=float(row["generated_tokens_per_problem"]),
                        accuracy=float(row["accuracy"]),
                        low=float(row["ci_low"]),
                        high=float(row["ci_high"]),
                    )
                )
    return points


def plot(points: Sequence[Point], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    colours = {s: f"C{i}" for i, s in enumerate(sorted({p.strategy for p in points}))}
    for p in points:
        colour = colours[p.strategy]
        ax.errorbar(
            p.tokens, 100 * p.accuracy, yerr=[[100 * (p.accuracy - p.low)], [100 * (p.high - p.accuracy)]],
            fmt="o", color=colour, alpha=0.8, capsize=3,
        )  # fmt: skip
        ax.annotate(f"{p.run}: {p.label}", (p.tokens, 100 * p.accuracy), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")  # fmt: skip
    for strategy, colour in colours.items():
        ax.plot([], [], "o", color=colour, label=strategy)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem (log scale)")
    ax.set_ylabel("accuracy, % (95% interval)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="report directories (with summary.csv), as DIR or NAME=DIR")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="Accuracy against generated tokens, same problems")
    args = parser.parse_args(argv)
    runs = []
    for arg in args.runs:
        name, _, where = arg.rpartition("=")
        directory = Path(where)
        runs.append((name or directory.resolve().name, directory))
    missing = [str(d) for _, d in runs if not (d / "summary.csv").is_file()]
    if missing:
        print(f"error: no summary.csv in {', '.join(missing)}", file=sys.stderr)
        return 2
    points = read_points(runs)
    plot(points, args.out, title=args.title)
    print(f"{len(points)} jobs from {len(runs)} runs: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
