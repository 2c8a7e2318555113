"""Validation of JSONL input files: every refusal names its line and field."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rstar.inputs import MAX_ID_CHARS, MAX_REPORTED_PROBLEMS, InputError, InputProblem, parse_problems
from rstar.types import ProblemInput


def _refusal(data: bytes, **limits: int) -> InputError:
    with pytest.raises(InputError) as info:
        parse_problems(data, **limits)
    return info.value


# --- accepted files ------------------------------------------------------------------------------


UNKNOWN = 'unknown field (a line has question, answer, id, meta; put other fields to keep inside "meta")'


def test_parse_problems_happy_path() -> None:
    data = (
        b'{"id": "gsm-1", "question": "  Natalia sold clips.  ", '
        b'"answer": "She sold 48/2 = 24 in May.\\n#### 72"}\n'
        b"\n"
        b"   \t \r\n"
        b'{"id": 70, "question": "Q two", "answer": 0.5}\r\n'
        b'{"question": "Q three"}\n'
        b'{"question": "Q four", "answer": 1200, "id": null}\n'
        b'{"question": "Q five", "answer": "$1,000", "id": " padded "}'  # no trailing newline
    )
    assert parse_problems(data) == [
        ProblemInput("gsm-1", 1, "Natalia sold clips.", "She sold 48/2 = 24 in May.\n#### 72", "72"),
        ProblemInput("70", 4, "Q two", "0.5", "0.5"),
        ProblemInput("5", 5, "Q three", None, None),
        ProblemInput("6", 6, "Q four", "1200", "1200"),
        ProblemInput("padded", 7, "Q five", "$1,000", "1000"),
    ]


@pytest.mark.parametrize(
    ("answer", "reference", "reference_answer"),
    [
        ('"#### 1,200"', "#### 1,200", "1200"),
        ('"\\\\frac{1}{2}"', "\\frac{1}{2}", "0.5"),
        ('"Tuesday"', "Tuesday", "tuesday"),
        ("-3", "-3", "-3"),
        ("2.50", "2.5", "2.5"),
        ("1e20", "100000000000000000000", "100000000000000000000"),
        ('""', None, None),
        ('"   "', None, None),
        ("null", None, None),
    ],
)
def test_parse_problems_answers(answer: str, reference: str | None, reference_answer: str | None) -> None:
    data = b'{"question": "q", "answer": ' + answer.encode() + b"}"
    [problem] = parse_problems(data)
    assert (problem.reference, problem.reference_answer) == (reference, reference_answer)


def test_parse_problems_keeps_declared_metadata() -> None:
    """Fields a data set has beyond question and answer (MATH's level and subject) are kept when
    the line declares them under "meta"; a line without one has none."""
    data = (
        b'{"question": "q1", "answer": "4", "meta": {"level": 5, "subject": "Algebra", "tags": ["x"]}}\n'
        b'{"question": "q2", "meta": null}\n{"question": "q3"}'
    )
    got = parse_problems(data)
    assert [p.meta for p in got] == [{"level": 5, "subject": "Algebra", "tags": ["x"]}, None, None]
    assert type(got[0].meta) is dict  # plain JSON values, as stored


def test_parse_problems_accepts_a_utf8_bom_and_unicode() -> None:
    data = b"\xef\xbb\xbf" + '{"question": "Combien font 2+2 ? ½ €"}'.encode()
    assert parse_problems(data)[0].question == "Combien font 2+2 ? ½ €"


def test_parse_problems_limits_are_inclusive() -> None:
    line = b'{"question": "' + b"q" * 10 + b'"}'
    assert len(parse_problems(line, max_line_bytes=len(line), max_question_chars=10)) == 1
    assert len(parse_problems(b"\n".join([line] * 3), max_problems=3)) == 3


# --- refused files: one problem each, with its exact line and field -------------------------------


@pytest.mark.parametrize(
    ("data", "line", "field", "reason"),
    [
        (b"", 0, None, "no problems: the file is empty or has only blank lines"),
        (b"\n  \n\t\r\n", 0, None, "no problems: the file is empty or has only blank lines"),
        (b'{"question": "ok"}\nnot json', 2, None, "not valid JSON: Expecting value at column 1"),
        (b'{"question": "ok"', 1, None, "not valid JSON: Expecting ',' delimiter at column 18"),
        (b'{"question": "ok"} trailing', 1, None, "not valid JSON: Extra data at column 20"),
        (b'\n\n["question"]', 3, None, "must be a JSON object, not an array"),
        (b'"question"', 1, None, "must be a JSON object, not a string"),
        (b"42", 1, None, "must be a JSON object, not a number"),
        (b"null", 1, None, "must be a JSON object, not null"),
        (b"[" * 60_000, 1, None, "not valid JSON: nested too deeply"),
        (b'{"q": ' * 10_000, 1, None, "not valid JSON: nested too deeply"),
        (b'{"question": "caf\xe9"}', 1, None, "invalid UTF-8 at byte 18"),
        (b'{"question": "ok"}\n\xff\xfe{}', 2, None, "invalid UTF-8 at byte 1"),
        (b'{"question": "a\x00b"}', 1, None, "contains a NUL byte at byte 16"),
        (b'{"answer": "4"}', 1, "question", "missing or empty"),
        (b'{"question": ""}', 1, "question", "missing or empty"),
        (b'{"question": " \\n\\t "}', 1, "question", "missing or empty"),
        (b'{"question": null}', 1, "question", "missing or empty"),
        (b'{"question": 42}', 1, "question", "must be a string, not a number"),
        (b'{"question": ["a"]}', 1, "question", "must be a string, not an array"),
        (b'{"question": {"text": "a"}}', 1, "question", "must be a string, not an object"),
        (b'{"question": "' + b"q" * 11 + b'"}', 1, "question", "too long: 11 characters, the limit is 10"),
        (b'{"question": "a\\u0000b"}', 1, "question", "contains a NUL character"),
        (b'{"question": "a\\ud800b"}', 1, "question", "contains an unpaired UTF-16 surrogate escape"),
        (b'{"question": "q", "id": true}', 1, "id", "must be a string or an integer, not a boolean"),
        (b'{"question": "q", "id": 1.5}', 1, "id", "must be a string or an integer, not a number"),
        (b'{"question": "q", "id": [1]}', 1, "id", "must be a string or an integer, not an array"),
        (b'{"question": "q", "id": ""}', 1, "id", "empty"),
        (b'{"question": "q", "id": "   "}', 1, "id", "empty"),
        (
            b'{"question": "q", "id": "' + b"i" * (MAX_ID_CHARS + 1) + b'"}',
            1,
            "id",
            f"too long: {MAX_ID_CHARS + 1} characters, the limit is {MAX_ID_CHARS}",
        ),
        (b'{"question": "q", "answer": true}', 1, "answer", "must be a string or a number, not a boolean"),
        (b'{"question": "q", "answer": [4]}', 1, "answer", "must be a string or a number, not an array"),
        (
            b'{"question": "q", "answer": {"a": 4}}',
            1,
            "answer",
            "must be a string or a number, not an object",
        ),
        (b'{"question": "q", "answer": NaN}', 1, "answer", "must be a finite number"),
        (b'{"question": "q", "answer": Infinity}', 1, "answer", "must be a finite number"),
        (b'{"question": "q", "answer": "a\\u0000"}', 1, "answer", "contains a NUL character"),
        # A misspelt or unknown field would be dropped unnoticed (the reference with it).
        (
            b'{"question": "q", "anwser": "4"}',
            1,
            "anwser",
            UNKNOWN + "; did you mean 'answer'?",
        ),
        (
            b'{"question": "q", "notes": "x"}',
            1,
            "notes",
            UNKNOWN,
        ),
        (b'{"question": "q", "meta": "level 5"}', 1, "meta", "must be an object, not a string"),
        (b'{"question": "q", "meta": [1]}', 1, "meta", "must be an object, not an array"),
        (b'{"question": "q", "meta": {"a": "b\\u0000"}}', 1, "meta", "contains a NUL character"),
        (b'{"question": "q", "meta": {"b\\u0000": 1}}', 1, "meta", "contains a NUL character"),
        (
            b'{"question": "q", "meta": {"a": "' + b"x" * 10000 + b'"}}',
            1,
            "meta",
            "too long: 10008 characters as JSON, the limit is 10000",
        ),
        (  # a BOM inside a key (a file pasted together from others)
            b'{"question": "q", "\xef\xbb\xbfanswer": "4"}',
            1,
            "\\ufeffanswer",
            UNKNOWN + "; did you mean 'answer'?",
        ),
        (b'{"question": "q", "answer": "4", "answer": "5"}', 1, "answer", "given more than once"),
        (
            b'{"question": "a", "id": "x"}\n{"question": "b", "id": "y"}\n{"question": "c", "id": "x"}',
            3,
            "id",
            "duplicate id 'x', first used on line 1",
        ),
        (
            b'{"question": "a", "id": 1}\n\n{"question": "b", "id": "1"}',
            3,
            "id",
            "duplicate id '1', first used on line 1",
        ),
        (  # a default id (the line number) can collide with an explicit one
            b'{"question": "a", "id": "2"}\n{"question": "b"}',
            2,
            "id",
            "duplicate id '2', first used on line 1",
        ),
        (
            b'{"question": "' + b"q" * 70_000 + b'"}',
            1,
            None,
            "line too long: 70016 bytes, the limit is 65536",
        ),
        (b'{"question": "a"}\n' * 4, 4, None, "more than 3 problems; split the file"),
    ],
)
def test_parse_problems_refusals(data: bytes, line: int, field: str | None, reason: str) -> None:
    error = _refusal(data, max_question_chars=10, max_problems=3)
    assert error.problems == [InputProblem(line, field, reason)]
    where = f"line {line}" + (f", field '{field}'" if field else "")
    assert f"{where}: {reason}" in str(error)


def test_parse_problems_integer_beyond_the_digit_limit() -> None:
    error = _refusal(b'{"question": "q", "answer": ' + b"9" * 5000 + b"}")
    [problem] = error.problems
    assert (problem.line, problem.field) == (1, None)
    assert problem.reason.startswith("not valid JSON:")


# --- refused files: everything at once -----------------------------------------------------------


def test_parse_problems_reports_every_problem_in_file_order() -> None:
    data = b"\n".join(
        [
            b'{"question": "fine", "id": "a"}',
            b'{"question": ""}',
            b"not json",
            b'{"question": "ok", "id": "a", "answer": []}',
            b'{"question": 5, "id": false}',
        ]
    )
    error = _refusal(data)
    assert error.problems == [
        InputProblem(2, "question", "missing or empty"),
        InputProblem(3, None, "not valid JSON: Expecting value at column 1"),
        InputProblem(4, "answer", "must be a string or a number, not an array"),
        InputProblem(4, "id", "duplicate id 'a', first used on line 1"),
        InputProblem(5, "question", "must be a string, not a number"),
        InputProblem(5, "id", "must be a string or an integer, not a boolean"),
    ]
    assert str(error) == (
        "the input file has 6 errors:\n"
        "  line 2, field 'question': missing or empty\n"
        "  line 3: not valid JSON: Expecting value at column 1\n"
        "  line 4, field 'answer': must be a string or a number, not an array\n"
        "  line 4, field 'id': duplicate id 'a', first used on line 1\n"
        "  line 5, field 'question': must be a string, not a number\n"
        "  line 5, field 'id': must be a string or an integer, not a boolean"
    )


def test_parse_problems_caps_the_report() -> None:
    error = _refusal(b'{"question": ""}\n' * 1000)
    assert len(error.problems) == MAX_REPORTED_PROBLEMS + 1
    assert error.problems[-1] == InputProblem(
        MAX_REPORTED_PROBLEMS, None, "too many problems; stopped checking here"
    )


def test_input_error_is_a_value_error_and_pickles() -> None:
    error = _refusal(b"")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems
    assert (
        str(copy)
        == str(error)
        == ("the input file has 1 error:\n  line 0: no problems: the file is empty or has only blank lines")
    )


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=500),
        st.lists(
            st.sampled_from(
                [b"{", b"}", b'"question"', b'"id"', b'"answer"', b":", b",", b'"q"', b"1", b"\n"]
            ),
            max_size=40,
        ).map(b"".join),
    )
)
def test_parse_problems_returns_or_raises_input_error(data: bytes) -> None:
    try:
        problems = parse_problems(data)
    except InputError as error:
        assert 1 <= len(error.problems) <= MAX_REPORTED_PROBLEMS + 1
    else:
        assert problems and all(p.question == p.question.strip() != "" for p in problems)
