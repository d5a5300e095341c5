"""Python Celery tasks for the canvas client test
(`crates/celeriac-cli/tests/interop_canvas_client.rs`): a real `celery
worker` runs these for canvases a celeriac client sends. The test defines
the same tasks, by the same names, in Rust, and runs the same canvases on
a celeriac worker."""
import os

from celery import Celery

app = Celery("pycanvas", broker=os.environ["BROKER"], backend=os.environ.get("BACKEND", os.environ["BROKER"]))


@app.task(name="canvas.add")
def add(x, y):
    return x + y


@app.task(name="canvas.mul")
def mul(x, y):
    return x * y


@app.task(name="canvas.tsum")
def tsum(xs):
    return sum(xs)


@app.task(name="canvas.boom")
def boom(message):
    raise ValueError(message)


@app.task(name="canvas.report")
def report(failed_id):
    """An errback with one argument: Celery publishes it with the id of
    the task that failed."""
    return f"failed: {failed_id}"
