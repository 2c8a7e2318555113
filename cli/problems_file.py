"""Reading a problems file for `rstar submit` in bounded memory, whatever its size.

The file is read twice: once to check every line (rstar.inputs.ProblemReader: every error found is
reported before anything is written), then again while its problems are inserted in the job's one
transaction, batch by batch (db/jobs.py). Neither pass holds the file or its problems in memory.
A pipe or a device, which cannot be read twice, is copied to a temporary file on the first pass.
A file changed between the passes is caught by the second (an error or another count of
problems) and rolls the transaction back: nothing is submitted.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rstar.inputs import Overlong, ProblemReader
from rstar.types import ProblemInput

CHUNK = 1 << 16


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
    for _ in reader.read(file_lines(path, max_bytes=max_bytes, max_line_bytes=reader.max_line_bytes)):
        pass
    reader.check()
    return reader.valid


def read_again(path: Path, reader: ProblemReader, *, max_bytes: int, expected: int) -> Iterator[ProblemInput]:
    """The second pass: the problems, read as the first pass found them; raises FileChanged when
    the file now reads otherwise (at the end, before the transaction commits)."""
    try:
        yield from reader.read(file_lines(path, max_bytes=max_bytes, max_line_bytes=reader.max_line_bytes))
    except TooLarge:
        raise FileChanged("it grew past the size limit") from None
    if reader.errors or reader.valid != expected:
        raise FileChanged(f"{reader.valid} problems and {len(reader.errors)} errors, not {expected} and none")
