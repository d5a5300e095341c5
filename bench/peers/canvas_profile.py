#!/usr/bin/env python3
"""W6 drains, repeated, for profiling one celeriac worker (not a benchmark
of record: bench/peers/canvas_bench.py is).

The Python Celery client publishes one canvas (a group of N adds, or a
chord of N adds into `celeriac.echo`) to a staging list once; the list
(and, for a chord, its size key) is saved with DUMP. Each round then
RESTOREs the saved list onto the worker's queue (one atomic command, as
canvas_bench's RENAME) and waits for the results, after clearing the
previous round's results (and the chord's join keys). The same messages
run ROUNDS times, so a drain lasts long enough for `perf`.

Prints, on stdout as one JSON line: per task, Redis's commands
(`INFO commandstats` after `CONFIG RESETSTAT` before the first round:
calls and µs per task for each command, inner script commands included),
Redis's CPU, the worker's CPU, and the rate. With --perf DIR, records
`perf record -e cpu-clock -g` of redis-server and of the worker during the
rounds into DIR/redis.data and DIR/worker.data.

    canvas_profile.py --redis URL --celeriac-bin BIN --kind group --n 10000 --rounds 5
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import canvas_bench  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis", required=True)
    p.add_argument("--celeriac-bin", required=True)
    p.add_argument("--kind", choices=["group", "chord"], default="group")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--perf", help="directory for perf.data of redis-server and the worker")
    p.add_argument("--worker-pidfile")
    args = p.parse_args()
    args.system = "celeriac"
    os.environ["CELERIAC_PEERS_REDIS"] = args.redis

    import redis
    from celery_peer_tasks import app

    rds = redis.Redis.from_url(args.redis)
    queue = f"canvas-profile-{uuid.uuid4().hex[:10]}"
    worker = canvas_bench.Worker(args, queue, dict(os.environ))
    perfs = []
    try:
        canvas_bench.warm_up(app, rds, worker, queue)
        staging = f"{queue}.staging"
        canvas = canvas_bench.build(app, args.kind, args.n, staging, queue)
        res = canvas.apply_async()
        if args.kind == "group":
            ids = [r.id for r in res.results]
            wait = [app.backend.get_key_for_task(t) for t in ids]
            clear = wait
            saved = {}
        else:
            ids = [r.id for r in res.parent.results]
            wait = [app.backend.get_key_for_task(res.id)]
            clear = [app.backend.get_key_for_task(t) for t in ids] + wait
            gid = res.parent.id
            k = f"celery-taskset-meta-{gid}"
            saved = {f"{k}.s": rds.dump(f"{k}.s")}
            clear += [f"{k}.{s}" for s in "jtdc"]
        if rds.llen(staging) != args.n:
            raise RuntimeError("the canvas is not all on the staging list")
        saved[queue] = rds.dump(staging)
        rds.delete(staging)

        def check(_i, m):
            if m.get("status") != "SUCCESS":
                raise RuntimeError(f"{m!r}"[:300])

        if args.perf:
            os.makedirs(args.perf, exist_ok=True)
            redis_pid = int(rds.info("server")["process_id"])
            for name, pid in (("redis", redis_pid), ("worker", worker.proc.pid)):
                perfs.append(subprocess.Popen(
                    ["perf", "record", "-e", "cpu-clock", "-g", "-o",
                     os.path.join(args.perf, f"{name}.data"), "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)
        rds.config_resetstat()
        w0, r0 = canvas_bench.cpu_seconds(worker.proc.pid), canvas_bench.redis_cpu(rds)
        secs = []
        for _ in range(args.rounds):
            for i in range(0, len(clear), 1000):
                rds.delete(*clear[i:i + 1000])
            pipe = rds.pipeline(transaction=True)
            for key, blob in saved.items():
                pipe.restore(key, 0, blob, replace=True)
            t0 = time.perf_counter()
            pipe.execute()
            t_last, _ = canvas_bench.wait_keys(rds, wait, worker, 600.0, check)
            secs.append(t_last - t0)
        w1, r1 = canvas_bench.cpu_seconds(worker.proc.pid), canvas_bench.redis_cpu(rds)
        stats = rds.info("commandstats")
        tasks = args.n * args.rounds
        per_task = {
            k.removeprefix("cmdstat_"): {
                "calls": round(v["calls"] / tasks, 3),
                "us": round(v["usec"] / tasks, 2),
            }
            for k, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])
        }
        secs.sort()
        out = {
            "kind": args.kind,
            "n": args.n,
            "rounds": args.rounds,
            "rate_median": round(args.n / secs[len(secs) // 2], 1),
            "rates": [round(args.n / s) for s in secs],
            "worker_cpu_us_per_task": round((w1 - w0) * 1e6 / tasks, 1),
            "redis_cpu_us_per_task": round((r1 - r0) * 1e6 / tasks, 1),
            "commands_per_task": per_task,
            "loadavg_1m": os.getloadavg()[0],
        }
        print(json.dumps(out), flush=True)
    finally:
        for pr in perfs:
            pr.send_signal(signal.SIGINT)
            pr.wait(timeout=60)
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
