"""What a Python client with `result_extended=True` reads of two results:
one stored by a celeriac worker (celeriac.add on queue `celery`) and one
by a Python worker (tasks.add on queue `py`), both called as add(2, y=3).
Prints, for each, the AsyncResult's extended fields and the stored
document, as JSON.

  result_extended.py URL
"""
import json
import sys

from celery import Celery

url = sys.argv[1]
app = Celery("extended", broker=url, backend=url)
app.conf.result_extended = True


def read(name, queue):
    result = app.send_task(name, args=(2,), kwargs={"y": 3}, queue=queue)
    value = result.get(timeout=60)
    raw = app.backend.client.get(app.backend.get_key_for_task(result.id))
    return {
        "value": value,
        "args": result.args,
        "kwargs": result.kwargs,
        "name": result.name,
        "queue": result.queue,
        "worker": result.worker,
        "retries": result.retries,
        "date_done": result.date_done.isoformat() if result.date_done else None,
        "stored": json.loads(raw),
    }


print(json.dumps({"celeriac": read("celeriac.add", "celery"), "python": read("tasks.add", "py")}))
