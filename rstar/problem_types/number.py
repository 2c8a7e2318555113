"""`number`: a numeric final answer (GSM8K, GSM-Hard, SVAMP, MultiArith, AIME).

The canonical form and the equality are `rstar.answers`' (exact rationals: "1/2", "0.50" and
"\\frac{1}{2}" are one answer); a reference is GSM8K's "#### 72" line or the whole value
(GSM-Hard's "-9867630.0", SVAMP's "8.0").
"""

from __future__ import annotations

import re

from rstar.answers import answers_equal, extract_reference, last_match, normalize_answer
from rstar.problem_types.base import ProblemType

__all__ = ["NUMBER", "as_number"]

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_TAIL = 200
_CANONICAL = re.compile(r"-?\d+(?:\.\d+|/\d+)?")  # what normalize_answer makes of a number


_LONG_DECIMAL = re.compile(r"\s*-?\d+\.\d+\s*")


def as_number(raw: str | None) -> str | None:
    """The canonical form of an answer that is a plain number ("$1,000" is "1000"), else None."""
    value = normalize_answer(raw)
    return value if value is not None and _CANONICAL.fullmatch(value) else None


def _without_float_tail(raw: str | None) -> str | None:
    """A reference computed in floating point, as GSM-Hard's are, without its rounding tail:
    "3244047.0999999996" is 3244047.1 (17 significant digits that round to a short decimal at 15;
    28 of GSM-Hard's 1,319 references have one). Anything else as it is."""
    if raw is None or not _LONG_DECIMAL.fullmatch(raw) or sum(c.isdigit() for c in raw) < 16:
        return raw
    short = f"{float(raw):.15g}"
    return short if len(short) < len(raw.strip()) - 3 else raw


class NumberType(ProblemType):
    name = "number"
    order = 0
    guess_order = 30
    summary = "a number (GSM8K, GSM-Hard, SVAMP, MultiArith, AIME)"
    subject = "solve grade-school math word problems"
    answer_format = "End with the final number alone in \\boxed{}, without units."
    json_answer = "a string holding only the final number, without units"
    answer_noun = "final number"

    def reference(self, raw: str | None) -> str | None:
        return extract_reference(_without_float_tail(raw))

    def normalize(self, raw: str | None) -> str | None:
        return normalize_answer(raw)

    def equal(self, a: str | None, b: str | None) -> bool:
        return answers_equal(a, b)

    def fallback(self, text: str) -> tuple[str | None, str | None]:
        # Found from the end, so a 10 MB reply is cheap.
        end = max(text.rfind(d) for d in "0123456789")
        if end == -1:
            return None, None
        found = last_match(_NUMBER, text[max(0, end - _TAIL) : end + 1])
        if found is None:
            return None, None
        return found[0], normalize_answer(found[0])

    def looks_like(self, reference: str) -> bool:
        return as_number(self.reference(reference)) is not None


NUMBER = NumberType()
