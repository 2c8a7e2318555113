"""`yes-no`: a yes/no question (StrategyQA, whose references are "true" and "false").

Answers are "yes" or "no". The words the rStar authors' grader maps to true and false
(eval_src/Evaluator.py, `STGEvaluator._format_answer`) are read the same way; their fuzzy match
(token_sort_ratio >= 90) is not copied: anything else is no answer, not a near miss.
"""

from __future__ import annotations

import re

from rstar.answers import MAX_ANSWER_CHARS, clean_text, last_match
from rstar.problem_types.base import ProblemType, after_answer_marker, boxed_or_whole

__all__ = ["YES_NO"]

_YES = frozenset({"yes", "true", "proved", "correct", "positive", "affirmative", "right", "t", "y", "1"})
_NO = frozenset({"no", "false", "disproved", "incorrect", "negative", "wrong", "f", "n", "0"})
_LEAD_IN = re.compile(r"^(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*[:=]?\s*", re.IGNORECASE)
_FIRST_WORD = re.compile(r"[a-z01]+")
_QUOTES = " *`$\"'.!"
# The other answer where a second one starts: "yes and no", "yes/no", "Yes. No, wait". The word
# elsewhere is prose: "No, it is not true that ...", "Yes, because no record ...".
_SECOND = r"(?:^|[.!?;]\s*|\b(?:and|or)\s+|/\s*)[\s*_`'\"]*(?:{})\b"
_SECOND_ANSWER = {"yes": re.compile(_SECOND.format("no|false")), "no": re.compile(_SECOND.format("yes|true"))}
# Only a sentence that starts with the word: "there is no record" says nothing.
_SENTENCE_START = re.compile(
    r"(?:^|[.!?:]\s+)[\s*_]*(?P<w>yes|no|true|false)\b", re.IGNORECASE | re.MULTILINE
)


class YesNoType(ProblemType):
    name = "yes-no"
    order = 2
    guess_order = 10
    summary = "yes or no (StrategyQA; references true/false or yes/no)"
    subject = "answer yes/no questions that need general knowledge and several inferences"
    answer_format = "End with yes or no alone in \\boxed{}."
    json_answer = 'the string "yes" or "no"'
    step_detail = "fact or inference"
    review_check = "Check every fact and inference yourself before you decide."
    answer_noun = "answer (yes or no)"
    reference_hint = "give true, false, yes or no"
    fallback_note = "no explicit final answer; used the last sentence that starts with yes or no"

    def normalize(self, raw: str | None) -> str | None:
        if raw is None:
            return None
        text = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", boxed_or_whole(raw).strip().lower())
        text = after_answer_marker(text, _QUOTES)  # "So the answer is yes"
        text = _LEAD_IN.sub("", text.strip()).strip(_QUOTES)
        word = _FIRST_WORD.match(text)
        if word is None:
            return None
        answer = "yes" if word[0] in _YES else "no" if word[0] in _NO else None
        rest = text[word.end() :]
        if answer is None or (len(word[0]) == 1 and rest.strip(_QUOTES)):
            return None  # a letter or digit counts alone: "n/a", "1 apple" say nothing
        # "yes, because ..." is yes; "yes and no" is no answer.
        return None if _SECOND_ANSWER[answer].search(rest) else answer

    def looks_like(self, reference: str) -> bool:
        # Only the words: references of 0 and 1 are counts far more often than truth values.
        return reference.strip().strip(".").lower() in ("yes", "no", "true", "false")

    def fallback(self, text: str) -> tuple[str | None, str | None]:
        found = last_match(_SENTENCE_START, clean_text(text[-MAX_ANSWER_CHARS * 4 :]))
        if found is None:
            return None, None
        return found["w"], self.normalize(found["w"])


YES_NO = YesNoType()
