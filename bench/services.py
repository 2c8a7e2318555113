"""The Redis a benchmark runs against: a redis-server of its own unless one is named.

A benchmark empties its broker database before and after a run (a stale message of an earlier run
would be taken for one of this run's). The Redis at 127.0.0.1:6379 is the user's: by default a
benchmark starts its own `redis-server` (no persistence, a free port, stopped at the end); one
named with `--redis-url` is refused while another client uses that database, then emptied.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.llama_server_speed import free_port

REDIS_URL_HELP = "a Redis database to empty and use (default: a redis-server of the run's own)"


@contextmanager
def private_redis(tmp: Path | None = None) -> Iterator[str]:
    """A redis-server of its own (no persistence) on a free port, its working directory `tmp` (or
    one of its own, removed after): the run may flush it."""
    if tmp is None:
        with (
            tempfile.TemporaryDirectory(prefix="rstar-bench-redis-") as own,
            private_redis(Path(own)) as url,
        ):
            yield url
        return
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def check_private_redis(url: str) -> None:
    """Refuse a Redis database that another client uses, then empty it (once, before any run).

    Another worker consuming this database's `rstar.control` queue would take our tasks and ack
    them against its own database: the run would hang with steps queued forever.
    """
    import redis

    client = redis.Redis.from_url(url)
    try:
        db = client.connection_pool.connection_kwargs.get("db", 0)
        me = client.client_id()
        others = [c for c in client.client_list() if int(c.get("db", -1)) == db and int(c["id"]) != me]
        if others:
            raise RuntimeError(
                f"Redis database {db} is in use by {len(others)} other connection(s) "
                f"({', '.join(sorted({c.get('addr', '?') for c in others})[:5])}); "
                "pick another with --redis-url"
            )
        client.flushdb()
    finally:
        client.close()


@contextmanager
def bench_redis(url: str | None) -> Iterator[str]:
    """The run's Redis: `url` checked and emptied (`check_private_redis`), or when None a
    redis-server of its own for the run's length."""
    if url is not None:
        check_private_redis(url)
        yield url
        return
    with private_redis() as own:
        yield own
