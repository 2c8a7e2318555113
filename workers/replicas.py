"""Which replica of a model a call goes to.

A model may be served by several servers (`--model A=http://gpu1:8000,http://gpu2:8000`,
rstar/roster.py). Its steps share one queue, its first URL's, so that no replica's queue can fill
while another's runs dry; the worker that takes a step picks the replica when it is about to call,
here, from what this process has in flight to each:

- the replica that served the step's parent, when the call's sequences fit in its free slots:
  vLLM's and SGLang's prefix caches (llama-server's slot cache too) then hold the parent's prompt;
- else the one whose in-flight share is least used (calls chosen for it and not finished, over its
  limit): the call waits least there, and every replica is kept as full as the others;
- a replica this process found not answering (workers/client.py) is left out for
  `replica_down_seconds`; then one call tries it again, and it rejoins when that call is answered.
  With every replica down, the one down longest is tried (the step then retries with backoff).

The counts are this process's own: several workers sharing the replicas each hold their share of
every replica's limit (RSTAR_WORKERS_PER_ENDPOINT), as they do for a single server.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from workers.client import down_since
from workers.settings import FALLBACK_SLOTS


@dataclass(frozen=True)
class Replica:
    url: str
    busy: int
    """Slots this process has chosen it for and not finished."""
    limit: int | None
    """This process's in-flight share of it; None: the server does not say."""
    down_since: float | None
    """When it last failed to answer (time.monotonic), while reported down."""


def choose(
    replicas: Sequence[Replica], *, prefer: str | None, now: float, down_seconds: float, weight: int = 1
) -> Replica:
    """The replica for the next call of `weight` sequences (see the module's docstring);
    `replicas` in roster order."""
    up = [r for r in replicas if r.down_since is None or now - r.down_since >= down_seconds]
    if not up:
        return min(replicas, key=lambda r: r.down_since or 0.0)
    # A server that does not say its limit (vLLM, SGLang) is counted as FALLBACK_SLOTS wide, as the
    # worker's pool is: else every branch would stay on its root's replica however full it got.
    # The parent's replica keeps the call only if all of its sequences fit in its free slots: an
    # expansion of 32 samples sent to a replica with one slot free would wait there for 31 while
    # the other replicas idle (measured: 85% of the limit on 3 of 4 replicas).
    for r in up:
        if r.url == prefer and r.busy + weight <= (r.limit or FALLBACK_SLOTS):
            return r
    return min(up, key=lambda r: (r.busy + weight) / (r.limit or FALLBACK_SLOTS))


class ReplicaChooser:
    """This process's calls in flight per replica, and the choice of each call's replica."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: Counter[str] = Counter()
        self._probing: dict[str, float] = {}

    @contextmanager
    def replica(
        self,
        urls: Sequence[str],
        *,
        prefer: str | None,
        limit_of: Callable[[str], int | None],
        weight: int,
        down_seconds: float,
    ) -> Iterator[str]:
        """Choose a replica of `urls` and count `weight` slots on it (the call's sequences: what a
        llama-server decodes in slots, or TGI gets as requests) until the block ends. `limit_of(url)`
        is this process's share of its slots, asked only of replicas that are up."""
        if len(urls) == 1:
            # Counted all the same: a model alone on a server that is another's replica (the
            # discriminator on the generator's first GPU) takes slots the choice must see.
            with self._lock:
                self._busy[urls[0]] += weight
            try:
                yield urls[0]
            finally:
                with self._lock:
                    self._busy[urls[0]] -= weight
            return
        now = time.monotonic()
        with self._lock:
            candidates = []
            for url in urls:
                since = down_since(url)
                if since is not None:
                    # A replica being tried again is left out until that call has had its time.
                    since = max(since, self._probing.get(url, since))
                candidates.append(Replica(url, self._busy[url], None, since))
        # Outside the lock: a replica's first limit is asked of its server.
        candidates = [
            c if c.down_since is not None else Replica(c.url, c.busy, limit_of(c.url), None)
            for c in candidates
        ]
        with self._lock:
            candidates = [Replica(c.url, self._busy[c.url], c.limit, c.down_since) for c in candidates]
            chosen = choose(candidates, prefer=prefer, now=now, down_seconds=down_seconds, weight=weight)
            if chosen.down_since is not None:
                self._probing[chosen.url] = now
            self._busy[chosen.url] += weight
        try:
            yield chosen.url
        finally:
            with self._lock:
                self._busy[chosen.url] -= weight

    def busy(self, url: str) -> int:
        with self._lock:
            return self._busy[url]


chooser = ReplicaChooser()
"""The process's chooser: the worker's threads share it."""
