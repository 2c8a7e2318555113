"""What an rstar job's audit trail says about its searches, from its exported candidate paths.

    rstar export JOB --trajectories > paths.jsonl
    python -m bench.search_trail paths.jsonl

Prints, over the job's problems: in how many the right answer was among the candidates and how
often the final choice took it; how often the candidates of each kind (the action that ended
the path) were right; how many were mutually consistent, and how many of those were right. These
are the figures docs/results/accuracy/rstar/README.md quotes for each run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rstar.strategies.mcts.tree import NODE_TITLES


def summarise(paths: Sequence[dict[str, Any]]) -> list[str]:
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in paths:
        by_problem[p["item_id"]].append(p)
    held = sum(1 for ps in by_problem.values() if any(p["correct"] for p in ps))
    chosen = sum(1 for ps in by_problem.values() if any(p["correct"] and p["selected"] for p in ps))
    kinds = Counter(p["kind"] for p in paths)
    right = Counter(p["kind"] for p in paths if p["correct"])
    consistent = [p for p in paths if p["mutually_consistent"]]
    lines = [
        f"{len(paths)} candidate paths over {len(by_problem)} problems"
        f" ({len(paths) / max(1, len(by_problem)):.1f} per problem)",
        f"the right answer was among the candidates in {held} problems; the choice took it in {chosen}",
    ]
    for kind, n in sorted(kinds.items()):
        lines.append(f"  {NODE_TITLES.get(kind, kind)} candidates: {right[kind]} right of {n}")
    lines.append(
        f"mutually consistent: {len(consistent)}, of them right: {sum(1 for p in consistent if p['correct'])}"
        f" (problems where the discriminator ran: "
        f"{sum(1 for ps in by_problem.values() if any(p['mutually_consistent'] is not None for p in ps))})"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", type=Path, help="the JSONL of `rstar export JOB --trajectories`")
    args = parser.parse_args(argv)
    records = [json.loads(line) for line in args.paths.read_text().splitlines() if line.strip()]
    print("\n".join(summarise(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
