"""kombu's Redis transport, with one redis-py client per channel instead of one per command.

kombu builds a new `redis.Redis` for every publish and for the bookkeeping of every delivered and
acknowledged message (`Channel.conn_or_acquire`). redis-py's constructor copies its table of
response callbacks each time: about 60 µs, three times per task, which was a tenth of a worker's
CPU per model call (docs/throughput.md). A redis-py client is safe to share between threads: it
takes a connection from its pool for each command, so one per channel does the same work.

`install()` (called by `workers.celery_app`) makes it kombu's transport for `redis://` URLs, under
kombu's own name for them, so the URL reads the same everywhere (Celery's banner, Flower's broker
page). Other URLs (TLS, Sentinel, RabbitMQ) keep kombu's transports.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared: tuple[Any, Any] | None = None  # (connection pool, client on it)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the BRPOP/pub-sub connection: kombu keeps one already
            return super()._create_client(asynchronous=True)
        pool = self.pool  # kombu makes a new pool after a fork or a failed connect
        if self._shared is None or self._shared[0] is not pool:
            self._shared = (pool, super()._create_client(asynchronous=False))
        return self._shared[1]


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"
