"""Report aggregation from hand-made rows; every expected number is counted by hand in the comments."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest

from rstar import strategies
from rstar.reports import (
    CandidateRow,
    JobRows,
    ProblemRow,
    ReviewRow,
    SearchRow,
    SolutionRow,
    build_report,
    mcnemar_exact,
    paired,
    replay_rounds,
    state_up_to_round,
    summarize,
    wilson_interval,
)
from rstar.strategies.base import ProblemState, Selection, StepView
from tests.domain.strategy_state import StateBuilder

S, R = SolutionRow, ReviewRow


def mutual_job() -> JobRows:
    problems = (
        # p1: both say 7 (right) and accept each other in round 1.
        ProblemRow(
            "p1", "answered", "7", "7", rounds_used=1, model_calls=4, prompt_tokens=400,
            completion_tokens=100, wall_time_s=10.0, model_seconds=8.0,
            solutions=(S(1, 1, "A", "generate", "7"), S(2, 1, "B", "generate", "7.0")),
            reviews=(R(1, "A", "correct", 2), R(1, "B", "correct", 1)),
        ),
        # p2: A right (12), B wrong (10); both reject; A refines to 10 (right -> wrong), B stays at 10
        # (wrong -> wrong); both accept the wrong 10 in round 2 (threshold met, on a wrong answer).
        ProblemRow(
            "p2", "answered", "10", "12", rounds_used=2, model_calls=8, prompt_tokens=900,
            completion_tokens=300, wall_time_s=30.0, model_seconds=20.0,
            solutions=(
                S(11, 1, "A", "generate", "12"), S(12, 1, "B", "generate", "10"),
                S(13, 2, "A", "refine", "10", 11), S(14, 2, "B", "refine", "10", 12),
            ),
            reviews=(
                R(1, "A", "incorrect", 12), R(1, "B", "incorrect", 11),
                R(2, "A", "correct", 14), R(2, "B", "correct", 13),
            ),
            answer_by_round=("12", "10"),
        ),
        # p3: no parsable answer anywhere; A is uncertain, B rejects A's non-answer.
        ProblemRow(
            "p3", "answered", None, "5", rounds_used=1, model_calls=4, prompt_tokens=400,
            completion_tokens=100, wall_time_s=None, model_seconds=4.0,
            solutions=(S(21, 1, "A", "generate", None), S(22, 1, "B", "generate", None)),
            reviews=(R(1, "A", "uncertain", 22), R(1, "B", "incorrect", 21)),
        ),
        # p4: failed after one call.
        ProblemRow("p4", "failed", None, "3", model_calls=1, prompt_tokens=100, wall_time_s=2.0),
    )  # fmt: skip
    return JobRows(1, "mutual", "mutual", {"max_rounds": 3}, problems, wall_time_s=60.0)


def sc_job() -> JobRows:
    answers = {"p1": "7", "p2": "12", "p3": "6", "p4": "3"}  # right, right, wrong, right
    refs = {"p1": "7", "p2": "12", "p3": "5", "p4": "3"}
    problems = tuple(
        ProblemRow(
            i, "answered", a, refs[i], rounds_used=1, model_calls=4, solutions=(S(1, 1, "A", "generate", a),)
        )
        for i, a in answers.items()
    )
    return JobRows(2, "sc", "self-consistency", {"samples": 4}, problems)


def test_wilson_interval_matches_the_textbook() -> None:
    low, high = wilson_interval(1, 4)
    assert (round(low, 4), round(high, 4)) == (0.0456, 0.6994)
    low, high = wilson_interval(15, 30)  # p = 0.5: symmetric, 0.5 -/+ 0.1685
    assert (round(low, 4), round(high, 4)) == (0.3315, 0.6685)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),
        (0, 2, 0.5),  # 2 * (1/4)
        (1, 9, 22 / 1024),  # 2 * (1 + 10) / 2^10
        (9, 1, 22 / 1024),
        (0, 6, 2 / 64),
        (5, 5, 1.0),  # 2 * P(X <= 5) > 1
        (3, 7, 2 * (1 + 10 + 45 + 120) / 1024),
    ],
)
def test_mcnemar_exact(b: int, c: int, p: float) -> None:
    assert math.isclose(mcnemar_exact(b, c), p)


def test_mutual_summary_by_hand() -> None:
    s = summarize(mutual_job())
    assert (s.problems, s.judged, s.correct, s.accuracy) == (4, 4, 1, 0.25)
    assert (s.answered, s.unanswered, s.failed, s.other) == (2, 1, 1, 0)
    assert (round(s.ci_low, 4), round(s.ci_high, 4)) == (0.0456, 0.6994)
    assert s.calls_per_problem == (4 + 8 + 4 + 1) / 4
    assert s.prompt_tokens_per_problem == (400 + 900 + 400 + 100) / 4
    assert s.generated_tokens_per_problem == (100 + 300 + 100 + 0) / 4
    assert s.wall_s_per_problem == (10 + 30 + 2) / 3  # p3 has no wall time
    assert s.model_s_per_problem == (8 + 20 + 4 + 0) / 4
    assert s.job_wall_s == 60.0
    assert s.rounds == {1: 2, 2: 1} and s.stopped_early == 3  # p4 failed: no rounds
    # After round 1: p1 right, p2's round-1 answer 12 right, p3 none, p4 failed: 2/4; after 2: 1/4.
    assert s.accuracy_by_round == (0.5, 0.25)
    rv = s.reviews
    assert rv is not None
    assert rv.threshold_met == 2  # p1 (round 1) and p2 (round 2, on the wrong answer)
    assert (rv.refinements, rv.wrong_to_right, rv.right_to_wrong) == (2, 0, 1)
    # Verdicts: p1 accepts 2 right; p2 rejects a wrong and a right, accepts 2 wrong;
    # p3 uncertain once, rejects a non-answer (right to reject).
    assert (rv.accepted_right, rv.accepted_wrong, rv.rejected_right, rv.rejected_wrong) == (2, 2, 1, 2)
    assert (rv.verdicts, rv.verdicts_right, rv.uncertain) == (8, 4, 1)
    assert s.completions is None


def test_single_round_jobs_have_no_round_statistics() -> None:
    s = summarize(sc_job())
    assert (s.correct, s.judged, s.answered) == (3, 4, 4)
    assert s.rounds == {} and s.accuracy_by_round == () and s.reviews is None and s.completions is None


def test_completion_statistics() -> None:
    problem = ProblemRow(
        "p1", "answered", "8", "7", rounds_used=1, model_calls=4,
        solutions=(
            S(1, 1, "A", "generate", "7"), S(2, 1, "B", "generate", "8"),
            S(3, 1, "A", "complete", "8", 2),  # A finishes B's 8 with 8: consistent (wrong answer)
            S(4, 1, "B", "complete", "7", 1),  # B finishes A's 7 with 7: consistent (right answer)
        ),
    )  # fmt: skip
    s = summarize(JobRows(3, "mc", "mutual-consistency", {"max_rounds": 3}, (problem,)))
    assert s.completions is not None
    assert (s.completions.completed, s.completions.consistent) == (2, 2)
    assert (s.completions.consistent_right, s.completions.inconsistent_right) == (1, 0)
    assert s.rounds == {1: 1} and s.stopped_early == 1 and s.correct == 0


def test_paired_comparison_on_shared_items() -> None:
    c = paired(mutual_job(), sc_job())
    assert c is not None
    # p1 both right; p2 and p4 only sc; p3 neither.
    assert (c.shared, c.both_right, c.only_first, c.only_second, c.neither) == (4, 1, 0, 2, 1)
    assert c.difference == -0.5 and c.p_value == 0.5
    assert (c.first, c.second) == ("1 mutual", "2 sc")


def test_paired_matches_by_item_id_and_skips_disjoint_jobs() -> None:
    other = JobRows(9, "other", "cot", {}, (ProblemRow("zzz", "answered", "1", "1"),))
    assert paired(mutual_job(), other) is None
    subset = JobRows(
        8, "two", "cot", {}, (ProblemRow("p2", "answered", "12", "12"), ProblemRow("p3", "failed", None, "5"))
    )
    c = paired(subset, mutual_job())
    assert c is not None and (c.shared, c.only_first, c.only_second, c.neither) == (2, 1, 0, 1)


def test_build_report_keeps_the_order_and_pairs_everything_comparable() -> None:
    other = JobRows(9, "other", "cot", {}, (ProblemRow("zzz", "answered", "1", "1"),))
    report = build_report([mutual_job(), sc_job(), other])
    assert [s.job_id for s in report.jobs] == [1, 2, 9]
    assert [(c.first, c.second) for c in report.comparisons] == [("1 mutual", "2 sc")]


def test_state_up_to_round_drops_later_rounds() -> None:
    b = StateBuilder()
    b.solution("r1.generate.A", "7")
    b.solution("r2.generate.A", "8", round_=2)
    state = b.state()
    state = ProblemState(
        state.question,
        state.models,
        {**state.steps, "select": StepView("select", "select", None, 2, "done")},
        state.outputs,
    )
    cut = state_up_to_round(state, 1)
    assert set(cut.steps) == {"r1.generate.A"} and set(cut.solutions) == {"r1.generate.A"}


class LatestAnswer:
    """Selects the answer of the latest round's solution, so each round's replay differs."""

    name: ClassVar[str] = "latest"
    params: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: object = None, **_: object) -> None:
        pass

    def select(self, state: ProblemState) -> Selection:
        last = max(state.solutions.values(), key=lambda s: s.round)
        return Selection(last.id, last.answer, "latest", last.round)


def test_replay_rounds_selects_as_after_each_earlier_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(strategies.STRATEGIES, "latest", LatestAnswer)
    b = StateBuilder()
    b.solution("r1.generate.A", "5")
    b.solution("r2.refine.A", "6", round_=2)
    b.solution("r3.refine.A", "7", round_=3)
    read: list[str] = []

    class States(dict[str, ProblemState]):
        def __getitem__(self, key: str) -> ProblemState:
            read.append(key)
            return super().__getitem__(key)

    states = States(multi=b.state(), single=b.state(), failed=b.state())
    job = JobRows(
        1, "j", "latest", {},
        (
            ProblemRow("multi", "answered", "final", "7", rounds_used=3),
            ProblemRow("single", "answered", "5", "5", rounds_used=1),
            ProblemRow("failed", "failed", None, "5", rounds_used=3),
        ),
    )  # fmt: skip
    replayed = replay_rounds(job, states, max_rounds_limit=10)
    # Rounds 1 and 2 replayed, the last is the final answer as selected.
    assert [p.answer_by_round for p in replayed.problems] == [("5", "6", "final"), (), ()]
    assert read == ["multi"]  # only the problem replayed is read
    assert replayed.problems[1:] == job.problems[1:]


def test_replay_rounds_leaves_a_job_of_an_unknown_strategy_alone() -> None:
    job = JobRows(1, "j", "gone", {}, (ProblemRow("p", "answered", "1", "1", rounds_used=2),))
    assert replay_rounds(job, {}, max_rounds_limit=10) is job


def test_a_searchs_answers_and_where_its_tokens_went_by_hand() -> None:
    def problem(item: str, final: str, ref: str, chosen: str, majority: str, root: str,
                cands: list[tuple[str, str]], tokens: dict[str, int]) -> ProblemRow:  # fmt: skip
        return ProblemRow(
            item_id=item, status="answered", final_answer=final, reference_answer=ref,
            tokens_by_kind=tokens,
            search=SearchRow(tuple(CandidateRow(k, a) for k, a in cands), chosen, majority, root),
        )  # fmt: skip

    job = JobRows(
        7, "rstar", "rstar", {}, (
            problem("a", "5", "5", "a2_answer", "5", "5", [("a2_answer", "5"), ("a3_answer", "6")],
                    {"a2_answer": 600, "a3_question": 20, "a3_answer": 80, "rc_complete": 300}),
            problem("b", "6", "7", "a3_answer", "6", "7", [("a2_answer", "7"), ("a3_answer", "6"),
                    ("a1_step", "7")], {"a2_answer": 700, "a1_step": 40, "a3_answer": 60}),
            problem("c", "9", "8", "a2_answer", "9", "9", [("a2_answer", "9")], {"a2_answer": 200}),
        ),
    )  # fmt: skip
    search = summarize(job).search
    assert search is not None
    assert (search.judged, search.right_held, search.majority_right, search.root_a2_right) == (3, 2, 1, 2)
    assert search.chosen_right == 1
    by = {a.action: a for a in search.actions}
    assert list(by) == ["A1 one step", "A2 chain of thought", "A3 sub-question", "discriminator"]
    total = 2000
    a2, a3 = by["A2 chain of thought"], by["A3 sub-question"]
    assert a2.generated_tokens_per_problem == pytest.approx(1500 / 3) and a2.token_share == 1500 / total
    assert a3.token_share == 160 / total  # the sub-questions and their answers
    assert (a2.candidates, a2.candidates_right, a2.chosen, a2.chosen_right) == (3, 2, 2, 1)
    assert (a3.candidates, a3.candidates_right, a3.chosen, a3.chosen_right) == (2, 0, 1, 0)
    assert by["A1 one step"].candidates_right == 1 and by["discriminator"].candidates == 0
    # Jobs that build no tree have no search figures.
    assert summarize(sc_job()).search is None


def test_accuracy_is_grouped_by_type_and_data_set_only_where_jobs_mix_them() -> None:
    from rstar.problem_types import get_problem_type
    from rstar.reports import accuracy_groups, build_report, dataset_of

    yes_no = get_problem_type("yes-no")
    mixed = JobRows(
        5, "mixed", "cot", {},
        (
            ProblemRow("a", "answered", "12", "12", dataset="gsm-hard"),
            ProblemRow("b", "answered", "5", "6", dataset="gsm-hard"),
            ProblemRow("c", "answered", "7", "7", dataset="svamp"),
            ProblemRow("d", "answered", "8", None, dataset="svamp"),
        ),
    )  # fmt: skip
    groups = accuracy_groups([mixed])
    assert [(g.dataset, g.problems, g.judged, g.correct) for g in groups] == [
        ("gsm-hard", 2, 2, 1),
        ("svamp", 2, 1, 1),
    ]
    assert accuracy_groups([sc_job()]) == ()  # one type, no data sets: nothing to add
    strategyqa = JobRows(
        6, "stg", "cot", {}, (ProblemRow("s", "answered", "yes", "no", kind=yes_no),), kind=yes_no
    )
    by_type = build_report([sc_job(), strategyqa]).groups
    assert [(g.job, g.problem_type, g.correct, g.judged) for g in by_type][-1] == ("6 stg", "yes-no", 0, 1)
    assert dataset_of({"source": "MATH500", "level": 2}) == "MATH500" and dataset_of(None) == ""
    from cli.report import render_groups_csv, render_markdown

    report = build_report([mixed])
    assert "## Accuracy by problem type and data set" in render_markdown(report)
    assert "5 mixed,number,svamp,2,1,1,1.0000" in render_groups_csv(report)
    assert "## Accuracy by problem type" not in render_markdown(build_report([sc_job()]))
