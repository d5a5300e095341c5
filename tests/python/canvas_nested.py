"""Python Celery client for the nested-canvas interop test: sends canvases
that nest chains, groups and chords (which a worker must expand itself) to
celeriac workers, and prints what Python's AsyncResult sees, as JSON.

Modes:
  nested  the result backend is Redis with Celery's native chord join.
  unlock  the result backend is Redis without a native join (below), so
          Celery's client sends `celery.chord_unlock` for every chord, and
          the worker that runs it joins the chord.
"""
import json
import sys

from celery import Celery, chain, chord, group, signature
from celery.backends.base import BaseBackend
from celery.backends.redis import RedisBackend
from celery.result import AsyncResult


class NoJoinRedisBackend(RedisBackend):
    """Results in Redis, read and written like the Redis backend's, but
    chords are joined as on a backend without a native join: the client
    sends `celery.chord_unlock`, and header parts do nothing when they
    finish."""

    supports_native_join = False

    def apply_chord(self, header_result_args, body, **kwargs):
        return BaseBackend.apply_chord(self, header_result_args, body, **kwargs)

    def set_chord_size(self, group_id, chord_size):
        pass

    def on_chord_part_return(self, request, state, result, **kwargs):
        pass


url, mode = sys.argv[1], sys.argv[2]
backend = url if mode == "nested" else f"__main__:NoJoinRedisBackend+{url}"
app = Celery("canvas_nested", broker=url, backend=backend)


def sig(name, *args, **options):
    return signature(name, args=args, app=app, **options)


def add(*args, **options):
    return sig("celeriac.add", *args, **options)


def echo(**options):
    return sig("celeriac.echo", **options)


def outcome(r, timeout=60):
    try:
        return {"ok": r.get(timeout=timeout)}
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}", "state": r.state}


out = {}

if mode == "nested":
    # A group of chains: the client sends each chain's first task, the last
    # task of each carries the group.
    out["group_of_chains"] = outcome(
        group(chain(add(1, 1), add(10)), chain(add(2, 2), add(20))).apply_async()
    )

    # A chord of chords: each inner body is a header part of the outer.
    r = chord(
        [chord([add(1, 1), add(2, 2)], echo()), chord([add(3, 3), add(4, 4)], echo())],
        echo(),
    ).apply_async()
    out["chord_of_chords"] = outcome(r)

    # A chain containing a group: the client makes it a chord, which the
    # worker that runs add(1, 2) expands (header with 3 prepended, size in
    # the backend).
    r = chain(add(1, 2), group(add(10), add(20)), echo()).apply_async()
    out["chain_with_group"] = outcome(r)
    out["chain_with_group_children"] = app.backend.get_task_meta(r.parent.parent.id).get("children")

    # A group at the end of a chain: a plain group, expanded by the worker.
    r = chain(add(1, 2), group(add(10), add(20))).apply_async()
    out["chain_ending_in_group"] = outcome(r)

    # A chain containing a chord, and a step after it.
    r = chain(add(1, 2), chord([add(10), add(20)], echo()), echo()).apply_async()
    out["chain_with_chord"] = outcome(r)
    out["chain_with_chord_body"] = outcome(r.parent)

    # A chord whose body is a chain.
    r = chord([add(1, 1), add(2, 2)], chain(echo(), echo())).apply_async()
    out["chord_with_chain_body"] = outcome(r)
    out["chord_with_chain_body_first"] = outcome(r.parent)

    # A link that is a chain: 1 + 1, then + 10, then + 100.
    cb = chain(add(10), add(100))
    last = cb.freeze()
    add(1, 1).apply_async(link=cb)
    out["link_chain"] = outcome(AsyncResult(last.id, app=app))

    # A chord of chords whose inner header fails: the inner body fails with
    # ChordError, and so does the outer body.
    r = chord(
        [chord([add(1, 1), sig("celeriac.fail", "inner").set(immutable=True)], echo()), chord([add(3, 3)], echo())],
        echo(),
    ).apply_async()
    out["chord_of_chords_failing"] = outcome(r)
else:
    unlocks = []
    unlock_task = app.tasks["celery.chord_unlock"]
    send_unlock = unlock_task.apply_async

    def recording(*args, **kwargs):
        res = send_unlock(*args, **kwargs)
        unlocks.append(res.id)
        return res

    unlock_task.apply_async = recording

    r = chord([add(i, i) for i in range(5)], echo()).apply_async()
    out["unlock_chord"] = outcome(r)
    out["unlock_ids"] = list(unlocks)
    meta = app.backend.get_task_meta(r.id)
    out["unlock_body_parent"] = meta.get("parent_id")
    out["unlock_body_group"] = meta.get("group_id")

    eb = sig("celeriac.echo")
    eb_id = eb.freeze().id
    r = chord(
        [add(1, 1), sig("celeriac.fail", "bad header").set(immutable=True)],
        echo().set(link_error=[eb]),
    ).apply_async()
    out["unlock_failing"] = outcome(r)
    out["unlock_failing_errback"] = outcome(AsyncResult(eb_id, app=app))
    out["unlock_failing_body_id"] = r.id
    # The errback is sent once the body's failure is stored.
    meta = app.backend.get_task_meta(r.id)
    out["unlock_failing_body"] = {"status": meta["status"], "result": str(meta["result"])}

    # A header part that takes two seconds: the unlock waits (retries).
    # chord_unlock ignores its result: nothing, not even a RETRY, is
    # stored under its id (as Celery's worker).
    before = len(unlocks)
    r = chord([add(1, 1), sig("celeriac.sleep", 2.0)], echo()).apply_async()
    out["unlock_waits"] = outcome(r)
    out["unlock_waits_stored"] = [app.backend.get_task_meta(u)["status"] for u in unlocks[before:]]

    # A chain containing a chord, on a backend without a join: the worker
    # expands it and joins it itself.
    r = chain(add(1, 2), chord([add(10), add(20)], echo()), echo()).apply_async()
    out["unlock_chain_with_chord"] = outcome(r)

print(json.dumps(out))
