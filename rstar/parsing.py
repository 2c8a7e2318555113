"""Defensive parsing of untrusted model replies (pure: no I/O).

Both parsers never raise: whatever the model wrote, they return the dataclass and say in
`parse_error` what was not understood. The JSON object we asked for is preferred; free-form
text is the fallback. All work is bounded so a 10 MB reply costs milliseconds, not minutes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from rstar.answers import MAX_ANSWER_CHARS, clean_text, last_boxed, last_match
from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER
from rstar.types import ParsedReview, ParsedSolution, ReviewIssue, Verdict

__all__ = [
    "MAX_ISSUES",
    "MAX_STEPS",
    "MAX_STEP_CHARS",
    "find_json_object",
    "parse_review",
    "parse_solution",
]

MAX_STEPS = 50
MAX_STEP_CHARS = 2000
MAX_ISSUES = 50

# Replies are bounded by max_tokens, so these only bite on garbage: candidates start in the first
# _JSON_SCAN_CHARS, and the decoder reads at most about _JSON_WORK_BUDGET characters in all
# (nested "{" make re-reading the same text possible, e.g. '{"a":' * 199 + a long array).
_JSON_SCAN_CHARS = 1_000_000
_JSON_WORK_BUDGET = 2_000_000
_JSON_MAX_ATTEMPTS = 200
_FREE_TEXT_LINES = 500
# Free-text markers are searched in this much of the reply: the tail for a solution's final
# answer (the last statement counts), the head for a review's verdict and scores.
_PROSE_SCAN_CHARS = 200_000
_MAX_RAW_ANSWER_SCAN = 300

_DECODER = json.JSONDecoder()
_OBJECT_START = re.compile(r'\{\s*["}]')


# --- shared helpers ------------------------------------------------------------------------------


def find_json_object(
    text: str, accept: Callable[[dict[str, Any]], bool]
) -> tuple[dict[str, Any], int, int] | None:
    """The first JSON object in `text` that parses and satisfies `accept`, with its span.

    Handles bare objects, ```json fences and objects embedded in prose alike: every "{" is a
    candidate start and the decoder finds the balanced end (braces inside strings included).
    Objects nested inside a rejected object are candidates too.
    """
    window = text[:_JSON_SCAN_CHARS]
    budget = _JSON_WORK_BUDGET
    # Only '{"' and '{}' can start an object, so LaTeX braces do not use up the attempts.
    for attempt, candidate in enumerate(_OBJECT_START.finditer(window)):
        if attempt == _JSON_MAX_ATTEMPTS or budget <= 0:
            break
        start = candidate.start()
        try:
            value, end = _DECODER.raw_decode(window, start)
        except json.JSONDecodeError as exc:
            budget -= exc.pos - start + 1
            continue
        except (ValueError, RecursionError):
            budget -= len(window) - start  # how far it read is unknown: assume everything
            continue
        budget -= end - start
        if isinstance(value, dict) and accept(value):
            return value, start, end
    return None


def _norm_key(key: str) -> str:
    """'finalAnswer', 'Final Answer', 'final-answer' -> 'final_answer'."""
    key = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")


def _norm_keys(obj: dict[str, Any]) -> dict[str, Any]:
    # First spelling wins, as with duplicate JSON keys the model's intent is ambiguous anyway.
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.setdefault(_norm_key(key), value)
    return out


def _truncate(text: str, limit: int) -> str:
    return clean_text(text[:limit])


def _iter_lines(text: str) -> Iterator[str]:
    """Non-empty stripped lines, lazily: splitlines() on 10 MB would build a huge list."""
    for m in re.finditer(r"[^\r\n]+", text):
        line = m[0].strip()
        if line:
            yield line


# A double quote ends it too: in JSON that did not parse, "final answer: 19.7", "20.1"] ... is the
# string's end, and no answer holds one.
_SENTENCE_END = re.compile(r'\.\s|;|\n|"|,\s+(?=[A-Za-z])|\s(?:because|since|as|which)\s', re.IGNORECASE)


def _cut_answer(text: str) -> str:
    """The answer part of "18 apples. She had 3 left...": up to the end of the sentence."""
    text = text[:_MAX_RAW_ANSWER_SCAN].strip()
    m = _SENTENCE_END.search(text)
    return (text[: m.start()] if m else text).strip()


def _scalar_text(value: Any) -> str | None:
    """A JSON scalar as text; None for null, bools and containers."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _join_notes(notes: list[str]) -> str | None:
    return "; ".join(notes) if notes else None


# --- solutions -----------------------------------------------------------------------------------

_ANSWER_KEYS = ("final_answer", "answer", "final")
_STEPS_KEYS = ("steps", "reasoning", "reasoning_steps", "solution_steps")
_STEP_TEXT_KEYS = ("text", "description", "content", "explanation", "step", "reasoning")

# "**Final Answer:** 20" closes its bold right after the colon; "Final answer: **20**" keeps
# its pair for normalize_answer.
_FINAL_ANSWER = re.compile(r"\b(?:final\s+)?answer[\s*_]*[:：](?:\*\*)?\s*(?P<x>[^\n]+)", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\banswer\s+is\b[\s:]*(?P<x>[^\n]+)", re.IGNORECASE)
_GSM8K = re.compile(r"####[ \t]*(?P<x>[^\n]+)")
_NUMBERING = re.compile(r"^(?:[-*•]\s+|(?:step\s*)?\d{1,3}\s*[.):]\s*)", re.IGNORECASE)
_FENCE = re.compile(r"^```[\w-]*$")


def _free_form_answer(text: str, kind: ProblemType) -> tuple[str | None, str | None, str | None]:
    """(answer_raw, answer, note) from free text, in order of how explicit the marker is."""
    text = text[-_PROSE_SCAN_CHARS:]
    candidates: list[str] = []
    final = last_match(_FINAL_ANSWER, text)
    if final:
        candidates.append(_cut_answer(final["x"]))
    boxed = last_boxed(text)
    if boxed is not None:
        candidates.append(boxed)
    for pattern in (_ANSWER_IS, _GSM8K):
        found = last_match(pattern, text)
        if found:
            candidates.append(_cut_answer(found["x"]))
    for raw in candidates:
        answer = kind.normalize(raw)
        if answer is not None:
            return _truncate(raw, MAX_ANSWER_CHARS), answer, None
    raw, answer = kind.fallback(text)
    if answer is not None:
        return _truncate(raw or "", MAX_ANSWER_CHARS), answer, kind.fallback_note
    return None, None, "no final answer found"


def _free_form_steps(text: str) -> tuple[list[str], bool]:
    """Non-empty lines without their "1." / "Step 1:" numbering; True if more were cut."""
    steps: list[str] = []
    for line in _iter_lines(text):
        if _FENCE.match(line):
            continue
        step = _NUMBERING.sub("", line, count=1).strip()
        if not step:
            continue
        if len(steps) == MAX_STEPS:
            return steps, True
        steps.append(_truncate(step, MAX_STEP_CHARS))
    return steps, False


def _step_text(item: Any) -> str | None:
    text = _scalar_text(item)
    if text is None and isinstance(item, dict):
        keyed = _norm_keys(item)
        for key in _STEP_TEXT_KEYS:
            text = _scalar_text(keyed.get(key))
            if text and text.strip():
                break
        else:
            try:
                text = json.dumps(item, ensure_ascii=False)
            except (ValueError, RecursionError):
                return None
    return text.strip() if text is not None else None


def _json_steps(value: Any, notes: list[str]) -> list[str]:
    if value is None:
        notes.append("JSON has no steps")
        return []
    if isinstance(value, str):
        steps, cut = _free_form_steps(value)
        if cut:
            notes.append(f"steps truncated to {MAX_STEPS}")
        return steps
    if not isinstance(value, list):
        notes.append(f"JSON steps is a {type(value).__name__}, not a list")
        return []
    steps: list[str] = []
    skipped = 0
    for item in value:
        text = _step_text(item)
        if not text:
            skipped += 1
            continue
        if len(steps) == MAX_STEPS:
            notes.append(f"steps truncated to {MAX_STEPS}")
            break
        steps.append(_truncate(text, MAX_STEP_CHARS))
    if skipped:
        notes.append(f"{skipped} empty or unreadable step(s) skipped")
    return steps


def _is_solution_object(obj: dict[str, Any]) -> bool:
    keys = _norm_keys(obj)
    return any(k in keys for k in _STEPS_KEYS + _ANSWER_KEYS)


def _parse_solution(text: str, kind: ProblemType) -> ParsedSolution:
    found = find_json_object(text, _is_solution_object)
    if found is None:
        steps, cut = _free_form_steps(text)
        answer_raw, answer, note = _free_form_answer(text, kind)
        notes = [f"steps truncated to {MAX_STEPS}"] if cut else []
        if note:
            notes.append(note)
        return ParsedSolution(tuple(steps), answer_raw, answer, False, _join_notes(notes))

    obj, start, end = found
    keyed = _norm_keys(obj)
    notes: list[str] = []
    steps = _json_steps(next((keyed[k] for k in _STEPS_KEYS if k in keyed), None), notes)
    raw = next((keyed[k] for k in _ANSWER_KEYS if k in keyed), None)
    raw_text = _scalar_text(raw)
    answer_raw = _truncate(raw_text.strip(), MAX_ANSWER_CHARS) if raw_text is not None else None
    answer = kind.normalize(answer_raw)
    if answer is None:
        # The answer may be stated in the prose around the object or at the end of the steps.
        around = "\n".join([text[:start], *steps, text[end:]])
        answer_raw, answer, note = _free_form_answer(around, kind)
        notes.append("JSON has no usable final_answer" + (f"; {note}" if note else "; used the free text"))
    return ParsedSolution(tuple(steps), answer_raw, answer, True, _join_notes(notes))


def parse_solution(text: str, kind: ProblemType = NUMBER) -> ParsedSolution:
    """Parse a solver reply: the JSON {"steps": [...], "final_answer": "..."} or free text; the
    answer in `kind`'s canonical form."""
    try:
        return _parse_solution(text, kind)
    except Exception as exc:  # last line of defence: a parser bug must not fail the batch
        return ParsedSolution((), None, None, False, f"internal parser error: {type(exc).__name__}")


# --- reviews -------------------------------------------------------------------------------------

_SCORE_FIELDS = ("logical_consistency", "calculation_accuracy", "step_completeness")
_VERDICT_WORDS: dict[str, Verdict] = {
    **dict.fromkeys(
        ("correct", "right", "valid", "accept", "accepted", "yes", "true", "pass", "passed"),
        Verdict.CORRECT,
    ),
    **dict.fromkeys(
        ("incorrect", "wrong", "invalid", "reject", "rejected", "no", "false", "fail", "failed"),
        Verdict.INCORRECT,
    ),
    **dict.fromkeys(("uncertain", "unsure", "unknown", "unclear"), Verdict.UNCERTAIN),
}
# For scanning prose only the unambiguous words: "no errors", "right triangle" are not verdicts.
# Word boundaries keep "correct" from matching inside "incorrect".
# "The correct answer is 20" says nothing about the verdict.
_VERDICT_IN_PROSE = re.compile(
    r"(?P<neg>\b(?:not|isn't|isn’t)\s+)?\b(?P<w>incorrect|correct|wrong|invalid|valid)\b"
    r"(?!\s+(?:final\s+)?(?:answer|value|result|number|total)\b)",
    re.IGNORECASE,
)
_VERDICT_LINE = re.compile(r"\bverdict\b[\s*_]*(?:is\b|[:=\-–])[\s*_]*(?P<v>[^\n]*)", re.IGNORECASE)
_SCORE_LINE = re.compile(
    r"(?P<name>[A-Za-z][A-Za-z _-]{0,40}?)[\s*_]*(?:score)?[\s*_]*[:=\-–][\s*_]*"
    r"(?P<val>-?\d+(?:\.\d+)?)(?:\s*/\s*5)?",
)
_CORRECT_ANSWER = re.compile(
    r"\bcorrect\s+(?:final\s+)?answer\b[\s*_]*(?:is|should\s+be|would\s+be|[:=])[\s:]*(?P<x>[^\n]+)",
    re.IGNORECASE,
)
_STEP_NUMBER = re.compile(r"^\s*(?:step\s*)?(\d{1,4})\s*$", re.IGNORECASE)
_ISSUE_TEXT_KEYS = ("description", "issue", "text", "problem", "explanation", "reason", "error")
_SUGGESTED_KEYS = ("correct_answer", "suggested_answer", "expected_answer", "answer")
_PROSE_VERDICT_CHARS = 300


def _score_field(name: str) -> str | None:
    """Which score a key or label names: 'logic', 'Calculation accuracy', 'completeness'..."""
    name = _norm_key(name)
    if "logic" in name or "consisten" in name:
        return "logical_consistency"
    if "calcul" in name or "arithmetic" in name or "accura" in name:
        return "calculation_accuracy"
    if "complete" in name:
        return "step_completeness"
    return None


def _verdict_from_word(text: str) -> Verdict | None:
    """A verdict value by its first word ("**Correct**", "Incorrect. Step 2 ..."); None if unknown."""
    words = re.sub(r"[^a-z]+", " ", text.lower()).split()
    negated = words[:1] == ["not"] or words[:2] == ["isn", "t"]
    if negated:
        words = words[1:] if words[0] == "not" else words[2:]
    verdict = _VERDICT_WORDS.get(words[0]) if words else None
    if negated and verdict is not None:
        return Verdict.INCORRECT if verdict is Verdict.CORRECT else Verdict.UNCERTAIN
    return verdict


def _verdict_in_prose(text: str) -> Verdict | None:
    m = _VERDICT_IN_PROSE.search(text)
    if m is None:
        return None
    word = _VERDICT_WORDS[m["w"].lower()]
    if m["neg"]:
        return Verdict.INCORRECT if word is Verdict.CORRECT else Verdict.UNCERTAIN
    return word


def _score_value(name: str, value: Any, notes: list[str]) -> int | None:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(-?\d{1,6}(?:\.\d{1,6})?)\s*(?:/\s*5)?\s*", value)
        number = float(m[1]) if m else None
    if number is None or (isinstance(number, float) and not math.isfinite(number)):
        notes.append(f"{name} is not a number")
        return None
    if number != int(number) or not 1 <= number <= 5:
        # str(), not :g - formatting a 400-digit int as a float overflows.
        notes.append(f"{name} {str(value).strip()[:20]} is not an integer from 1 to 5")
        return None
    return int(number)


def _issue(item: Any) -> ReviewIssue | None:
    step: int | None = None
    text = _scalar_text(item)
    if text is None and isinstance(item, dict):
        keyed = _norm_keys(item)
        for key in _ISSUE_TEXT_KEYS:
            text = _scalar_text(keyed.get(key))
            if text and text.strip():
                break
        raw_step = keyed.get("step", keyed.get("step_number"))
        if isinstance(raw_step, int) and not isinstance(raw_step, bool) and 0 <= raw_step < 10_000:
            step = raw_step
        elif isinstance(raw_step, str) and (m := _STEP_NUMBER.match(raw_step)):
            step = int(m[1])
    if text is None or not text.strip():
        return None
    return ReviewIssue(step, _truncate(text.strip(), MAX_STEP_CHARS))


def _json_issues(value: Any, notes: list[str]) -> list[ReviewIssue]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    issues = [issue for issue in (_issue(item) for item in items[: MAX_ISSUES * 2]) if issue]
    if len(issues) > MAX_ISSUES or len(items) > MAX_ISSUES * 2:
        notes.append(f"issues truncated to {MAX_ISSUES}")
    return issues[:MAX_ISSUES]


def _is_review_object(obj: dict[str, Any]) -> bool:
    keys = _norm_keys(obj)
    return "verdict" in keys or "scores" in keys or any(_score_field(k) for k in keys)


def _suggested(raw: Any, kind: ProblemType) -> str | None:
    text = _scalar_text(raw)
    return kind.normalize(text[:_MAX_RAW_ANSWER_SCAN]) if text is not None else None


def _review_from_json(obj: dict[str, Any], kind: ProblemType) -> ParsedReview:
    keyed = _norm_keys(obj)
    notes: list[str] = []
    raw_verdict = keyed.get("verdict")
    verdict: Verdict | None = None
    if isinstance(raw_verdict, bool):
        verdict = Verdict.CORRECT if raw_verdict else Verdict.INCORRECT
    elif isinstance(raw_verdict, str):
        verdict = _verdict_from_word(raw_verdict)
        if verdict is None:
            notes.append(f"unknown verdict {raw_verdict[:50]!r}")
    else:
        notes.append("JSON has no verdict")

    scored: dict[str, Any] = {}
    nested = keyed.get("scores")
    for source in (keyed, nested if isinstance(nested, dict) else {}):
        for key, value in source.items():
            target = _score_field(key)
            if target is not None:
                scored[target] = value
    scores: dict[str, int | None] = {}
    for name in _SCORE_FIELDS:
        if name in scored:
            scores[name] = _score_value(name, scored[name], notes)
        else:
            notes.append(f"{name} missing")
            scores[name] = None

    issues = _json_issues(keyed.get("issues"), notes)
    suggested = next((_suggested(keyed[k], kind) for k in _SUGGESTED_KEYS if k in keyed), None)
    return ParsedReview(
        verdict=verdict or Verdict.UNCERTAIN,
        logical_consistency=scores["logical_consistency"],
        calculation_accuracy=scores["calculation_accuracy"],
        step_completeness=scores["step_completeness"],
        issues=tuple(issues),
        suggested_answer=suggested,
        structured=True,
        parse_error=_join_notes(notes),
    )


def _review_from_prose(text: str, kind: ProblemType) -> ParsedReview:
    text = text[:_PROSE_SCAN_CHARS]
    notes: list[str] = []
    verdict: Verdict | None = None
    line = _VERDICT_LINE.search(text)
    if line is not None:
        verdict = _verdict_from_word(line["v"][:100])
    if verdict is None:
        verdict = _verdict_in_prose(text[:_PROSE_VERDICT_CHARS])
        if verdict is not None:
            notes.append("no verdict line; verdict guessed from the wording")
    if verdict is None:
        notes.append("no verdict found")

    scores: dict[str, int | None] = dict.fromkeys(_SCORE_FIELDS)
    for n, line_text in enumerate(_iter_lines(text)):
        if n >= _FREE_TEXT_LINES:
            break
        m = _SCORE_LINE.search(line_text[:200])
        target = _score_field(m["name"]) if m else None
        if m and target and scores[target] is None:
            scores[target] = _score_value(target, m["val"], notes)
    missing = [name for name, value in scores.items() if value is None]
    if missing:
        notes.append("no score for " + ", ".join(missing))

    answer = last_match(_CORRECT_ANSWER, text)
    return ParsedReview(
        verdict=verdict or Verdict.UNCERTAIN,
        logical_consistency=scores["logical_consistency"],
        calculation_accuracy=scores["calculation_accuracy"],
        step_completeness=scores["step_completeness"],
        issues=(),
        suggested_answer=kind.normalize(_cut_answer(answer["x"])) if answer else None,
        structured=False,
        parse_error=_join_notes(notes),
    )


def parse_review(text: str, kind: ProblemType = NUMBER) -> ParsedReview:
    """Parse a reviewer reply: the JSON {"verdict", "scores", "issues", ...} or free text."""
    try:
        found = find_json_object(text, _is_review_object)
        return _review_from_json(found[0], kind) if found else _review_from_prose(text, kind)
    except Exception as exc:  # last line of defence: a parser bug must not fail the batch
        return ParsedReview(
            Verdict.UNCERTAIN,
            None,
            None,
            None,
            (),
            None,
            False,
            f"internal parser error: {type(exc).__name__}",
        )
