"""Drives a running Flower 2.x against a celeriac worker through Flower's
HTTP API, and prints what it saw as one JSON object.

Usage: flower_check.py BASE_URL WORKER_NAME REVOKE_ID

It waits (up to 60 s each) for:
- the worker in /api/workers?refresh=1 with its stats and registered tasks;
- /api/tasks to hold at least 3 SUCCESS and 1 FAILURE tasks from it;
- the dashboard (/workers?json=1) to show it online with event counters;
then calls pool grow and revoke, and reads the pool size back.
Exits non-zero with a message on the first thing that does not hold.
"""

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

BASE, WORKER, REVOKE_ID = sys.argv[1], sys.argv[2], sys.argv[3]


def get(path):
    with urllib.request.urlopen(BASE + path, timeout=10) as r:
        return json.loads(r.read().decode())


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
    {k: t.get(k) for k in ("name", "state", "runtime", "received", "started", "result", "exception")}
    for t in tasks
]


def dashboard():
    rows = get("/workers?json=1")["data"]
    row = next((r for r in rows if r.get("hostname") == WORKER), None)
    return row if row and row.get("task-succeeded", 0) >= 3 else None


row = until("the worker on the dashboard", dashboard)
seen["dashboard"] = {k: row.get(k) for k in (
    "status", "task-received", "task-started", "task-succeeded", "task-failed",
    "worker-online", "worker-heartbeat", "sw_ident", "freq", "active", "processed")}

status, body = post(f"/api/worker/pool/grow/{urllib.parse.quote(WORKER)}?n=1")
seen["grow"] = [status, body]


def grown():
    w = get("/api/workers?refresh=1").get(WORKER) or {}
    pool = (w.get("stats") or {}).get("pool") or {}
    before = seen["pool"]["max-concurrency"]
    return pool if pool.get("max-concurrency") == before + 1 else None


seen["pool_after_grow"] = until("the grown pool", grown, timeout=20)
seen["revoke"] = list(post(f"/api/task/revoke/{REVOKE_ID}"))
print(json.dumps(seen))
