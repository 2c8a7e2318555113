"""A job's model roster: named models, each served by one endpoint or several replicas, in the
order the strategy uses them.

`rstar submit --model NAME=URL[,URL...]` (repeatable), `--model-a URL` / `--model-b URL` (shorthand
for A=URL, B=URL) and `RSTAR_MODELS="A=url,B=url,C=url"` all end here. Names appear in step keys
("r1.review.C"), so they are short words: a letter, then letters, digits, `_` or `-`.

Replicas are one model on several servers (`--model A=http://gpu1:8000,http://gpu2:8000`; in
RSTAR_MODELS a URL without a name continues the model before it). The first URL is the model's
`url`: it names the model in the audit trail's request hashes, so a reply is reused whichever
replica served it; `tasks/replicas.py` picks the replica of each step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    more_urls: tuple[str, ...] = ()
    """The replicas after the first."""

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.more_urls)

    def as_json(self) -> dict[str, Any]:
        stored: dict[str, Any] = {"name": self.name, "url": self.url}
        if self.more_urls:
            stored["replicas"] = list(self.urls)
        return stored

    def with_urls(self, change: Callable[[str], str]) -> ModelEntry:
        """The entry with every URL changed (credentials taken out, say)."""
        return ModelEntry(self.name, change(self.url), tuple(change(u) for u in self.more_urls))


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
    """`NAME=URL[,URL...]` as given on the command line: several URLs are replicas of the model."""
    name, sep, urls = spec.partition("=")
    name = name.strip()
    if not sep:
        raise RosterError(f"{what} {spec!r}: expected NAME=URL")
    if not NAME_PATTERN.fullmatch(name):
        raise RosterError(
            f"{what} {spec!r}: the name must be a letter, then up to 31 letters, digits, _ or -"
        )
    given = [u for u in urls.split(",") if u.strip()] or [urls]
    checked = [check_url(u, what=f"{what} {name}") for u in given]
    return replicas_of(name, checked, what=f"{what} {name}")


def replicas_of(name: str, urls: Sequence[str], *, what: str) -> ModelEntry:
    seen: set[str] = set()
    for url in urls:
        key = url.rstrip("/")
        if key in seen:
            raise RosterError(f"{what}: {url!r} is given twice")
        seen.add(key)
    return ModelEntry(name, urls[0], tuple(urls[1:]))


def parse_models_env(value: str) -> list[ModelEntry]:
    """RSTAR_MODELS: comma-separated NAME=URL pairs; a URL without a name is one more replica of
    the model before it ("A=http://gpu1:8000,http://gpu2:8000,B=http://gpu3:8000")."""
    specs: list[str] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if "=" in part or not specs:
            specs.append(part)
        else:
            specs[-1] += "," + part
    return [parse_model_spec(spec, what="RSTAR_MODELS") for spec in specs]


def pair(url_a: str, url_b: str | None, *, what_a: str, what_b: str) -> list[ModelEntry]:
    """Models A and B, the pair `--model-a/-b` and RSTAR_MODEL_A/B_URL name: B serves from A's URL
    when none is given for it."""
    return [
        ModelEntry("A", check_url(url_a, what=what_a)),
        ModelEntry("B", check_url(url_b or url_a, what=what_b)),
    ]


def build_roster(entries: Iterable[ModelEntry]) -> tuple[ModelEntry, ...]:
    """The roster in the order given; a name given twice is refused. Two models may share a server
    (the discriminator on one of the generator's replicas): a queue is a server's, not a model's."""
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
    """The endpoint of model `name` in a stored roster (its first replica); None for a step with no
    model."""
    for m in models:
        if m["name"] == name:
            return str(m["url"])
    return None


def urls_of(models: Sequence[Mapping[str, Any]], name: str | None) -> tuple[str, ...]:
    """Every replica of model `name` in a stored roster, the first one first; () for no model."""
    for m in models:
        if m["name"] == name:
            return tuple(str(u) for u in m.get("replicas") or [m["url"]])
    return ()


def describe(m: Mapping[str, Any]) -> str:
    """A stored roster entry as `status` and `show` print it: "A http://gpu1:8000 (+1 replica)"."""
    more = len(m.get("replicas") or [m["url"]]) - 1
    extra = f" (+{more} replica{'s' if more > 1 else ''})" if more else ""
    return f"{m['name']} {m['url']}{extra}"
