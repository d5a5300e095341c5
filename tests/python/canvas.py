"""Python Celery client for the canvas interop test: sends chains, links and
link_errors to celeriac workers (and, for the mixed chain, across a Python
worker on queue `py`), and prints what Python's AsyncResult sees, as JSON."""
import json
import os
import sys

from celery import Celery, chain, signature
from celery.result import AsyncResult

url = sys.argv[1]
app = Celery("canvas", broker=url, backend=os.environ.get("BACKEND", url))


def sig(name, *args, **options):
    return signature(name, args=args, app=app, **options)


out = {}

# A chain of three: ((1 + 2) + 10) + 100.
r = chain(sig("celeriac.add", 1, 2), sig("celeriac.add", 10), sig("celeriac.add", 100)).apply_async()
out["chain"] = r.get(timeout=60)
out["chain_parents"] = [r.parent.get(timeout=60), r.parent.parent.get(timeout=60)]

# A 100-step chain: 0 + 1 + 1 + ... = 100.
steps = [sig("celeriac.add", 0, 1)] + [sig("celeriac.add", 1) for _ in range(99)]
out["chain_100"] = chain(*steps).apply_async().get(timeout=120)

# A failing middle step: the chain's result fails, and so does every step
# after it, with the middle step's error; nothing after it runs.
last = sig("celeriac.add", 5)
r = chain(sig("celeriac.add", 1, 2), sig("celeriac.fail", "middle").set(immutable=True), last).apply_async()
try:
    r.get(timeout=60)
    out["failing_middle"] = "no exception"
except Exception as exc:
    out["failing_middle"] = {
        "error": str(exc),
        "last_state": r.state,
        "middle_state": r.parent.state,
        "first": r.parent.parent.get(timeout=60),
    }

# link: the callback gets the result prepended.
cb = sig("celeriac.add", 10)
cb_id = cb.freeze().id
r = sig("celeriac.add", 2, 2).apply_async(link=cb)
out["link"] = [r.get(timeout=60), AsyncResult(cb_id, app=app).get(timeout=60)]

# link_error: the errback is called with the failed task's id.
eb = sig("celeriac.echo")
eb_id = eb.freeze().id
r = sig("celeriac.fail", "x").apply_async(link_error=eb)
try:
    r.get(timeout=60)
except Exception:
    pass
out["link_error"] = {"failed": r.id, "errback_got": AsyncResult(eb_id, app=app).get(timeout=60)}

# Groups of 10 and 1000: every member's result, in order, with group_id
# stored on each member's result; GroupResult.save/restore round-trips.
from celery import group  # noqa: E402

g = group(sig("celeriac.add", i, i) for i in range(10)).apply_async()
out["group_10"] = g.get(timeout=60)
g.save()
restored = app.GroupResult.restore(g.id)
out["group_restored"] = [r.id for r in restored.results] == [r.id for r in g.results]
out["group_ids"] = sorted({app.backend.get_task_meta(r.id).get("group_id") for r in g.results} - {None})
out["group_id"] = g.id
g = group(sig("celeriac.add", i, 1) for i in range(1000)).apply_async()
out["group_1000_sum"] = sum(g.get(timeout=120))

# Chords on Redis's native join: the body gets every header result, in
# header order, whichever worker finished last.
from celery import chord  # noqa: E402

out["chord"] = chord([sig("celeriac.add", i, i) for i in range(3)], sig("celeriac.echo")).apply_async().get(timeout=60)
r = chord([sig("celeriac.add", i, 1) for i in range(200)], sig("celeriac.echo")).apply_async()
got = r.get(timeout=120)
out["chord_200"] = [len(got), sum(got), got == sorted(got)]
r = chord([sig("celeriac.add", 1, 1), sig("celeriac.fail", "bad header").set(immutable=True)], sig("celeriac.echo")).apply_async()
try:
    r.get(timeout=60)
    out["chord_failing"] = "no exception"
except Exception as exc:
    out["chord_failing"] = {"error": f"{type(exc).__name__}: {exc}", "state": r.state}

# map, starmap and chunks: Celery's built-in tasks, looped inline.
from celery.canvas import chunks, xmap, xstarmap  # noqa: E402

out["map"] = xmap(sig("celeriac.echo"), [1, "two", None]).apply_async().get(timeout=60)
out["starmap"] = xstarmap(sig("celeriac.add"), [(1, 2), (3, 4)]).apply_async().get(timeout=60)
out["chunks"] = chunks(sig("celeriac.add"), [(i, i) for i in range(10)], 3).apply_async().get(timeout=60)

# A chain across a Python worker (queue py) and celeriac workers (celery):
# (1 + 2) * 10 + 5.
if len(sys.argv) > 2 and sys.argv[2] == "mixed":
    r = chain(
        sig("celeriac.add", 1, 2),
        sig("tasks.mul", 10, queue="py"),
        sig("celeriac.add", 5),
    ).apply_async()
    out["mixed"] = r.get(timeout=60)
    out["mixed_parent_worker"] = AsyncResult(r.parent.id, app=app).get(timeout=60)
    # A chord whose header runs on both, and whose body runs on celeriac.
    out["mixed_chord"] = chord(
        [sig("celeriac.add", 1, 1), sig("tasks.add", 2, 2, queue="py"), sig("celeriac.add", 3, 3)],
        sig("celeriac.echo"),
    ).apply_async().get(timeout=60)

print(json.dumps(out))
