"""`choice`: a multiple-choice question answered by an option's letter (A to J).

The question holds its options ("(A) 12 (B) 15 ...", or one a line: "A. 12", "B) 15"); the answer
and the reference are a letter, written "B", "(B)", "B)", "Option B" or "\\boxed{B}", or the text of
one option ("15", "\\boxed{15}"; a number as a number: "$15.00" is "15"), read as its letter among
that question's options (`for_question`). Text that is no option's, or two options', is no answer.
"""

from __future__ import annotations

import re

from rstar.answers import clean_text, last_match
from rstar.problem_types.base import ProblemType, SearchExamples, after_answer_marker, boxed_or_whole
from rstar.problem_types.number import as_number

__all__ = ["CHOICE"]

_LETTERS = "ABCDEFGHIJ"
_LEAD_IN = re.compile(
    r"^(?:the\s+)?(?:(?:final|correct)\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:=]?\s*"
    r"(?:(?:option|choice)\s+)?",
    re.IGNORECASE,
)
_LETTER = re.compile(rf"^[(\[]?(?P<x>[{_LETTERS}])(?:[)\].:,]|\s|$)")
# Not an option: the article and the pronoun before a word ("A man", "I think"; "A is right" is),
# and two options ("B and C", "B or C").
_NOT_A_LETTER = re.compile(rf"^(?:[AI]\s+(?!is\b)[a-z]|[{_LETTERS}]\s+(?:and|or)\b)")
# A lower-case letter only alone or bracketed: "(c)", "c)", "c"; "a man" is no option.
_LOWER = re.compile(rf"^(?:\((?P<x>[{_LETTERS.lower()}])\)|(?P<y>[{_LETTERS.lower()}])[).]?$)")
# Options in the question: "(A) 12 (B) 15" inline, or "A. 12" / "A) 12" at the start of a line.
_INLINE_OPTION = re.compile(rf"\(([{_LETTERS}])\)\s*")
_LINE_OPTION = re.compile(rf"^[ \t]*\(?([{_LETTERS}])[.)][ \t]+", re.MULTILINE)
_MAX_OPTION_CHARS = 300
_IN_PROSE = re.compile(
    rf"(?:\((?P<a>[{_LETTERS}])\)|\b(?:option|choice|answer is)\s*:?\s*\(?(?P<b>[{_LETTERS}])\b)"
)


# The rstar search's few-shots: the authors have none for multiple choice; these are ours, in the
# formats of their other sets (prompts/*/fewshot_ost and decompose).
_STEPS = """You answer multiple-choice questions one step at a time. Each step is one line. The last \
step states the letter of the right option as "The answer is: <letter>".

Example 1
Question: A shop sells pencils at 3 for $1. How much do 12 pencils cost? (A) $3 (B) $4 (C) $6 (D) $12
Step 1: 12 pencils are 12 / 3 = 4 groups of 3 pencils.
Step 2: Each group costs $1, so 12 pencils cost 4 * 1 = 4 dollars: option (B).
Step 3: The answer is: B

Example 2
Question: Which of these numbers is prime? (A) 21 (B) 27 (C) 29 (D) 33
Step 1: 21 = 3 * 7, 27 = 3 * 9 and 33 = 3 * 11 are not prime.
Step 2: 29 is divisible by none of 2, 3 and 5, and 5 * 5 = 25 < 29 < 36 = 6 * 6, so it is prime: option (C).
Step 3: The answer is: C

A question can also be answered by sub-questions, each answered in a sentence or two; the last \
one starts with "Now we can answer the question:".

Example 3
Question: A train travels 60 km in 45 minutes. At the same speed, how far does it travel in 2 hours? \
(A) 160 km (B) 120 km (C) 140 km (D) 180 km
Sub-question 1: What is the train's speed in km per hour?
Answer 1: 45 minutes are 0.75 hours, so the speed is 60 / 0.75 = 80 km per hour. The answer is: 80
Sub-question 2: Now we can answer the question: how far does it travel in 2 hours?
Answer 2: In 2 hours it travels 80 * 2 = 160 km: option (A). The answer is: A"""

_DECOMPOSE = """Given a question, please decompose it into sub-questions. For each sub-question, \
please answer it in a complete sentence, ending with "The answer is <answer>". When the original \
question is answerable, please start the sub-question with "Now we can answer the question: \
<original question>", and end its answer with the letter of the right option.

Question 1: Tom is 4 years older than Ann. In 3 years Ann will be 10. How old is Tom now? (A) 7 \
(B) 10 (C) 11 (D) 14
Question 1.1: How old is Ann now?
Answer 1.1: Ann will be 10 in 3 years, so she is 10 - 3 = 7 now. The answer is 7.
Question 1.2: Now we can answer the question: How old is Tom now?
Answer 1.2: Tom is 4 years older than Ann, so he is 7 + 4 = 11: option (C). The answer is C.

Question 2: Which fraction is the largest? (A) 3/5 (B) 2/3 (C) 5/8 (D) 7/12
Question 2.1: What is each fraction as a decimal?
Answer 2.1: 3/5 = 0.6, 2/3 = 0.667, 5/8 = 0.625 and 7/12 = 0.583 (rounded). The answer is 0.6, \
0.667, 0.625 and 0.583.
Question 2.2: Now we can answer the question: Which fraction is the largest?
Answer 2.2: 0.667 is the largest, so 2/3 is the largest fraction: option (B). The answer is B.

Question 3: A rectangle is 8 cm long and its perimeter is 26 cm. What is its area? (A) 40 cm^2 \
(B) 30 cm^2 (C) 36 cm^2 (D) 48 cm^2
Question 3.1: How wide is the rectangle?
Answer 3.1: Half the perimeter is 26 / 2 = 13 cm, the length plus the width, so the width is \
13 - 8 = 5 cm. The answer is 5.
Question 3.2: Now we can answer the question: What is its area?
Answer 3.2: The area is 8 * 5 = 40 square centimetres: option (A). The answer is A.

Question 4: Which planet is closest to the Sun? (A) Venus (B) Earth (C) Mars (D) Mercury
Question 4.1: In what order are the inner planets from the Sun?
Answer 4.1: From the Sun outwards they are Mercury, Venus, Earth and Mars. The answer is Mercury, \
Venus, Earth and Mars.
Question 4.2: Now we can answer the question: Which planet is closest to the Sun?
Answer 4.2: Mercury is the first planet from the Sun: option (D). The answer is D."""


def options(question: str) -> dict[str, str]:
    """Letter -> option text, when the question lists options A, B, ... in order (two at least);
    else none. Inline "(A) .. (B) .." first, then one a line."""
    for pattern in (_INLINE_OPTION, _LINE_OPTION):
        marks = list(pattern.finditer(question))
        letters = "".join(m[1] for m in marks)
        if len(marks) >= 2 and _LETTERS.startswith(letters):
            ends = [m.start() for m in marks[1:]] + [len(question)]
            texts = [question[m.end() : end].split("\n")[0] for m, end in zip(marks, ends, strict=True)]
            return {m[1]: t.strip()[:_MAX_OPTION_CHARS] for m, t in zip(marks, texts, strict=True)}
    return {}


def _option_key(text: str) -> str:
    """An option's text as compared: a number by its value, else words by case and spacing."""
    text = re.sub(r"\\text(?:bf)?\s*\{([^{}]*)\}", r"\1", text).strip().strip("$*`\"' ").rstrip(".").strip()
    number = as_number(text)
    return number if number is not None else " ".join(text.casefold().split())


class ChoiceType(ProblemType):
    name = "choice"
    order = 3
    guess_order = 20
    summary = "an option letter, A to J (multiple-choice sets)"
    subject = "answer multiple-choice questions"
    answer_format = "End with the letter of the right option alone in \\boxed{}."
    json_answer = "the letter of the right option only"
    step_detail = "reasoning"
    review_check = "Check every step yourself before you decide."
    answer_noun = "option letter"
    reference_hint = "give an option letter, A to J"
    fallback_note = "no explicit final answer; used the last option named"
    search = SearchExamples(
        steps=_STEPS,
        decompose=_DECOMPOSE,
        sub_answer='answer it in a complete sentence with its reasoning, on one line, ending with "The'
        ' answer is <answer>."',
        final_answer="answer it in a complete sentence with its reasoning, on one line, ending with"
        ' "The answer is <the letter of the right option>."',
        first_part="one quantity or fact the question needs on the way",
    )

    def normalize(self, raw: str | None) -> str | None:
        if raw is None:
            return None
        text = boxed_or_whole(raw).strip()
        text = re.sub(r"\\text(?:bf)?\s*\{([^{}]*)\}", r"\1", text).strip(" *`$\"'")
        text = after_answer_marker(text, " *`$\"'")
        text = _LEAD_IN.sub("", text).strip(" *`$\"'")
        if _NOT_A_LETTER.match(text):
            return None
        found = _LETTER.match(text)
        if found is not None:
            return found["x"]
        lower = _LOWER.match(text)
        return (lower["x"] or lower["y"]).upper() if lower is not None else None

    def looks_like(self, reference: str) -> bool:
        return len(reference.strip()) <= 3 and self.normalize(reference) is not None

    def for_question(self, question: str) -> ProblemType:
        found = options(question)
        return _ChoiceAmong(found) if found else self


class _ChoiceAmong(ChoiceType):
    """The choice type for one question: an option's text is also its letter."""

    def __init__(self, found: dict[str, str]) -> None:
        keys: dict[str, list[str]] = {}
        for letter, text in found.items():
            keys.setdefault(_option_key(text), []).append(letter)
        # Text two options share names neither.
        self.by_text = {key: letters[0] for key, letters in keys.items() if key and len(letters) == 1}

    def normalize(self, raw: str | None) -> str | None:
        letter = super().normalize(raw)
        if letter is not None or raw is None:
            return letter
        text = after_answer_marker(boxed_or_whole(raw).strip(), " *`$\"'")
        return self.by_text.get(_option_key(_LEAD_IN.sub("", text.strip())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ChoiceAmong) and other.by_text == self.by_text

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.by_text.items())))

    def fallback(self, text: str) -> tuple[str | None, str | None]:
        found = last_match(_IN_PROSE, clean_text(text[-2000:]))
        if found is None:
            return None, None
        letter = found["a"] or found["b"]
        return letter, letter


CHOICE = ChoiceType()
