"""rStar's discriminator: mutual consistency of the search's candidate trajectories, and the
final choice (Qi et al., 2024, section 3.3; microsoft/rStar, branch rStar-mutualreasoning,
run_src/do_discriminate.py and rstar_utils.py `mask_solution_trace`).

A candidate is a node with an answer: one distinct trajectory. Its reasoning is cut at `cuts`
points, the discriminator model completes each prefix, and the candidate is mutually consistent
when at least half of the completions reach its answer.

Since rstar-v4 the candidates and the choice are the authors' (`choose_weighted`): every valid
solution node of the tree, counted once more for each rollout that ended at it (`freq`), cut by
words between 20% and 50% (`cut_words`, rstar_utils.py `mask_solution_trace`); an answer's
confidence is its candidates' summed reward x frequency over all candidates' frequency
(do_discriminate.py `group_candidates_by_answer`, criterion "reward"); the discriminator keeps the
candidates with at least half their completions agreeing (rc_mode "mid"), and the winner is the
one consistent candidate, or the answer with the highest confidence among the consistent plus
its survival rate (`_find_winner_filtered`, `_calculate_scores`), or with none consistent the
answer of highest confidence overall: the generator's majority, the paper's "@maj" row.
Versions 1-3 took only the rollouts' terminal nodes, once each, cut by steps, and chose the
consistent candidate of highest reward x answer share (`choose`): they replay so.

Two defects of the authors' code are not copied: their final choice consults the reference
answer (falling back to the majority when no consistent candidate matches it), and their
"reward" criterion is constant (`concat_solution_trace` returns `min(0, reward) + 1`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER
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


def cut_words(text: str, cuts: int, low: float, high: float) -> list[str]:
    """The prefixes a completer sees (v4): the first ceil(words * f) words for `cuts` fractions f
    from `low` to `high` (rstar_utils.py `mask_solution_trace`), never empty nor the whole;
    fewer than `cuts` when they coincide."""
    words = text.split()
    if len(words) < 2:
        return []
    fractions = [low] if cuts == 1 else [low + i * (high - low) / (cuts - 1) for i in range(cuts)]
    prefixes: list[str] = []
    for f in fractions:
        k = min(len(words) - 1, max(1, math.ceil(len(words) * f - 1e-9)))
        prefix = " ".join(words[:k])
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


@dataclass(frozen=True)
class Candidate:
    node: int
    answer: str
    reward: float
    """The trajectory's reward: its terminal's value (majority share of its samples), 0 if none."""
    freq: int = 1
    """How often the search found it (v4): once as a node, once more per rollout that ended there."""


@dataclass(frozen=True)
class Verdict:
    node: int
    completions: int
    agreeing: int

    needed: int | None = None
    """Agreeing completions that make it consistent; None: at least half (versions 1-3)."""

    @property
    def consistent(self) -> bool:
        if self.completions == 0:
            return False
        if self.needed is None:
            return 2 * self.agreeing >= self.completions
        return self.agreeing >= self.needed


def needed_v4(completions: int) -> int:
    """The authors' "mid" rule (v4): completions // 2 must agree (do_discriminate.py
    `_filter_reasoning_consistency`), and at least one."""
    return max(1, completions // 2)


def confidences(
    candidates: Sequence[Candidate], kind: ProblemType = NUMBER
) -> list[tuple[str, float, list[Candidate]]]:
    """Answers with their share of the candidates (counted by frequency), most common first
    (ties: seen first)."""
    total = sum(c.freq for c in candidates)

    def weight(group: list[Candidate]) -> int:
        return sum(c.freq for c in group)

    ranked = sorted(answer_groups(candidates, kind), key=weight, reverse=True)  # sorted() is stable
    return [(g[0].answer, weight(g) / total, g) for g in ranked]


def reward_confidences(
    candidates: Sequence[Candidate], kind: ProblemType = NUMBER
) -> list[tuple[str, float, list[Candidate]]]:
    """Answers with their confidence: summed reward x frequency over all candidates' frequency
    (do_discriminate.py `group_candidates_by_answer`, criterion "reward"), highest first; ties by
    frequency, then the answer seen first."""
    total = sum(c.freq for c in candidates) or 1
    scored = [
        (g[0].answer, sum(c.reward * c.freq for c in g) / total, sum(c.freq for c in g), g)
        for g in answer_groups(candidates, kind)
    ]
    scored.sort(key=lambda x: (x[1], x[2]), reverse=True)  # stable: the first seen wins ties
    return [(answer, conf, g) for answer, conf, _, g in scored]


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
    kind: ProblemType = NUMBER,
) -> Choice:
    """The final answer. `verdicts` None: the discriminator was skipped (one answer holds at least
    `skipped_at` of the candidates), so the majority wins."""
    if not candidates:
        return Choice(None, None, "No rollout reached a terminal answer.")
    ranked = confidences(candidates, kind)
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


def generator_majority(candidates: Sequence[Candidate], kind: ProblemType = NUMBER) -> str | None:
    """The answer of highest reward-weighted confidence among all candidates: the paper's
    "rStar (generator @maj)", what the search says before the discriminator."""
    ranked = reward_confidences(candidates, kind)
    return ranked[0][0] if ranked else None


def choose_weighted(
    candidates: Sequence[Candidate],
    verdicts: Mapping[int, Verdict] | None,
    *,
    skipped_at: float | None = None,
    kind: ProblemType = NUMBER,
) -> Choice:
    """The final answer as the authors' discriminator picks it (v4; see the module docstring).
    `verdicts` None: the discriminator was skipped (one answer holds at least `skipped_at` of the
    candidates' frequency), so the generator's majority wins."""
    if not candidates:
        return Choice(None, None, "No solution node with an answer in the tree.")
    ranked = reward_confidences(candidates, kind)
    summary = ", ".join(
        f"{a} (confidence {conf:.2f}, {sum(c.freq for c in g)} found)" for a, conf, g in ranked
    )
    top_answer, _, top_group = ranked[0]
    majority = max(top_group, key=lambda c: c.reward)  # the first of equals
    if verdicts is None:
        share = sum(c.freq for c in top_group) / sum(c.freq for c in candidates)
        return Choice(
            majority.node,
            top_answer,
            f"{share:.0%} of the {len(candidates)} candidates' findings answer {top_answer} (at least"
            f" {skipped_at:.0%}): the discriminator was skipped. Answers: {summary}.",
        )
    consistent = [c for c in candidates if (v := verdicts.get(c.node)) is not None and v.consistent]
    checked = sum(1 for c in candidates if c.node in verdicts)
    if not consistent:
        return Choice(
            majority.node,
            top_answer,
            f"None of the {checked} candidates is mutually consistent: the generator's majority"
            f" {top_answer} wins. Answers: {summary}.",
        )
    if len(consistent) == 1:
        only = consistent[0]
        v = verdicts[only.node]
        return Choice(
            only.node,
            only.answer,
            f"1 of {checked} candidates is mutually consistent: node {only.node} answering {only.answer}"
            f" ({v.agreeing} of {v.completions} completions agree). Answers: {summary}.",
        )
    # Among the consistent: confidence within them plus survival rate (the share of the answer's
    # findings that stayed consistent).
    kept = sum(c.freq for c in consistent)
    found = {a: sum(c.freq for c in g) for a, _, g in ranked}
    scores = []
    for answer, _, group in reward_confidences(consistent, kind):
        conf = sum(c.reward * c.freq for c in group) / kept
        survival = sum(c.freq for c in group) / next(n for a, n in found.items() if kind.equal(a, answer))
        scores.append((conf + survival, answer, group))
    best_score, best_answer, best_group = max(scores, key=lambda x: x[0])  # the first of equals
    best = max(best_group, key=lambda c: c.reward)
    others = ", ".join(f"{a} ({sc:.2f})" for sc, a, _ in scores if a is not best_answer)
    return Choice(
        best.node,
        best_answer,
        f"{len(consistent)} of {checked} candidates are mutually consistent; {best_answer} scores"
        f" highest: confidence among them plus survival rate = {best_score:.2f}"
        + (f" (others: {others})" if others else "")
        + f". Answers: {summary}.",
    )
