"""Sends celeriac.flaky(3) and prints, as JSON, the distinct states Python's
AsyncResult reports while it runs, and the final result."""
import json
import os
import sys
import time

from celery import Celery
from celery.states import READY_STATES

url = sys.argv[1]
app = Celery("retries", broker=url, backend=os.environ.get("BACKEND", url))
result = app.send_task("celeriac.flaky", args=(3,))
states = []
deadline = time.time() + 60
while time.time() < deadline:
    state = result.state
    if not states or states[-1] != state:
        states.append(state)
    # The state just read, not a second read: the task may finish between
    # the two, and the SUCCESS would be missed.
    if state in READY_STATES:
        break
    time.sleep(0.005)
print(json.dumps({"states": states, "result": result.get(timeout=5), "retries": result.retries}))
