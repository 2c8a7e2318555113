"""Reading a problems file for `rstar submit` in bounded memory, whatever its size.

A file is JSONL (a record a line), or one JSON array of records, as the rStar authors publish
their data sets; an array is decoded whole, so it is limited to `MAX_ARRAY_BYTES` (the published
sets are a few megabytes; anything larger is better written as JSONL).

The file is read twice: once to check every line (rstar.inputs.ProblemReader: every error found is
reported before anything is written), then again while its problems are inserted in the job's one
transaction, batch by batch (db/jobs.py). Neither pass holds the file or its problems in memory.
A pipe or a device, which cannot be read twice, is copied to a temporary file on the first pass.
A file changed between the passes is caught by the second (an error or another count of
problems) and rolls the transaction back: nothing is submitted.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

from rstar.inputs import MAX_LINE_BYTES, Decoded, Overlong, ProblemReader, decode_array, is_array_of_records
from rstar.types import ProblemInput

CHUNK = 1 << 16
MAX_ARRAY_BYTES = 64 * 1024 * 1024


class TooLarge(Exception):
    """The file holds more than the byte limit (RSTAR_MAX_INPUT_BYTES)."""


class FileChanged(Exception):
    """The file read differently the second time: it was changed while being submitted."""


def file_lines(path: Path, *, max_bytes: int, max_line_bytes: int) -> Iterator[bytes | Overlong]:
    """The file's lines without their newlines (a line over `max_line_bytes` as an `Overlong`,
    never read whole: /dev/zero has no newline); raises TooLarge past `max_bytes`."""
    total = 0
    with path.open("rb") as f:
        while raw := f.readline(max_line_bytes + 1):
            total += len(raw)
            if total > max_bytes:
                raise TooLarge
            if raw.endswith(b"\n"):
                yield raw[:-1]
            elif len(raw) <= max_line_bytes:
                yield raw  # the last line, without a newline
            else:
                length = len(raw)
                while raw and not raw.endswith(b"\n"):  # the rest of the line, a chunk at a time
                    raw = f.readline(CHUNK)
                    total += len(raw)
                    if total > max_bytes:
                        raise TooLarge
                    length += len(raw)
                yield Overlong(length - raw.endswith(b"\n"))


class ArrayTooLarge(Exception):
    """A JSON array file larger than MAX_ARRAY_BYTES."""


def unit_of(path: Path) -> str:
    """ "record" for a file holding one JSON array of records (it starts with '[' and then '{' or
    ']'), "line" for JSONL (where a first line such as "[[[" is a line that is not an object)."""
    with path.open("rb") as f:
        return "record" if is_array_of_records(f.read(CHUNK)) else "line"


def records(path: Path, *, max_bytes: int, max_line_bytes: int) -> Iterator[bytes | Overlong | Decoded]:
    """What `ProblemReader.read` takes: a JSONL file's lines, or a JSON array's records."""
    if unit_of(path) == "line":
        yield from file_lines(path, max_bytes=max_bytes, max_line_bytes=max_line_bytes)
        return
    size = path.stat().st_size
    if size > min(max_bytes, MAX_ARRAY_BYTES):
        if size > max_bytes:
            raise TooLarge
        raise ArrayTooLarge
    yield from decode_array(path.read_bytes())


@contextmanager
def readable_twice(path: Path, *, max_bytes: int) -> Iterator[Path]:
    """The path itself for a regular file; for a pipe or a device, a temporary copy (raises
    TooLarge past `max_bytes`), removed on exit."""
    if path.is_file():
        yield path
        return
    with tempfile.NamedTemporaryFile(prefix="rstar-submit-", suffix=".jsonl") as copy:
        total = 0
        with path.open("rb") as source:
            while chunk := source.read(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise TooLarge
                copy.write(chunk)
        copy.flush()
        yield Path(copy.name)


def check(path: Path, reader: ProblemReader, *, max_bytes: int) -> int:
    """The first pass: every line checked; raises InputError or TooLarge. Returns the number of
    problems."""
    for _ in reader.read(records(path, max_bytes=max_bytes, max_line_bytes=reader.max_line_bytes)):
        pass
    reader.check()
    return reader.valid


def head(path: Path, *, count: int, max_bytes: int) -> list[bytes | Overlong | Decoded]:
    """The file's first `count` records as `ProblemReader.read` takes them, read once: what the
    field names and the problem type are guessed from."""
    return list(islice(records(path, max_bytes=max_bytes, max_line_bytes=MAX_LINE_BYTES), count))


def first_value(items: list[bytes | Overlong | Decoded]) -> object:
    """The first record of `head`'s items decoded (None when there is none or it is not valid
    JSON): what the field names are guessed from."""
    for item in items:
        if isinstance(item, Decoded):
            return item.value
        if isinstance(item, bytes) and item.strip():
            try:
                return json.loads(item.lstrip(b"\xef\xbb\xbf"))
            except (ValueError, RecursionError):  # the full check reports it, with its line
                return None
    return None


def read_again(path: Path, reader: ProblemReader, *, max_bytes: int, expected: int) -> Iterator[ProblemInput]:
    """The second pass: the problems, read as the first pass found them; raises FileChanged when
    the file now reads otherwise (at the end, before the transaction commits)."""
    try:
        yield from reader.read(records(path, max_bytes=max_bytes, max_line_bytes=reader.max_line_bytes))
    except TooLarge:
        raise FileChanged("it grew past the size limit") from None
    if reader.errors or reader.valid != expected:
        raise FileChanged(f"{reader.valid} problems and {len(reader.errors)} errors, not {expected} and none")
