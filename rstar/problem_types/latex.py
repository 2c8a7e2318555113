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
from rstar.problem_types.base import ProblemType, boxed_or_whole
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
