"""The Celery app Flower runs with (`celery -A flower_app flower`) in the
Flower interop test.

Flower's task actions (rate limit, time limits) refuse a task name its own
app does not define (`if taskname not in self.capp.tasks: 404`), as they do
for Python workers when Flower runs without `-A proj`. So this app declares
the names of the tasks the `celeriac worker` binary registers. The bodies
never run here: the celeriac worker runs the tasks. The broker comes from
`celery --broker URL` (CELERY_BROKER_URL wins over the app's settings).
"""

from celery import Celery

app = Celery("flower_app")


@app.task(name="celeriac.add")
def add(x, y):
    return x + y


@app.task(name="celeriac.echo")
def echo(value):
    return value


@app.task(name="celeriac.fib")
def fib(n):
    raise NotImplementedError("runs on the celeriac worker")


@app.task(name="celeriac.sleep")
def sleep(seconds):
    raise NotImplementedError("runs on the celeriac worker")
