"""Python Celery's remote control against a celeriac worker (argv[2]):
every inspect and control reply as Python's `app.control` returns it,
printed as JSON."""
import json
import os
import sys
import time

from celery import Celery

url, node = sys.argv[1], sys.argv[2]
app = Celery("control", broker=url, backend=os.environ.get("BACKEND", url))
inspect = app.control.inspect(timeout=2, destination=[node])
ctl = app.control
out = {}
for _ in range(100):
    out["ping"] = inspect.ping()
    if out["ping"]:
        break
    time.sleep(0.2)
out["ping_all"] = app.control.inspect(timeout=1).ping()
out["ping_glob"] = app.control.inspect(timeout=1, pattern="rw@*", matcher="glob").ping()
out["ping_other"] = app.control.inspect(timeout=0.5, destination=["nobody@x"]).ping()
out["stats"] = inspect.stats()
out["registered"] = inspect.registered()
out["active_queues"] = inspect.active_queues()
out["conf"] = inspect.conf()
out["report"] = inspect.report()
# An eta task: the celeriac worker claims it and leaves it waiting in the
# broker; `scheduled` lists it (asked until it has been claimed).
later = app.send_task("celeriac.echo", args=[7], countdown=300)
out["later_id"] = later.id
for _ in range(100):
    out["scheduled"] = inspect.scheduled()
    if (out["scheduled"] or {}).get(node):
        break
    time.sleep(0.1)
out["query_later"] = inspect.query_task(later.id)

slow = app.send_task("celeriac.sleep", args=(2,))
active = None
for _ in range(100):
    active = inspect.active(safe=True)
    if active and active.get(node):
        break
    time.sleep(0.1)
out["active"] = active
out["query_task"] = inspect.query_task(slow.id)

out["revoke"] = ctl.revoke("never-ran", reply=True, destination=[node])
out["revoked"] = inspect.revoked()
out["pool_grow"] = ctl.pool_grow(1, reply=True, destination=[node])
out["max_concurrency"] = inspect.stats()[node]["pool"]["max-concurrency"]
out["pool_shrink"] = ctl.pool_shrink(1, reply=True, destination=[node])
out["rate_limit"] = ctl.rate_limit("celeriac.add", "10/m", reply=True, destination=[node])
out["rate_limit_unknown"] = ctl.rate_limit("tasks.nope", "10/m", reply=True, destination=[node])
out["registered_after"] = inspect.registered()
out["time_limit"] = ctl.time_limit("celeriac.add", soft=10, hard=20, reply=True, destination=[node])
out["add_consumer"] = ctl.add_consumer("extra", reply=True, destination=[node])
out["extra_result"] = app.send_task("celeriac.add", args=(2, 3), queue="extra").get(timeout=30)
out["queues_after_add"] = [q["name"] for q in inspect.active_queues()[node]]
out["cancel_consumer"] = ctl.cancel_consumer("extra", reply=True, destination=[node])
out["enable_events"] = ctl.enable_events(reply=True, destination=[node])
out["disable_events"] = ctl.disable_events(reply=True, destination=[node])
out["autoscale"] = ctl.autoscale(2, 1, reply=True, destination=[node])
out["unknown"] = ctl.broadcast("no_such_cmd", reply=True, destination=[node])
out["clock"] = inspect.clock()
out["slow"] = slow.get(timeout=30)
out["total"] = inspect.stats()[node]["total"]
out["revoked_state"] = app.AsyncResult("never-ran").state
print(json.dumps(out))
