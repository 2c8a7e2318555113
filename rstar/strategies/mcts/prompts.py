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

The few-shot examples are the job's problem type's (`ProblemType.search`: A1's and A5's system
prompt, A3's decomposition prompt and the wording of its sub-answers); A2, A4 and the discriminator
ask with the type's solve prompt. A job of an earlier version (v1-v3) is a `number` job. The
`number` type's examples (rstar/problem_types/number.py; `SYSTEM` and `DECOMPOSE_SYSTEM` here)
are GSM8K training problems (train.jsonl lines 1, 2, 3, 33, 71, 5213 and 5924, 1-based);
`FEW_SHOT_LINES` names them so that a benchmark keeps them out of its problems.
The decomposition examples are the authors' (their first, second and fourth are GSM8K training
lines 5213, 5924 and 33; their third, which is not in the training split, is replaced by line 3),
each sub-answer ending with "The answer is" as their instruction asks. The other actions follow
the authors' formats ("Step k:", conditions for the rephrase) with examples of our own.
"""

from __future__ import annotations

from collections.abc import Sequence

from rstar import prompts as solve_prompts
from rstar.problem_types.base import ProblemType, SearchExamples
from rstar.problem_types.number import NUMBER
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
assert NUMBER.search is not None
_NUMBER_SEARCH: SearchExamples = NUMBER.search

SYSTEM = _NUMBER_SEARCH.steps
"""The number type's A1 and A5 prompt, and every action's before v4 (v1-v3 jobs are numbers)."""

TERMINAL_SUBQUESTION = "now we can answer the question"


def trajectory(question: str, steps: Sequence[str]) -> str:
    """The growing part of every prompt: the question and the steps so far, one per line."""
    return "\n".join([f"Question: {question}", *steps])


def examples(kind: ProblemType) -> SearchExamples:
    """The type's few-shot prompts; ValueError for a type that has none."""
    if kind.search is None:
        raise ValueError(f"problem type {kind.name!r} has no few-shot prompts for the rstar search")
    return kind.search


def _messages(
    question: str, steps: Sequence[str], instruction: str, tail: str = "", *, system: str = SYSTEM
) -> tuple[ChatMessage, ...]:
    body = trajectory(question, steps) + (f"\n{tail}" if tail else "")
    return (ChatMessage("system", system), ChatMessage("user", f"{body}\n\n{instruction}"))


def one_step(
    question: str, steps: Sequence[str], k: int, *, kind: ProblemType = NUMBER
) -> tuple[ChatMessage, ...]:
    """A1: the next step only."""
    return _messages(
        question,
        steps,
        f'Write only "Step {k}:" and the next step of the solution, on one line.',
        system=examples(kind).steps,
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


def rephrase(question: str, *, kind: ProblemType = NUMBER) -> tuple[ChatMessage, ...]:
    """A5: the question as a list of conditions (root only)."""
    return (
        ChatMessage("system", examples(kind).steps),
        ChatMessage(
            "user",
            f"Question: {question}\n\nRewrite the question as a list of conditions, fully expressing"
            ' its information, on one line: "Condition 1: ... Condition 2: ... Question: ...". Do not'
            " solve it.",
        ),
    )


def complete(
    question: str, prefix: str, *, cot_format: str = "prose", kind: ProblemType = NUMBER
) -> tuple[ChatMessage, ...]:
    """The discriminator: finish a trajectory cut part-way (in A2's form)."""
    if cot_format == "prose":
        return solve_prompts.continue_messages(question, prefix, style="prose", kind=kind)
    return _messages(
        question,
        [prefix] if prefix else [],
        "Continue this solution from exactly where it stops: write the remaining steps, one per line, each"
        f' with its calculation; only after the last step write "{ANSWER_CUE} <number>".',
    )


# -- v4: the decomposition (A3), A2 with hints, A4 as a re-answer --------------------------------

DECOMPOSE_INDEX = 5
"""The decomposed question's number: the one after the examples' (decompose_template.json)."""

DECOMPOSE_SYSTEM = _NUMBER_SEARCH.decompose


def decomposition(question: str, pairs: Sequence[tuple[str, str]]) -> str:
    """The question and its sub-questions answered so far, numbered as the examples are."""
    i = DECOMPOSE_INDEX
    lines = [f"Question {i}: {question}"]
    for k, (subquestion, answer) in enumerate(pairs, 1):
        lines += [f"Question {i}.{k}: {subquestion}", f"Answer {i}.{k}: {_one_line(answer)}"]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def decompose_next(
    question: str, pairs: Sequence[tuple[str, str]], *, kind: ProblemType = NUMBER
) -> tuple[ChatMessage, ...]:
    """A3, first half (v4): the next sub-question. The first may not be the question itself: the
    way out is offered from the second on, as every example decomposes in two steps or more."""
    shots = examples(kind)
    k = len(pairs) + 1
    label = f"Question {DECOMPOSE_INDEX}.{k}:"
    instruction = f'Write "{label}" and the next sub-question only, on one line.'
    if k == 1:
        instruction = (
            f'Write "{label}" and the first sub-question only, on one line: it asks for'
            f" {shots.first_part}, not for the question's answer."
        )
    else:
        instruction += (
            " If the answers so far give everything the question needs, the sub-question starts with"
            ' "Now we can answer the question:" and repeats the question.'
        )
    return (
        ChatMessage("system", shots.decompose),
        ChatMessage("user", f"{decomposition(question, pairs)}\n\n{instruction}"),
    )


def decompose_answer(
    question: str,
    pairs: Sequence[tuple[str, str]],
    subquestion: str,
    *,
    terminal: bool,
    kind: ProblemType = NUMBER,
) -> tuple[ChatMessage, ...]:
    """A3, second half (v4): answer the sub-question; the terminal one answers the question, and
    may reason at more length."""
    shots = examples(kind)
    k = len(pairs) + 1
    label = f"Answer {DECOMPOSE_INDEX}.{k}:"
    how = shots.final_answer if terminal else shots.sub_answer
    body = f"{decomposition(question, pairs)}\nQuestion {DECOMPOSE_INDEX}.{k}: {_one_line(subquestion)}"
    return (
        ChatMessage("system", shots.decompose),
        ChatMessage(
            "user",
            f'{body}\n\nWrite "{label}" and {how}',
        ),
    )


def hint(pairs: Sequence[tuple[str, str]], steps: Sequence[str]) -> str:
    """A node's trajectory as the authors' A2 sees it (`make_hint`): one "Hint k:" line per
    answered sub-question, then the one-step thoughts on one "Hint:" line."""
    lines = [f"Hint {k}: {_one_line(q)} {_one_line(a)}" for k, (q, a) in enumerate(pairs, 1)]
    if steps:
        lines.append("Hint: " + " ".join(_one_line(s) for s in steps))
    return "\n".join(lines)


def answer_with_hints(question: str, hints: str, *, kind: ProblemType = NUMBER) -> tuple[ChatMessage, ...]:
    """A2 (v4): cot's own request, the hints appended to the question; at the root (no hints)
    exactly cot's."""
    return solve_prompts.solve_messages(
        f"{question}\n\n{hints}" if hints else question, style="prose", kind=kind
    )


def split_question(question: str) -> tuple[str, str]:
    """(context, the question asked): the text up to its last sentence, and that sentence
    (run_src/rstar_utils.py, `split_user_question`)."""
    text = question.strip().rstrip(".")
    cut = text.rfind(".")
    return text[: cut + 1].strip(), text[cut + 1 :].strip()


def reanswer(question: str, subquestion: str, *, kind: ProblemType = NUMBER) -> tuple[ChatMessage, ...]:
    """A4 (v4): the last sub-question answered again by chain of thought, asked of the question's
    context (`generate_re_subanswers`)."""
    context, _ = split_question(question)
    return solve_prompts.solve_messages(f"{context} {subquestion}".strip(), style="prose", kind=kind)
