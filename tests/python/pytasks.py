"""Python Celery tasks for the interop tests: a real `celery worker` runs
these, and celeriac calls them by name. `RESULT_EXTENDED=1` turns on
Celery's `result_extended` for the worker."""
import os
import time

from celery import Celery

app = Celery("pytasks", broker=os.environ["BROKER"], backend=os.environ.get("BACKEND", os.environ["BROKER"]))
app.conf.result_extended = os.environ.get("RESULT_EXTENDED") == "1"


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.boom")
def boom(message):
    raise ValueError(message)


@app.task(name="tasks.sleep", track_started=True)
def sleep(seconds):
    time.sleep(seconds)
    return seconds
