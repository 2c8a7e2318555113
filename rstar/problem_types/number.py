"""`number`: a numeric final answer (GSM8K, GSM-Hard, SVAMP, MultiArith, AIME).

The canonical form and the equality are `rstar.answers`' (exact rationals: "1/2", "0.50" and
"\\frac{1}{2}" are one answer); a reference is GSM8K's "#### 72" line or the whole value
(GSM-Hard's "-9867630.0", SVAMP's "8.0").
"""

from __future__ import annotations

import re

from rstar.answers import answers_equal, extract_reference, last_match, normalize_answer
from rstar.problem_types.base import ProblemType, SearchExamples

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


# The rstar search's few-shots (see rstar/strategies/mcts/prompts.py for where they come from:
# GSM8K training lines 1, 2, 3, 33, 71, 5213 and 5924, and the authors' decompositions).
_STEPS = """You solve grade-school math word problems one step at a time. Each step is one line. \
The last step states the result as "The answer is: <number>".

Example 1
Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in \
May. How many clips did Natalia sell altogether in April and May?
Step 1: In May Natalia sold half as many as in April: 48 / 2 = 24 clips.
Step 2: Altogether she sold 48 + 24 = 72 clips.
Step 3: The answer is: 72

Example 2
Question: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of \
babysitting. How much did she earn?
Step 1: Weng earns 12 / 60 = 0.2 dollars per minute.
Step 2: For 50 minutes she earned 0.2 * 50 = 10 dollars.
Step 3: The answer is: 10

A problem can also be solved by sub-questions, each answered in a sentence or two; the last one \
starts with "Now we can answer the question:".

Example 3
Question: Tim has 30 less apples than Martha, and Harry has half as many apples as Tim. If Martha \
has 68 apples, how many apples does Harry have?
Sub-question 1: How many apples does Tim have?
Answer 1: Tim has 30 less than Martha's 68, so 68 - 30 = 38. The answer is: 38
Sub-question 2: Now we can answer the question: how many apples does Harry have?
Answer 2: Harry has half of Tim's 38 apples, so 38 / 2 = 19. The answer is: 19"""

_DECOMPOSE = """Given a question, please decompose it into sub-questions. For each sub-question, \
please answer it in a complete sentence, ending with "The answer is <a numeric answer>". When the \
original question is answerable, please start the sub-question with "Now we can answer the \
question: <original question>".

Question 1: Four years ago, Kody was only half as old as Mohamed. If Mohamed is currently twice 30 \
years old, how old is Kody?
Question 1.1: How old is Mohamed currently?
Answer 1.1: Mohamed is twice as old as 30 years, which means he is 30 * 2 = 60 years old. The answer \
is 60.
Question 1.2: What was Kody's age four years ago, given that it was half of Mohamed's age at that time?
Answer 1.2: Four years ago, Mohamed was 60 - 4 = 56 years old, so Kody was half of that, which is \
56 / 2 = 28 years old. The answer is 28.
Question 1.3: Now we can answer the question: How old is Kody?
Answer 1.3: Kody is currently 28 + 4 = 32 years old. The answer is 32.

Question 2: On a moonless night, three fireflies danced in the evening breeze. They were joined by \
four less than a dozen more fireflies, before two of the fireflies flew away. How many fireflies \
remained?
Question 2.1: How many fireflies joined?
Answer 2.1: The fireflies were joined by four less than a dozen more fireflies, which are 12 - 4 = 8 \
fireflies. The answer is 8.
Question 2.2: Now we can answer the question: How many fireflies remained?
Answer 2.2: Three fireflies were dancing originally. They were joined by 8 fireflies before two of \
them flew away. So there were 3 + 8 - 2 = 9 remaining. The answer is 9.

Question 3: Betty is saving money for a new wallet which costs $100. Betty has only half of the money \
she needs. Her parents decided to give her $15 for that purpose, and her grandparents twice as much \
as her parents. How much more money does Betty need to buy the wallet?
Question 3.1: How much money does Betty have at the beginning?
Answer 3.1: Betty has only half of the $100 she needs, which is 100 / 2 = 50 dollars. The answer is 50.
Question 3.2: How much money do her grandparents give her?
Answer 3.2: Her grandparents give her twice as much as her parents' $15, which is 15 * 2 = 30 \
dollars. The answer is 30.
Question 3.3: Now we can answer the question: How much more money does Betty need to buy the wallet?
Answer 3.3: Betty has 50 dollars and gets 15 + 30 = 45 dollars more, so she has 50 + 45 = 95 \
dollars and needs 100 - 95 = 5 dollars more. The answer is 5.

Question 4: A car is driving through a tunnel with many turns. After a while, the car must travel \
through a ring that requires a total of 4 right-hand turns. After the 1st turn, it travels 5 meters. \
After the 2nd turn, it travels 8 meters. After the 3rd turn, it travels a little further and at the \
4th turn, it immediately exits the tunnel. If the car has driven a total of 23 meters around the \
ring, how far did it have to travel after the 3rd turn?
Question 4.1: How far did the car travel except for the 3rd turn?
Answer 4.1: It travels 5 meters after the 1st, 8 meters after the 2nd, and 0 meters after the 4th \
turn. It's a total of 5 + 8 + 0 = 13 meters. The answer is 13.
Question 4.2: Now we can answer the question: How far did the car have to travel after the 3rd turn?
Answer 4.2: The car has driven a total of 23 meters around the ring. It travels 13 meters except \
for the 3rd turn. So it has to travel 23 - 13 = 10 meters after the 3rd turn. The answer is 10."""


class NumberType(ProblemType):
    name = "number"
    order = 0
    guess_order = 30
    summary = "a number (GSM8K, GSM-Hard, SVAMP, MultiArith, AIME)"
    subject = "solve grade-school math word problems"
    answer_format = "End with the final number alone in \\boxed{}, without units."
    json_answer = "a string holding only the final number, without units"
    answer_noun = "final number"
    search = SearchExamples(
        steps=_STEPS,
        decompose=_DECOMPOSE,
        sub_answer="answer it in a complete sentence with its calculation, on one line, ending with"
        ' "The answer is <a numeric answer>."',
        final_answer='work it out with every calculation, on one line, ending with "The answer is <a'
        ' numeric answer>."',
        first_part="one quantity the question needs on the way",
    )

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
