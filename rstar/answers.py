"""Final-answer normalisation and equivalence (pure: no I/O).

Canonical form of a numeric answer: every exact rational value has exactly one string, so two
numeric answers are equal iff their canonical strings are equal:

* whole numbers as plain integers: "18", "-3", "1000" (no commas, no ".0");
* other values with a terminating decimal expansion as a minimal decimal: "0.5", "-2.25";
* everything else as a reduced fraction "p/q" with the sign on p: "1/3", "-2/3".

So "1/2", "\\frac{1}{2}" and "0.50" all normalise to "0.5". Currency symbols, "%", trailing units
("18 apples", "50 percent"), markdown bold, LaTeX wrappers and lead-ins ("The answer is",
"x =") are dropped. Non-numeric answers are whitespace-collapsed, lowercased and kept.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from functools import lru_cache

__all__ = [
    "MAX_ANSWER_CHARS",
    "TEXT_COMMAND",
    "answers_equal",
    "clean_text",
    "extract_reference",
    "last_boxed",
    "last_match",
    "math_verify_equal",
    "normalize_answer",
]

MAX_ANSWER_CHARS = 500
"""Normalised answers are cut to this length: an "answer" longer than this is garbage anyway."""

# Bounds the work on untrusted input: real answers are short.
_MAX_NORMALIZE_INPUT = 5000
_MAX_NUMBER_DIGITS = 100
_MAX_BOXED_SCAN = 2000
_MATH_VERIFY_MAX_CHARS = 200

_SURROGATES = re.compile(r"[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Make untrusted text storable: PostgreSQL text rejects NULs, UTF-8 rejects lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    return _SURROGATES.sub("\ufffd", text)


# C0 controls but tab and newline, DEL, and the C1 controls (0x9b is a one-byte CSI).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(value: object) -> str:
    """Stored or typed text as a reader may see it: each control character written as a visible
    escape (ESC as `\\x1b`), tabs and newlines kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match: models restate, and the final statement is the one that counts."""
    found = None
    for match in pattern.finditer(text):
        found = match
    return found


_BOXED_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MAX_BOXED_TRIES = 20


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed \\boxed{...} (nested braces allowed), or None."""
    # Searched backwards with a bounded number of tries: a reply of a million unclosed
    # "\boxed{" must not cost a million brace scans.
    end = len(text)
    for _ in range(_MAX_BOXED_TRIES):
        at = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
        if at == -1:
            return None
        end = at
        opening = _BOXED_OPEN.match(text, at)
        if opening is None:
            continue
        depth = 0
        for i in range(opening.end() - 1, min(len(text), opening.end() + _MAX_BOXED_SCAN)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[opening.end() : i]
    return None


# --- numbers -------------------------------------------------------------------------------------

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
# Longest forms first, so "2 1/2" is not read as 2 with a unit.
_NUMBER_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("mixed", re.compile(r"(?P<w>\d+)\s+(?P<n>\d+)\s*/\s*(?P<d>\d+)")),
    ("mixed", re.compile(r"(?P<w>\d+)\s*\\frac\s*\{\s*(?P<n>\d+)\s*\}\s*\{\s*(?P<d>\d+)\s*\}")),
    ("frac", re.compile(rf"\\frac\s*\{{\s*(?P<n>{_NUM})\s*\}}\s*\{{\s*(?P<d>{_NUM})\s*\}}")),
    ("frac", re.compile(r"\\frac\s*(?P<n>\d)(?P<d>\d)")),  # \frac12
    ("frac", re.compile(rf"(?P<n>{_NUM})\s*/\s*(?P<d>{_NUM})")),
    ("plain", re.compile(rf"(?P<n>{_NUM})")),
)
_CURRENCY = r"(?:[$€£¥₹]|usd\b|us\$|rs\.?)"
# Sign and currency may come in either order: "-$18", "$-18".
_PREFIX = re.compile(rf"^(?P<s1>[-+−]?)\s*{_CURRENCY}?\s*(?P<s2>[-+−]?)\s*", re.IGNORECASE)
# A unit is a percent sign, a currency sign or words without digits or operators ("18 km/h each"),
# maybe squared or cubed ("12 cm^2") or in parentheses ("18 (apples)"), as GSM8K answers come.
_UNIT = r"[^\W\d_][^\d=+*^<>()\[\]{}\\]*"
_SUFFIX = re.compile(rf"\s*(?:%|[$€£¥₹]|{_UNIT}(?:\^\{{?[23]\}}?)?|\({_UNIT}\))?\s*")


def _to_fraction(token: str) -> Fraction:
    return Fraction(token.replace(",", ""))


def _parse_number(text: str) -> Fraction | None:
    """The exact value of a number-with-decoration string ("-$1,000.50", "50%"), else None."""
    m = _PREFIX.match(text)
    if m is None or (m["s1"] and m["s2"]):
        return None
    negative = (m["s1"] or m["s2"]) in ("-", "−")
    rest = text[m.end() :]
    for kind, pattern in _NUMBER_PATTERNS:
        nm = pattern.match(rest)
        if nm is None or not _SUFFIX.fullmatch(rest, nm.end()):
            continue
        if sum(ch.isdigit() for ch in nm[0]) > _MAX_NUMBER_DIGITS:
            return None
        try:
            if kind == "plain":
                value = _to_fraction(nm["n"])
            else:
                denominator = _to_fraction(nm["d"])
                if denominator == 0:
                    return None
                value = _to_fraction(nm["n"]) / denominator
                if kind == "mixed":
                    value += int(nm["w"])
        except (ValueError, ZeroDivisionError):
            return None
        return -value if negative else value
    return None


def _format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    rest, twos, fives = value.denominator, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    whole, frac = divmod(scaled, 10**places)
    sign = "-" if value < 0 else ""
    return f"{sign}{whole}.{str(frac).zfill(places).rstrip('0')}"


# --- normalisation -------------------------------------------------------------------------------

_BOLD = re.compile(r"\*\*(.+?)\*\*")  # markdown bold anywhere: "**20** apples"
_LEAD_IN = re.compile(
    r"\b(?:final\s+)?answer\b[\s*_]*(?:is|:|=|should\s+be|would\s+be|will\s+be)[\s*_:]*",
    re.IGNORECASE,
)
# A LaTeX text command around its argument ("\\text{ apples}"); its argument is what it says.
TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SIZING = re.compile(r"\\(?:left|right)(?![a-z])")
_LATEX_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("\\$", "$"),
    ("\\%", "%"),
    ("{,}", ","),
    ("\\,", ""),
    ("\\!", ""),
    ("\\;", " "),
    ("\\:", " "),
    ("\\ ", " "),
    ("~", " "),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("°", ""),
)
_MAX_UNWRAP_ROUNDS = 50


def _unwrap(text: str) -> str:
    """Strip the decoration models put around an answer, until nothing changes.

    One fixed-point loop for all of it, because removing one layer can expose another
    ("$\\text{**18**}$."), and so that normalising a normalised answer changes nothing.
    """
    for _ in range(_MAX_UNWRAP_ROUNDS):
        before = text
        lead = last_match(_LEAD_IN, text)
        if lead is not None and text[lead.end() :].strip():
            text = text[lead.end() :]
        text = TEXT_COMMAND.sub(r" \1 ", _BOLD.sub(r"\1", text))
        text = _SIZING.sub("", text)
        for old, new in _LATEX_REPLACEMENTS:
            text = text.replace(old, new)
        text = " ".join(text.split()).strip("*`").strip().rstrip(".;,!:").strip()
        if len(text) >= 2 and text[0] == text[-1] == "$":
            text = text.strip("$")
        for open_, close in (("\\(", "\\)"), ("\\[", "\\]"), ('"', '"'), ("'", "'")):
            if len(text) >= 2 * len(open_) and text.startswith(open_) and text.endswith(close):
                text = text[len(open_) : -len(close)]
        if text == before:
            break
    return text


# A template slot copied verbatim by a small model ("<number>", "<answer>") is no answer at all.
_PLACEHOLDER = re.compile(r"<[^<>\d]*>")


def normalize_answer(raw: str | None) -> str | None:
    """Canonical form of a final answer (see the module docstring), or None if nothing usable."""
    if raw is None:
        return None
    text = " ".join(clean_text(raw[:_MAX_NORMALIZE_INPUT]).split()).lower()
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    text = _unwrap(text)
    if not text or _PLACEHOLDER.fullmatch(text) or not any(ch.isalnum() for ch in text):
        return None  # "}" or "?" (a stray brace a small model copied) is no answer
    value = _parse_number(text)
    if value is None and "=" in text:
        # "x = 5", "3 * 6 = 18": the value is what the equation ends with.
        value = _parse_number(_unwrap(text.rsplit("=", 1)[1]))
    if value is not None:
        return _format_number(value)
    return text[:MAX_ANSWER_CHARS].strip() or None


_GSM8K_FINAL = re.compile(r"^[ \t]*####[ \t]*(\S[^\n]*)$", re.MULTILINE)


def extract_reference(answer: str | None) -> str | None:
    """Normalised final answer of a reference: GSM8K's "#### 72" line if present, else the whole."""
    if answer is None:
        return None
    final = last_match(_GSM8K_FINAL, answer)
    return normalize_answer(final[1] if final is not None else answer)


# --- equivalence ---------------------------------------------------------------------------------

_ALLOWED_COMMANDS = frozenset(
    {"frac", "sqrt", "pi", "cdot", "times", "div", "pm", "infty", "left", "right", "circ"}
)
_COMMAND = re.compile(r"\\([A-Za-z]+)")
_SMALL_EXPONENT = re.compile(r"\^(?:\{-?\d{1,2}\}|\d)")


def _safe_for_math_verify(text: str) -> bool:
    """Whether sympy can compare this quickly and meaningfully.

    math_verify runs here without its signal-based timeout (it only works in the main thread),
    so refuse what can make sympy run for minutes: factorials, power towers, symbolic powers
    ((a+b+c+d+e+f+g+h)^9 takes 20 s), deep nesting (30 parentheses take seconds to parse).
    Words are refused too: as products of symbols, "stop" would equal "pots".
    """
    if len(text) >= _MATH_VERIFY_MAX_CHARS or "!" in text or "**" in text:
        return False
    commands = _COMMAND.findall(text)
    if any(c not in _ALLOWED_COMMANDS for c in commands):
        return False
    bare = _COMMAND.sub(" ", text)
    if re.search(r"[A-Za-z]{2}", bare):
        return False
    # One small exponent on a numeric expression: 2^{10} yes; x^9, 2^{99}^{99} no.
    carets = bare.count("^")
    if carets and (carets > 1 or re.search(r"[A-Za-z]", bare) or not _SMALL_EXPONENT.search(bare)):
        return False
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest <= 4


def _drop_timeout_notice(record: logging.LogRecord) -> bool:
    # math_verify warns once per process that its timeout is off; ours is _safe_for_math_verify.
    return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_drop_timeout_notice)


def math_verify_equal(a: str, b: str, timeout: int | None) -> bool:
    """math-verify's equivalence of two LaTeX answers, symmetric. `timeout` (seconds) needs the
    main thread (math-verify's limit is signal.alarm); None runs without one."""
    # Imported lazily: sympy and the ANTLR parser make the import slow and it is rarely needed.
    from math_verify import parse, verify

    parsed_a = parse(f"${a}$", parsing_timeout=timeout)  # type: ignore[arg-type]
    parsed_b = parse(f"${b}$", parsing_timeout=timeout)  # type: ignore[arg-type]
    if not parsed_a or not parsed_b:
        return False
    # verify() treats its first argument as gold; trying both ways keeps us symmetric.
    return bool(
        verify(parsed_a, parsed_b, timeout_seconds=timeout)
        or verify(parsed_b, parsed_a, timeout_seconds=timeout)
    )


def _math_verify_equal(a: str, b: str) -> bool:
    if not (_safe_for_math_verify(a) and _safe_for_math_verify(b)):
        return False
    try:
        # Without math-verify's time limit, which raises outside the main thread:
        # _safe_for_math_verify bounds the work instead.
        return math_verify_equal(a, b, None)
    except Exception:
        return False


@lru_cache(maxsize=1 << 15)  # pure; a report or a viewer page judges every problem of a job again
def answers_equal(a: str | None, b: str | None) -> bool:
    """Whether two final answers are the same; None (no answer) never equals anything."""
    na, nb = normalize_answer(a), normalize_answer(b)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    va, vb = _parse_number(na), _parse_number(nb)
    if va is not None and vb is not None:
        # Both are plain numbers: exact comparison is the whole story.
        return va == vb
    return _math_verify_equal(na, nb)
