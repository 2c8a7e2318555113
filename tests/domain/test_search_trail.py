"""bench.search_trail: the audit-trail figures quoted for each rstar accuracy run."""

from __future__ import annotations

from bench.search_trail import summarise


def _path(
    item: str, kind: str, correct: bool, *, selected: bool = False, consistent: bool | None = None
) -> dict:
    return {
        "item_id": item,
        "kind": kind,
        "correct": correct,
        "selected": selected,
        "mutually_consistent": consistent,
    }


def test_counts_problems_that_held_the_right_answer_and_the_candidates_by_kind() -> None:
    lines = summarise(
        [
            _path("q1", "a2_answer", True, consistent=True),
            _path("q1", "a3_answer", False, selected=True, consistent=True),
            _path("q2", "a2_answer", True, selected=True),
            _path("q3", "a1_step", False, selected=True, consistent=False),
        ]
    )
    assert lines[0] == "4 candidate paths over 3 problems (1.3 per problem)"
    # q1 and q2 held it; only q2's choice took it.
    assert lines[1] == "the right answer was among the candidates in 2 problems; the choice took it in 1"
    assert "  A1 step candidates: 0 right of 1" in lines
    assert "  A2 answer candidates: 2 right of 2" in lines
    assert "  A3 sub-question candidates: 0 right of 1" in lines
    assert lines[-1] == "mutually consistent: 2, of them right: 1 (problems where the discriminator ran: 2)"
