"""Sends celeriac.add with a countdown, revokes it with Python's
app.control.revoke (a pidbox broadcast), and prints the final state as
Python sees it, as JSON."""
import json
import os
import sys
import time

from celery import Celery

url = sys.argv[1]
app = Celery("revoker", broker=url, backend=os.environ.get("BACKEND", url))
time.sleep(1.0)  # let the celeriac worker subscribe to remote control
doomed = app.send_task("celeriac.add", args=(1, 1), countdown=2)
kept = app.send_task("celeriac.add", args=(2, 2), countdown=2)
app.control.revoke(doomed.id)
state = None
try:
    doomed.get(timeout=60)
except Exception as exc:  # TaskRevokedError
    state = {"state": doomed.state, "error": type(exc).__name__}
print(json.dumps({"revoked": state, "kept": kept.get(timeout=60)}))
