"""Python Celery client for the chord kill -9 fault test: sends
chord([celeriac.add(i, i) for i in range(N)], celeriac.echo) with the body
routed to queue `chord-body` (which no worker consumes until the test says
so, so the test can count the body messages), and prints the ids as JSON."""
import json
import sys

from celery import Celery, chord, signature

url, n = sys.argv[1], int(sys.argv[2])
app = Celery("chord_kill", broker=url, backend=url)
header = [signature("celeriac.add", args=(i, i), app=app) for i in range(n)]
body = signature("celeriac.echo", app=app, queue="chord-body")
r = chord(header, body).apply_async()
print(json.dumps({"body": r.id, "group": r.parent.id, "parts": [p.id for p in r.parent.results]}))
