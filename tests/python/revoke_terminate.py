"""Sends celeriac.sleep(60), lets it start, revokes it with Python's
app.control.revoke(id, terminate=True), and prints how it ended and how
long that took, as JSON."""
import json
import os
import sys
import time

from celery import Celery

url = sys.argv[1]
app = Celery("terminator", broker=url, backend=os.environ.get("BACKEND", url))
time.sleep(1.0)  # let the celeriac worker subscribe to remote control
slow = app.send_task("celeriac.sleep", args=(60,))
time.sleep(1.5)  # let it start in a child process
start = time.monotonic()
app.control.revoke(slow.id, terminate=True)
state = None
try:
    slow.get(timeout=60)
except Exception as exc:  # TaskRevokedError
    state = {"state": slow.state, "error": type(exc).__name__}
after = app.send_task("celeriac.add", args=(2, 3))
print(json.dumps({
    "terminated": state,
    "seconds": time.monotonic() - start,
    "after": after.get(timeout=60),
}))
