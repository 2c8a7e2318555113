"""Problem types: each reads references as the published sets give them, normalises and compares
answers, finds an answer in free text, and is guessed from a file's references."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from rstar import prompts
from rstar.answers import answers_equal
from rstar.inputs import AUTHORS_FIELDS, Decoded, InputError, ProblemReader, decode_array, guess_fields
from rstar.parsing import parse_review, parse_solution
from rstar.problem_types import PROBLEM_TYPES, ProblemType, get_problem_type, guess_problem_type
from rstar.problem_types.choice import CHOICE, options
from rstar.problem_types.latex import LATEX, Verifier
from rstar.problem_types.number import NUMBER
from rstar.problem_types.yes_no import YES_NO
from rstar.strategies import ParamError, get_strategy
from rstar.strategies.base import StepSpec
from rstar.strategies.mcts.tree import Kind
from rstar.types import ModelRequest
from tests.domain.memory_driver import MemoryRun
from tests.domain.strategy_state import StateBuilder

SETS = Path(__file__).resolve().parents[1] / "data" / "rstar-paper"
"""The first 20 records of each of the paper's development slices, as the authors publish them."""


# -- number: the behaviour every job had before types ------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [("18", "$18.00"), ("1/2", "\\frac{1}{2}"), ("1,000", "1000 dollars"), ("-9867630.0", "-9867630")],
)
def test_number_equality_is_answers_equal(a: str, b: str) -> None:
    assert NUMBER.equal(a, b) and answers_equal(a, b)


def test_number_reads_gsm8k_references_and_the_authors_floats() -> None:
    assert NUMBER.reference("She has 3 + 4 = 7\n#### 7") == "7"
    assert NUMBER.reference("8.0") == "8"
    assert NUMBER.fallback("so she pays 12 dollars, then 15")[1] == "15"
    assert NUMBER.fallback("no digits here") == (None, None)


# -- latex ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac12", "1/2"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("10^\\circ", "10"),
        ("5\\text{ cm}", "5"),
        ("\\text{Evelyn}", "Evelyn"),
        ("x = 5", "5"),
        ("$\\sqrt3$", "\\sqrt{3}"),
        ("\\boxed{3\\sqrt{13}}", "3\\sqrt{13}"),
    ],
)
def test_latex_canonical_forms_agree_without_sympy(a: str, b: str) -> None:
    assert LATEX.normalize(a) == LATEX.normalize(b)


def test_latex_equivalent_forms_are_equal_through_math_verify() -> None:
    assert LATEX.equal("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}")
    assert LATEX.equal("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")
    assert not LATEX.equal("(1,2)", "(2,1)")
    assert not LATEX.equal("\\frac{\\sqrt{2}}{2}", "\\frac{\\sqrt{3}}{2}")
    # Words are compared as strings: as products of symbols "stop" would equal "pots".
    assert not LATEX.equal("\\text{stop}", "\\text{pots}")


def test_latex_reference_is_the_last_boxed_answer_of_a_worked_solution() -> None:
    solution = "We have $x=2$, so $y = \\boxed{4}$ is wrong; in fact $y=\\boxed{\\frac{14}{3}}$."
    assert LATEX.reference(solution) == "14/3"
    assert LATEX.equal(LATEX.reference(solution), "\\frac{14}{3}")
    assert LATEX.reference("Since the area is 12, the answer follows.\nThe answer is 12.") is None
    assert LATEX.fallback("the value of x^3 + 1 is large") == (None, None)


def _slow_compare(a: str, b: str) -> bool:  # runs in the verifier's process
    if a == "slow":
        time.sleep(60)
    return a == b


def test_a_comparison_out_of_time_counts_as_different_and_the_next_one_runs() -> None:
    verifier = Verifier(_slow_compare, timeout=2.0)
    started = time.monotonic()
    assert verifier.equal("slow", "slow") is False
    assert time.monotonic() - started < 60
    assert verifier.equal("a", "a") is True
    assert verifier.equal("a", "b") is False


# -- yes-no and choice ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("true", "yes"),
        ("False", "no"),
        ("\\boxed{Yes}", "yes"),
        ("No, because they never met.", "no"),
        ("The answer is: false.", "no"),
        ("yes and no", None),
        ("maybe", None),
    ],
)
def test_yes_no_answers(raw: str, want: str | None) -> None:
    assert YES_NO.normalize(raw) == want


def test_yes_no_fallback_takes_a_sentence_that_starts_with_the_word() -> None:
    assert YES_NO.fallback("There is no record of it. Yes, they could.")[1] == "yes"
    assert YES_NO.fallback("There is no record of it.") == (None, None)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("B", "B"),
        ("(c)", "C"),
        ("Option D", "D"),
        ("The answer is (A) 12", "A"),
        ("\\boxed{E}", "E"),
        ("Bob", None),
    ],
)
def test_choice_answers(raw: str, want: str | None) -> None:
    assert CHOICE.normalize(raw) == want


# -- parsing and prompts by type ------------------------------------------------------------------


def test_parsing_reads_the_answer_in_the_jobs_type() -> None:
    assert parse_solution("Caesar had few heirs.\nThe answer is: false.", YES_NO).answer == "no"
    assert parse_solution("so x = 1/2.\n\\boxed{\\dfrac{1}{2}}", LATEX).answer == "0.5"
    prose = parse_solution("Seals are wild. No, a seal would not respond.", YES_NO)
    assert prose.answer == "no" and prose.parse_error is not None  # a guess, and it says so
    assert parse_solution('{"steps": ["a"], "final_answer": "(B)"}', CHOICE).answer == "B"
    review = parse_review('{"verdict": "incorrect", "correct_answer": "true"}', YES_NO)
    assert review.suggested_answer == "yes"


def test_prompts_ask_for_the_types_answer_and_a_number_jobs_are_unchanged() -> None:
    assert prompts.solve_messages("q", style="prose") == prompts.solve_messages(
        "q", style="prose", kind=NUMBER
    )
    assert "final number alone in \\boxed{}" in prompts.solve_messages("q", style="prose")[1].content
    for kind in (LATEX, YES_NO, CHOICE):
        system, user = prompts.solve_messages("q", style="prose", kind=kind)
        assert "grade-school" not in system.content and kind.answer_format in user.content
        assert kind.json_answer in prompts.solution_format("json", kind)
        assert kind.answer_noun in prompts.review_messages("q", "s", kind=kind)[1].content


def test_strategies_vote_with_the_types_equality() -> None:
    b = StateBuilder(models=("A",))
    for i, answer in enumerate(("no", "true", "yes"), 1):
        b.solution(f"s{i}.generate.A", answer)
    # As numbers (lowercased words) the three differ and the first wins the tie; as yes/no, two agree.
    assert get_strategy("self-consistency", {"samples": 3}).select(b.state()).answer == "no"
    chosen = get_strategy("self-consistency", {"samples": 3}, kind="yes-no").select(b.state())
    assert YES_NO.normalize(chosen.answer) == "yes"


# A question and the two ways a model writes its right answer, per type with rstar few-shots.
SEARCH_CASES = {
    "latex": ("Simplify $\\sqrt{52}$.", ("2\\sqrt{13}", "\\sqrt{52}"), "\\sqrt{13}"),
    "yes-no": ("Penguin: a seabird. Can a penguin fly?", ("No", "false"), "yes"),
    "choice": ("Which is even? (A) 3 (B) 4 (C) 5", ("B", "(B)"), "C"),
}


def _search_reply(spec: StepSpec, request: ModelRequest, right: tuple[str, str], wrong: str) -> list[str]:
    """A model that answers each rstar action in its form: right two times in three, written two
    ways (the type's equality must group them), wrong once."""
    user = request.messages[-1].content
    if spec.kind == Kind.A1:
        return ["Step 1: A fact."] * request.n
    if spec.kind == Kind.A3_QUESTION:
        k = re.findall(r'Write "Question 5\.(\d+):"', user)[0]
        return [f"Question 5.{k}: What is the first fact?"] * request.n
    if spec.kind == Kind.A3:
        return ["Answer 5.1: It is the first fact."] * request.n
    if spec.kind == Kind.A5:
        return [user.removeprefix("Question: ").split("\n\n")[0]]  # the question in its own words
    if "\nHint" in user:  # misled below the root, so the discriminator has answers to tell apart
        return [f"Thinking.\n\\boxed{{{wrong}}}"] * request.n
    return [f"Thinking.\n\\boxed{{{(right[0], right[1], wrong)[i % 3]}}}" for i in range(request.n)]


@pytest.mark.parametrize("name", sorted(SEARCH_CASES))
def test_rstar_asks_each_type_with_its_own_few_shots_and_votes_by_its_equality(name: str) -> None:
    kind = get_problem_type(name)
    question, right, wrong = SEARCH_CASES[name]
    strategy = get_strategy(
        "rstar", {"rollouts": 8, "max_depth": 2, "votes": 3, "last_votes": 3, "subquestions": 1, "cuts": 2},
        kind=name,
    )  # fmt: skip
    run = MemoryRun(strategy, question)
    chosen = run.run(lambda spec, request: _search_reply(spec, request, right, wrong))
    assert chosen is not None and kind.equal(chosen.answer, right[0]) and kind.equal(chosen.answer, right[1])
    systems = {spec.kind: r.messages[0].content for spec, r in run.requests}
    shots = kind.search
    assert shots is not None and NUMBER.search is not None
    assert systems[Kind.A1] == systems[Kind.A5] == shots.steps
    assert systems[Kind.A3_QUESTION] == systems[Kind.A3] == shots.decompose
    assert systems[Kind.A2] == systems[Kind.COMPLETE] == systems[Kind.A4] == prompts.system(kind)
    everything = "\n".join(m.content for _, r in run.requests for m in r.messages)
    assert NUMBER.search.steps not in everything and NUMBER.search.decompose not in everything
    assert "numeric" not in everything and kind.answer_format in everything
    # The root's vote: right in two of three samples, written two ways, by the type's equality.
    root = next(o for o in run.outputs.values() if o.step_key == "x0:a2")
    assert root.payload["share"] == pytest.approx(2 / 3) and kind.equal(root.answer, right[0])


def test_rstar_refuses_a_type_without_few_shots_and_an_old_version_for_other_types() -> None:
    class Essay(ProblemType):
        name = "essay"

    with pytest.raises(ParamError, match="no few-shot prompts for 'essay'"):
        get_strategy("rstar", {}, kind=Essay())
    with pytest.raises(ParamError, match="need rstar-v4 or later"):
        get_strategy("rstar", {"prompt_version": "rstar-v3"}, kind="yes-no")
    with pytest.raises(ParamError, match="unknown problem type"):
        get_strategy("cot", {}, kind="essay")


def test_a_benchmark_knows_the_few_shot_questions() -> None:
    assert LATEX.search is not None and LATEX.search.shows("Simplify $\\sqrt{50} + \\sqrt{18}$.")
    assert YES_NO.search is not None and not YES_NO.search.shows("Could a sloth cross a football field?")


# -- input files and the guess --------------------------------------------------------------------


def test_an_authors_array_is_read_with_their_field_names_and_extra_fields_kept() -> None:
    data = json.dumps(
        [
            {
                "id": "m-1",
                "problem": "What is $1/2 + 1/4$?",
                "solution": "It is $\\boxed{\\frac34}$.",
                "source": "MATH",
            },
            {"id": "m-2", "problem": "Is 7 prime?", "solution": "Yes: \\boxed{\\text{yes}}"},
        ]
    ).encode()
    records = decode_array(data)
    assert guess_fields(records[0].value) == AUTHORS_FIELDS
    reader = ProblemReader(kind=LATEX, fields=AUTHORS_FIELDS, unit="record")
    problems = list(reader.read(records))
    reader.check()
    assert [p.item_id for p in problems] == ["m-1", "m-2"]
    assert problems[0].reference_answer == "0.75" and problems[0].meta == {"source": "MATH"}
    assert problems[0].question == "What is $1/2 + 1/4$?"


def test_a_reference_the_type_cannot_read_is_an_error_naming_the_record_and_the_files_field() -> None:
    records = [
        Decoded({"problem": "Q1", "solution": "true"}),
        Decoded({"problem": "Q2", "solution": "perhaps"}),
    ]
    reader = ProblemReader(kind=YES_NO, fields=AUTHORS_FIELDS, unit="record")
    list(reader.read(records))
    with pytest.raises(InputError) as caught:
        reader.check()
    assert str(caught.value).splitlines()[1] == (
        "  record 2, field 'solution': no yes-no answer in it: give true, false, yes or no"
    )


def test_a_file_that_is_not_one_array_is_refused() -> None:
    with pytest.raises(InputError, match="not valid JSON"):
        decode_array(b'[{"problem": "x"},')
    with pytest.raises(InputError, match="must be one JSON array, not an object"):
        decode_array(b'{"problem": "x"}')


@pytest.mark.parametrize(
    ("file", "want"),
    [
        ("math500.head.json", "latex"),
        ("strategyqa.head.json", "yes-no"),
        ("gsm-hard.head.json", "number"),
        ("svamp.head.json", "number"),
        ("multiarith.head.json", "number"),
    ],
)
def test_the_papers_sets_are_guessed_and_read_as_published(file: str, want: str) -> None:
    records = decode_array((SETS / file).read_bytes())
    fields = guess_fields(records[0].value)
    sample = ProblemReader(fields=fields, unit="record", keep_references=200)
    list(sample.read(records))
    kind, _ = guess_problem_type(sample.references)
    assert kind.name == want
    reader = ProblemReader(kind=kind, fields=fields, unit="record")
    problems = list(reader.read(records))
    reader.check()
    assert len(problems) == len(records) and all(p.reference_answer is not None for p in problems)


def test_the_guess_falls_back_to_number_and_every_type_is_named() -> None:
    assert guess_problem_type([])[0] is NUMBER
    assert guess_problem_type(["yes", "12"])[0] is NUMBER
    assert guess_problem_type(["A", "(c)", "D"])[0] is CHOICE
    assert guess_problem_type(["0", "1", "1"])[0] is NUMBER  # counts, not truth values
    assert list(PROBLEM_TYPES) == ["number", "latex", "yes-no", "choice", "aime"]
    assert get_problem_type(None) is NUMBER


def test_aime_is_a_type_of_its_own_module_only() -> None:
    aime = get_problem_type("aime")
    written = ("033", "\\boxed{33}", "The answer is 999", "1,000", "33.5", "-1")
    assert [aime.normalize(x) for x in written] == ["33", "33", "999", None, None, None]
    assert aime.equal("033", "33") and not aime.equal("1000", "1000")
    assert aime.reference("#### 204") == "204" and aime.guess_order is None
    assert guess_problem_type(["204", "33"])[0] is NUMBER  # never guessed
    assert "integer from 0 to 999" in prompts.solution_format("prose", aime)
    assert get_strategy("self-consistency", {}, kind="aime").kind is aime


# -- a choice's option text --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "found"),
    [
        ("Which is even? (A) 3 (B) 4 (C) 5", {"A": "3", "B": "4", "C": "5"}),
        ("Pick one:\nA. red\nB) blue\n(C) green", {"A": "red", "B": "blue", "C": "green"}),
        ("Answer Choices: (A) $12 (B) 15 men", {"A": "$12", "B": "15 men"}),
        ("What is (A) plus (C)?", {}),  # not A, B, ... in order
        ("Is 7 prime?", {}),
        ("(A) only one option", {}),
    ],
)
def test_a_choice_questions_options_are_read_inline_or_one_a_line(
    question: str, found: dict[str, str]
) -> None:
    assert options(question) == found


def test_an_options_text_reads_as_its_letter_only_among_that_questions_options() -> None:
    kind = CHOICE.for_question("Which costs most? (A) $5.00 (B) 7 apples (C) \\frac{1}{2} (D) 7 Apples")
    assert [kind.normalize(a) for a in ("5", "$5", "\\boxed{5.00}", "The answer is (A).", "0.5", "6")] == [
        "A", "A", "A", "A", "C", None,
    ]  # fmt: skip
    assert kind.normalize("7 apples") is None  # two options say it: neither
    assert kind.normalize("B") == "B" and kind.normalize("E") == "E"  # a letter stays a letter
    assert kind.equal("5", "A") and not kind.equal("5", "B")
    assert CHOICE.normalize("5") is None  # without the question, text is no answer
    assert CHOICE.for_question("Is 7 prime?") is CHOICE
    reader = ProblemReader(kind=CHOICE, fields=AUTHORS_FIELDS, unit="record")
    records = decode_array(
        json.dumps([{"id": "1", "problem": "Pick: (A) red (B) blue", "solution": "Blue"}]).encode()
    )
    assert [p.reference_answer for p in reader.read(records)] == ["B"]
