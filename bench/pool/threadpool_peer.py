#!/usr/bin/env python3
"""Peer baseline for celeriac-pool's pool_overhead bench.

Measures Python's concurrent.futures.ThreadPoolExecutor(max_workers=2) on the
same no-op workloads as crates/celeriac-pool/benches/pool_overhead.rs (with
smaller N), printing a table and one JSON line per workload:

  {"bench":"peer.python.threadpool.pipelined","ns_per_task":...,"threads":2,"n":...}

Environment: POOL_BENCH_RUNS (default 5), POOL_BENCH_SCALE (divides every N).
"""

import itertools
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

THREADS = 2
BATCH = 1000


def noop():
    return None


def sequential(ex, n):
    start = time.perf_counter_ns()
    for _ in range(n):
        ex.submit(noop).result()
    return time.perf_counter_ns() - start


def pipelined(ex, n):
    start = time.perf_counter_ns()
    futures = [ex.submit(noop) for _ in range(n)]
    for f in futures:
        f.result()
    return time.perf_counter_ns() - start


def spawn(ex, n):
    # Fire-and-forget: the futures are dropped; a shared counter (next() on
    # itertools.count is atomic under the GIL) signals completion.
    counter = itertools.count(1)
    done = threading.Event()

    def task():
        if next(counter) == n:
            done.set()

    start = time.perf_counter_ns()
    for _ in range(n):
        ex.submit(task)
    done.wait()
    return time.perf_counter_ns() - start


def batched(ex, n):
    def chunk(length):
        def run():
            for _ in range(length):
                noop()
        return run

    start = time.perf_counter_ns()
    futures = [ex.submit(chunk(min(BATCH, n - i))) for i in range(0, n, BATCH)]
    for f in futures:
        f.result()
    return time.perf_counter_ns() - start


def env_int(name, default):
    try:
        value = int(os.environ.get(name, ""))
        return value if value > 0 else default
    except ValueError:
        return default


def main():
    runs = env_int("POOL_BENCH_RUNS", 5)
    scale = env_int("POOL_BENCH_SCALE", 1)
    cpus = os.cpu_count() or 1
    workloads = [
        ("sequential", sequential, 20_000 // scale),
        ("pipelined", pipelined, 100_000 // scale),
        ("spawn", spawn, 100_000 // scale),
        ("batched", batched, 1_000_000 // scale),
    ]
    print(f"Python {sys.version.split()[0]} ThreadPoolExecutor per-task overhead (no-op tasks)")
    print(f"max_workers: {THREADS}, cpu_count: {cpus}, runs: {runs} (median)")
    print(f"{'workload':<12} {'n':>10} {'median ns':>12} {'min ns':>12} {'max ns':>12}")
    lines = []
    with ThreadPoolExecutor(max_workers=THREADS) as ex:
        for name, run, n in workloads:
            run(ex, min(n, 2_000))  # warm-up: start the worker threads
            samples = [run(ex, n) / n for _ in range(runs)]
            med = statistics.median(samples)
            print(f"{name:<12} {n:>10} {med:>12.1f} {min(samples):>12.1f} {max(samples):>12.1f}")
            lines.append(json.dumps({
                "bench": f"peer.python.threadpool.{name}",
                "ns_per_task": round(med, 1),
                "threads": THREADS,
                "n": n,
                "runs": runs,
                "available_parallelism": cpus,
            }, separators=(",", ":")))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
