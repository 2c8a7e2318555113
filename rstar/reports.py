"""Evaluation reports, the pure part: plain rows of finished jobs in, typed summaries out (no I/O).

`db/reports.py` reads the rows and the problems' states, `replay_rounds` replays each strategy's
selection on them, `cli/report.py` renders the result (Rich, Markdown, CSV, PNG).
Correctness is always `judge`: the final answer equal to the reference by the job's problem type
(`rstar.problem_types`), as in `rstar results`.

Definitions used throughout:
* accuracy = right / problems with a reference; a failed or unanswered problem counts as wrong.
  Its 95% interval is Wilson's score interval.
* answered: a final answer was selected; unanswered: the selection found no parsable answer;
  failed: a step failed for good; other: waiting, pending, running or cancelled.
* threshold met (review-based jobs): in the last round every review accepted its target and the
  reviewed solutions' answers agree.
* a refinement turns wrong into right when its parent's answer was wrong and its own is right.
* a verdict is right when it accepts a right answer or rejects a wrong one ("uncertain" never is).
* a solution is mutually consistent when the peer's completion of it reaches the same answer.
* accuracy after round r: of the answer the strategy would have selected had it stopped after
  round r (problems that stopped earlier keep their final answer).
* a model's answer to a problem: the answer of its latest own solution (generated or refined; a
  completion starts from another model's reasoning). Per-model accuracy = right / problems with a
  reference; agreement of two models = problems where both answered with equal answers / both
  answered.
* paired comparison of two jobs, over the item ids they share: McNemar's exact test, a two-sided
  binomial test on the discordant pairs (b = only the first right, c = only the second right).
* a search's actions (rstar): its share of the job's generated tokens (the discriminator's
  completions one more "action"); its candidates, the search's final answers whose trajectory
  it ended (each distinct trajectory once), and how many were right; the final choices that
  came from it. Generator @maj: the answer the candidates favour before the discriminator (the
  paper's "rStar (generator @maj)"); root A2 @maj: the root's A2 vote on its own, the search's
  self-consistency; right answer held: problems where some candidate was right.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any

from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER
from rstar.strategies import ParamError, get_strategy
from rstar.strategies.base import ProblemState

__all__ = [
    "ACTION_OF_KIND",
    "DATASET_KEYS",
    "Z95",
    "ActionStats",
    "CandidateRow",
    "CompletionStats",
    "GroupAccuracy",
    "JobRows",
    "JobSummary",
    "ModelStats",
    "PairedComparison",
    "ProblemRow",
    "Report",
    "ReviewRow",
    "ReviewStats",
    "SearchRow",
    "SearchStats",
    "SolutionRow",
    "accuracy_groups",
    "build_report",
    "dataset_of",
    "is_correct",
    "judge",
    "mcnemar_exact",
    "model_answers",
    "paired",
    "paired_counts",
    "replay_rounds",
    "search_row",
    "state_up_to_round",
    "summarize",
    "wilson_interval",
]

Z95 = 1.959963984540054


# -- rows ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolutionRow:
    id: int
    round: int
    author: str
    kind: str
    """generate, refine or complete."""
    answer: str | None
    parent_id: int | None = None


@dataclass(frozen=True)
class ReviewRow:
    round: int
    reviewer: str
    verdict: str
    target_solution_id: int


@dataclass(frozen=True)
class ProblemRow:
    item_id: str
    status: str
    final_answer: str | None
    reference_answer: str | None
    rounds_used: int | None = None
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    sequences: int = 0
    tree_nodes: int | None = None
    """A search's nodes (None: the strategy builds no tree)."""
    tree_depth: int | None = None
    wall_time_s: float | None = None
    model_seconds: float = 0.0
    """Sum of the model calls' latencies."""
    solutions: tuple[SolutionRow, ...] = ()
    reviews: tuple[ReviewRow, ...] = ()
    answer_by_round: tuple[str | None, ...] = ()
    """The answer selected had the strategy stopped after round 1, 2, ... (empty: not known)."""
    tokens_by_kind: Mapping[str, int] = field(default_factory=dict)
    """Generated tokens per step kind."""
    search: SearchRow | None = None
    """A search's candidates and answers (None: the strategy builds no tree)."""
    kind: ProblemType = NUMBER
    """Its job's problem type: how its answers are compared."""
    dataset: str = ""
    """The data set it came from, as its metadata names it (`dataset_of`); "" when it does not."""


@dataclass(frozen=True)
class CandidateRow:
    kind: str
    """The action that ended its trajectory (a node kind)."""
    answer: str
    freq: int = 1


@dataclass(frozen=True)
class SearchRow:
    candidates: tuple[CandidateRow, ...]
    chosen_kind: str | None
    """The kind of the node the final choice took (None: no choice)."""
    majority: str | None
    """The generator's majority answer over the candidates (@maj)."""
    root_a2: str | None
    """The root A2 vote's answer."""


@dataclass(frozen=True)
class EndpointRow:
    """The calls one server answered for one model of a job: a replica's share of the work."""

    model: str
    endpoint: str
    calls: int
    failed: int
    """Calls that did not return a reply (the server refused, failed, or did not answer)."""
    requests: int
    sequences: int
    completion_tokens: int
    mean_latency_ms: float
    """Over the calls sent (copies of recorded calls, which take 0 ms, left out)."""


@dataclass(frozen=True)
class JobRows:
    job_id: int
    name: str
    strategy: str
    params: Mapping[str, Any]
    problems: tuple[ProblemRow, ...]
    wall_time_s: float | None = None
    """From submission to the last problem's end."""
    models: tuple[str, ...] = ()
    """The job's roster names, in order."""
    endpoints: tuple[EndpointRow, ...] = ()
    """Per model and server, where a model of the job has replicas (empty otherwise)."""
    kind: ProblemType = NUMBER
    """The job's problem type."""

    @property
    def label(self) -> str:
        return f"{self.job_id} {self.name}"


def replay_rounds(job: JobRows, states: Mapping[str, ProblemState], *, max_rounds_limit: int) -> JobRows:
    """The job's rows with `answer_by_round` filled in: the answer its strategy would have selected
    had it stopped after each earlier round, for every answered problem that used more than one.

    `states` maps item ids to the problems' states; only those of the problems replayed are read.
    A strategy this version does not know leaves the rows as they are (no accuracy per round).
    """
    try:
        strategy = get_strategy(job.strategy, job.params, kind=job.kind, max_rounds_limit=max_rounds_limit)
    except ParamError:
        return job
    problems = []
    for p in job.problems:
        if p.status == "answered" and p.rounds_used is not None and p.rounds_used > 1:
            state = states[p.item_id]
            earlier = [strategy.select(state_up_to_round(state, r)).answer for r in range(1, p.rounds_used)]
            p = replace(p, answer_by_round=(*earlier, p.final_answer))
        problems.append(p)
    return replace(job, problems=tuple(problems))


def state_up_to_round(state: ProblemState, round_: int) -> ProblemState:
    """The state as it was when round `round_` ended: to replay a strategy's selection then."""
    return ProblemState(
        question=state.question,
        models=state.models,
        steps={k: v for k, v in state.steps.items() if v.round <= round_ and v.kind != "select"},
        outputs={k: v for k, v in state.outputs.items() if v.round <= round_},
    )


# -- statistics ----------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 or 1 the bound is exactly 0 or 1; floating point would leave 0.9999999999999999.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: P(a split at least as uneven as b:c | b+c, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


# -- summaries -----------------------------------------------------------------------------------


def judge(
    status: str, final_answer: str | None, reference_answer: str | None, kind: ProblemType = NUMBER
) -> bool:
    """The one judgement of a problem's answer, for `rstar results`, `show` and `report`: answered,
    and equal to the reference (by the job's problem type)."""
    return status == "answered" and kind.equal(final_answer, reference_answer)


def is_correct(problem: ProblemRow) -> bool:
    return judge(problem.status, problem.final_answer, problem.reference_answer, problem.kind)


@dataclass(frozen=True)
class ReviewStats:
    """For strategies with reviews and refinements (mutual)."""

    threshold_met: int
    refinements: int
    wrong_to_right: int
    right_to_wrong: int
    verdicts: int
    verdicts_right: int
    accepted_right: int
    accepted_wrong: int
    rejected_right: int
    rejected_wrong: int
    uncertain: int


@dataclass(frozen=True)
class CompletionStats:
    """For strategies where a model completes the peer's cut-off solution (mutual-consistency)."""

    completed: int
    """Solutions that got a completion."""
    consistent: int
    consistent_right: int
    """Mutually consistent solutions whose answer is right."""
    inconsistent_right: int


@dataclass(frozen=True)
class ModelStats:
    """One model of a job's roster (see "a model's answer" above)."""

    name: str
    answered: int
    """Problems it gave an answer to."""
    right: int
    """Problems where its answer is right."""
    judged: int
    """Problems with a reference."""
    outputs: int
    """Its outputs that give an answer (every round, completions too)..."""
    outputs_right: int
    """...and of those, the right ones."""

    @property
    def accuracy(self) -> float:
        return self.right / self.judged if self.judged else 0.0


@dataclass(frozen=True)
class TreeStats:
    """A searching strategy's trees, per problem."""

    nodes_mean: float
    nodes_max: int
    depth_mean: float
    depth_max: int


@dataclass(frozen=True)
class ActionStats:
    action: str
    generated_tokens_per_problem: float
    token_share: float
    candidates: int
    candidates_right: int
    chosen: int
    chosen_right: int


@dataclass(frozen=True)
class SearchStats:
    """A searching strategy's candidates and answers (rstar), over the judged problems."""

    judged: int
    right_held: int
    majority_right: int
    root_a2_right: int
    chosen_right: int
    actions: tuple[ActionStats, ...]


@dataclass(frozen=True)
class JobSummary:
    job_id: int
    label: str
    strategy: str
    params: Mapping[str, Any]
    problems: int
    judged: int
    correct: int
    ci_low: float
    ci_high: float
    answered: int
    unanswered: int
    failed: int
    other: int
    calls_per_problem: float
    prompt_tokens_per_problem: float
    generated_tokens_per_problem: float
    requests_per_problem: float
    sequences_per_problem: float
    wall_s_per_problem: float | None
    model_s_per_problem: float
    job_wall_s: float | None
    rounds: Mapping[int, int] = field(default_factory=dict)
    """Problems per number of rounds used (multi-round strategies)."""
    stopped_early: int = 0
    """Problems that finished before the round limit (multi-round strategies)."""
    accuracy_by_round: tuple[float, ...] = ()
    reviews: ReviewStats | None = None
    completions: CompletionStats | None = None
    models: tuple[ModelStats, ...] = ()
    agreement: Mapping[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    problem_type: str = "number"
    """The job's (`rstar.problem_types`)."""
    """(model, model) -> (problems where both answered alike, problems where both answered)."""
    tree: TreeStats | None = None
    search: SearchStats | None = None

    @property
    def accuracy(self) -> float:
        return self.correct / self.judged if self.judged else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _right(answer: str | None, problem: ProblemRow) -> bool:
    return problem.kind.equal(answer, problem.reference_answer)


def _review_stats(problems: Sequence[ProblemRow]) -> ReviewStats | None:
    if not any(p.reviews for p in problems):
        return None
    threshold = refinements = w2r = r2w = 0
    verdicts: Counter[tuple[str, bool]] = Counter()
    for p in problems:
        by_id = {s.id: s for s in p.solutions}
        for s in p.solutions:
            if s.kind == "refine" and s.parent_id in by_id:
                refinements += 1
                before = _right(by_id[s.parent_id].answer, p)
                after = _right(s.answer, p)
                w2r += not before and after
                r2w += before and not after
        for r in p.reviews:
            target = by_id.get(r.target_solution_id)
            verdicts[(r.verdict, target is not None and _right(target.answer, p))] += 1
        if p.reviews:
            last = max(r.round for r in p.reviews)
            final = [r for r in p.reviews if r.round == last]
            targets = [by_id.get(r.target_solution_id) for r in final]
            answers = [t.answer for t in targets if t is not None]
            threshold += (
                len(final) >= 2
                and all(r.verdict == "correct" for r in final)
                and len(answers) == len(final)
                and all(p.kind.equal(answers[0], a) for a in answers[1:])
            )
    accepted_right, accepted_wrong = verdicts[("correct", True)], verdicts[("correct", False)]
    rejected_right, rejected_wrong = verdicts[("incorrect", True)], verdicts[("incorrect", False)]
    total = sum(verdicts.values())
    return ReviewStats(
        threshold_met=threshold,
        refinements=refinements,
        wrong_to_right=w2r,
        right_to_wrong=r2w,
        verdicts=total,
        verdicts_right=accepted_right + rejected_wrong,
        accepted_right=accepted_right,
        accepted_wrong=accepted_wrong,
        rejected_right=rejected_right,
        rejected_wrong=rejected_wrong,
        uncertain=total - accepted_right - accepted_wrong - rejected_right - rejected_wrong,
    )


def _completion_stats(problems: Sequence[ProblemRow]) -> CompletionStats | None:
    if not any(s.kind == "complete" for p in problems for s in p.solutions):
        return None
    completed = consistent = consistent_right = inconsistent_right = 0
    for p in problems:
        by_id = {s.id: s for s in p.solutions}
        for c in p.solutions:
            parent = by_id.get(c.parent_id) if c.kind == "complete" and c.parent_id is not None else None
            if parent is None:
                continue
            completed += 1
            right = _right(parent.answer, p)
            if p.kind.equal(parent.answer, c.answer):
                consistent += 1
                consistent_right += right
            else:
                inconsistent_right += right
    return CompletionStats(completed, consistent, consistent_right, inconsistent_right)


def model_answers(problem: ProblemRow) -> dict[str, str]:
    """Each model's answer to the problem: that of its latest own solution with an answer."""
    own = sorted((s for s in problem.solutions if s.kind != "complete"), key=lambda s: (s.round, s.id))
    return {s.author: s.answer for s in own if s.answer is not None}


def _model_stats(job: JobRows) -> tuple[tuple[ModelStats, ...], dict[tuple[str, str], tuple[int, int]]]:
    if not any(p.solutions for p in job.problems):
        # A search (rstar) writes tree nodes, not solutions: its search-tree table describes it.
        return (), {}
    names = list(job.models) or sorted({s.author for p in job.problems for s in p.solutions})
    answers = [(p, model_answers(p)) for p in job.problems]
    judged = [(p, a) for p, a in answers if p.reference_answer is not None]
    stats = []
    for m in names:
        given = [(p, s) for p in job.problems for s in p.solutions if s.author == m and s.answer is not None]
        stats.append(
            ModelStats(
                name=m,
                answered=sum(1 for _, a in answers if m in a),
                right=sum(1 for p, a in judged if m in a and _right(a[m], p)),
                judged=len(judged),
                outputs=len(given),
                outputs_right=sum(1 for p, s in given if _right(s.answer, p)),
            )
        )
    agreement: dict[tuple[str, str], tuple[int, int]] = {}
    for x, y in combinations(names, 2):
        both = [(a[x], a[y]) for _, a in answers if x in a and y in a]
        agreement[(x, y)] = (sum(1 for u, v in both if job.kind.equal(u, v)), len(both))
    return tuple(stats), agreement


def _accuracy_by_round(problems: Sequence[ProblemRow], judged: int) -> tuple[float, ...]:
    last = max((p.rounds_used or 0 for p in problems), default=0)
    if last < 2 or not judged:
        return ()
    out = []
    for r in range(1, last + 1):
        right = 0
        for p in problems:
            if p.reference_answer is None or p.status != "answered":
                continue
            known = p.answer_by_round
            answer = known[r - 1] if r <= len(known) else p.final_answer
            right += _right(answer, p)
        out.append(right / judged)
    return tuple(out)


def summarize(job: JobRows) -> JobSummary:
    ps = job.problems
    judged = [p for p in ps if p.reference_answer is not None]
    correct = sum(1 for p in judged if is_correct(p))
    low, high = wilson_interval(correct, len(judged))
    answered = sum(1 for p in ps if p.status == "answered" and p.final_answer is not None)
    unanswered = sum(1 for p in ps if p.status == "answered" and p.final_answer is None)
    failed = sum(1 for p in ps if p.status == "failed")
    walls = [p.wall_time_s for p in ps if p.wall_time_s is not None]
    multi_round = any(p.reviews or any(s.kind != "generate" for s in p.solutions) for p in ps)
    rounds: Counter[int] = Counter(p.rounds_used for p in ps if multi_round and p.rounds_used)
    limit = job.params.get("max_rounds")
    stopped_early = sum(n for r, n in rounds.items() if isinstance(limit, int) and r < limit)
    model_stats, agreement = _model_stats(job)
    return JobSummary(
        job_id=job.job_id,
        label=job.label,
        strategy=job.strategy,
        params=dict(job.params),
        problem_type=job.kind.name,
        problems=len(ps),
        judged=len(judged),
        correct=correct,
        ci_low=low,
        ci_high=high,
        answered=answered,
        unanswered=unanswered,
        failed=failed,
        other=len(ps) - answered - unanswered - failed,
        calls_per_problem=_mean([p.model_calls for p in ps]),
        prompt_tokens_per_problem=_mean([p.prompt_tokens for p in ps]),
        generated_tokens_per_problem=_mean([p.completion_tokens for p in ps]),
        requests_per_problem=_mean([p.requests for p in ps]),
        sequences_per_problem=_mean([p.sequences for p in ps]),
        wall_s_per_problem=_mean(walls) if walls else None,
        model_s_per_problem=_mean([p.model_seconds for p in ps]),
        job_wall_s=job.wall_time_s,
        rounds=dict(sorted(rounds.items())),
        stopped_early=stopped_early,
        accuracy_by_round=_accuracy_by_round(ps, len(judged)) if multi_round else (),
        reviews=_review_stats(ps),
        completions=_completion_stats(ps),
        models=model_stats,
        agreement=agreement,
        tree=_tree_stats(ps),
        search=_search_stats(ps),
    )


def search_row(report: Any, chosen: int | None) -> SearchRow:
    """A search's figures for the report, from its strategy's account of it (`report(state)` of
    a searching strategy: its tree, candidates, majority and root A2) and the chosen node."""
    nodes = report.tree.nodes
    node = nodes.get(chosen) if chosen is not None else None
    return SearchRow(
        candidates=tuple(CandidateRow(str(nodes[c.node].kind), c.answer, c.freq) for c in report.candidates),
        chosen_kind=str(node.kind) if node is not None and node.kind is not None else None,
        majority=report.majority,
        root_a2=report.root_a2.answer if report.root_a2 is not None else None,
    )


# A step kind's action in a search's report (rstar's node kinds; the discriminator's completions).
ACTION_OF_KIND = {
    "a1_step": "A1 one step",
    "a2_answer": "A2 chain of thought",
    "a3_question": "A3 sub-question",
    "a3_answer": "A3 sub-question",
    "a4_reanswer": "A4 re-answer",
    "a5_rephrase": "A5 rephrase",
    "rc_complete": "discriminator",
}


def _search_stats(problems: Sequence[ProblemRow]) -> SearchStats | None:
    searched = [p for p in problems if p.search is not None]
    if not searched:
        return None
    judged = [p for p in searched if p.reference_answer is not None]
    tokens: Counter[str] = Counter()
    for p in searched:
        for kind, n in p.tokens_by_kind.items():
            tokens[ACTION_OF_KIND.get(kind, kind)] += n
    total = sum(tokens.values())
    found: Counter[str] = Counter()
    found_right: Counter[str] = Counter()
    chosen: Counter[str] = Counter()
    chosen_right: Counter[str] = Counter()
    for p in judged:
        assert p.search is not None
        for c in p.search.candidates:
            action = ACTION_OF_KIND.get(c.kind, c.kind)
            found[action] += 1
            found_right[action] += _right(c.answer, p)
        if p.search.chosen_kind is not None:
            action = ACTION_OF_KIND.get(p.search.chosen_kind, p.search.chosen_kind)
            chosen[action] += 1
            chosen_right[action] += is_correct(p)
    order = list(dict.fromkeys(ACTION_OF_KIND.values()))
    actions = tuple(
        ActionStats(
            action=a,
            generated_tokens_per_problem=tokens[a] / len(searched),
            token_share=tokens[a] / total if total else 0.0,
            candidates=found[a],
            candidates_right=found_right[a],
            chosen=chosen[a],
            chosen_right=chosen_right[a],
        )
        for a in [*order, *sorted(set(tokens) - set(order))]
        if tokens[a] or found[a] or chosen[a]
    )
    return SearchStats(
        judged=len(judged),
        right_held=sum(
            1 for p in judged if p.search and any(_right(c.answer, p) for c in p.search.candidates)
        ),
        majority_right=sum(1 for p in judged if p.search and _right(p.search.majority, p)),
        root_a2_right=sum(1 for p in judged if p.search and _right(p.search.root_a2, p)),
        chosen_right=sum(1 for p in judged if is_correct(p)),
        actions=actions,
    )


def _tree_stats(problems: Sequence[ProblemRow]) -> TreeStats | None:
    trees = [p for p in problems if p.tree_nodes is not None]
    if not trees:
        return None
    nodes = [p.tree_nodes or 0 for p in trees]
    depths = [p.tree_depth or 0 for p in trees]
    return TreeStats(_mean(nodes), max(nodes), _mean(depths), max(depths))


@dataclass(frozen=True)
class PairedComparison:
    first: str
    second: str
    shared: int
    """Problems (by item id, with a reference) in both jobs."""
    both_right: int
    only_first: int
    only_second: int
    neither: int
    p_value: float

    @property
    def difference(self) -> float:
        """Accuracy of the first minus the second, on the shared problems."""
        return (self.only_first - self.only_second) / self.shared if self.shared else 0.0


def paired(first: JobRows, second: JobRows) -> PairedComparison | None:
    """Compare two jobs on the problems they share (matched by item id); None if they share none."""
    return paired_counts(
        first.label,
        second.label,
        {p.item_id: is_correct(p) for p in first.problems if p.reference_answer is not None},
        {p.item_id: is_correct(p) for p in second.problems if p.reference_answer is not None},
    )


def paired_counts(
    first: str, second: str, a: Mapping[str, bool], b: Mapping[str, bool]
) -> PairedComparison | None:
    """The paired comparison of two jobs' right answers by item id (problems with a reference
    only), over the items both have; None if they share none."""
    shared = [i for i in a if i in b]
    if not shared:
        return None
    counts: Counter[tuple[bool, bool]] = Counter((a[i], b[i]) for i in shared)
    only_first, only_second = counts[(True, False)], counts[(False, True)]
    return PairedComparison(
        first=first,
        second=second,
        shared=len(shared),
        both_right=counts[(True, True)],
        only_first=only_first,
        only_second=only_second,
        neither=counts[(False, False)],
        p_value=mcnemar_exact(only_first, only_second),
    )


@dataclass(frozen=True)
class GroupAccuracy:
    """One job's problems of one type and data set."""

    job: str
    problem_type: str
    dataset: str
    problems: int
    judged: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.judged if self.judged else 0.0


@dataclass(frozen=True)
class Report:
    jobs: tuple[JobSummary, ...]
    comparisons: tuple[PairedComparison, ...]
    rows: tuple[JobRows, ...]
    groups: tuple[GroupAccuracy, ...] = ()
    """Accuracy per job, problem type and data set, when the jobs mix types or a job data sets."""


DATASET_KEYS = ("dataset", "source")
"""The metadata keys that name a problem's data set (the authors' MATH500 records say "source")."""


def dataset_of(meta: Mapping[str, Any] | None) -> str:
    """The data set a problem's metadata names, or ""."""
    for key in DATASET_KEYS:
        value = (meta or {}).get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:100]
    return ""


def accuracy_groups(jobs: Sequence[JobRows]) -> tuple[GroupAccuracy, ...]:
    """Each job's problems grouped by type and data set; empty when that says nothing more than
    the jobs' own rows (one type, and at most one data set in every job)."""
    mixed = len({j.kind.name for j in jobs}) > 1 or any(
        len({p.dataset for p in j.problems}) > 1 for j in jobs
    )
    if not mixed:
        return ()
    groups = []
    for job in jobs:
        by_dataset: dict[str, list[ProblemRow]] = {}
        for p in job.problems:
            by_dataset.setdefault(p.dataset, []).append(p)
        for dataset, ps in sorted(by_dataset.items()):
            judged = [p for p in ps if p.reference_answer is not None]
            correct = sum(1 for p in judged if is_correct(p))
            groups.append(GroupAccuracy(job.label, job.kind.name, dataset, len(ps), len(judged), correct))
    return tuple(groups)


def build_report(jobs: Sequence[JobRows]) -> Report:
    """Every job's summary, every pair of jobs that shares problems, in the order given, and the
    accuracy per problem type and data set where the jobs mix them."""
    comparisons = tuple(c for x, y in combinations(jobs, 2) if (c := paired(x, y)) is not None)
    return Report(tuple(summarize(j) for j in jobs), comparisons, tuple(jobs), accuracy_groups(jobs))
