#!/usr/bin/env python3
"""Celery peer benchmark: W1 (throughput, RSS) and W2 (round-trip latency).

Starts a real `celery worker` subprocess (Redis broker and result backend,
task `celeriac.add`, a private queue), waits until it answers, then measures:

  W1  enqueue rate of N `apply_async` calls, end-to-end tasks/s (first send to
      last result stored), the worker's idle RSS after start-up and its peak
      RSS during W1 (main process + children, sampled with psutil);
  W2  `--latency-n` sequential `apply_async(...).get()` round trips (p50/p90/p99).

Human-readable lines go to stderr, one JSON object per measurement to stdout.
The worker is stopped (warm shutdown, then SIGKILL of its process group) on
exit, on error and on SIGINT/SIGTERM.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SENT_IDS = []  # every task id sent, for key cleanup


def log(msg):
    print(f"[celery_bench] {msg}", file=sys.stderr, flush=True)


def emit(**fields):
    """Print one measurement as a JSON line (with the 1-min load average)."""
    fields["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(fields, separators=(",", ":")), flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis", required=True, help="Redis URL, e.g. redis://127.0.0.1:6390/0")
    p.add_argument("--broker", help="broker URL (default: --redis); an amqp:// URL runs on "
                   "RabbitMQ with results still in Redis, reported as celery-<pool>-amqp")
    p.add_argument("--pool", choices=["prefork", "threads", "solo"], default="prefork")
    p.add_argument("--concurrency", type=int, default=2, help="worker -c (default 2)")
    p.add_argument("--n", type=int, default=5000, help="W1 task count (default 5000)")
    p.add_argument("--latency-n", type=int, default=2000, help="W2 round trips (default 2000)")
    p.add_argument("--collect", choices=["mget", "native"], default="mget",
                   help="W1 result collection: poll result keys with MGET (default) "
                        "or ResultSet.join_native (pub/sub)")
    p.add_argument("--prefetch-multiplier", type=int, default=4,
                   help="worker_prefetch_multiplier (Celery default 4)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up tasks before timing")
    p.add_argument("--rss-interval", type=float, default=0.05, help="RSS sampling period, s")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--skip", choices=["W1", "W2"], action="append", default=[],
                   help="skip a workload (repeatable)")
    p.add_argument("--worker-pidfile", help="write the worker's PID here (for external cleanup)")
    return p.parse_args()


class Worker:
    """A `celery worker` subprocess in its own session (process group)."""

    def __init__(self, args, queue, env):
        self.logfile = tempfile.NamedTemporaryFile(
            prefix="celery-peer-worker-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "celery", "-A", "celery_peer_tasks", "worker",
               "-P", args.pool, "-c", str(args.concurrency),
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-Q", queue, "-n", f"{queue}@%h", "-l", "WARNING"]
        log("starting: " + " ".join(cmd[2:]))
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
        """Warm shutdown (SIGTERM), then SIGKILL the whole process group."""
        pid = self.proc.pid
        if self.alive():
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
                log(f"worker {pid} stopped (exit {self.proc.returncode})")
            except subprocess.TimeoutExpired:
                log(f"worker {pid} ignored SIGTERM for {timeout}s, killing")
        # The worker is its own session leader, so pgid == pid; this also
        # reaps prefork children that might have outlived the parent.
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


class RssSampler:
    """Samples RSS of a process tree (root + descendants) in a thread."""

    def __init__(self, pid, interval):
        import psutil
        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = None

    def sample(self):
        ps = self.psutil
        total, count = 0, 0
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except ps.Error:
            return 0, 0
        for p in procs:
            try:
                total += p.memory_info().rss
                count += 1
            except ps.Error:
                pass
        if total > self.peak:
            self.peak, self.peak_procs = total, count
        return total, count

    def pss(self):
        """Sum of PSS (shared pages split between sharers), bytes; None if unavailable."""
        ps = self.psutil
        try:
            procs = [self.root] + self.root.children(recursive=True)
            return sum(p.memory_full_info().pss for p in procs)
        except (ps.Error, AttributeError):
            return None

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self):
        self.peak, self.peak_procs = 0, 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()
        return self.peak, self.peak_procs


def mib(nbytes):
    return round(nbytes / (1024 * 1024), 1)


def wait_ready(worker, add, queue, count, timeout):
    """Send `count` warm-up tasks and wait for all of them (worker is ready)."""
    from celery.exceptions import TimeoutError as CeleryTimeout
    deadline = time.monotonic() + timeout
    results = [add.apply_async((i, 1), queue=queue) for i in range(count)]
    SENT_IDS.extend(r.id for r in results)
    for i, r in enumerate(results):
        while True:
            if not worker.alive():
                raise RuntimeError("worker exited during start-up:\n" + worker.tail())
            if time.monotonic() > deadline:
                raise RuntimeError("worker not ready after %.0fs:\n%s" % (timeout, worker.tail()))
            try:
                value = r.get(timeout=0.5)
            except CeleryTimeout:
                continue
            if value != i + 1:
                raise RuntimeError(f"warm-up task returned {value!r}, expected {i + 1}")
            break


def collect_mget(rds, backend, results, timeout):
    """Poll result keys (head of the pending list first) until all are stored.

    Returns (perf_counter time the last result was seen, decoded metas).
    """
    pending = [(i, backend.get_key_for_task(r.id)) for i, r in enumerate(results)]
    metas = [None] * len(results)
    deadline = time.monotonic() + timeout
    chunk = 1000
    last_seen = time.perf_counter()
    while pending:
        head = pending[:chunk]
        values = rds.mget([k for _, k in head])
        now = time.perf_counter()
        still = []
        for (i, key), raw in zip(head, values):
            if raw is None:
                still.append((i, key))
                continue
            meta = json.loads(raw)
            if meta.get("status") not in ("SUCCESS", "FAILURE", "REVOKED"):
                still.append((i, key))
                continue
            metas[i] = meta
            last_seen = now
        pending = still + pending[chunk:]
        if still:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} results still missing after {timeout:.0f}s")
            time.sleep(0.005)
    return last_seen, metas


def percentile(sorted_vals, q):
    """Linear-interpolated percentile (q in [0, 100]) of a sorted list."""
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def run_w2(add, queue, n, common):
    log(f"W2: {n} sequential apply_async().get() round trips")
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        r = add.apply_async((i, i), queue=queue)
        SENT_IDS.append(r.id)
        value = r.get(timeout=30)
        samples.append(time.perf_counter() - t0)
        if value != 2 * i:
            raise RuntimeError(f"W2 task {i} returned {value!r}")
    samples.sort()
    ms = [s * 1000.0 for s in samples]
    stats = {"p50": percentile(ms, 50), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
             "mean": statistics.fmean(ms)}
    log("W2: p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, mean %.3f ms" %
        (stats["p50"], stats["p90"], stats["p99"], stats["mean"]))
    for name, value in stats.items():
        emit(workload="W2", metric=f"latency_{name}", value=round(value, 4), unit="ms",
             n=n, **common)


def run_w1(args, add, queue, rds, sampler, common):
    n = args.n
    log(f"W1: enqueue {n} tasks, collect with {args.collect}")
    sampler.start()
    results = []
    t_first = time.perf_counter()
    for i in range(n):
        results.append(add.apply_async((i, i), queue=queue))
    t_enq = time.perf_counter()
    SENT_IDS.extend(r.id for r in results)
    timeout = max(120.0, n / 20.0)
    if args.collect == "mget":
        t_last, metas = collect_mget(rds, add.app.backend, results, timeout)
        bad = [(i, m) for i, m in enumerate(metas)
               if m.get("status") != "SUCCESS" or m.get("result") != 2 * i]
    else:
        from celery.result import ResultSet
        values = ResultSet(results).join_native(timeout=timeout, propagate=True)
        t_last = time.perf_counter()
        bad = [(i, v) for i, v in enumerate(values) if v != 2 * i]
    peak, procs = sampler.stop()
    if bad:
        raise RuntimeError(f"W1: {len(bad)} wrong results, first: {bad[0]!r}")
    enq_rate = n / (t_enq - t_first)
    e2e = n / (t_last - t_first)
    log(f"W1: enqueue {enq_rate:.0f} tasks/s ({t_enq - t_first:.2f}s), "
        f"end-to-end {e2e:.0f} tasks/s ({t_last - t_first:.2f}s), "
        f"peak RSS {mib(peak)} MiB over {procs} processes")
    emit(workload="W1", metric="enqueue_rate", value=round(enq_rate, 1), unit="tasks/s",
         n=n, seconds=round(t_enq - t_first, 4), **common)
    emit(workload="W1", metric="throughput", value=round(e2e, 1), unit="tasks/s",
         n=n, seconds=round(t_last - t_first, 4), collect=args.collect, **common)
    emit(workload="W1", metric="rss_peak", value=mib(peak), unit="MiB", n=n,
         processes=procs, **common)


def cleanup_keys(rds, queue, ids):
    """Best-effort removal of this run's queue and result keys."""
    try:
        keys = [queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"] + \
               [f"{queue}\x06\x16{p}" for p in (3, 6, 9)]
        rds.delete(*keys)
        for i in range(0, len(ids), 1000):
            rds.delete(*[f"celery-task-meta-{t}" for t in ids[i:i + 1000]])
    except Exception as e:  # noqa: BLE001 - cleanup must not mask results
        log(f"key cleanup failed: {e}")


def main():
    args = parse_args()
    os.environ["CELERIAC_PEERS_REDIS"] = args.redis
    os.environ["CELERIAC_PEERS_BROKER"] = args.broker or args.redis
    os.environ["CELERIAC_PEERS_PREFETCH"] = str(args.prefetch_multiplier)
    sys.path.insert(0, HERE)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    import celery
    import redis
    from celery_peer_tasks import add

    rds = redis.Redis.from_url(args.redis)
    rds.ping()
    queue = f"celeriac-peer-{uuid.uuid4().hex[:10]}"
    system = f"celery-{args.pool}" + ("-amqp" if (args.broker or "").startswith("amqp") else "")
    common = {"system": system, "pool": args.pool, "concurrency": args.concurrency,
              "celery": celery.__version__,
              "python": ".".join(map(str, sys.version_info[:3]))}
    worker = Worker(args, queue, dict(os.environ))
    try:
        t0 = time.perf_counter()
        wait_ready(worker, add, queue, args.warmup, args.startup_timeout)
        log(f"worker {worker.proc.pid} ready after {time.perf_counter() - t0:.2f}s "
            f"({args.warmup} warm-up tasks)")
        sampler = RssSampler(worker.proc.pid, args.rss_interval)
        time.sleep(0.5)
        idle, procs = sampler.sample()
        pss = sampler.pss()
        extra = {} if pss is None else {"pss_mib": mib(pss)}
        log(f"idle RSS {mib(idle)} MiB over {procs} processes"
            + ("" if pss is None else f" (PSS {mib(pss)} MiB)"))
        emit(workload="W1", metric="rss_idle", value=mib(idle), unit="MiB",
             processes=procs, **extra, **common)
        if "W2" not in args.skip:
            run_w2(add, queue, args.latency_n, common)
        if "W1" not in args.skip:
            run_w1(args, add, queue, rds, sampler, common)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping worker")
        return 130
    except Exception as e:  # noqa: BLE001
        log(f"FAILED: {type(e).__name__}: {e}")
        tail = worker.tail()
        if tail:
            log("worker log tail:\n" + tail)
        return 1
    finally:
        # Ignore further TERM/INT while the worker shuts down.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        worker.stop()
        cleanup_keys(rds, queue, SENT_IDS)
        try:
            os.unlink(worker.logfile.name)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
