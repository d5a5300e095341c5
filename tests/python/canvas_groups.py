"""GroupResult.save/restore across Python and celeriac, for the canvas
client test. Prints JSON.

  canvas_groups.py URL restore GID  -> the member ids of group GID, as
                                       Python's GroupResult.restore reads
                                       what celeriac saved
  canvas_groups.py URL save         -> {"id", "ids", "results"}: a group
                                       Python applied, waited on and saved
"""
import json
import os
import sys

from celery import Celery, group, signature

url, mode = sys.argv[1], sys.argv[2]
app = Celery("canvas_groups", broker=url, backend=os.environ.get("BACKEND", url))

if mode == "restore":
    restored = app.GroupResult.restore(sys.argv[3])
    print(json.dumps(None if restored is None else {
        "ids": [r.id for r in restored.results],
        "results": restored.get(timeout=60),
    }))
elif mode == "save":
    g = group(signature("canvas.add", args=(i, i), app=app) for i in range(3)).apply_async()
    results = g.get(timeout=60)
    g.save()
    print(json.dumps({"id": g.id, "ids": [r.id for r in g.results], "results": results}))
