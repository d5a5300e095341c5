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


@app.task(name="canvas.on_error")
def on_error(request, exc, traceback):
    """An errback with three arguments: Celery's worker calls it inline with
    the failed task's request, exception and traceback (nothing published,
    no result stored under its id). It stores what it got under an id of
    its own, for the test to read."""
    app.backend.store_result(
        f"inline-errback-{request.id}",
        {"id": request.id, "task": request.task, "exc_type": type(exc).__name__,
         "message": list(exc.args), "traceback": traceback is not None},
        "SUCCESS",
    )
