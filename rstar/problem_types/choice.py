"""`choice`: a multiple-choice question answered by an option's letter (A to J).

The question holds its options ("(A) 12 (B) 15 ..."); the answer and the reference are a letter,
written "B", "(B)", "B)", "Option B" or "\\boxed{B}". Matching an option's text to its letter needs
the options parsed from the question and is not done: a reply that gives only the text is no answer.
"""

from __future__ import annotations

import re

from rstar.answers import clean_text, last_match
from rstar.problem_types.base import ProblemType, after_answer_marker, boxed_or_whole

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
_IN_PROSE = re.compile(
    rf"(?:\((?P<a>[{_LETTERS}])\)|\b(?:option|choice|answer is)\s*:?\s*\(?(?P<b>[{_LETTERS}])\b)"
)


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

    def fallback(self, text: str) -> tuple[str | None, str | None]:
        found = last_match(_IN_PROSE, clean_text(text[-2000:]))
        if found is None:
            return None, None
        letter = found["a"] or found["b"]
        return letter, letter


CHOICE = ChoiceType()
