"""Python Celery client for the interop tests: sends tasks that a celeriac
worker runs and prints what Python's AsyncResult sees, as JSON."""
import json
import os
import sys

from celery import Celery, signature

url = sys.argv[1]
app = Celery("client", broker=url, backend=os.environ.get("BACKEND", url))
out = {}
out["add"] = app.send_task("celeriac.add", args=(2, 3)).get(timeout=60)
out["kwargs"] = app.send_task("celeriac.add", kwargs={"x": 40, "y": 2}).get(timeout=60)
out["unicode"] = app.send_task("celeriac.echo", args=("héllo wörld ✓ 日本",)).get(timeout=60)
nested = {"a": [1, 2, {"b": None, "c": [True, False]}], "d": 1.5}
out["nested"] = app.send_task("celeriac.echo", args=(nested,)).get(timeout=60) == nested
big = "x" * (1024 * 1024)
out["big"] = len(app.send_task("celeriac.echo", args=(big,)).get(timeout=60))
out["priority"] = [
    app.send_task("celeriac.add", args=(p, p), priority=p).get(timeout=60) for p in (0, 5, 9)
]

failing = app.send_task("celeriac.fail", args=("boom",))
try:
    failing.get(timeout=60)
    out["fail"] = "no exception"
except Exception as exc:  # the rebuilt task exception
    out["fail"] = {
        "message": str(exc),
        "state": failing.state,
        "traceback": failing.traceback,
    }

# A chain: its first message carries the rest of the chain in `embed`.
flow = signature("celeriac.add", args=(1, 2), app=app) | signature("celeriac.add", args=(3,), app=app)
result = flow.apply_async()
out["chain_first_step"] = result.parent.get(timeout=60)
print(json.dumps(out))
