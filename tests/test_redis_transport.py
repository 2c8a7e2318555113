"""The broker transport for redis:// URLs (workers/redis_transport.py): kombu's, with one redis-py
client per channel; messages still go through a real Redis."""

from __future__ import annotations

from kombu import Connection, Queue

import workers.celery_app  # noqa: F401  (installs the transport, as every process using the app does)
from workers.redis_transport import Transport


def test_redis_urls_use_one_client_per_channel_and_deliver(redis_url: str) -> None:
    queue = Queue("rstar.test.transport", routing_key="rstar.test.transport")
    with Connection(redis_url) as conn:
        assert isinstance(conn.transport, Transport)
        assert conn.as_uri().startswith("redis://")  # what Celery's banner and Flower show
        channel = conn.default_channel
        assert channel._create_client() is channel._create_client()
        with conn.Producer() as producer:
            for i in range(3):
                producer.publish({"n": i}, routing_key=queue.name, declare=[queue], serializer="json")
        got: list[int] = []
        with conn.Consumer(queue, callbacks=[lambda body, msg: (got.append(body["n"]), msg.ack())]):
            while len(got) < 3:
                conn.drain_events(timeout=5)
        assert sorted(got) == [0, 1, 2]
        queue.bind(conn).delete()
