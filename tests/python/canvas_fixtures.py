"""Captures what Python Celery's client sends for each canvas shape, as the
fixtures celeriac's canvas lowering is compared against
(`crates/celeriac-core/src/canvas/fixtures/python_canvas.json`).

Usage: canvas_fixtures.py REDIS_URL OUT.json

For each shape it records, in order, every message published (routing key,
priority, the headers that carry canvas structure, and the body), every
chord size recorded (`set_chord_size`, Redis's `SET K.s`) and every group
saved (`GroupResult.save`), and the client's result tree (`as_tuple()`).
Nothing consumes the messages: the broker only has to accept them.
"""
import json
import sys

from celery import Celery, chain, chord, group, signature
from celery.canvas import chunks, xmap, xstarmap
from celery.signals import before_task_publish
from kombu.utils.json import dumps

url, out_path = sys.argv[1], sys.argv[2]
app = Celery("fixtures", broker=url, backend=url)

events = []
HEADERS = ("task", "id", "group", "group_index", "root_id", "parent_id", "eta", "expires",
           "ignore_result", "timelimit", "retries")


@before_task_publish.connect
def record(sender=None, body=None, exchange=None, routing_key=None, headers=None,
           properties=None, **_):
    events.append({
        "publish": {
            "routing_key": routing_key,
            "priority": (properties or {}).get("priority"),
            "headers": {k: headers.get(k) for k in HEADERS},
            "body": json.loads(dumps(body)),
        }
    })


_set_chord_size = app.backend.set_chord_size
_save_group = app.backend._save_group


def set_chord_size(group_id, size):
    events.append({"chord_size": [group_id, size]})
    return _set_chord_size(group_id, size)


def save_group(group_id, result):
    events.append({"save_group": [group_id, json.loads(dumps({"result": result.as_tuple()}))]})
    return _save_group(group_id, result)


app.backend.set_chord_size = set_chord_size
app.backend._save_group = save_group


def s(name, *args, **options):
    return signature(name, args=args, app=app, **options)


def si(name, *args, **options):
    return signature(name, args=args, app=app, immutable=True, **options)


def add(*a, **o):
    return s("tasks.add", *a, **o)


def shapes():
    yield "task", lambda: add(2, 2).apply_async()
    yield "task_link", lambda: add(2, 2).set(link=[add(10)]).apply_async()
    yield "task_link_frozen", lambda: _frozen_link()
    yield "task_link_error", lambda: _link_error()
    yield "chain", lambda: chain(add(1, 2), add(10), s("tasks.mul", 10)).apply_async()
    yield "chain_immutable", lambda: chain(add(1, 2), si("tasks.add", 5, 5), add(1)).apply_async()
    yield "chain_options", lambda: chain(
        add(1, 2).set(queue="py", priority=5), s("tasks.mul", 10).set(queue="py", priority=7)
    ).apply_async()
    yield "chain_link", lambda: _chain_link()
    yield "chain_link_error", lambda: _chain_link_error()
    yield "group", lambda: group(add(i, i) for i in range(3)).apply_async()
    yield "group_save", lambda: _group_save()
    yield "group_of_chains", lambda: group(
        chain(add(1, 2), add(1)), chain(add(3, 4), add(1))
    ).apply_async()
    yield "chord", lambda: chord([add(i, i) for i in range(3)], s("tasks.tsum")).apply_async()
    yield "chord_body_errback", lambda: chord(
        [add(1, 1), add(2, 2)], s("tasks.tsum").on_error(s("tasks.echo"))
    ).apply_async()
    yield "chord_of_chains", lambda: chord(
        [chain(add(1, 1), add(1)), chain(add(2, 2), add(1))], s("tasks.tsum")
    ).apply_async()
    yield "chord_of_chords", lambda: chord(
        [chord([add(1, 1), add(2, 2)], s("tasks.tsum")), chord([add(3, 3), add(4, 4)], s("tasks.tsum"))],
        s("tasks.tsum"),
    ).apply_async()
    yield "chord_chain_body", lambda: chord([add(1, 1), add(2, 2)], chain(s("tasks.tsum"), add(1))).apply_async()
    yield "chain_group_head", lambda: chain(group(add(1, 1), add(2, 2)), s("tasks.tsum")).apply_async()
    yield "chain_group_middle", lambda: chain(add(1, 2), group(add(1), add(2)), s("tasks.tsum")).apply_async()
    yield "chain_group_last", lambda: chain(add(1, 2), group(add(1), add(2))).apply_async()
    yield "chain_chord_head", lambda: chain(
        chord([add(1, 1), add(2, 2)], s("tasks.tsum")), add(1)
    ).apply_async()
    yield "map", lambda: xmap(s("tasks.echo"), [1, 2, 3]).apply_async()
    yield "starmap", lambda: xstarmap(add(), [(1, 2), (3, 4)]).apply_async()
    yield "chunks", lambda: chunks(add(), [(i, i) for i in range(5)], 2).apply_async()


def _frozen_link():
    cb = add(10)
    cb.freeze()
    return add(2, 2).apply_async(link=cb)


def _link_error():
    sig = add(2, 2)
    sig.link(add(10))
    sig.link_error(s("tasks.echo"))
    return sig.apply_async()


def _chain_link():
    c = chain(add(1, 2), add(1))
    c.link(s("tasks.echo"))
    return c.apply_async()


def _chain_link_error():
    c = chain(add(1, 2), add(1))
    c.on_error(s("tasks.echo"))
    return c.apply_async()


def _group_save():
    g = group(add(i, i) for i in range(2)).apply_async()
    g.save()
    return g


fixtures = {}
for name, apply in shapes():
    events.clear()
    result = apply()
    fixtures[name] = {
        "events": list(events),
        "result": json.loads(dumps(result.as_tuple())),
        "oid": app.thread_oid,
    }

with open(out_path, "w") as f:
    json.dump(fixtures, f, indent=1, sort_keys=True)
    f.write("\n")
