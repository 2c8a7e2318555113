"""`latex`: a LaTeX expression (MATH, MATH500: fractions, radicals, intervals, tuples, degrees,
`\\text{}` words and units).

A reference is a worked solution whose last `\\boxed{}` holds the answer (or the answer alone).
The canonical form follows the MATH benchmark's own string normalisation (Hendrycks et al. 2021,
`math_equivalence.strip_string`, which the rStar authors' MATH grader starts from): no `$`,
`\\left`/`\\right`, spacing commands, degree signs, trailing units in `\\text{}` or spaces;
`\\dfrac` is `\\frac`, `\\frac12` is `\\frac{1}{2}`, `\\sqrt3` is `\\sqrt{3}`, `a/b` is `\\frac{a}{b}`.
A plain number takes the `number` type's canonical form, so "0.5", "1/2" and "\\frac{1}{2}" are one
answer. Two different canonical forms are then compared by math-verify (sympy), in a process of its
own with a time limit per comparison (`VERIFY_TIMEOUT_S`): math-verify's own time limit needs
signals, which only the main thread has, and a worker judges in threads; a comparison that runs
out of time counts as different. Words ("\\text{Evelyn}") are compared as strings only, case
aside: as products of symbols, "stop" would equal "pots". A numeral with a base ("52_8") is
compared by its digits and base (math-verify drops the subscript); without the base, by its digits.
tests/data/grading holds the table of answer shapes this type is held to.
"""

from __future__ import annotations

import multiprocessing
import re
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from rstar.answers import MAX_ANSWER_CHARS, TEXT_COMMAND, last_boxed, math_verify_equal
from rstar.problem_types.base import ProblemType, SearchExamples, boxed_or_whole, unwrap
from rstar.problem_types.number import as_number

__all__ = ["LATEX", "VERIFY_TIMEOUT_S", "Verifier"]

VERIFY_TIMEOUT_S = 5.0
_MAX_VERIFY_CHARS = 300
_MAX_BARE_REFERENCE = 200

# A unit after a value: "10\\text{ inches}", "4 \\mbox{cm}^2" (a \\text{} alone is the answer).
_UNITS = re.compile(r"(?<=[\w}])\s*\\(?:text|mbox)\s*\{\s*[a-zA-Z][a-zA-Z\s.]*\}(?:\^\{?[23]\}?)?$")
_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("\n", ""),
    ("\\!", ""),
    ("\\,", ""),
    ("\\;", ""),
    ("\\:", ""),
    ("\\ ", ""),
    ("~", ""),
    ("\\displaystyle", ""),
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("\\left", ""),
    ("\\right", ""),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("°", ""),
    ("\\$", ""),
    ("\\%", ""),
    ("%", ""),
)
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF = re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\w)")
_SLASH = re.compile(r"^(-?[0-9a-z\\{}]+)/([0-9a-z\\{}]+)$")
_VARIABLE = re.compile(r"^[a-zA-Z]\s*=\s*(?=.)")
_WORD = re.compile(r"[A-Za-z]{2,}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_ENVIRONMENT = re.compile(r"\\(?:begin|end)\{[A-Za-z]+\*?\}")  # "\\begin{pmatrix}" is no word
_NUMERAL = re.compile(r"([0-9A-Z]+)(?:_\{?(\d{1,2})\}?)?")


def _replace(text: str) -> str:
    for old, new in _REPLACEMENTS:
        text = text.replace(old, new)
    return text


def _canonical(text: str) -> str:
    text = text.strip().strip("$").strip()
    for wrap in (("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(wrap[0]) and text.endswith(wrap[1]):
            text = text[2:-2]
    # Piece by piece between a matrix's row breaks, so "\\\\ " keeps both backslashes ("\\ " is a space).
    text = "\\\\".join(_replace(piece) for piece in text.split("\\\\"))
    text = _UNITS.sub("", text.strip()).strip()
    text = TEXT_COMMAND.sub(r"\1", text)
    text = _VARIABLE.sub("", text)  # "x = 5" is 5; "x = 5, y = 2" keeps its second "="
    text = text.rstrip(".").strip()
    text = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", text)
    text = _FRAC_HALF.sub(r"\\frac{\1}{\2}", text)
    text = _SQRT_SHORT.sub(r"\\sqrt{\1}", text)
    text = "".join(text.split())
    slash = _SLASH.match(text)
    if slash is not None:
        text = f"\\frac{{{slash[1]}}}{{{slash[2]}}}"
    return text


def _numeral(text: str) -> tuple[str, int | None] | None:
    """(digits, base) of a numeral with its base ("52_8", "2516_{8}") or without ("52"), else None."""
    found = _NUMERAL.fullmatch(text)
    if found is None:
        return None
    if found[2] is None:
        return found[1], None
    base = int(found[2])
    try:
        if base >= 2:
            int(found[1], base)
            return found[1], base
    except ValueError:  # a digit the base has not (or a base over 36): a subscript, not a base
        pass
    return None


def _verify_pair(a: str, b: str) -> bool:
    """Runs in the verifier process, in its main thread, where math-verify's own limits work."""
    return math_verify_equal(a, b, int(VERIFY_TIMEOUT_S))


class Verifier:
    """Runs `compare` in one spawned process, shared by a process's threads, replaced when a
    comparison runs out of time (a stuck sympy cannot be interrupted from outside otherwise).

    `timeout` bounds a comparison once the process is up; starting it (a fresh interpreter that
    imports sympy) has `start_timeout`. Anything but a True reply in time counts as different.
    """

    def __init__(
        self,
        compare: Callable[[str, str], bool] = _verify_pair,
        *,
        timeout: float = VERIFY_TIMEOUT_S + 1,
        start_timeout: float = 120.0,
    ) -> None:
        self.compare = compare
        self.timeout = timeout
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def equal(self, a: str, b: str) -> bool:
        with self._lock:
            try:
                if self._pool is None:
                    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
                    self._pool = pool
                    pool.submit(_ready).result(timeout=self.start_timeout)
                return self._pool.submit(self.compare, a, b).result(timeout=self.timeout) is True
            except Exception:  # out of time, a process that died, a reply that did not unpickle
                self._stop()
                return False

    def _stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # shutdown() alone would wait for the running comparison: stop its process first.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.kill()
            pool.shutdown(wait=False, cancel_futures=True)


def _ready() -> bool:
    """The verifier process's first task: import what the comparisons need."""
    import math_verify  # noqa: F401

    return True


_VERIFIER = Verifier()


# The rstar search's few-shots, in the authors' formats (prompts/MATH/fewshot_ost and decompose,
# microsoft/rStar branch rStar-mutualreasoning) with problems of our own: the authors' examples are
# MATH problems and may be among MATH500's, which a benchmark must not have seen.
_STEPS = unwrap(r"""You solve competition mathematics problems one step at a time. Each step is one line. \
The last step states the result in LaTeX as "The answer is: <answer>".

Example 1
Question: What is $\frac{2}{3} + \frac{1}{6}$? Express your answer as a common fraction.
Step 1: With the common denominator 6, $\frac{2}{3} = \frac{4}{6}$.
Step 2: So $\frac{4}{6} + \frac{1}{6} = \frac{5}{6}$.
Step 3: The answer is: \frac{5}{6}

Example 2
Question: Find the midpoint of the segment with endpoints $(1, 7)$ and $(5, -3)$.
Step 1: The midpoint's $x$-coordinate is $\frac{1 + 5}{2} = 3$.
Step 2: Its $y$-coordinate is $\frac{7 + (-3)}{2} = 2$.
Step 3: The answer is: (3, 2)

A problem can also be solved by sub-questions, each answered in a sentence or two; the last one \
starts with "Now we can answer the question:".

Example 3
Question: Simplify $\sqrt{50} + \sqrt{18}$.
Sub-question 1: What are $\sqrt{50}$ and $\sqrt{18}$ in simplest radical form?
Answer 1: $\sqrt{50} = \sqrt{25 \cdot 2} = 5\sqrt{2}$ and $\sqrt{18} = \sqrt{9 \cdot 2} = 3\sqrt{2}$. \
The answer is: 5\sqrt{2} and 3\sqrt{2}
Sub-question 2: Now we can answer the question: what is $\sqrt{50} + \sqrt{18}$?
Answer 2: $5\sqrt{2} + 3\sqrt{2} = 8\sqrt{2}$. The answer is: 8\sqrt{2}""")

_DECOMPOSE = unwrap(r"""Given a question, please decompose it into sub-questions. For each sub-question, \
please answer it in a complete sentence, ending with "The answer is <answer>", the answer in \
LaTeX. When the original question is answerable, please start the sub-question with "Now we can \
answer the question: <original question>".

Question 1: Solve for $x$: $3(x - 2) = 2x + 5$.
Question 1.1: What is the equation once the left side is expanded?
Answer 1.1: Expanding $3(x - 2)$ gives $3x - 6 = 2x + 5$. The answer is $3x - 6 = 2x + 5$.
Question 1.2: Now we can answer the question: What is $x$?
Answer 1.2: Subtracting $2x$ from both sides and adding 6 gives $x = 11$. The answer is $11$.

Question 2: A bag holds 4 red marbles and 6 blue marbles. Two marbles are drawn without \
replacement. What is the probability that both are red? Express your answer as a common fraction.
Question 2.1: What is the probability that the first marble is red?
Answer 2.1: Four of the ten marbles are red, so it is $\frac{4}{10} = \frac{2}{5}$. The answer is \
$\frac{2}{5}$.
Question 2.2: If the first marble is red, what is the probability that the second is red too?
Answer 2.2: Then three of the nine marbles left are red, so it is $\frac{3}{9} = \frac{1}{3}$. \
The answer is $\frac{1}{3}$.
Question 2.3: Now we can answer the question: What is the probability that both are red?
Answer 2.3: The probability is $\frac{2}{5} \cdot \frac{1}{3} = \frac{2}{15}$. The answer is \
$\frac{2}{15}$.

Question 3: What is the domain of the function $f(x) = \sqrt{x - 3}$? Express your answer in \
interval notation.
Question 3.1: For which $x$ is the expression under the square root nonnegative?
Answer 3.1: $x - 3 \ge 0$ exactly when $x \ge 3$. The answer is $x \ge 3$.
Question 3.2: Now we can answer the question: What is the domain of $f$?
Answer 3.2: The domain is every $x \ge 3$, which is $[3, \infty)$. The answer is $[3, \infty)$.

Question 4: The sum of two numbers is 22 and their difference is 4. What is their product?
Question 4.1: What is the larger number?
Answer 4.1: Adding the two equations gives twice the larger number, $22 + 4 = 26$, so it is $13$. \
The answer is $13$.
Question 4.2: What is the smaller number?
Answer 4.2: The smaller number is $22 - 13 = 9$. The answer is $9$.
Question 4.3: Now we can answer the question: What is their product?
Answer 4.3: Their product is $13 \cdot 9 = 117$. The answer is $117$.""")


class LatexType(ProblemType):
    name = "latex"
    order = 1
    guess_order = 40
    summary = "a LaTeX expression (MATH, MATH500)"
    subject = "solve competition mathematics problems"
    answer_format = "End with the final answer alone in \\boxed{}, as a LaTeX expression in simplest form."
    json_answer = "a string holding only the final answer, as a LaTeX expression in simplest form"
    answer_noun = "final answer (a LaTeX expression)"
    markup = "tex"
    reference_hint = "give the answer, or a worked solution with the answer in \\boxed{}"
    search = SearchExamples(
        steps=_STEPS,
        decompose=_DECOMPOSE,
        sub_answer="answer it in a complete sentence with its calculation, on one line, ending with"
        ' "The answer is <answer>." (the answer in LaTeX)',
        final_answer='work it out with every calculation, on one line, ending with "The answer is'
        ' <answer>." (the answer in LaTeX)',
        first_part="one quantity or expression the question needs on the way",
    )

    def reference(self, raw: str | None) -> str | None:
        if raw is None:
            return None
        if last_boxed(raw) is None and (len(raw) > _MAX_BARE_REFERENCE or "\n" in raw.strip()):
            return None  # a worked solution without its boxed answer: no answer to read
        return self.normalize(raw)

    def normalize(self, raw: str | None) -> str | None:
        if raw is None:
            return None
        text = _canonical(boxed_or_whole(raw))
        if not text or not any(ch.isalnum() for ch in text):
            return None
        number = as_number(text)
        return number if number is not None else text[:MAX_ANSWER_CHARS]

    def reads_all(self, references: list[str]) -> bool:
        # Any short text reads as LaTeX: only references that use it make a file MATH-like.
        return any("\\" in r for r in references) and super().reads_all(references)

    def same_normalized(self, a: str, b: str) -> bool:
        if max(len(a), len(b)) > _MAX_VERIFY_CHARS:
            return False
        numerals = _numeral(a), _numeral(b)
        if numerals[0] is not None and numerals[1] is not None and (numerals[0][1] or numerals[1][1]):
            # math-verify drops the subscript: 52_8 would equal 52_9. An answer without the base
            # is read in the base asked for.
            (digits_a, base_a), (digits_b, base_b) = numerals
            return digits_a == digits_b and (base_a is None or base_b is None or base_a == base_b)
        if any(_WORD.search(_COMMAND.sub(" ", _ENVIRONMENT.sub(" ", x))) for x in (a, b)):
            return a.casefold() == b.casefold()  # words as text, whatever their case
        return _VERIFIER.equal(a, b)


LATEX = LatexType()
