"""rStar's prompts: one few-shot system prompt for every action, and a user message that grows.

The user message is the question, then the trajectory so far, one line per step; an action's
short instruction comes last. A child's message therefore extends its parent's trajectory (the
part before the instruction): the servers' prefix caches (vLLM automatic prefix caching, SGLang
RadixAttention, llama.cpp slots) reuse the system prompt and the shared trajectory. A2 and the
discriminator's completions are the exception since v3: they use the project's prose solve
prompt (a system prompt of its own), whose prompts still share a branch's trajectory as a prefix.

Since v4 (the authors' shapes, microsoft/rStar branch rStar-mutualreasoning):
- A3 has a decomposition prompt of its own (`DECOMPOSE_SYSTEM`), as prompts/GSM8K/decompose/
  decompose_prompt.txt: an instruction and four worked decompositions of two or three
  sub-questions each, numbered "Question 5.k" after them (decompose_template.json, index 5); the
  first sub-question is never offered the way out "Now we can answer the question" (our v3 did,
  and a 0.5B model took it every time). Sub-answers are one line (run_src/MCTS_for_reasoning.py,
  `generate_subquestions`, stops at a newline); the terminal one may reason at `max_tokens`.
- A2 answers the question with the solve prompt cot uses, the node's trajectory given as hints
  (`make_hint` in run_src/rstar_utils.py: "Hint k: <sub-question> <answer>", "Hint: <steps>"),
  appended to the question as in `_fewshot_cot_answer_question`.
- A4 re-answers the last sub-question with that same chain-of-thought prompt, asked of the
  question's context and the sub-question (`generate_re_subanswers`).

The few-shot examples are GSM8K training problems (train.jsonl lines 1, 2, 3, 33, 71, 5213 and
5924, 1-based); `FEW_SHOT_LINES` names them so that a benchmark keeps them out of its problems.
The decomposition examples are the authors' (their first, second and fourth are GSM8K training
lines 5213, 5924 and 33; their third, which is not in the training split, is replaced by line 3),
each sub-answer ending with "The answer is" as their instruction asks. The other actions follow
the authors' formats ("Step k:", conditions for the rephrase) with examples of our own.
"""

from __future__ import annotations

from collections.abc import Sequence

from rstar import prompts as solve_prompts
from rstar.types import ChatMessage

PROMPT_VERSION = "rstar-v5"
"""v5: a terminal sub-question is answered by chain of thought with the sub-answers as hints
(A2's request), not in one line.
v4: the authors' candidate set, A3 decomposition prompt, A2 with hints, A4 as a
chain-of-thought re-answer, and the discriminator's cut by words (see the strategy's docstring).
v3: A2's chains of thought and the discriminator's completions are written in the prose of the
project's solve prompt (`cot_format=prose`), the form cot's and self-consistency's answers come
from; v1 and v2 jobs keep the few-shot "Step k:" form (`cot_format=steps`). v2: each problem draws
its branches with a seed of its own (v1: the job's)."""
COT_FORMATS = ("prose", "steps")
FEW_SHOT_LINES = (1, 2, 3, 33, 71, 5213, 5924)
"""1-based lines of GSM8K train.jsonl the examples come from."""
ANSWER_CUE = "The answer is:"

SYSTEM = f"""You solve grade-school math word problems one step at a time. Each step is one line. \
The last step states the result as "{ANSWER_CUE} <number>".

Example 1
Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in \
May. How many clips did Natalia sell altogether in April and May?
Step 1: In May Natalia sold half as many as in April: 48 / 2 = 24 clips.
Step 2: Altogether she sold 48 + 24 = 72 clips.
Step 3: {ANSWER_CUE} 72

Example 2
Question: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of \
babysitting. How much did she earn?
Step 1: Weng earns 12 / 60 = 0.2 dollars per minute.
Step 2: For 50 minutes she earned 0.2 * 50 = 10 dollars.
Step 3: {ANSWER_CUE} 10

A problem can also be solved by sub-questions, each answered in a sentence or two; the last one \
starts with "Now we can answer the question:".

Example 3
Question: Tim has 30 less apples than Martha, and Harry has half as many apples as Tim. If Martha \
has 68 apples, how many apples does Harry have?
Sub-question 1: How many apples does Tim have?
Answer 1: Tim has 30 less than Martha's 68, so 68 - 30 = 38. {ANSWER_CUE} 38
Sub-question 2: Now we can answer the question: how many apples does Harry have?
Answer 2: Harry has half of Tim's 38 apples, so 38 / 2 = 19. {ANSWER_CUE} 19"""

TERMINAL_SUBQUESTION = "now we can answer the question"


def trajectory(question: str, steps: Sequence[str]) -> str:
    """The growing part of every prompt: the question and the steps so far, one per line."""
    return "\n".join([f"Question: {question}", *steps])


def _messages(
    question: str, steps: Sequence[str], instruction: str, tail: str = ""
) -> tuple[ChatMessage, ...]:
    body = trajectory(question, steps) + (f"\n{tail}" if tail else "")
    return (ChatMessage("system", SYSTEM), ChatMessage("user", f"{body}\n\n{instruction}"))


def one_step(question: str, steps: Sequence[str], k: int) -> tuple[ChatMessage, ...]:
    """A1: the next step only."""
    return _messages(
        question, steps, f'Write only "Step {k}:" and the next step of the solution, on one line.'
    )


def remaining_steps(
    question: str, steps: Sequence[str], k: int, *, cot_format: str = "prose"
) -> tuple[ChatMessage, ...]:
    """A2: the remaining steps to the answer (chain of thought from here).

    "prose": the project's solve prompt at the root, and below it the same prompt continuing the
    trajectory (a 0.5B model reasons far better in its own prose than in the few-shot step form:
    docs/results/accuracy/rstar). The prompts of one branch still share the trajectory as a prefix.
    """
    if cot_format == "prose":
        return solve_prompts.continue_messages(question, "\n".join(steps), style="prose")
    start = (
        f"Continue the solution: write Step {k}, Step {k + 1}, ..."
        if k > 1
        else "Solve it: write Step 1, Step 2, ..."
    )
    return _messages(
        question,
        steps,
        f"{start} one per line, each with its calculation, as in the examples; only after the last step write"
        f' "{ANSWER_CUE} <number>".',
    )


def next_subquestion(question: str, steps: Sequence[str], k: int) -> tuple[ChatMessage, ...]:
    """A3, first half: the next sub-question (answered by `subanswer`)."""
    return _messages(
        question,
        steps,
        f'Write only "Sub-question {k}:" and the next sub-question that helps answer the question, on one'
        ' line. If the question can be answered now, write "Sub-question'
        f' {k}: Now we can answer the question: <the question>".',
    )


def subanswer(question: str, steps: Sequence[str], k: int, subquestion: str) -> tuple[ChatMessage, ...]:
    """A3, second half (and A4): answer sub-question k."""
    return _messages(
        question,
        steps,
        f'Answer Sub-question {k} in one or two sentences, ending with "{ANSWER_CUE} <number>".',
        tail=f"Sub-question {k}: {subquestion}",
    )


def rephrase(question: str) -> tuple[ChatMessage, ...]:
    """A5: the question as a list of conditions (root only)."""
    return (
        ChatMessage("system", SYSTEM),
        ChatMessage(
            "user",
            f"Question: {question}\n\nRewrite the question as a list of conditions, fully expressing"
            ' its information, on one line: "Condition 1: ... Condition 2: ... Question: ...". Do not'
            " solve it.",
        ),
    )


def complete(question: str, prefix: str, *, cot_format: str = "prose") -> tuple[ChatMessage, ...]:
    """The discriminator: finish a trajectory cut part-way (in A2's form)."""
    if cot_format == "prose":
        return solve_prompts.continue_messages(question, prefix, style="prose")
    return _messages(
        question,
        [prefix] if prefix else [],
        "Continue this solution from exactly where it stops: write the remaining steps, one per line, each"
        f' with its calculation; only after the last step write "{ANSWER_CUE} <number>".',
    )


# -- v4: the decomposition (A3), A2 with hints, A4 as a re-answer --------------------------------

DECOMPOSE_INDEX = 5
"""The decomposed question's number: the one after the examples' (decompose_template.json)."""

DECOMPOSE_SYSTEM = """Given a question, please decompose it into sub-questions. For each sub-question, \
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


def decomposition(question: str, pairs: Sequence[tuple[str, str]]) -> str:
    """The question and its sub-questions answered so far, numbered as the examples are."""
    i = DECOMPOSE_INDEX
    lines = [f"Question {i}: {question}"]
    for k, (subquestion, answer) in enumerate(pairs, 1):
        lines += [f"Question {i}.{k}: {subquestion}", f"Answer {i}.{k}: {_one_line(answer)}"]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def decompose_next(question: str, pairs: Sequence[tuple[str, str]]) -> tuple[ChatMessage, ...]:
    """A3, first half (v4): the next sub-question. The first may not be the question itself: the
    way out is offered from the second on, as every example decomposes in two steps or more."""
    k = len(pairs) + 1
    label = f"Question {DECOMPOSE_INDEX}.{k}:"
    instruction = f'Write "{label}" and the next sub-question only, on one line.'
    if k == 1:
        instruction = (
            f'Write "{label}" and the first sub-question only, on one line: it asks for one quantity'
            " the question needs on the way, not for the question's answer."
        )
    else:
        instruction += (
            " If the answers so far give everything the question needs, the sub-question starts with"
            ' "Now we can answer the question:" and repeats the question.'
        )
    return (
        ChatMessage("system", DECOMPOSE_SYSTEM),
        ChatMessage("user", f"{decomposition(question, pairs)}\n\n{instruction}"),
    )


def decompose_answer(
    question: str, pairs: Sequence[tuple[str, str]], subquestion: str, *, terminal: bool
) -> tuple[ChatMessage, ...]:
    """A3, second half (v4): answer the sub-question; the terminal one answers the question, and
    may reason at more length."""
    k = len(pairs) + 1
    label = f"Answer {DECOMPOSE_INDEX}.{k}:"
    how = (
        "work it out with every calculation"
        if terminal
        else "answer it in a complete sentence with its calculation"
    )
    body = f"{decomposition(question, pairs)}\nQuestion {DECOMPOSE_INDEX}.{k}: {_one_line(subquestion)}"
    return (
        ChatMessage("system", DECOMPOSE_SYSTEM),
        ChatMessage(
            "user",
            f'{body}\n\nWrite "{label}" and {how}, on one line, ending with "The answer is <a numeric'
            ' answer>."',
        ),
    )


def hint(pairs: Sequence[tuple[str, str]], steps: Sequence[str]) -> str:
    """A node's trajectory as the authors' A2 sees it (`make_hint`): one "Hint k:" line per
    answered sub-question, then the one-step thoughts on one "Hint:" line."""
    lines = [f"Hint {k}: {_one_line(q)} {_one_line(a)}" for k, (q, a) in enumerate(pairs, 1)]
    if steps:
        lines.append("Hint: " + " ".join(_one_line(s) for s in steps))
    return "\n".join(lines)


def answer_with_hints(question: str, hints: str) -> tuple[ChatMessage, ...]:
    """A2 (v4): cot's own request, the hints appended to the question; at the root (no hints)
    exactly cot's."""
    return solve_prompts.solve_messages(f"{question}\n\n{hints}" if hints else question, style="prose")


def split_question(question: str) -> tuple[str, str]:
    """(context, the question asked): the text up to its last sentence, and that sentence
    (run_src/rstar_utils.py, `split_user_question`)."""
    text = question.strip().rstrip(".")
    cut = text.rfind(".")
    return text[: cut + 1].strip(), text[cut + 1 :].strip()


def reanswer(question: str, subquestion: str) -> tuple[ChatMessage, ...]:
    """A4 (v4): the last sub-question answered again by chain of thought, asked of the question's
    context (`generate_re_subanswers`)."""
    context, _ = split_question(question)
    return solve_prompts.solve_messages(f"{context} {subquestion}".strip(), style="prose")
