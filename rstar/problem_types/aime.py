"""`aime`: an integer from 0 to 999 (the AIME competitions; the rStar successors report on them).

Written "33", "033", "\\boxed{33}" or "The answer is 33". A value outside 0-999 or not whole
("33.5", "1,000") is no AIME answer. Chosen with `--type aime`, never guessed: a GSM8K file's
answers would read as AIME answers just as well. The rstar search asks with the number type's
few-shots (GSM8K's): their answers are integers too.
"""

from __future__ import annotations

from fractions import Fraction

from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER, NumberType

__all__ = ["AIME"]


class AimeType(NumberType):
    name = "aime"
    order = 4
    guess_order = None
    summary = "an integer from 0 to 999 (AIME)"
    subject = "solve competition mathematics problems whose answer is an integer from 0 to 999"
    answer_format = "End with the final answer, an integer from 0 to 999, alone in \\boxed{}."
    json_answer = "a string holding only the final answer, an integer from 0 to 999"
    answer_noun = "final answer (an integer from 0 to 999)"
    reference_hint = "give an integer from 0 to 999"

    def normalize(self, raw: str | None) -> str | None:
        value = NUMBER.normalize(raw)
        if value is None:
            return None
        try:
            number = Fraction(value)
        except ValueError:
            return None
        return str(number.numerator) if number.denominator == 1 and 0 <= number <= 999 else None

    def reference(self, raw: str | None) -> str | None:
        return self.normalize(NUMBER.reference(raw))

    # Equal when the integers are: the base's comparison of normal forms, not the number type's.
    equal = ProblemType.equal

    def fallback(self, text: str) -> tuple[str | None, str | None]:
        raw, _ = super().fallback(text)
        return raw, self.normalize(raw)


AIME = AimeType()
