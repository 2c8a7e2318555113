"""What a problem type is: everything that depends on the form of a problem's answer (pure: no I/O).

A job has one type (`rstar submit --type`, stored on the job). The strategies, votes, judging,
reports and exports ask it; nothing else knows whether an answer is a number, a LaTeX expression,
yes/no or an option letter. One module per type, as openai/simple-evals keeps a benchmark's
template, answer pattern and grader together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from rstar.answers import clean_text, last_boxed, last_match

__all__ = ["ProblemType", "SearchExamples", "after_answer_marker", "boxed_or_whole", "unwrap"]

_MAX_INPUT = 5000


def boxed_or_whole(raw: str) -> str:
    """The last \\boxed{} of an answer if it has one, else the answer: the box is the answer."""
    raw = clean_text(raw[:_MAX_INPUT])
    boxed = last_boxed(raw)
    return boxed if boxed is not None else raw


def unwrap(raw: str) -> str:
    """A raw string's lines joined where one ends in a backslash, as a plain string's are: LaTeX
    few-shots are written raw, yet their long lines must fit the source's width."""
    return raw.replace("\\\n", "")


_ANSWER_IS = re.compile(r"\banswer(?:\s+is\b\s*[:=]?|\s*[:=])\s*", re.IGNORECASE)


def after_answer_marker(text: str, strip: str) -> str:
    """What follows the last "answer is" or "answer:" ("I think the answer is B"), as the number
    type reads a final answer; the text itself when nothing (but `strip`'s characters) follows one."""
    lead = last_match(_ANSWER_IS, text)
    if lead is not None and text[lead.end() :].strip(strip):
        return text[lead.end() :]
    return text


@dataclass(frozen=True)
class SearchExamples:
    """A type's few-shot prompts for the rstar search (`rstar/strategies/mcts/prompts.py` asks with
    them): worked examples in the authors' formats, answers in the type's form."""

    steps: str
    """The system prompt of A1 (the next step) and A5 (the rephrasing): worked solutions one step
    a line, the last stating "The answer is: <answer>", and one solved by sub-questions."""
    decompose: str
    """A3's system prompt: the instruction and worked decompositions "Question 1" .. "Question 4",
    each sub-question answered in a sentence that ends with "The answer is ..."; the decomposed
    question is numbered 5 (`prompts.DECOMPOSE_INDEX`)."""
    sub_answer: str
    """How A3 asks an intermediate sub-question answered: "answer it in a complete sentence with its
    calculation, on one line, ending with ..." (after 'Write "Answer 5.k:" and ')."""
    final_answer: str
    """The same for the sub-question that is the question itself (rstar-v4; v5 answers it as A2)."""
    first_part: str
    """What the first sub-question asks for: "one quantity the question needs on the way"."""

    def shows(self, question: str) -> bool:
        """Whether a problem is one of the examples (a benchmark leaves it out)."""
        return bool(question.strip()) and (
            question.strip() in self.steps or question.strip() in self.decompose
        )


class ProblemType:
    """The answer form of a set of problems. Subclasses set the texts and override the methods
    their form needs; each instance is stateless and shared."""

    name: str = ""
    order: int = 100
    """Where it is listed (`--type`'s help)."""
    guess_order: int | None = None
    """When it is tried in guessing a file's type, lowest first; None: never guessed, only chosen."""
    summary: str = ""
    """One line for `--type` help: which data sets it is for."""
    subject: str = ""
    """What the solver does, for the system prompt: "solve grade-school math word problems"."""
    answer_format: str = ""
    """How a prose solution ends: "End with ... alone in \\boxed{}"."""
    json_answer: str = ""
    """What the JSON solution's "final_answer" string holds."""
    step_detail: str = "calculation"
    """What each written step carries: "calculation", "fact or inference"."""
    review_check: str = "Recompute every calculation yourself before you decide."
    """What a reviewer is told to redo first."""
    answer_noun: str = "final answer"
    """What a reviewer states as the right answer: "final number", "yes or no"."""
    markup: str | None = None
    """How the viewer renders an answer: "tex" (as mathematics, its source a click away) or None
    (as text)."""
    fallback_note: str = "no explicit final answer; used the last number"
    reference_hint: str = "a number"
    """What a reference of this type looks like, for the error about one that is not."""
    search: SearchExamples | None = None
    """The rstar search's few-shot prompts; None: `--strategy rstar` refuses the type."""

    def reference(self, raw: str | None) -> str | None:
        """The normalised answer of a reference as a data set gives it, or None."""
        return self.normalize(raw)

    def normalize(self, raw: str | None) -> str | None:
        """The canonical form of an answer, or None when it says nothing usable."""
        raise NotImplementedError

    def equal(self, a: str | None, b: str | None) -> bool:
        """Whether two answers (raw or normalised) are the same; None never equals anything."""
        return _equal(self, a, b)

    def same_normalized(self, a: str, b: str) -> bool:
        """Equality of two normalised answers that are not identical strings."""
        return False

    def for_question(self, question: str) -> ProblemType:
        """The type as it reads answers to this question: itself, unless an answer's form depends
        on the question (a choice's option text names its letter only among that question's
        options). The worker parses replies with it and submit reads references with it, so what
        is stored is already canonical and later comparisons need no question."""
        return self

    def fallback(self, text: str) -> tuple[str | None, str | None]:
        """(raw answer, its normal form) from a reply with no explicit final answer; by default
        none (a LaTeX answer has no last-resort form: "3" in "x^3 + 1" is no answer)."""
        return None, None

    def looks_like(self, reference: str) -> bool:
        """Whether a reference as given in an input file has this type's form (for the guess)."""
        return self.reference(reference) is not None

    def reads_all(self, references: list[str]) -> bool:
        """Whether a file whose first references are these is of this type (for the guess)."""
        return all(self.looks_like(r) for r in references)

    def __repr__(self) -> str:
        return f"<problem type {self.name}>"


@lru_cache(maxsize=1 << 15)  # pure; a report or a viewer page judges every problem of a job again
def _equal(kind: ProblemType, a: str | None, b: str | None) -> bool:
    na, nb = kind.normalize(a), kind.normalize(b)
    if na is None or nb is None:
        return False
    return na == nb or kind.same_normalized(na, nb)
