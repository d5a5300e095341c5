"""Sends one task as a Python Celery client does and prints its id.

  send.py URL TASK ARGS_JSON [COUNTDOWN]
"""
import json
import os
import sys

from celery import Celery

url, name, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
countdown = float(sys.argv[4]) if len(sys.argv) > 4 else None
app = Celery("sender", broker=url, backend=os.environ.get("BACKEND", url))
print(app.send_task(name, args=args, countdown=countdown).id)
