"""rStar's prompts: one few-shot system prompt for every action, and a user message that grows.

The user message is the question, then the trajectory so far, one line per step; an action's
short instruction comes last. A child's message therefore extends its parent's trajectory (the
part before the instruction): the servers' prefix caches (vLLM automatic prefix caching, SGLang
RadixAttention, llama.cpp slots) reuse the system prompt and the shared trajectory. A2 and the
discriminator's completions are the exception since v3: they use the project's prose solve
prompt (a system prompt of its own), whose prompts still share a branch's trajectory as a prefix.

The few-shot examples are GSM8K training problems (train.jsonl lines 1, 2 and 71, 1-based),
rewritten in the two formats the actions use; `FEW_SHOT_LINES` names them so that a benchmark
keeps them out of its problems. The authors' prompts (microsoft/rStar, branch
rStar-mutualreasoning, prompts/GSM8K/fewshot_cot, fewshot_ost, decompose, rephrasing) use
GSM8K-style questions of their own; we follow their formats ("Step k:", sub-questions ending in
"Now we can answer the question", conditions for the rephrase) but not their examples.
"""

from __future__ import annotations

from collections.abc import Sequence

from rstar import prompts as solve_prompts
from rstar.types import ChatMessage

PROMPT_VERSION = "rstar-v3"
"""v3: A2's chains of thought and the discriminator's completions are written in the prose of the
project's solve prompt (`cot_format=prose`), the form cot's and self-consistency's answers come
from; v1 and v2 jobs keep the few-shot "Step k:" form (`cot_format=steps`). v2: each problem draws
its branches with a seed of its own (v1: the job's)."""
COT_FORMATS = ("prose", "steps")
FEW_SHOT_LINES = (1, 2, 71)
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
