#!/usr/bin/env bash
# W5: the Redis ceiling. Runs redis-benchmark for LPUSH, RPOP, SET and GET with
# pipeline depth 1 and 32 against REDIS_HOST:REDIS_PORT and prints one JSON
# line per command and depth on stdout (progress on stderr):
#   {"workload":"W5","system":"redis","metric":"ops_per_s","value":...,
#    "unit":"ops/s","command":"SET","pipeline":32,"clients":50,"n":200000,
#    "p50_latency_ms":...,"p99_latency_ms":...,"redis":"7.0.15"}
# Usage: redis_ceiling.sh REDIS_HOST REDIS_PORT [N]   (N default 200000)
# Environment: REDIS_BENCH_CLIENTS (default 50, redis-benchmark's -c default).
# Note: redis-benchmark writes keys (key:__rand_int__, mylist, ...) into db 0.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 REDIS_HOST REDIS_PORT [N]" >&2
    exit 2
fi
host="$1" port="$2" n="${3:-200000}" clients="${REDIS_BENCH_CLIENTS:-50}"
version="$(redis-cli -h "$host" -p "$port" info server | sed -n 's/^redis_version:\([^\r]*\).*/\1/p')"
for depth in 1 32; do
    echo "[redis_ceiling] redis-benchmark -n $n -c $clients -P $depth -t lpush,rpop,set,get" >&2
    redis-benchmark -h "$host" -p "$port" -q -n "$n" -c "$clients" -P "$depth" \
        -t lpush,rpop,set,get --csv |
    python3 -c '
import csv, json, sys
depth, clients, n, version = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for row in csv.DictReader(sys.stdin):
    rps, cmd = float(row["rps"]), row["test"]
    print(f"[redis_ceiling]   {cmd:<6} P={depth:<3} {rps:>12.0f} ops/s", file=sys.stderr)
    line = {"workload": "W5", "system": "redis", "metric": "ops_per_s", "value": rps,
            "unit": "ops/s", "command": cmd, "pipeline": depth,
            "clients": clients, "n": n, "redis": version}
    for k in ("avg_latency_ms", "p50_latency_ms", "p99_latency_ms"):
        if row.get(k):
            line[k] = float(row[k])
    print(json.dumps(line, separators=(",", ":")), flush=True)
' "$depth" "$clients" "$n" "$version"
done
# The round-trip floor: one client, one PING at a time. Every send -> result
# round trip of W2 needs several such round trips (publish, the worker's
# claim, the result store), so W2 is reported against it.
echo "[redis_ceiling] redis-benchmark -n 20000 -c 1 -t ping (one client: the round-trip floor)" >&2
redis-benchmark -h "$host" -p "$port" -q -n 20000 -c 1 -t ping --csv |
    python3 -c '
import csv, json, sys
version = sys.argv[1]
for row in csv.DictReader(sys.stdin):
    if row["test"] != "PING_MBULK" or not row.get("p50_latency_ms"):
        continue
    p50 = float(row["p50_latency_ms"])
    print(f"[redis_ceiling]   PING -c 1 p50 round trip {p50:.3f} ms", file=sys.stderr)
    print(json.dumps({"workload": "W5", "system": "redis", "metric": "ping_rtt_p50",
                      "value": p50, "unit": "ms", "clients": 1, "n": 20000,
                      "redis": version}, separators=(",", ":")), flush=True)
' "$version"
