#!/usr/bin/env python3
"""W7: 1M tiny tasks, auto-batched across the network, beside a local pool.

celeriac  `celeriac map celeriac.add --args-file F --chunk auto` through a
          private Redis to two `celeriac worker` processes (-c 1 each, one
          per core): the calls go as Celery `celery.starmap` chunks sized by
          the adaptive policy. The clock covers the whole command (reading
          the 1M-line file, chunking, Redis, the workers, printing every
          result in order); the workers are started and warmed up first.
python    multiprocessing.Pool(2).starmap(add, items) with the default
          chunksize (len / (4 * 2) = 125,000 items), pool started and
          warmed up first.

The two alternate (--repeat rounds, celeriac first) in the same run; each
figure is the median, and the ratio is celeriac's rate over Python's.
Human-readable lines go to stderr, one JSON object per measurement to
stdout (with the chunk sizes the policy chose).
"""
import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def add(x, y):
    return x + y


def log(msg):
    print(f"[automap_bench] {msg}", file=sys.stderr, flush=True)


def emit(**fields):
    fields["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(fields, separators=(",", ":")), flush=True)


def start_worker(args, name):
    logf = tempfile.NamedTemporaryFile(prefix=f"w7-{name}-", suffix=".log", delete=False)
    cmd = [args.celeriac_bin, "--loglevel", "warn", "worker", "--broker", args.redis,
           "-c", str(args.concurrency), "-n", f"{name}@bench"]
    log("starting: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, logf.name


def stop_worker(proc, logname):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.unlink(logname)
    except OSError:
        pass


def celeriac_map(args, path, n, expected_sum):
    """Runs `celeriac map` once; returns (seconds, stats dict)."""
    cmd = [args.celeriac_bin, "map", "celeriac.add", "--args-file", path,
           "--broker", args.redis, "--result-backend", args.redis,
           "--chunk", args.chunk, "--stats", "--no-progress", "--timeout", "600"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    secs = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"celeriac map exited {out.returncode}: {out.stderr.decode()[-2000:]}")
    lines = out.stdout.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) != n:
        raise RuntimeError(f"celeriac map printed {len(lines)} lines, expected {n}")
    got = sum(int(x) for x in lines)
    if got != expected_sum:
        raise RuntimeError(f"wrong results: sum {got}, expected {expected_sum}")
    stats = {}
    for line in out.stderr.decode().splitlines():
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if isinstance(v, dict) and "chunks" in v:
            stats = v
    return secs, stats


def warm(args, tmpdir):
    path = os.path.join(tmpdir, "warm.jsonl")
    with open(path, "w") as f:
        f.write("".join(f"[{i}, {i}]\n" for i in range(1000)))
    celeriac_map(args, path, 1000, sum(2 * i for i in range(1000)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--redis", required=True)
    p.add_argument("--celeriac-bin", required=True)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--concurrency", type=int, default=1, help="-c of each worker (default 1)")
    p.add_argument("--chunk", default="auto")
    args = p.parse_args()

    n = args.n
    expected = sum(2 * i for i in range(n))
    tmpdir = tempfile.mkdtemp(prefix="w7-")
    path = os.path.join(tmpdir, "calls.jsonl")
    with open(path, "w") as f:
        f.write("".join(f"[{i}, {i}]\n" for i in range(n)))
    items = [(i, i) for i in range(n)]

    workers = [start_worker(args, f"w7-{k}") for k in range(args.workers)]
    pool = multiprocessing.Pool(2)
    try:
        t0 = time.perf_counter()
        while True:
            try:
                warm(args, tmpdir)
                break
            except RuntimeError as e:
                if time.perf_counter() - t0 > 60:
                    raise
                log(f"warming up: {e}")
                time.sleep(0.5)
        # A second warm-up: every worker has heartbeated by now, so the
        # map sees all of them (the first may have seen one).
        time.sleep(2.5)
        warm(args, tmpdir)
        pool.starmap(add, items[:1000])
        ours, theirs, last_stats = [], [], {}
        for r in range(args.repeat):
            secs, stats = celeriac_map(args, path, n, expected)
            ours.append(secs)
            last_stats = stats
            log(f"round {r + 1}: celeriac map {secs:.3f}s ({n / secs:,.0f}/s), "
                f"chunks {stats.get('chunks')}, first sizes {stats.get('first_sizes')}, "
                f"median {stats.get('median_size')}, max {stats.get('max_size')}, "
                f"per item {stats.get('per_item_us')} µs, round trip {stats.get('round_trip_ms')} ms, "
                f"workers {stats.get('workers')}")
            t = time.perf_counter()
            res = pool.starmap(add, items)
            py = time.perf_counter() - t
            if sum(res) != expected:
                raise RuntimeError("Pool.starmap: wrong results")
            theirs.append(py)
            log(f"round {r + 1}: multiprocessing.Pool(2).starmap {py:.3f}s ({n / py:,.0f}/s)")
        m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
        ratio = m_theirs / m_ours
        common = {"workload": "W7", "n": n, "python": ".".join(map(str, sys.version_info[:3]))}
        emit(**common, system="celeriac-redis", metric="seconds", value=round(m_ours, 4),
             samples=[round(s, 4) for s in ours], rate=round(n / m_ours),
             worker_processes=args.workers, concurrency=args.concurrency, chunk=args.chunk,
             chunk_stats=last_stats)
        emit(**common, system="python-mp-pool", metric="seconds", value=round(m_theirs, 4),
             samples=[round(s, 4) for s in theirs], rate=round(n / m_theirs),
             chunksize="default")
        emit(**common, system="celeriac-redis", metric="rate_ratio_vs_mp_pool",
             value=round(ratio, 3), target=0.3)
        log(f"W7: celeriac {n / m_ours:,.0f}/s, Pool.starmap {n / m_theirs:,.0f}/s, "
            f"ratio {ratio:.2f} (target >= 0.3); load {os.getloadavg()[0]:.2f}")
    finally:
        pool.terminate()
        pool.join()
        for proc, logname in workers:
            stop_worker(proc, logname)
        try:
            os.unlink(path)
            os.unlink(os.path.join(tmpdir, "warm.jsonl"))
            os.rmdir(tmpdir)
        except OSError:
            pass


if __name__ == "__main__":
    main()
