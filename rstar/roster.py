"""A job's model roster: named models, each an endpoint, in the order the strategy uses them.

`rstar submit --model NAME=URL` (repeatable), `--model-a URL` / `--model-b URL` (shorthand for
A=URL, B=URL) and `RSTAR_MODELS="A=url,B=url,C=url"` all end here. Names appear in step keys
("r1.review.C"), so they are short words: a letter, then letters, digits, `_` or `-`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
MAX_MODELS = 16


class RosterError(ValueError):
    """A model name or URL that is malformed or given twice."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    url: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "url": self.url}


def check_url(url: str, *, what: str) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL", ...
        raise RosterError(f"{what}: {url!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RosterError(f"{what}: {url!r} is not an http(s) URL with a host")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        # A model's queue is named by its URL: a worker started with the plain URL would never
        # serve the steps of `http://gpu:8000/?x` or `http://gpu:8000/#x`.
        raise RosterError(f"{what}: {url!r} has a query or a fragment: give the server's URL without them")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise RosterError(f"{what}: {url!r} has a port that is not a number") from None
    return url


def parse_model_spec(spec: str, *, what: str = "--model") -> ModelEntry:
    """`NAME=URL` as given on the command line or in RSTAR_MODELS."""
    name, sep, url = spec.partition("=")
    name = name.strip()
    if not sep:
        raise RosterError(f"{what} {spec!r}: expected NAME=URL")
    if not NAME_PATTERN.fullmatch(name):
        raise RosterError(
            f"{what} {spec!r}: the name must be a letter, then up to 31 letters, digits, _ or -"
        )
    return ModelEntry(name, check_url(url, what=f"{what} {name}"))


def parse_models_env(value: str) -> list[ModelEntry]:
    """RSTAR_MODELS: comma-separated NAME=URL pairs."""
    return [parse_model_spec(part, what="RSTAR_MODELS") for part in value.split(",") if part.strip()]


def pair(url_a: str, url_b: str | None, *, what_a: str, what_b: str) -> list[ModelEntry]:
    """Models A and B, the pair `--model-a/-b` and RSTAR_MODEL_A/B_URL name: B serves from A's URL
    when none is given for it."""
    return [
        ModelEntry("A", check_url(url_a, what=what_a)),
        ModelEntry("B", check_url(url_b or url_a, what=what_b)),
    ]


def build_roster(entries: Iterable[ModelEntry]) -> tuple[ModelEntry, ...]:
    """The roster in the order given; a name given twice is refused."""
    roster: list[ModelEntry] = []
    for entry in entries:
        if any(e.name == entry.name for e in roster):
            raise RosterError(f"model {entry.name!r} is given twice")
        roster.append(entry)
    if not roster:
        raise RosterError(
            "no models: pass --model NAME=URL (or --model-a URL), or set RSTAR_MODELS (or RSTAR_MODEL_A_URL)"
        )
    if len(roster) > MAX_MODELS:
        raise RosterError(f"{len(roster)} models: at most {MAX_MODELS}")
    return tuple(roster)


def names(models: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The names of a job's stored roster (`jobs.models`: a list of {"name", "url"})."""
    return tuple(str(m["name"]) for m in models)


def url_of(models: Sequence[Mapping[str, Any]], name: str | None) -> str | None:
    """The endpoint of model `name` in a stored roster; None for a step with no model."""
    for m in models:
        if m["name"] == name:
            return str(m["url"])
    return None
