"""Python Celery client of examples/user-project: calls the project's own
tasks on a celeriac worker (threads or processes) and prints, as JSON, what
Python's AsyncResult sees: results, a missing argument's TypeError, the
process that ran the task, and the STARTED and PROGRESS states of a task
while it runs."""
import json
import sys
import time

from celery import Celery

url, worker_pid = sys.argv[1], int(sys.argv[2])
app = Celery("client", broker=url, backend=url)
out = {}
out["add"] = app.send_task("proj.add", args=(2, 3)).get(timeout=60)
out["kwargs"] = app.send_task("proj.add", kwargs={"x": 40, "y": 2}).get(timeout=60)
try:
    app.send_task("proj.add", args=(1,)).get(timeout=60)
    out["missing"] = "no exception"
except Exception as exc:
    out["missing"] = {"type": type(exc).__name__, "message": str(exc)}
who = app.send_task("proj.whoami").get(timeout=60)
out["ran_in_worker_process"] = who["pid"] == worker_pid

# A task that is STARTED (track_started) and then reports PROGRESS three
# times, half a second apart; record every state and info seen.
texts = ["one two", "three four five", "six"]
r = app.send_task("proj.count_words", args=(texts, 0.5))
seen = []
deadline = time.time() + 60
while not r.ready() and time.time() < deadline:
    # .state and .info each read the backend: keep a pair only if the
    # state did not move in between.
    state, info = r.state, r.info
    if r.state != state:
        continue
    if not seen or seen[-1] != [state, info]:
        seen.append([state, info])
    time.sleep(0.02)
out["states"] = seen
out["words"] = r.get(timeout=60)

# celeriac.sleep does not ask for track_started: STARTED only when the
# worker tracks every task (--track-started).
r = app.send_task("celeriac.sleep", args=(1.0,))
sleep_states = set()
while not r.ready() and time.time() < deadline:
    sleep_states.add(r.state)
    time.sleep(0.02)
r.get(timeout=60)
out["sleep_started"] = "STARTED" in sleep_states
print(json.dumps(out))
