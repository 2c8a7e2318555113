"""The broker transport for redis:// URLs (workers/redis_transport.py): kombu's, with one redis-py
client per channel; messages still go through a real Redis."""

from __future__ import annotations

import time

import redis
from kombu import Connection, Queue
from kombu.asynchronous import Hub

# Importing the app installs the transport, as in every process that uses it.
from workers.celery_app import broker_transport_options
from workers.redis_transport import Transport
from workers.settings import Settings


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


def test_a_dead_workers_reserved_message_comes_back_soon_after_its_visibility_timeout(redis_url: str) -> None:
    """A worker killed holding a reserved message leaves it in Redis's unacked set; a live worker's
    event loop gives it back to its queue once it is older than the visibility timeout, at the
    cadence the app's transport options set (kombu's own: every 100 s, whatever the timeout)."""
    options = broker_transport_options(Settings(broker_url=redis_url, visibility_timeout=2))
    queue = Queue("rstar.test.restore", routing_key="rstar.test.restore")
    client = redis.Redis.from_url(redis_url)
    with Connection(redis_url, transport_options=options) as dead:
        with dead.Producer() as producer:
            producer.publish({"n": 1}, routing_key=queue.name, declare=[queue], serializer="json")
        taken = queue.bind(dead.default_channel).get(no_ack=False)  # reserved, never acknowledged
        assert taken is not None and taken.payload == {"n": 1}
        assert client.llen(queue.name) == 0 and client.zcard("unacked_index") == 1

        # The survivor: a consumer on kombu's event loop, as in a Celery worker. Its first look,
        # at start, finds the message still within its visibility timeout.
        hub = Hub()
        got: list[dict[str, int]] = []
        with Connection(redis_url, transport_options=options) as survivor:
            survivor.transport.register_with_event_loop(survivor.connection, hub)
            with survivor.Consumer(queue, callbacks=[lambda body, msg: (got.append(body), msg.ack())]):
                loop = hub.create_loop()
                deadline = time.monotonic() + 60  # kombu's own next look would come at 100 s
                while not got and time.monotonic() < deadline:
                    next(loop)
            hub.close()
            queue.bind(survivor).delete()
    assert got == [{"n": 1}]
    assert client.zcard("unacked_index") == 0
    client.close()
