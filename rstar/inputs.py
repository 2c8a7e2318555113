"""Validation of an input file of problems (pure: takes bytes or decoded records, returns values).

A file is accepted whole or refused whole: every problem found is reported at once, with its
line (or record) number, so a user fixes the file in one go. A record's fields may go by other
names (`FieldNames`: the rStar authors' published sets say "problem" and "solution"); its
reference is read by the job's problem type (`rstar.problem_types`).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER
from rstar.types import ProblemInput

__all__ = [
    "AUTHORS_FIELDS",
    "MAX_ID_CHARS",
    "MAX_LINE_BYTES",
    "MAX_REPORTED_PROBLEMS",
    "Decoded",
    "FieldNames",
    "InputError",
    "InputProblem",
    "Overlong",
    "ProblemReader",
    "decode_array",
    "guess_fields",
    "is_array_of_records",
    "parse_problems",
]

MAX_REPORTED_PROBLEMS = 50
MAX_LINE_BYTES = 65536
"""A JSONL line's limit in bytes (a record of the published sets is a few kilobytes)."""
MAX_ID_CHARS = 200
"""Ids become database keys and file names in reports; anything longer is a mistake."""

_BOM = b"\xef\xbb\xbf"
FIELDS = ("question", "answer", "id", "meta")
"""Every field a line may have: a misspelt one ("anwser") would drop the reference unnoticed.
Anything else a user wants kept goes inside "meta", where it is declared as kept."""
MAX_META_CHARS = 10000
"""Of a line's "meta" written as compact JSON: a problem's labels, not a second payload."""
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class InputProblem:
    line: int
    """1-based line (or record) number; 0 for problems with the file as a whole."""
    field: str | None
    reason: str
    unit: str = "line"
    """What `line` counts: "line" in JSONL, "record" in a JSON array."""

    def __str__(self) -> str:
        where = "the file" if self.line == 0 and self.unit != "line" else f"{self.unit} {self.line}"
        where += f", field '{self.field}'" if self.field else ""
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class FieldNames:
    """Which key of a record holds each field (`rstar submit --question-field/--answer-field/
    --id-field`). With other names than the JSONL format's, a record's other keys are kept in its
    "meta" (published sets carry labels such as MATH's "source")."""

    question: str = "question"
    answer: str = "answer"
    id: str = "id"

    @property
    def renamed(self) -> bool:
        return self != FieldNames()


AUTHORS_FIELDS = FieldNames(question="problem", answer="solution", id="id")
"""The rStar authors' data files: `{"id", "problem", "solution"}` (microsoft/rStar, data/*/test_all.json)."""


def guess_fields(first: Any) -> FieldNames:
    """The authors' names when a file's first record uses them and not ours, else ours."""
    if isinstance(first, dict) and "question" not in first and "problem" in first:
        return AUTHORS_FIELDS
    return FieldNames()


@dataclass(frozen=True)
class Decoded:
    """A record already decoded (an element of a JSON array), given to `ProblemReader.read` in
    place of a line's bytes."""

    value: Any


class InputError(ValueError):
    """The input file was refused; `problems` lists every reason found (up to a cap)."""

    def __init__(self, problems: list[InputProblem]) -> None:
        self.problems = problems
        super().__init__(problems)  # args stay the list, so the error pickles across processes

    def __str__(self) -> str:
        count = len(self.problems)
        # "problem" would read as a math problem: these are mistakes in the file.
        header = f"the input file has {count} error{'s' if count != 1 else ''}:"
        return "\n".join([header, *(f"  {p}" for p in self.problems)])


class _TooMany(Exception):
    """Stops the scan once enough problems have been collected to report."""


class _Collector:
    def __init__(self, unit: str = "line", names: dict[str, str] | None = None) -> None:
        self.problems: list[InputProblem] = []
        self.unit = unit
        self.names = names or {}
        """A field's name in the file, where it is not the JSONL format's."""

    def add(self, line: int, field: str | None, reason: str) -> None:
        field = self.names.get(field, field) if field is not None else None
        self.problems.append(InputProblem(line, field, reason, self.unit))
        if len(self.problems) >= MAX_REPORTED_PROBLEMS:
            self.problems.append(
                InputProblem(line, None, "too many problems; stopped checking here", self.unit)
            )
            raise _TooMany


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    return names.get(type(value), type(value).__name__)


def _unstorable(text: str) -> str | None:
    """Why a decoded string cannot be stored (PostgreSQL text and UTF-8 refuse these), or None."""
    m = _UNSTORABLE.search(text)
    if m is None:
        return None
    return "contains a NUL character" if m[0] == "\x00" else "contains an unpaired UTF-16 surrogate escape"


def _check_question(obj: dict[str, Any], line: int, max_chars: int, out: _Collector) -> str | None:
    value = obj.get("question")
    if value is not None and not isinstance(value, str):
        out.add(line, "question", f"must be a string, not {_type_name(value)}")
        return None
    question = (value or "").strip()
    if not question:
        out.add(line, "question", "missing or empty")
        return None
    if len(question) > max_chars:
        out.add(line, "question", f"too long: {len(question)} characters, the limit is {max_chars}")
        return None
    if reason := _unstorable(question):
        out.add(line, "question", reason)
        return None
    return question


def _check_id(obj: dict[str, Any], line: int, out: _Collector) -> str | None:
    value = obj.get("id")
    if value is None:  # absent or null: the line number names the problem
        return str(line)
    if isinstance(value, bool) or not isinstance(value, str | int):
        out.add(line, "id", f"must be a string or an integer, not {_type_name(value)}")
        return None
    item_id = value.strip() if isinstance(value, str) else str(value)
    if not item_id:
        out.add(line, "id", "empty")
        return None
    if len(item_id) > MAX_ID_CHARS:
        out.add(line, "id", f"too long: {len(item_id)} characters, the limit is {MAX_ID_CHARS}")
        return None
    if reason := _unstorable(item_id):
        out.add(line, "id", reason)
        return None
    return item_id


def _check_answer(obj: dict[str, Any], line: int, out: _Collector) -> tuple[bool, str | None]:
    """(ok, reference as text); an absent, null or blank answer is fine: no reference."""
    value = obj.get("answer")
    if value is None:
        return True, None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        out.add(line, "answer", f"must be a string or a number, not {_type_name(value)}")
        return False, None
    if isinstance(value, float):
        if not math.isfinite(value):
            out.add(line, "answer", "must be a finite number")
            return False, None
        # Positional notation: str(1e20) would be "1e+20", which no model writes.
        return True, format(Decimal(repr(value)), "f")
    if isinstance(value, int):
        return True, str(value)
    if reason := _unstorable(value):
        out.add(line, "answer", reason)
        return False, None
    return True, value if value.strip() else None


def _check_meta(obj: dict[str, Any], line: int, out: _Collector) -> tuple[bool, dict[str, Any] | None]:
    """(ok, the "meta" object as plain JSON values); absent or null is fine: no metadata."""
    value = obj.get("meta")
    if value is None:
        return True, None
    if not isinstance(value, dict):
        out.add(line, "meta", f"must be an object, not {_type_name(value)}")
        return False, None
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_META_CHARS:
        out.add(line, "meta", f"too long: {len(text)} characters as JSON, the limit is {MAX_META_CHARS}")
        return False, None
    if reason := _unstorable(_strings_of(value)):
        out.add(line, "meta", reason)
        return False, None
    return True, json.loads(text)  # plain dicts: the hook's duplicate bookkeeping is not stored


def _strings_of(obj: dict[str, Any]) -> str:
    """Every key and string inside a JSON object, joined, for _unstorable (PostgreSQL refuses a
    NUL inside JSON too)."""

    def walk(v: Any) -> Iterator[str]:
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            for k, x in v.items():
                yield k
                yield from walk(x)
        elif isinstance(v, list):
            for x in v:
                yield from walk(x)

    return "\n".join(walk(obj))


class _Pairs(dict[str, Any]):
    """A JSON object that remembers the keys it was given more than once (json.loads keeps the last
    value and says nothing: a second "answer" would silently replace the first)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.repeated = [k for k, count in Counter(k for k, _ in pairs).items() if count > 1]


def _check_fields(obj: dict[str, Any], line: int, out: _Collector) -> bool:
    """False after reporting a key given twice or a field this format does not have."""
    ok = True
    for key in getattr(obj, "repeated", ()):
        out.add(line, _shown(key), "given more than once")
        ok = False
    for key in obj:
        if key not in FIELDS:
            close = difflib.get_close_matches(key.strip().strip("\ufeff").lower(), FIELDS, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            out.add(
                line,
                _shown(key),
                f"unknown field (a line has {', '.join(FIELDS)}; put other fields to keep inside"
                f' "meta"){hint}',
            )
            ok = False
    return ok


def _renamed(obj: dict[str, Any], fields: FieldNames) -> dict[str, Any]:
    """A record with other field names in the JSONL format's: the named fields renamed, every
    other key kept in "meta" (next to what a "meta" object of its own holds)."""
    names = {fields.question: "question", fields.answer: "answer", fields.id: "id"}
    pairs: list[tuple[str, Any]] = []
    extra: dict[str, Any] = {}
    for key, value in obj.items():
        if key in names:
            pairs.append((names[key], value))
        elif key == "meta" and isinstance(value, dict):
            extra = {**value, **extra}
        else:
            extra[key] = value
    if extra:
        pairs.append(("meta", extra))
    renamed = _Pairs(pairs)
    renamed.repeated = [names.get(k, k) for k in getattr(obj, "repeated", ())]
    return renamed


def _shown(key: str) -> str:
    """A field name as the error shows it: invisible characters (a BOM, a control) escaped."""
    return key if key.isprintable() and "\ufeff" not in key else ascii(key)[1:-1]


_INVALID = object()
"""_decode_line's result for a line already reported: None would be the JSON null."""


def _decode_line(raw: bytes, line: int, max_line_bytes: int, out: _Collector) -> Any:
    """The line's JSON value, or _INVALID after reporting why there is none."""
    if len(raw) > max_line_bytes:
        out.add(line, None, f"line too long: {len(raw)} bytes, the limit is {max_line_bytes}")
        return _INVALID
    nul = raw.find(b"\x00")
    if nul != -1:
        out.add(line, None, f"contains a NUL byte at byte {nul + 1}")
        return _INVALID
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.add(line, None, f"invalid UTF-8 at byte {exc.start + 1}")
        return _INVALID
    try:
        return json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as exc:
        out.add(line, None, f"not valid JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        out.add(line, None, "not valid JSON: nested too deeply")
    except ValueError as exc:  # e.g. an integer beyond Python's int-parsing digit limit
        out.add(line, None, f"not valid JSON: {exc}")
    return _INVALID


_ARRAY_OF_RECORDS = re.compile(rb"\[\s*[{\]]")


def is_array_of_records(head: bytes) -> bool:
    """Whether a file that starts with `head` is one JSON array of records (the authors' data
    files): '[' and then '{' or ']'. A JSONL file's first line is an object; one that starts "[["
    is a line that is not, and is refused as such."""
    return _ARRAY_OF_RECORDS.match(head.lstrip(b"\xef\xbb\xbf \t\r\n")) is not None


def decode_array(data: bytes) -> list[Decoded]:
    """The records of a file holding one JSON array (the rStar authors' data files), each
    `Decoded` for `ProblemReader.read`; InputError when the file is not such an array."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_Pairs)
    except UnicodeDecodeError as exc:
        raise InputError(
            [InputProblem(0, None, f"invalid UTF-8 at byte {exc.start + 1}", "record")]
        ) from None
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        raise InputError([InputProblem(0, None, reason, "record")]) from None
    except (RecursionError, ValueError) as exc:
        raise InputError([InputProblem(0, None, f"not valid JSON: {exc}", "record")]) from None
    if not isinstance(value, list):
        reason = f"a file that starts with '[' must be one JSON array, not {_type_name(value)}"
        raise InputError([InputProblem(0, None, reason, "record")])
    return [Decoded(v) for v in value]


@dataclass(frozen=True)
class Overlong:
    """A line longer than the limit, as a streaming reader of a file gives it: its length, not
    its bytes (which may not end)."""

    length: int


class ProblemReader:
    """Validates a file's lines as they come, so a file of any size is checked in bounded memory.

    `read(lines)` yields each valid problem while no error has been found (after the first error
    nothing would be kept, so nothing more is yielded) and goes on checking every line; `check()`
    then raises the InputError listing everything wrong, as `parse_problems` does. A line is the
    bytes between two newlines, without them, or an `Overlong`. With `check_duplicates=False` a
    repeated id is left to the database's unique key (a second pass over a file already checked).
    """

    def __init__(
        self,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_question_chars: int = 20000,
        max_problems: int = 100000,
        check_duplicates: bool = True,
        kind: ProblemType = NUMBER,
        fields: FieldNames | None = None,
        unit: str = "line",
        keep_references: int = 0,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_question_chars = max_question_chars
        self.max_problems = max_problems
        self.kind = kind
        """Reads each reference (`ProblemType.reference`); one it cannot read is an error."""
        self.fields = fields or FieldNames()
        self._duplicates: dict[str, int] | None = {} if check_duplicates else None
        names = {"question": self.fields.question, "answer": self.fields.answer, "id": self.fields.id}
        self._out = _Collector(unit, names if self.fields.renamed else None)
        self.references: list[str] = []
        """The first `keep_references` references as given, for guessing the problem type."""
        self._keep_references = keep_references
        self.count = 0
        """Non-blank lines seen."""
        self.valid = 0
        """Problems that passed."""

    @property
    def errors(self) -> list[InputProblem]:
        return self._out.problems

    def read(self, lines: Iterable[bytes | Overlong | Decoded]) -> Iterator[ProblemInput]:
        out = self._out
        try:
            for index, raw in enumerate(lines):
                line = index + 1
                if isinstance(raw, Overlong):
                    self.count += 1
                    out.add(
                        line, None, f"line too long: {raw.length} bytes, the limit is {self.max_line_bytes}"
                    )
                    continue
                if isinstance(raw, bytes):
                    if index == 0 and raw.startswith(_BOM):
                        raw = raw[len(_BOM) :]
                    if not raw.strip():
                        continue
                self.count += 1
                if self.count > self.max_problems:
                    out.add(line, None, f"more than {self.max_problems} problems; split the file")
                    break
                problem = self._problem(raw, line)
                if problem is not None:
                    self.valid += 1
                    if not out.problems:
                        yield problem
        except _TooMany:
            pass

    def _problem(self, raw: bytes | Decoded, line: int) -> ProblemInput | None:
        out = self._out
        obj = raw.value if isinstance(raw, Decoded) else _decode_line(raw, line, self.max_line_bytes, out)
        if obj is _INVALID:
            return None
        if not isinstance(obj, dict):
            out.add(line, None, f"must be a JSON object, not {_type_name(obj)}")
            return None
        if self.fields.renamed:
            obj = _renamed(obj, self.fields)
        fields_ok = _check_fields(obj, line, out)
        question = _check_question(obj, line, self.max_question_chars, out)
        item_id = _check_id(obj, line, out)
        answer_ok, reference = _check_answer(obj, line, out)
        meta_ok, meta = _check_meta(obj, line, out)
        if item_id is not None and self._duplicates is not None:
            if item_id in self._duplicates:
                out.add(
                    line, "id", f"duplicate id {item_id!r}, first used on line {self._duplicates[item_id]}"
                )
                return None
            self._duplicates[item_id] = line
        reference_answer = None
        if reference is not None:
            if len(self.references) < self._keep_references:
                self.references.append(reference)
            kind = self.kind.for_question(question) if question is not None else self.kind
            reference_answer = kind.reference(reference)
            if reference_answer is None and self.kind is not NUMBER:
                out.add(line, "answer", f"no {self.kind.name} answer in it: {self.kind.reference_hint}")
                answer_ok = False
        if question is None or item_id is None or not (answer_ok and meta_ok and fields_ok):
            return None
        return ProblemInput(
            item_id=item_id,
            line=line,
            question=question,
            reference=reference,
            reference_answer=reference_answer,
            meta=meta,
        )

    def check(self) -> None:
        """Raises InputError when the file had anything wrong, or no problems at all."""
        if not self._out.problems and not self.valid:
            self._out.problems.append(
                InputProblem(0, None, "no problems: the file is empty or has only blank lines")
            )
        if self._out.problems:
            raise InputError(self._out.problems)


def parse_problems(
    data: bytes,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_question_chars: int = 20000,
    max_problems: int = 100000,
) -> list[ProblemInput]:
    """The problems of a JSONL file, in file order; raises InputError listing what is wrong.

    Each non-blank line is a JSON object with a non-empty string "question", an optional "id"
    (string or integer; defaults to the line number) and an optional "answer" (string or number:
    the reference, e.g. GSM8K's worked answer ending in "#### 72"), an optional "meta" (an object,
    kept with the problem as given), and nothing else: a key given twice or any other field is
    refused (with the field it resembles). A file that is one JSON array of records (the rStar
    authors' data files, `is_array_of_records`) is read record by record, with their field names
    when its first record uses them, as `rstar submit` reads it.
    """
    limits = {
        "max_line_bytes": max_line_bytes,
        "max_question_chars": max_question_chars,
        "max_problems": max_problems,
    }
    if is_array_of_records(data):
        records = decode_array(data)
        fields = guess_fields(records[0].value if records else None)
        reader = ProblemReader(fields=fields, unit="record", **limits)
        problems = list(reader.read(records))
    else:
        reader = ProblemReader(**limits)
        problems = list(reader.read(data.split(b"\n")))
    reader.check()
    return problems
