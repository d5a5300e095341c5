"""Celery's own event receiver, `app.events.Receiver` (what `celery events`
and Flower use), against a broker: it logs READY on stderr once it
consumes, and when it has seen `worker-offline` from HOSTNAME (or after
TIMEOUT seconds) writes every event it received, as one JSON list, to OUT.

Usage: events_receiver.py BROKER_URL HOSTNAME TIMEOUT OUT
"""
import json
import sys
import time

from celery import Celery

url, hostname, timeout, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
app = Celery("events_receiver", broker=url)
seen = []
deadline = time.time() + timeout

with app.connection_for_read() as conn:

    def on_event(event):
        seen.append(event)
        if event.get("type") == "worker-offline" and event.get("hostname") == hostname:
            recv.should_stop = True

    recv = app.events.Receiver(conn, handlers={"*": on_event})
    consume_ready = recv.on_consume_ready

    def ready(*args, **kwargs):
        consume_ready(*args, **kwargs)
        print("READY", file=sys.stderr, flush=True)

    def on_iteration():
        if time.time() > deadline:
            print("TIMEOUT", file=sys.stderr, flush=True)
            recv.should_stop = True

    recv.on_consume_ready = ready
    recv.on_iteration = on_iteration
    recv.capture(limit=None, timeout=None, wakeup=True)

with open(out, "w") as f:
    json.dump(seen, f)
print("DONE", len(seen), file=sys.stderr, flush=True)
