#!/usr/bin/env python3
"""Local-pool peers: W3 (CPU-bound scaling) and W4 (per-task overhead).

W3  naive recursive fib(--fib) x --tasks tasks, with 1 and 2 workers, on
    multiprocessing.Pool, ProcessPoolExecutor and ppft.Server (plus an
    in-process serial reference); reports seconds and speedup t1/t2.
W4  per-task overhead (wall time / N, in microseconds) of a no-op task on
    ThreadPoolExecutor(2) (sequential and pipelined), multiprocessing.Pool(2)
    (map chunksize=1 and default chunksize), ProcessPoolExecutor(2) (pipelined
    and sequential) and ppft.Server(ncpus=2) (pipelined and sequential).

Pools are started and warmed up before the clock starts; each figure is the
median of --repeat runs (all samples are in the JSON line). Human-readable
lines go to stderr, one JSON object per measurement to stdout.
"""
import argparse
import json
import multiprocessing
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

PYVER = ".".join(map(str, sys.version_info[:3]))
MAIN_PID = os.getpid()


def fib(n):
    """Naive recursive Fibonacci (the book's CPU-bound example)."""
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def noop(x=None):
    """The no-op task of W4."""
    return x


def default_sigterm():
    """Pool initializer: restore the default SIGTERM action in a worker.

    Forked workers inherit main()'s Python-level SIGTERM handler. A Python
    handler only runs between bytecodes, so a SIGTERM from Pool.terminate()
    that lands just before the worker blocks on the inqueue semaphore is
    lost, the worker never exits and pool.join() waits forever (seen in a
    full run). With the default action the kernel ends the worker at once.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def log(msg):
    print(f"[local_bench] {msg}", file=sys.stderr, flush=True)


def emit(**fields):
    """Print one measurement as a JSON line (with the 1-min load average)."""
    fields["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(fields, separators=(",", ":")), flush=True)


def median_run(fn, repeat):
    """Run fn() `repeat` times; return (median seconds, samples)."""
    samples = [fn() for _ in range(repeat)]
    return statistics.median(samples), samples


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- pool wrappers

def ppft_server(ncpus):
    import ppft
    import logging
    logging.getLogger("pp").setLevel(logging.WARNING)
    server = ppft.Server(ncpus=ncpus, ppservers=())
    # Warm up: make every worker receive (and cache) the function bundles.
    for f, a in ((noop, (None,)), (fib, (10,))):
        jobs = [server.submit(f, a) for _ in range(4 * ncpus)]
        for j in jobs:
            j()
    return server


class Systems:
    """Context managers yielding warmed-up pools plus map/submit adapters."""

    @staticmethod
    def mp_pool(workers):
        pool = multiprocessing.Pool(workers, initializer=default_sigterm)
        pool.map(noop, range(4 * workers), chunksize=1)
        pool.map(fib, [10] * (4 * workers), chunksize=1)
        return pool

    @staticmethod
    def ppe(workers):
        ex = ProcessPoolExecutor(workers, initializer=default_sigterm)
        list(ex.map(noop, range(4 * workers)))
        list(ex.map(fib, [10] * (4 * workers)))
        return ex


# ------------------------------------------------------------------------ W3

def run_w3(args):
    n, tasks, repeat = args.fib, args.tasks, args.w3_repeat
    common = {"workload": "W3", "n": tasks, "fib": n, "python": PYVER}
    expected = fib(n)
    log(f"W3: fib({n}) x {tasks} tasks, median of {repeat}")

    def check(values):
        if list(values) != [expected] * tasks:
            raise RuntimeError("W3: wrong fib results")

    t, samples = median_run(lambda: timed(lambda: check([fib(n) for _ in range(tasks)])), repeat)
    log(f"W3: serial (in-process)      {t:.3f} s")
    emit(system="serial", metric="seconds", value=round(t, 4), unit="s", workers=1,
         samples=[round(s, 4) for s in samples], **common)

    def mp(workers):
        pool = Systems.mp_pool(workers)
        try:
            return median_run(lambda: timed(
                lambda: check(pool.map(fib, [n] * tasks, chunksize=1))), repeat)
        finally:
            pool.terminate()
            pool.join()

    def ppe(workers):
        ex = Systems.ppe(workers)
        try:
            return median_run(lambda: timed(
                lambda: check(ex.map(fib, [n] * tasks))), repeat)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)

    def pp(workers):
        server = ppft_server(workers)
        try:
            def go():
                jobs = [server.submit(fib, (n,)) for _ in range(tasks)]
                check(j() for j in jobs)
            return median_run(lambda: timed(go), repeat)
        finally:
            server.destroy()

    for system, fn in (("multiprocessing.Pool", mp), ("ProcessPoolExecutor", ppe),
                       ("ppft", pp)):
        times = {}
        for workers in (1, 2):
            t, samples = fn(workers)
            times[workers] = t
            log(f"W3: {system:<26} workers={workers} {t:.3f} s")
            emit(system=system, metric="seconds", value=round(t, 4), unit="s",
                 workers=workers, samples=[round(s, 4) for s in samples], **common)
        speedup = times[1] / times[2]
        log(f"W3: {system:<26} speedup {speedup:.2f}x")
        emit(system=system, metric="speedup", value=round(speedup, 3), unit="x",
             workers=2, **common)


# ------------------------------------------------------------------------ W4

def run_w4(args):
    repeat = args.w4_repeat
    workers = 2
    log(f"W4: no-op per-task overhead, {workers} workers, median of {repeat}")

    def report(system, mode, n, fn):
        t, samples = median_run(lambda: timed(lambda: fn(n)), repeat)
        us = t / n * 1e6
        log(f"W4: {system:<22} {mode:<22} n={n:<8} {us:9.2f} us/task")
        emit(workload="W4", system=system, mode=mode, metric="per_task_overhead",
             value=round(us, 3), unit="us", n=n, workers=workers,
             samples_us=[round(s / n * 1e6, 3) for s in samples], python=PYVER)

    with ThreadPoolExecutor(workers) as ex:
        for f in [ex.submit(noop) for _ in range(1000)]:
            f.result()

        def seq(n):
            for _ in range(n):
                ex.submit(noop).result()

        def pipe(n):
            for f in [ex.submit(noop) for _ in range(n)]:
                f.result()
        report("ThreadPoolExecutor", "sequential", args.n_tpe_seq, seq)
        report("ThreadPoolExecutor", "pipelined", args.n_tpe_pipe, pipe)

    pool = Systems.mp_pool(workers)
    try:
        def map1(n):
            if len(pool.map(noop, range(n), chunksize=1)) != n:
                raise RuntimeError("short map")

        def mapd(n):
            if len(pool.map(noop, range(n))) != n:
                raise RuntimeError("short map")
        report("multiprocessing.Pool", "map_chunksize_1", args.n_pool_map1, map1)
        report("multiprocessing.Pool", "map_default_chunksize", args.n_pool_map, mapd)
    finally:
        pool.terminate()
        pool.join()

    ex = Systems.ppe(workers)
    try:
        def pipe(n):
            for f in [ex.submit(noop) for _ in range(n)]:
                f.result()

        def seq(n):
            for _ in range(n):
                ex.submit(noop).result()
        report("ProcessPoolExecutor", "pipelined", args.n_ppe_pipe, pipe)
        report("ProcessPoolExecutor", "sequential", args.n_ppe_seq, seq)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)

    server = ppft_server(workers)
    try:
        def pipe(n):
            for j in [server.submit(noop, (None,)) for _ in range(n)]:
                j()

        def seq(n):
            for _ in range(n):
                server.submit(noop, (None,))()
        report("ppft", "pipelined", args.n_pp_pipe, pipe)
        report("ppft", "sequential", args.n_pp_seq, seq)
    finally:
        server.destroy()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke test: W4 N/10, 16 W3 tasks, one run each")
    p.add_argument("--only", choices=["W3", "W4"], help="run one workload")
    p.add_argument("--fib", type=int, default=27, help="W3: fib argument (default 27)")
    p.add_argument("--tasks", type=int, default=32, help="W3: task count (default 32)")
    p.add_argument("--w3-repeat", type=int, default=3)
    p.add_argument("--w4-repeat", type=int, default=3)
    g = p.add_argument_group("W4 task counts")
    g.add_argument("--n-tpe-seq", type=int, default=20_000)
    g.add_argument("--n-tpe-pipe", type=int, default=100_000)
    g.add_argument("--n-pool-map1", type=int, default=30_000)
    g.add_argument("--n-pool-map", type=int, default=1_000_000)
    g.add_argument("--n-ppe-pipe", type=int, default=10_000)
    g.add_argument("--n-ppe-seq", type=int, default=4_000)
    g.add_argument("--n-pp-pipe", type=int, default=4_000)
    g.add_argument("--n-pp-seq", type=int, default=2_000)
    args = p.parse_args()
    if args.quick:
        for k, v in vars(args).items():
            if k.startswith("n_") and p.get_default(k) == v:
                setattr(args, k, max(100, v // 10))
        if p.get_default("w3_repeat") == args.w3_repeat:
            args.w3_repeat = 1
        if p.get_default("w4_repeat") == args.w4_repeat:
            args.w4_repeat = 1
        if p.get_default("tasks") == args.tasks:
            args.tasks = 16
    return args


def on_sigterm(signum, _frame):
    """Kill our pool workers (by pid) and exit at once.

    Raising an exception from a signal handler can deadlock the executors'
    locks, so tear down hard instead. Forked pool workers inherit this handler
    and simply exit.
    """
    if os.getpid() == MAIN_PID:
        try:
            import psutil
            for child in psutil.Process().children(recursive=True):
                try:
                    child.kill()
                except psutil.Error:
                    pass
        except Exception:  # noqa: BLE001 - best effort, we are exiting
            pass
        print("[local_bench] terminated", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    log(f"python {PYVER}, cpu_count {os.cpu_count()}, "
        f"start method {multiprocessing.get_start_method()}")
    if args.only in (None, "W3"):
        run_w3(args)
    if args.only in (None, "W4"):
        run_w4(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
