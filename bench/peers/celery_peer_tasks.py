"""Celery app for the peer benchmark (bench/peers/celery_bench.py).

Both the benchmark client and the `celery worker` subprocess import this
module. Redis is the broker and the result backend; its URL comes from the
CELERIAC_PEERS_REDIS environment variable. The task is registered as
`celeriac.add`, the same name celeriac uses, so either side could serve it.
"""
import os

from celery import Celery

REDIS_URL = os.environ.get("CELERIAC_PEERS_REDIS", "redis://127.0.0.1:6379/0")
# The broker: the same Redis, or a RabbitMQ vhost (results stay in Redis).
BROKER_URL = os.environ.get("CELERIAC_PEERS_BROKER") or REDIS_URL

app = Celery("celery_peer_tasks", broker=BROKER_URL, backend=REDIS_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    # Celery's defaults otherwise: JSON, prefetch multiplier 4, ack on accept.
    worker_prefetch_multiplier=int(os.environ.get("CELERIAC_PEERS_PREFETCH", "4")),
)


@app.task(name="celeriac.add")
def add(x, y):
    """Return x + y (the no-op-sized task of W1/W2)."""
    return x + y


@app.task(name="celeriac.echo")
def echo(value):
    """Return the value unchanged (the chord callback of W6)."""
    return value
