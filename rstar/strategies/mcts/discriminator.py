"""rStar's discriminator: mutual consistency of the search's candidate trajectories, and the
final choice (Qi et al., 2024, section 3.3; microsoft/rStar, branch rStar-mutualreasoning,
run_src/do_discriminate.py and rstar_utils.py `mask_solution_trace`).

A candidate is a terminal node with an answer: one distinct trajectory. Its reasoning is cut at
`cuts` points between `low` and `high` of its steps, the discriminator model completes each
prefix, and the candidate is mutually consistent when at least half of the completions reach its
answer. The winner: among consistent candidates, the highest trajectory reward (the terminal's
value) times its answer's confidence (its share of all candidates); with none consistent, the
majority answer. Two defects of the authors' code are not copied: their final choice consults
the reference answer (falling back to the majority when no candidate matches it), and their
"reward" criterion is constant (`concat_solution_trace` returns `min(0, reward) + 1`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rstar.strategies.base import answer_groups


def cut_prefixes(steps: Sequence[str], cuts: int, low: float, high: float) -> list[str]:
    """The prefixes a completer sees: the first ceil(len * f) steps for `cuts` fractions f from
    `low` to `high`, never empty nor the whole; a trajectory of one step is cut by words. Fewer
    than `cuts` when they coincide (short trajectories)."""
    units = list(steps)
    joiner = "\n"
    if len(units) < 2:
        units = " ".join(steps).split()
        joiner = " "
    if len(units) < 2:
        return []
    fractions = [low] if cuts == 1 else [low + i * (high - low) / (cuts - 1) for i in range(cuts)]
    prefixes: list[str] = []
    for f in fractions:
        k = min(len(units) - 1, max(1, math.ceil(len(units) * f - 1e-9)))
        prefix = joiner.join(units[:k])
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


@dataclass(frozen=True)
class Candidate:
    node: int
    answer: str
    reward: float
    """The trajectory's reward: its terminal's value (majority share of its samples), 0 if none."""


@dataclass(frozen=True)
class Verdict:
    node: int
    completions: int
    agreeing: int

    @property
    def consistent(self) -> bool:
        return self.completions > 0 and 2 * self.agreeing >= self.completions


def confidences(candidates: Sequence[Candidate]) -> list[tuple[str, float, list[Candidate]]]:
    """Answers with their share of the candidates, most common first (ties: seen first)."""
    total = len(candidates)
    ranked = sorted(answer_groups(candidates), key=len, reverse=True)  # sorted() is stable
    return [(g[0].answer, len(g) / total, g) for g in ranked]


@dataclass(frozen=True)
class Choice:
    node: int | None
    answer: str | None
    reason: str


def choose(
    candidates: Sequence[Candidate],
    verdicts: Mapping[int, Verdict] | None,
    *,
    skipped_at: float | None = None,
) -> Choice:
    """The final answer. `verdicts` None: the discriminator was skipped (one answer holds at least
    `skipped_at` of the candidates), so the majority wins."""
    if not candidates:
        return Choice(None, None, "No rollout reached a terminal answer.")
    ranked = confidences(candidates)
    confidence = {id(c): share for _, share, group in ranked for c in group}
    summary = ", ".join(f"{a} ({len(g)})" for a, _, g in ranked)
    top_answer, top_share, top_group = ranked[0]
    best_of_top = max(top_group, key=lambda c: c.reward)
    if verdicts is None:
        return Choice(
            best_of_top.node,
            top_answer,
            f"{len(top_group)} of {len(candidates)} candidate trajectories answer {top_answer}"
            f" ({top_share:.0%}, at least {skipped_at:.0%}): the discriminator was skipped."
            f" Answers: {summary}.",
        )
    consistent = [c for c in candidates if verdicts.get(c.node) is not None and verdicts[c.node].consistent]
    checked = sum(1 for c in candidates if c.node in verdicts)
    if consistent:
        best = max(consistent, key=lambda c: c.reward * confidence[id(c)])  # first of equals
        v = verdicts[best.node]
        score = best.reward * confidence[id(best)]
        others = sorted(
            {f"{c.answer} ({c.reward * confidence[id(c)]:.2f})" for c in consistent if c is not best}
        )
        return Choice(
            best.node,
            best.answer,
            f"{len(consistent)} of {checked} candidate trajectories are mutually consistent; node"
            f" {best.node} answering {best.answer} scores highest: reward {best.reward:.2f} x"
            f" confidence {confidence[id(best)]:.2f} = {score:.2f} ({v.agreeing} of {v.completions}"
            " completions agree)."
            + (f" Other consistent: {', '.join(others)}." if others else "")
            + f" Answers: {summary}.",
        )
    return Choice(
        best_of_top.node,
        top_answer,
        f"None of the {checked} candidate trajectories is mutually consistent: the majority answer"
        f" {top_answer} wins ({len(top_group)} of {len(candidates)}). Answers: {summary}.",
    )
