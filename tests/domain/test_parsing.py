"""Defensive parsing of model replies: structured, free-form and garbage."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rstar.parsing import (
    MAX_ISSUES,
    MAX_STEP_CHARS,
    MAX_STEPS,
    find_json_object,
    parse_review,
    parse_solution,
)
from rstar.types import ParsedReview, ParsedSolution, ReviewIssue, Verdict

# --- find_json_object ----------------------------------------------------------------------------


def _has_x(obj: dict[str, object]) -> bool:
    return "x" in obj


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"x": 1}', {"x": 1}),
        ('prose {"x": "}{"} more', {"x": "}{"}),
        ('```json\n{"x": 2}\n```', {"x": 2}),
        ('\\frac{1}{2} then {"y": 1} then {"x": 3}', {"x": 3}),
        ('{"outer": {"x": 4}}', {"x": 4}),  # nested objects are candidates too
        ('{"x": 1,}', None),  # trailing comma: not JSON
        ("{", None),
        ("", None),
        ("[" * 100_000, None),
        ('{"x":' * 100_000, None),
    ],
)
def test_find_json_object(text: str, expected: dict[str, object] | None) -> None:
    found = find_json_object(text, _has_x)
    assert (found[0] if found else None) == expected


def test_find_json_object_span() -> None:
    text = 'ab {"x": 1} cd'
    found = find_json_object(text, _has_x)
    assert found is not None
    _, start, end = found
    assert text[start:end] == '{"x": 1}'


# --- parse_solution: structured ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "steps", "answer_raw", "answer"),
    [
        ('{"steps": ["a", "b"], "final_answer": "18"}', ("a", "b"), "18", "18"),
        ('{"steps": ["a"], "final_answer": "$1,000.00"}', ("a",), "$1,000.00", "1000"),
        ('{"steps": ["a"], "final_answer": 18}', ("a",), "18", "18"),
        ('{"steps": ["a"], "final_answer": 2.50}', ("a",), "2.5", "2.5"),
        ('{"steps": ["a"], "answer": "-3"}', ("a",), "-3", "-3"),
        ('{"steps": ["a"], "Final Answer": "\\\\frac{1}{2}"}', ("a",), "\\frac{1}{2}", "0.5"),
        ('{"steps": ["a"], "finalAnswer": "50%"}', ("a",), "50%", "50"),
        ('{"steps": ["a"], "final_answer": "\\\\boxed{7}"}', ("a",), "\\boxed{7}", "7"),
        ('  {"final_answer": "Tuesday", "steps": []}  ', (), "Tuesday", "tuesday"),
        # fenced and embedded in prose
        ('Sure!\n```json\n{"steps": ["3*6=18"], "final_answer": "18"}\n```\nDone.', ("3*6=18",), "18", "18"),
        ('We use \\frac{1}{2}. {"steps": ["x"], "final_answer": "0.5"} Hope it helps', ("x",), "0.5", "0.5"),
        # steps as objects, as one string, and mixed
        (
            '{"steps": [{"step": 1, "description": "do x"}, {"text": "do y"}, 3], "final_answer": "1"}',
            ("do x", "do y", "3"),
            "1",
            "1",
        ),
        ('{"steps": "1. add\\n2. multiply", "final_answer": "6"}', ("add", "multiply"), "6", "6"),
    ],
)
def test_parse_solution_structured(text: str, steps: tuple[str, ...], answer_raw: str, answer: str) -> None:
    assert parse_solution(text) == ParsedSolution(steps, answer_raw, answer, structured=True)


def test_parse_solution_structured_without_answer_uses_the_free_text() -> None:
    result = parse_solution('{"steps": ["3 + 4 = 7", "The answer is 7"]}')
    assert result.structured
    assert result.steps == ("3 + 4 = 7", "The answer is 7")
    assert result.answer == "7"
    assert result.parse_error is not None and "final_answer" in result.parse_error


def test_parse_solution_structured_empty_answer_finds_answer_after_the_object() -> None:
    result = parse_solution('{"steps": ["a"], "final_answer": ""}\nFinal answer: 12')
    assert (result.structured, result.answer, result.answer_raw) == (True, "12", "12")


def test_parse_solution_steps_of_wrong_type() -> None:
    result = parse_solution('{"steps": 5}')
    assert result.structured
    assert result.steps == ()
    assert result.answer is None
    assert result.parse_error is not None
    assert "steps" in result.parse_error and "no final answer" in result.parse_error


def test_parse_solution_caps_steps() -> None:
    steps = ["x" * (MAX_STEP_CHARS + 100)] * (MAX_STEPS + 10)
    result = parse_solution(json.dumps({"steps": steps, "final_answer": "1"}))
    assert len(result.steps) == MAX_STEPS
    assert all(len(step) == MAX_STEP_CHARS for step in result.steps)
    assert result.parse_error == f"steps truncated to {MAX_STEPS}"


def test_parse_solution_cleans_unstorable_characters() -> None:
    result = parse_solution(json.dumps({"steps": ["a\x00b", "c\ud800"], "final_answer": "1\x002"}))
    assert result.steps == ("ab", "c\ufffd")
    assert result.answer_raw == "12"
    assert result.answer == "12"


# --- parse_solution: free-form -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer_raw", "answer"),
    [
        ("Step 1: 3*6 = 18\nStep 2: add 2\nFinal Answer: 20", "20", "20"),
        ("work\nfinal answer: $1,200.", "$1,200.", "1200"),
        ("work\n**Final Answer:** 20", "20", "20"),
        ("work\nFinal Answer: **20** apples.", "**20** apples.", "20"),
        ("Final answer:\n\n17", "17", "17"),
        ("Answer: -4", "-4", "-4"),
        # \boxed, last one wins, nested braces
        ("So $\\boxed{18}$.", "18", "18"),
        ("first \\boxed{3} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "0.5"),
        # "The answer is" and "the final answer is"
        ("Adding up, the answer is 42.", "42.", "42"),
        ("Thus the final answer is 7 apples, since 3 + 4 = 7", "7 apples", "7"),
        ("The answer is 1/3", "1/3", "1/3"),
        # GSM8K marker
        ("She sold 48/2 = 24 clips.\n#### 72", "72", "72"),
        # priority: "Final answer:" beats \boxed beats "answer is" beats ####
        ("The answer is 5\n\\boxed{6}\nFinal answer: 7", "7", "7"),
        ("#### 5\nThe answer is 6\n\\boxed{8}", "8", "8"),
        ("#### 5\nThe answer is 6", "6", "6"),
        # an explicit marker with nothing usable falls through to the next one
        ("Final answer: **\n\\boxed{9}", "9", "9"),
    ],
)
def test_parse_solution_free_form(text: str, answer_raw: str, answer: str) -> None:
    result = parse_solution(text)
    assert (result.answer_raw, result.answer, result.structured) == (answer_raw, answer, False)
    assert result.parse_error is None


def test_parse_solution_free_form_steps_strip_numbering() -> None:
    text = "1. Add 3 and 4.\n\n2) Get 7\nStep 3: Double it\n- bullet\n```\n  \nFinal answer: 14"
    result = parse_solution(text)
    assert result.steps == ("Add 3 and 4.", "Get 7", "Double it", "bullet", "Final answer: 14")
    assert result.answer == "14"


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("She had 12 then 14 and ended with 15.5 units", "15.5"),
        ("costs 1,250 in total", "1250"),
        ("the temperature fell to -4 degrees", "-4"),
    ],
)
def test_parse_solution_last_number_is_a_flagged_guess(text: str, answer: str) -> None:
    result = parse_solution(text)
    assert result.answer == answer
    assert result.parse_error == "no explicit final answer; used the last number"


@pytest.mark.parametrize(
    "text",
    ["", "   \n ", "{", "}", "nothing numeric here", "[" * 100_000, '{"a":' * 100_000, "\\boxed{" * 1000],
)
def test_parse_solution_no_answer(text: str) -> None:
    result = parse_solution(text)
    assert result.answer is None
    assert result.answer_raw is None
    assert result.parse_error is not None
    assert "internal" not in result.parse_error


# --- parse_solution: garbage and size ------------------------------------------------------------

_HUGE_INPUTS = [
    "x" * 10_000_000,
    "1 " * 5_000_000,
    "line\n" * 2_000_000,
    "\\boxed{" * 1_400_000,
    '{"steps": ["' + "a" * 10_000_000 + '"], "final_answer": "3"}',
    "answer: " * 1_000_000,
    "{" * 10_000_000,
    '{"x": [' * 2_000_000,
    '{"a":' * 199 + "[" + "1," * 5_000_000,  # each nested start would re-read the long array
]


@pytest.mark.parametrize("text", _HUGE_INPUTS, ids=lambda t: f"{t[:12]!r}x{len(t)}")
def test_huge_inputs_are_bounded(text: str) -> None:
    started = time.perf_counter()
    solution = parse_solution(text)
    review = parse_review(text)
    elapsed = time.perf_counter() - started
    assert len(solution.steps) <= MAX_STEPS
    assert all(len(step) <= MAX_STEP_CHARS for step in solution.steps)
    assert "internal" not in (solution.parse_error or "")
    assert "internal" not in (review.parse_error or "")
    assert elapsed < 5, elapsed  # generous for slow CI; about 0.1 s on a laptop


def test_parse_solution_random_bytes() -> None:
    # Deterministic "random" bytes: every byte value, in a scrambled order.
    blob = bytes((i * 7919 + 13) % 256 for i in range(50_000))
    for text in (
        blob.decode("utf-8", "replace"),
        blob.decode("latin-1"),
        blob.decode("utf-8", "surrogateescape"),
    ):
        result = parse_solution(text)
        assert isinstance(result, ParsedSolution)
        assert "internal" not in (result.parse_error or "")
        for step in result.steps:
            step.encode("utf-8")  # storable: no lone surrogates
            assert "\x00" not in step


# --- parse_review: structured --------------------------------------------------------------------


def test_parse_review_full() -> None:
    text = json.dumps(
        {
            "verdict": "incorrect",
            "scores": {"logical_consistency": 4, "calculation_accuracy": 2, "step_completeness": 5},
            "issues": [{"step": 2, "description": "6 * 3 is 18, not 16"}, "units missing"],
            "correct_answer": "$18",
        }
    )
    assert parse_review(text) == ParsedReview(
        verdict=Verdict.INCORRECT,
        logical_consistency=4,
        calculation_accuracy=2,
        step_completeness=5,
        issues=(ReviewIssue(2, "6 * 3 is 18, not 16"), ReviewIssue(None, "units missing")),
        suggested_answer="18",
        structured=True,
        parse_error=None,
    )


@pytest.mark.parametrize(
    ("verdict", "expected", "clean"),
    [
        ("correct", Verdict.CORRECT, True),
        ("Correct", Verdict.CORRECT, True),
        ("**CORRECT**", Verdict.CORRECT, True),
        ("correct.", Verdict.CORRECT, True),
        ("right", Verdict.CORRECT, True),
        ("valid", Verdict.CORRECT, True),
        ("accept", Verdict.CORRECT, True),
        ("Accepted", Verdict.CORRECT, True),
        ("yes", Verdict.CORRECT, True),
        (True, Verdict.CORRECT, True),
        ("incorrect", Verdict.INCORRECT, True),  # contains "correct": must not read as correct
        ("Incorrect", Verdict.INCORRECT, True),
        ("INCORRECT - step 2 is wrong", Verdict.INCORRECT, True),
        ("wrong", Verdict.INCORRECT, True),
        ("invalid", Verdict.INCORRECT, True),  # contains "valid"
        ("reject", Verdict.INCORRECT, True),
        ("no", Verdict.INCORRECT, True),
        ("not correct", Verdict.INCORRECT, True),
        ("isn't correct", Verdict.INCORRECT, True),
        (False, Verdict.INCORRECT, True),
        ("uncertain", Verdict.UNCERTAIN, True),
        ("partially correct", Verdict.UNCERTAIN, False),
        ("maybe", Verdict.UNCERTAIN, False),
        ("", Verdict.UNCERTAIN, False),
        (3, Verdict.UNCERTAIN, False),
        (None, Verdict.UNCERTAIN, False),
    ],
)
def test_parse_review_verdicts(verdict: object, expected: Verdict, clean: bool) -> None:
    scores = {"logical_consistency": 3, "calculation_accuracy": 3, "step_completeness": 3}
    result = parse_review(json.dumps({"verdict": verdict, "scores": scores}))
    assert result.verdict is expected
    assert result.structured
    assert (result.parse_error is None) is clean


@pytest.mark.parametrize(
    ("value", "expected", "clean"),
    [
        (1, 1, True),
        (5, 5, True),
        (4.0, 4, True),
        ("4", 4, True),
        (" 4 ", 4, True),
        ("4/5", 4, True),
        ("4.0", 4, True),
        (0, None, False),
        (6, None, False),
        (-1, None, False),
        (10, None, False),
        (4.5, None, False),
        ("high", None, False),
        ("8/10", None, False),
        (True, None, False),
        (None, None, False),
        ([4], None, False),
    ],
)
def test_parse_review_score_validation(value: object, expected: int | None, clean: bool) -> None:
    scores = {"logical_consistency": value, "calculation_accuracy": 3, "step_completeness": 3}
    result = parse_review(json.dumps({"verdict": "correct", "scores": scores}))
    assert result.logical_consistency == expected
    assert (result.calculation_accuracy, result.step_completeness) == (3, 3)
    assert (result.parse_error is None) is clean
    if not clean:
        assert result.parse_error is not None and "logical_consistency" in result.parse_error


def test_parse_review_out_of_range_scores_are_reported() -> None:
    result = parse_review(
        '{"verdict": "correct", "logical_consistency": 7, "calculation_accuracy": 0, '
        '"step_completeness": 4.5}'
    )
    assert (result.logical_consistency, result.calculation_accuracy, result.step_completeness) == (
        None,
        None,
        None,
    )
    assert result.parse_error == (
        "logical_consistency 7 is not an integer from 1 to 5; "
        "calculation_accuracy 0 is not an integer from 1 to 5; "
        "step_completeness 4.5 is not an integer from 1 to 5"
    )


def test_parse_review_huge_integer_score() -> None:
    result = parse_review('{"verdict": "correct", "logical_consistency": 1' + "0" * 400 + "}")
    assert result.logical_consistency is None
    assert result.parse_error is not None and "logical_consistency 1000" in result.parse_error


def test_parse_review_non_finite_scores() -> None:
    result = parse_review(
        '{"verdict": "correct", "scores": {"logical_consistency": Infinity, '
        '"calculation_accuracy": NaN, "step_completeness": 1e999}}'
    )
    assert (result.logical_consistency, result.calculation_accuracy, result.step_completeness) == (
        None,
        None,
        None,
    )
    assert result.parse_error is not None


def test_parse_review_top_level_and_aliased_scores() -> None:
    result = parse_review(
        '{"Verdict": "correct", "logicalConsistency": "5", "Calculation Accuracy": 4, "completeness": 3}'
    )
    assert (result.logical_consistency, result.calculation_accuracy, result.step_completeness) == (5, 4, 3)
    assert result.parse_error is None


def test_parse_review_missing_scores_are_noted() -> None:
    result = parse_review('{"verdict": "correct"}')
    assert result.verdict is Verdict.CORRECT
    assert result.mean_score is None
    assert result.parse_error == (
        "logical_consistency missing; calculation_accuracy missing; step_completeness missing"
    )


@pytest.mark.parametrize(
    ("issues", "expected"),
    [
        ([{"step": 2, "description": "bad"}], (ReviewIssue(2, "bad"),)),
        ([{"step": "3", "issue": "bad"}], (ReviewIssue(3, "bad"),)),
        ([{"step": "Step 4", "text": "bad"}], (ReviewIssue(4, "bad"),)),
        ([{"step": "early", "description": "bad"}], (ReviewIssue(None, "bad"),)),
        ([{"step": True, "description": "bad"}], (ReviewIssue(None, "bad"),)),
        (["plain"], (ReviewIssue(None, "plain"),)),
        ("a single string", (ReviewIssue(None, "a single string"),)),
        (["", "  ", {"step": 1}, 7], (ReviewIssue(None, "7"),)),
        ([], ()),
        (None, ()),
    ],
)
def test_parse_review_issues(issues: object, expected: tuple[ReviewIssue, ...]) -> None:
    result = parse_review(json.dumps({"verdict": "incorrect", "issues": issues}))
    assert result.issues == expected


def test_parse_review_caps_issues() -> None:
    result = parse_review(json.dumps({"verdict": "incorrect", "issues": ["x" * 2500] * 120}))
    assert len(result.issues) == MAX_ISSUES
    assert all(len(issue.description) == MAX_STEP_CHARS for issue in result.issues)
    assert result.parse_error is not None and "issues truncated" in result.parse_error


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("correct_answer", "$1,000", "1000"),
        ("correctAnswer", 18, "18"),
        ("suggested_answer", "\\frac{1}{2}", "0.5"),
        ("correct_answer", None, None),
        ("correct_answer", "", None),
        ("correct_answer", ["18"], None),
    ],
)
def test_parse_review_suggested_answer(key: str, value: object, expected: str | None) -> None:
    result = parse_review(json.dumps({"verdict": "incorrect", key: value}))
    assert result.suggested_answer == expected


def test_parse_review_fenced_json_in_prose() -> None:
    text = 'Here is my review:\n```json\n{"verdict": "wrong", "scores": {"logic": 2}}\n```'
    result = parse_review(text)
    assert (result.structured, result.verdict, result.logical_consistency) == (True, Verdict.INCORRECT, 2)


# --- parse_review: free-form ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Verdict: correct", Verdict.CORRECT),
        ("Verdict: Incorrect", Verdict.INCORRECT),
        ("**Verdict:** **INCORRECT**", Verdict.INCORRECT),
        ("Verdict - uncertain", Verdict.UNCERTAIN),
        ("The verdict is correct.", Verdict.CORRECT),
        ("I checked it.\nVerdict: incorrect\nThe solution is correct up to step 2.", Verdict.INCORRECT),
    ],
)
def test_parse_review_free_form_verdict_line(text: str, expected: Verdict) -> None:
    result = parse_review(text)
    assert result.verdict is expected
    assert not result.structured
    assert "verdict" not in (result.parse_error or "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The solution is correct.", Verdict.CORRECT),
        ("The solution is incorrect.", Verdict.INCORRECT),  # the trap: "incorrect" contains "correct"
        ("Incorrect: step 2 multiplies wrongly.", Verdict.INCORRECT),
        ("This is not correct.", Verdict.INCORRECT),
        ("The reasoning is wrong at step 3.", Verdict.INCORRECT),
        ("The argument is invalid.", Verdict.INCORRECT),  # the trap: "invalid" contains "valid"
        ("The correct answer is 20, so the solution is wrong.", Verdict.INCORRECT),
    ],
)
def test_parse_review_free_form_verdict_guessed(text: str, expected: Verdict) -> None:
    result = parse_review(text)
    assert result.verdict is expected
    assert result.parse_error is not None and "guessed" in result.parse_error


def test_parse_review_free_form_verdict_word_must_be_near_the_start() -> None:
    result = parse_review("Let me think. " * 50 + "It is correct.")
    assert result.verdict is Verdict.UNCERTAIN
    assert result.parse_error is not None and "no verdict found" in result.parse_error


def test_parse_review_free_form_full() -> None:
    text = (
        "Verdict: Incorrect\n"
        "Logical consistency: 4/5\n"
        "Calculation accuracy - 2\n"
        "**Step completeness**: 5\n"
        "The correct answer is 20."
    )
    assert parse_review(text) == ParsedReview(
        verdict=Verdict.INCORRECT,
        logical_consistency=4,
        calculation_accuracy=2,
        step_completeness=5,
        issues=(),
        suggested_answer="20",
        structured=False,
        parse_error=None,
    )


def test_parse_review_free_form_score_out_of_range() -> None:
    result = parse_review("Verdict: correct\nLogic score: 9\nCalculation: 3\nCompleteness: 3")
    assert (result.logical_consistency, result.calculation_accuracy, result.step_completeness) == (
        None,
        3,
        3,
    )
    assert result.parse_error is not None and "logical_consistency 9" in result.parse_error


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Verdict: incorrect. The correct answer is $1,200.", "1200"),
        ("Verdict: incorrect. The correct answer should be 7 apples, not 8.", "7"),
        ("Verdict: incorrect. Correct answer: \\boxed{\\frac{1}{2}}", "0.5"),
        ("Verdict: correct.", None),
    ],
)
def test_parse_review_free_form_correct_answer(text: str, expected: str | None) -> None:
    assert parse_review(text).suggested_answer == expected


@pytest.mark.parametrize("text", ["", "hmm", "{", '{"steps": 5}', "[" * 100_000, '{"a":' * 100_000])
def test_parse_review_garbage_is_uncertain(text: str) -> None:
    result = parse_review(text)
    assert result.verdict is Verdict.UNCERTAIN
    assert not result.structured
    assert result.parse_error is not None and "no verdict found" in result.parse_error


# --- never raise ---------------------------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    [
        "{",
        "}",
        "[",
        "]",
        '"',
        ":",
        ",",
        "\\",
        '"steps"',
        '"final_answer"',
        '"verdict"',
        '"scores"',
        '"issues"',
        '"correct"',
        '"incorrect"',
        '"step"',
        "\\boxed{",
        "\\frac{1}{2}",
        "Final answer:",
        "The answer is",
        "####",
        "Verdict:",
        "Logical consistency:",
        "not",
        "1",
        "-2.5",
        "1,000",
        "$",
        "%",
        "**",
        "\n",
        " ",
        "\x00",
        "\ud800",
        "NaN",
        "Infinity",
        "1e999",
        "null",
        "true",
        "9" * 400,  # beyond float range and near Python's int-parsing digit limit
    ]
)
_REPLIES = st.one_of(st.text(max_size=2000), st.lists(_FRAGMENTS, max_size=80).map("".join))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_REPLIES)
def test_parse_solution_never_raises(text: str) -> None:
    result = parse_solution(text)
    assert isinstance(result, ParsedSolution)
    assert "internal" not in (result.parse_error or "")
    assert len(result.steps) <= MAX_STEPS
    if result.answer is None:
        assert result.parse_error is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_REPLIES)
def test_parse_review_never_raises(text: str) -> None:
    result = parse_review(text)
    assert isinstance(result, ParsedReview)
    assert "internal" not in (result.parse_error or "")
    for score in (result.logical_consistency, result.calculation_accuracy, result.step_completeness):
        assert score is None or 1 <= score <= 5


def test_an_answer_in_json_that_did_not_parse_ends_at_its_closing_quote() -> None:
    # A reply SmolLM2 wrote in the demo: a raw newline inside a string breaks the JSON, and the
    # prose fallback took everything after "final answer:" to the end of the line as the answer.
    reply = (
        '{"steps":[ "1. Hank reads a part of a novel every week.","8. final answer:19.7","20.1"] , '
        '"final_answer":"./2013-05-09 20:32:04.182699,\n" }'
    )
    parsed = parse_solution(reply)
    assert (parsed.answer_raw, parsed.answer, parsed.structured) == ("19.7", "19.7", False)
