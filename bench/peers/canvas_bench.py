#!/usr/bin/env python3
"""W6 canvas benchmark: a group of N `celeriac.add`s and a chord of N adds
into one callback (`celeriac.echo`), sent by the same Python Celery client
to either a `celeriac worker` or a Celery prefork worker, on Redis.

Two measurements of each canvas:

  drain  the client first publishes the whole canvas to a staging queue that
         no worker reads, then the staging list is RENAMEd onto the worker's
         queue (one atomic Redis command) and the clock runs from there to
         the last result (group: every member's result stored; chord: the
         callback's). This is the workers' canvas throughput, without the
         client's publishing in the way.
  live   the worker consumes while the client publishes; the clock runs
         from the first send to the last result. What a user sees with a
         Python client, which is often the bottleneck.

The client is Python Celery 5.7 for both systems, so the messages (and the
chord's join keys) are byte for byte the same. Results are collected by
polling the result keys with MGET (as W1 does), for both systems. Human
lines go to stderr, one JSON object per measurement to stdout.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SENT_IDS = []
# Seconds between result polls that found something (--poll-ms).
POLL_S = 0.0


def log(msg):
    print(f"[canvas_bench] {msg}", file=sys.stderr, flush=True)


def emit(**fields):
    fields["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(fields, separators=(",", ":")), flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis", required=True)
    p.add_argument("--system", required=True, choices=["celeriac", "celery-prefork"])
    p.add_argument("--celeriac-bin", help="the celeriac CLI (for --system celeriac)")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--n", type=int, default=10000, help="canvas size (default 10000)")
    p.add_argument("--modes", default="drain,live", help="drain,live")
    p.add_argument("--canvases", default="group,chord", help="group,chord")
    p.add_argument("--timeout", type=float, default=600.0, help="per measurement, s")
    p.add_argument("--worker-pidfile", help="write the worker's PID here")
    p.add_argument("--poll-ms", type=float, default=0.0,
                   help="ms between result polls that found something (default 0: poll "
                        "flat out while results come; 5 measured no different, BENCHMARKS.md W6)")
    p.add_argument("--rust-client", help="celeriac-bench: also send the canvases with "
                   "celeriac's own client (`celeriac-bench canvas-client`), live")
    return p.parse_args()


class Worker:
    """A worker subprocess in its own session (process group)."""

    def __init__(self, args, queue, env):
        self.logfile = tempfile.NamedTemporaryFile(
            prefix="canvas-bench-worker-", suffix=".log", delete=False)
        if args.system == "celeriac":
            # Warnings only, as the Celery worker below (-l WARNING): no
            # log line per task on either side.
            cmd = [args.celeriac_bin, "--loglevel", "warn", "worker", "--broker", args.redis,
                   "-c", str(args.concurrency), "-Q", queue, "-n", f"{queue}@bench"]
        else:
            cmd = [sys.executable, "-m", "celery", "-A", "celery_peer_tasks", "worker",
                   "-P", "prefork", "-c", str(args.concurrency),
                   "--without-gossip", "--without-mingle", "--without-heartbeat",
                   "-Q", queue, "-n", f"{queue}@%h", "-l", "WARNING"]
        log("starting: " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pidfile = args.worker_pidfile
        if self.pidfile:
            with open(self.pidfile, "w") as f:
                f.write(f"{self.proc.pid}\n")

    def alive(self):
        return self.proc.poll() is None

    def tail(self, lines=30):
        try:
            with open(self.logfile.name, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout=20.0):
        pid = self.proc.pid
        if self.alive():
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"worker {pid} ignored SIGTERM for {timeout}s, killing")
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.pidfile:
            try:
                os.unlink(self.pidfile)
            except OSError:
                pass
        try:
            os.unlink(self.logfile.name)
        except OSError:
            pass


def wait_keys(rds, keys, worker, timeout, check):
    """Polls `keys` with MGET until every one holds a ready result; returns
    (time the last was seen, metas). Light on CPU, since the client shares
    the machine with the worker it measures: it reads a window of at most
    200 keys from the head of the pending list (results come roughly in
    order), waits POLL_S (--poll-ms) between polls that found something,
    and sleeps 10 ms whenever a poll finds nothing new."""
    pending = list(enumerate(keys))
    metas = [None] * len(keys)
    deadline = time.monotonic() + timeout
    last_seen = time.perf_counter()
    while pending:
        head = pending[:200]
        values = rds.mget([k for _, k in head])
        now = time.perf_counter()
        still = []
        for (i, key), raw in zip(head, values):
            meta = json.loads(raw) if raw is not None else None
            if meta is None or meta.get("status") not in ("SUCCESS", "FAILURE", "REVOKED"):
                still.append((i, key))
                continue
            metas[i] = meta
            last_seen = now
        progressed = len(still) < len(head)
        pending = still + pending[200:]
        if pending and progressed and POLL_S > 0:
            time.sleep(POLL_S)
        if pending and not progressed:
            if not worker.alive():
                raise RuntimeError("the worker exited:\n" + worker.tail())
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} results missing after {timeout:.0f}s")
            time.sleep(0.002 if len(pending) < 5 else 0.010)
    for i, m in enumerate(metas):
        check(i, m)
    return last_seen, metas


def cpu_seconds(pid):
    """User + system CPU seconds of a process tree so far (None without
    psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        root = psutil.Process(pid)
        total = 0.0
        for p in [root] + root.children(recursive=True):
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return None


def redis_cpu(rds):
    info = rds.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def client_cpu():
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build(app, kind, n, header_queue, body_queue):
    from celery import chord, group, signature
    header = [signature("celeriac.add", args=(i, i), app=app, queue=header_queue)
              for i in range(n)]
    if kind == "group":
        return group(header)
    return chord(header, signature("celeriac.echo", app=app, queue=body_queue))


def measure(args, app, rds, worker, queue, kind, mode):
    n = args.n
    backend = app.backend
    staging = f"{queue}.staging"
    header_queue = staging if mode == "drain" else queue
    canvas = build(app, kind, n, header_queue, queue)
    cpu_live = (cpu_seconds(worker.proc.pid), redis_cpu(rds), client_cpu())
    t_send = time.perf_counter()
    res = canvas.apply_async()
    t_sent = time.perf_counter()
    if kind == "group":
        ids = [r.id for r in res.results]
    else:
        ids = [r.id for r in res.parent.results] + [res.id]
    SENT_IDS.extend(ids)
    if mode == "drain":
        queued = rds.llen(staging)
        if queued != n:
            raise RuntimeError(f"{queued} of {n} messages on the staging queue")
        cpu0 = (cpu_seconds(worker.proc.pid), redis_cpu(rds), client_cpu())
        t0 = time.perf_counter()
        rds.rename(staging, queue)
    else:
        t0 = t_send
        cpu0 = cpu_live

    def check_add(i, m):
        if m.get("status") != "SUCCESS" or m.get("result") != 2 * i:
            raise RuntimeError(f"{kind} member {i}: {m!r}")

    def check_body(_i, m):
        want = [2 * i for i in range(n)]
        if m.get("status") != "SUCCESS" or m.get("result") != want:
            raise RuntimeError(f"chord body: {str(m)[:300]}")

    if kind == "group":
        keys = [backend.get_key_for_task(t) for t in ids]
        t_last, _ = wait_keys(rds, keys, worker, args.timeout, check_add)
    else:
        t_last, _ = wait_keys(rds, [backend.get_key_for_task(res.id)], worker,
                              args.timeout, check_body)
    secs = t_last - t0
    cpu1 = (cpu_seconds(worker.proc.pid), redis_cpu(rds), client_cpu())
    used = [None if a is None or b is None else round(b - a, 3) for a, b in zip(cpu0, cpu1)]
    rate = n / secs
    send_rate = n / (t_sent - t_send)
    log(f"{kind} of {n}, {mode}: {secs:.3f}s, {rate:,.0f} tasks/s "
        f"(the client published at {send_rate:,.0f} tasks/s); CPU s: worker {used[0]}, "
        f"redis {used[1]}, client {used[2]}")
    emit(workload="W6", system=args.system, metric=f"{kind}_{mode}", value=round(rate, 1),
         unit="tasks/s", n=n, seconds=round(secs, 4), client_publish_rate=round(send_rate, 1),
         concurrency=args.concurrency, worker_cpu_s=used[0], redis_cpu_s=used[1],
         client_cpu_s=used[2], poll_ms=args.poll_ms)


def rust_client(args, queue, kind):
    """The same canvas sent by celeriac's client (the Rust canvas API) to
    the same worker; its JSON line goes to stdout as is."""
    cmd = [args.rust_client, "canvas-client", "--redis", args.redis, "--queue", queue,
           "--n", str(args.n), "--kind", kind, "--system", f"{args.system}+rust-client"]
    log("running: " + " ".join(cmd))
    out = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=args.timeout, check=True)
    for line in out.stdout.decode().splitlines():
        if line.startswith("{"):
            print(line, flush=True)


def warm_up(app, rds, worker, queue, timeout=60.0):
    from celery import signature
    results = [signature("celeriac.add", args=(i, 1), app=app, queue=queue).apply_async()
               for i in range(20)]
    SENT_IDS.extend(r.id for r in results)
    keys = [app.backend.get_key_for_task(r.id) for r in results]

    def check(i, m):
        if m.get("result") != i + 1:
            raise RuntimeError(f"warm-up task {i}: {m!r}")
    wait_keys(rds, keys, worker, timeout, check)


def main():
    global POLL_S
    args = parse_args()
    POLL_S = args.poll_ms / 1000.0
    if args.system == "celeriac" and not args.celeriac_bin:
        sys.exit("--celeriac-bin is required for --system celeriac")
    os.environ["CELERIAC_PEERS_REDIS"] = args.redis
    sys.path.insert(0, HERE)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    import redis
    from celery_peer_tasks import app

    rds = redis.Redis.from_url(args.redis)
    rds.ping()
    queue = f"canvas-bench-{uuid.uuid4().hex[:10]}"
    worker = Worker(args, queue, dict(os.environ))
    try:
        t0 = time.perf_counter()
        warm_up(app, rds, worker, queue)
        log(f"{args.system} worker {worker.proc.pid} ready after {time.perf_counter() - t0:.2f}s")
        for kind in args.canvases.split(","):
            for mode in args.modes.split(","):
                measure(args, app, rds, worker, queue, kind, mode)
            if args.rust_client:
                rust_client(args, queue, kind)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        return 130
    except Exception as e:  # noqa: BLE001
        log(f"FAILED: {type(e).__name__}: {e}")
        tail = worker.tail()
        if tail:
            log("worker log tail:\n" + tail)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        worker.stop()
        try:
            for i in range(0, len(SENT_IDS), 1000):
                rds.delete(*[f"celery-task-meta-{t}" for t in SENT_IDS[i:i + 1000]])
        except Exception as e:  # noqa: BLE001
            log(f"key cleanup failed: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
