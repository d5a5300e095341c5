"""Drives a running Flower 2.x against a celeriac worker through Flower's
HTTP API, and prints what it saw as one JSON object.

Usage: flower_check.py BASE_URL WORKER_NAME REVOKE_ID

It waits (up to 60 s each) for:
- the worker in /api/workers?refresh=1 with its stats and registered tasks;
- /api/tasks to hold at least 3 SUCCESS and 1 FAILURE tasks from it;
- the dashboard (/workers?json=1) to show it online with event counters
  and the fields of its worker-heartbeat events (sw_ident, freq, ...);
then calls Flower's actions: pool grow and shrink (reading the pool size
back), the rate limit of celeriac.add (reading it back from the worker's
registered tasks), the time limits of celeriac.echo, and revoke of
REVOKE_ID (an eta task, first looked for on the worker's page).
Exits non-zero with a message on the first thing that does not hold.
"""

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

BASE, WORKER, REVOKE_ID = sys.argv[1], sys.argv[2], sys.argv[3]


def get_text(path):
    with urllib.request.urlopen(BASE + path, timeout=10) as r:
        return r.read().decode()


def get(path):
    return json.loads(get_text(path))


def post(path, form=None):
    data = urllib.parse.urlencode(form or {}).encode()
    req = urllib.request.Request(BASE + path, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def until(what, fn, timeout=60):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # Flower starting, a timeout: try again
            last = repr(e)
        time.sleep(0.5)
    sys.exit(f"timed out waiting for {what}; last: {last!r}")


def worker_info():
    w = get("/api/workers?refresh=1").get(WORKER)
    return w if w and w.get("stats") and w.get("registered") else None


info = until("the worker in /api/workers", worker_info)
seen = {
    "registered": info["registered"],
    "pool": info["stats"]["pool"],
    "stats_keys": sorted(info["stats"].keys()),
    "active_queues": [q["name"] for q in info.get("active_queues") or []],
}


def tasks_done():
    tasks = get("/api/tasks")
    mine = [t for t in tasks.values() if t.get("worker") == WORKER]
    states = [t["state"] for t in mine]
    if states.count("SUCCESS") >= 3 and states.count("FAILURE") >= 1:
        return mine
    return None


tasks = until("tasks in /api/tasks", tasks_done)
seen["tasks"] = [
    {k: t.get(k) for k in (
        "name", "state", "runtime", "sent", "client", "received", "started", "result", "exception")}
    for t in tasks
]


def dashboard():
    rows = get("/workers?json=1")["data"]
    row = next((r for r in rows if r.get("hostname") == WORKER), None)
    # The worker's fields come from its latest worker event (Flower asks
    # for a heartbeat as it starts, then one comes every 2 s): wait for one
    # sent after the tasks ran, whose `processed` counts them.
    if not row or row.get("task-succeeded", 0) < 3 or not row.get("sw_ident"):
        return None
    return row if (row.get("processed") or 0) >= row.get("task-started", 0) else None


row = until("the worker on the dashboard", dashboard)
seen["dashboard"] = {k: row.get(k) for k in (
    "status", "task-received", "task-started", "task-succeeded", "task-failed",
    "worker-online", "worker-heartbeat", "sw_ident", "sw_ver", "sw_sys", "freq",
    "active", "processed", "loadavg", "pid", "clock")}

status, body = post(f"/api/worker/pool/grow/{urllib.parse.quote(WORKER)}?n=1")
seen["grow"] = [status, body]


def pool_of_size(n):
    def check():
        w = get("/api/workers?refresh=1").get(WORKER) or {}
        pool = (w.get("stats") or {}).get("pool") or {}
        return pool if pool.get("max-concurrency") == n else None
    return check


before = seen["pool"]["max-concurrency"]
seen["pool_after_grow"] = until("the grown pool", pool_of_size(before + 1), timeout=20)
status, body = post(f"/api/worker/pool/shrink/{urllib.parse.quote(WORKER)}?n=1")
seen["shrink"] = [status, body]
seen["pool_after_shrink"] = until("the shrunk pool", pool_of_size(before), timeout=20)

seen["rate_limit"] = list(post(
    "/api/task/rate-limit/celeriac.add", {"ratelimit": "10/m", "workername": WORKER}))


def limited():
    # Celery's `registered` appends the rate limit: "celeriac.add [rate_limit=10/m]".
    w = get("/api/workers?refresh=1").get(WORKER) or {}
    add = [t for t in w.get("registered") or [] if t.startswith("celeriac.add ")]
    return add[0] if add else None


seen["registered_after_rate_limit"] = until(
    "the rate limit in the registered tasks", limited, timeout=20)
seen["time_limit"] = list(post(
    "/api/task/timeout/celeriac.echo", {"soft": "30", "hard": "60", "workername": WORKER}))
# The eta task on the worker's page (its `scheduled` list; the page is
# served from Flower's cache and refreshed behind it: ask again).
seen["scheduled_on_page"] = bool(until(
    "the eta task on the worker page",
    lambda: REVOKE_ID in get_text(f"/worker/{urllib.parse.quote(WORKER)}"),
    timeout=20))
seen["revoke"] = list(post(f"/api/task/revoke/{REVOKE_ID}"))
print(json.dumps(seen))
