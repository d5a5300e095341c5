"""Python Celery tasks for the interop tests: a real `celery worker` runs
these, and celeriac calls them by name."""
import os

from celery import Celery

app = Celery("pytasks", broker=os.environ["BROKER"], backend=os.environ["BROKER"])


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y


@app.task(name="tasks.boom")
def boom(message):
    raise ValueError(message)
