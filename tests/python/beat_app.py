"""Python's own `celery beat`, for the interop test of celeriac workers: it
sends celeriac.add(16, 16) every second, as any Celery deployment's beat
would, and a celeriac worker runs them."""
import os

from celery import Celery

app = Celery("beat_app", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.beat_schedule = {
    "add-every-1s": {"task": "celeriac.add", "schedule": 1.0, "args": (16, 16)},
}
app.conf.beat_max_loop_interval = 1
