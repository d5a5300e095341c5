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

# link_error by arity (Celery's rule): celeriac.log_error(request, exc,
# traceback) takes three arguments, so the celeriac worker calls it inline
# (nothing published, no result under its id); celeriac.echo takes one, so
# it is published with the failed task's id.
inline_eb = sig("celeriac.log_error")
inline_id = inline_eb.freeze().id
eb = sig("celeriac.echo")
eb_id = eb.freeze().id
r = sig("celeriac.fail", "arity three").apply_async(link_error=[inline_eb, eb])
try:
    r.get(timeout=60)
except Exception:
    pass
out["errback_arity"] = {
    "failed": r.id,
    "published_got": AsyncResult(eb_id, app=app).get(timeout=60),
    "inline_state": AsyncResult(inline_id, app=app).state,
}

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


def body_outcome(r):
    """The chord body's own outcome (`get()` would raise the failed header
    part's error first, from the parent GroupResult)."""
    exc = r.get(timeout=60, propagate=False)
    return {"error": f"{type(exc).__name__}: {exc}", "state": r.state}


out["chord_failing"] = body_outcome(r)

# A revoked header part: REVOKED under its id, and the chord fails with
# ChordError on the body instead of waiting forever (Celery's
# mark_as_revoked joins the part). The revoke is sent, and acknowledged by
# the workers, before the chord is.
doomed = sig("celeriac.add", 2, 2)
doomed_id = doomed.freeze().id
workers = 2 if len(sys.argv) > 2 and sys.argv[2] == "mixed" else 1
replies = app.control.revoke(doomed_id, reply=True, timeout=10, limit=workers)
r = chord([sig("celeriac.add", 1, 1), doomed, sig("celeriac.add", 3, 3)], sig("celeriac.echo")).apply_async()
out["chord_revoked"] = dict(
    body_outcome(r),
    part_state=AsyncResult(doomed_id, app=app).state,
    part_id=doomed_id,
    replies=len(replies),
)

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
    # A task failing on the Python worker, whose errbacks are celeriac's:
    # Python does not run celeriac.log_error, so it publishes it (as a
    # group of one, with the failed id), and a celeriac worker runs it.
    inline_eb = sig("celeriac.log_error")
    inline_id = inline_eb.freeze().id
    r = sig("tasks.boom", "on python", queue="py").apply_async(link_error=[inline_eb])
    try:
        r.get(timeout=60)
    except Exception:
        pass
    out["errback_from_python"] = {"failed": r.id, "got": AsyncResult(inline_id, app=app).get(timeout=60)}
    # A chord whose header runs on both, and whose body runs on celeriac.
    out["mixed_chord"] = chord(
        [sig("celeriac.add", 1, 1), sig("tasks.add", 2, 2, queue="py"), sig("celeriac.add", 3, 3)],
        sig("celeriac.echo"),
    ).apply_async().get(timeout=60)

print(json.dumps(out))
