"""The contract between the domain and the I/O layers: small frozen value types.

The parsers turn untrusted model text into `ParsedSolution` / `ParsedReview`; they never raise on
bad model output, they record why parsing failed in `parse_error` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class Verdict(StrEnum):
    CORRECT = "correct"
    INCORRECT = "incorrect"
    UNCERTAIN = "uncertain"


class StepKind(StrEnum):
    """The step kinds of the seed's strategies (a step's kind is a string its strategy owns: a
    new strategy may bring kinds of its own; every kind runs through the same task)."""

    GENERATE = "generate"
    REVIEW = "review"
    REFINE = "refine"
    COMPLETE = "complete"
    """Finish a peer's solution from a cut-off point (rStar's mutual-consistency check)."""


@dataclass(frozen=True)
class ReviewIssue:
    step: int | None
    description: str


@dataclass(frozen=True)
class ParsedSolution:
    steps: tuple[str, ...]
    answer_raw: str | None
    """The final answer as the model wrote it (e.g. "$1,000.00")."""
    answer: str | None
    """The normalised final answer (e.g. "1000"); None when none could be found."""
    structured: bool
    """True when the reply was the JSON object we asked for."""
    parse_error: str | None = None
    """Why the reply was not (fully) understood; None when it parsed cleanly."""


@dataclass(frozen=True)
class ParsedReview:
    verdict: Verdict
    logical_consistency: int | None
    calculation_accuracy: int | None
    step_completeness: int | None
    issues: tuple[ReviewIssue, ...]
    suggested_answer: str | None
    """The normalised answer the reviewer believes is right, if it gave one."""
    structured: bool
    parse_error: str | None = None

    @property
    def mean_score(self) -> float | None:
        scores = [
            s
            for s in (self.logical_consistency, self.calculation_accuracy, self.step_completeness)
            if s is not None
        ]
        return sum(scores) / len(scores) if scores else None


@dataclass(frozen=True)
class ParsedOutput:
    """A step's reply as its strategy understood it: one row of the outputs table."""

    payload: dict[str, Any]
    """What the strategy parsed out of the reply (JSON): a solution's steps, a review's verdict..."""
    answer: str | None = None
    """The normalised final answer the output gives, if it gives one (a review gives none)."""
    parse_error: str | None = None
    text: str | None = None
    """The sequence it came from, when a step sampled several (None: the step's one reply)."""


@dataclass(frozen=True)
class ProblemInput:
    """One validated line of an input file."""

    item_id: str
    line: int
    question: str
    reference: str | None
    """The reference answer as given (GSM8K's full worked answer is kept)."""
    reference_answer: str | None
    """The normalised reference final answer."""
    meta: dict[str, Any] | None = None
    """The line's "meta" object, kept as given (a data set's own fields: level, subject, source)."""


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class ModelRequest:
    """What a strategy asks a model for; the client turns it into the server's wire format."""

    messages: tuple[ChatMessage, ...]
    temperature: float
    max_tokens: int
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    """Ask for structured output with this JSON Schema where the server supports it."""
    stop: tuple[str, ...] = field(default_factory=tuple)
    top_p: float | None = None
    top_k: int | None = None
    """Sent only to servers that take it on the chat route (vLLM, llama.cpp)."""
    n: int = 1
    """Sequences to sample from this one prompt (an MCTS expansion's children, a vote's samples).
    Sent as one request with `n` where the server takes it, else as `n` concurrent requests."""
