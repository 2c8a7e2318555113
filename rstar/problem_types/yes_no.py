"""`yes-no`: a yes/no question (StrategyQA, whose references are "true" and "false").

Answers are "yes" or "no". The words the rStar authors' grader maps to true and false
(eval_src/Evaluator.py, `STGEvaluator._format_answer`) are read the same way; their fuzzy match
(token_sort_ratio >= 90) is not copied: anything else is no answer, not a near miss.
"""

from __future__ import annotations

import re

from rstar.answers import MAX_ANSWER_CHARS, clean_text, last_match
from rstar.problem_types.base import ProblemType, SearchExamples, after_answer_marker, boxed_or_whole

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


# The rstar search's few-shots, in the authors' formats (prompts/STG/fewshot_ost and decompose,
# microsoft/rStar branch rStar-mutualreasoning) with questions of our own in StrategyQA's form
# ("Term: description. Question?"): the authors' first example is record 142 of the test set they
# publish (strategyqa.dev.json), and their others may be further test records.
_STEPS = """You answer yes/no questions that need general knowledge and several inferences, one step at \
a time. Each step is one line. The last step states the result as "The answer is: yes" or "The \
answer is: no".

Example 1
Question: Mount Everest: the highest mountain on Earth. Could a commercial airliner fly over the \
summit of Mount Everest?
Step 1: The summit of Mount Everest is about 8,849 metres above sea level.
Step 2: Commercial airliners cruise at about 10,000 to 12,000 metres, higher than the summit.
Step 3: The answer is: yes

Example 2
Question: Penguin: a flightless seabird. Would a wild penguin be likely to meet a polar bear?
Step 1: Wild penguins live almost only in the Southern Hemisphere, around Antarctica.
Step 2: Polar bears live only in the Arctic, in the far north.
Step 3: Their ranges are at opposite ends of the Earth, so they do not meet in the wild.
Step 4: The answer is: no

A question can also be answered by sub-questions, each answered in a sentence or two; the last \
one starts with "Now we can answer the question:".

Example 3
Question: Leap year: a year of 366 days. Can a person born on February 29 celebrate a birthday on \
that date every year?
Sub-question 1: In which years is there a February 29?
Answer 1: February 29 exists only in leap years, about one year in four.
Sub-question 2: Now we can answer the question: can a person born on February 29 celebrate a \
birthday on that date every year?
Answer 2: In three years out of four there is no February 29, so they cannot. The answer is: no"""

_DECOMPOSE = """Given a question, please decompose it into sub-questions. For each sub-question, \
please answer it in a complete sentence. When the original question is answerable, please start \
the sub-question with "Now we can answer the question: <original question>".

Question 1: Mount Everest: the highest mountain on Earth. Could a commercial airliner fly over the \
summit of Mount Everest?
Question 1.1: How high is the summit of Mount Everest?
Answer 1.1: The summit of Mount Everest is about 8,849 metres above sea level.
Question 1.2: At what altitude do commercial airliners cruise?
Answer 1.2: Commercial airliners usually cruise at about 10,000 to 12,000 metres.
Question 1.3: Now we can answer the question: Could a commercial airliner fly over the summit of \
Mount Everest?
Answer 1.3: Airliners cruise higher than the summit's 8,849 metres, so one could fly over it. The \
answer is yes.

Question 2: Penguin: a flightless seabird. Would a wild penguin be likely to meet a polar bear?
Question 2.1: Where do wild penguins live?
Answer 2.1: Wild penguins live almost only in the Southern Hemisphere, mostly around Antarctica.
Question 2.2: Where do polar bears live?
Answer 2.2: Polar bears live only in the Arctic, around the North Pole.
Question 2.3: Now we can answer the question: Would a wild penguin be likely to meet a polar bear?
Answer 2.3: Penguins and polar bears live at opposite ends of the Earth, so a wild penguin would \
not meet one. The answer is no.

Question 3: Olive oil: oil pressed from olives. Would olive oil float on a glass of water?
Question 3.1: What is the density of olive oil?
Answer 3.1: Olive oil has a density of about 0.91 grams per millilitre.
Question 3.2: What is the density of water?
Answer 3.2: Water has a density of about 1.0 gram per millilitre.
Question 3.3: Now we can answer the question: Would olive oil float on a glass of water?
Answer 3.3: Olive oil is less dense than water and does not mix with it, so it floats on top. The \
answer is yes.

Question 4: Abraham Lincoln: the 16th president of the United States. Could Abraham Lincoln have \
watched a film in a cinema?
Question 4.1: When did Abraham Lincoln die?
Answer 4.1: Abraham Lincoln was assassinated in April 1865.
Question 4.2: When were films first shown to a paying audience in a cinema?
Answer 4.2: The first public film screenings took place in 1895, thirty years after his death.
Question 4.3: Now we can answer the question: Could Abraham Lincoln have watched a film in a \
cinema?
Answer 4.3: Films were first shown in cinemas thirty years after Lincoln died, so he could not \
have watched one. The answer is no."""


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
    search = SearchExamples(
        steps=_STEPS,
        decompose=_DECOMPOSE,
        # Intermediate answers are facts (as the authors' decompositions), so only the last says yes or no.
        sub_answer="answer it in one complete sentence that states the fact, on one line.",
        final_answer='answer it in a complete sentence with the reason, on one line, ending with "The'
        ' answer is yes." or "The answer is no."',
        first_part="one fact the question depends on",
    )

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
