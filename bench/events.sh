#!/usr/bin/env bash
# The cost of Celery's task events (issue 12: at most 10% of W1): W1 through
# one private Redis with task events off, on (`celeriac worker -E`), and on
# with a monitor subscribed (`celeriac events --dump --json >/dev/null`),
# in alternating runs of the same build, so that a slow stretch of the
# machine hits every side alike. Prints the median of each figure per side
# and its ratio to "off".
#
#   bench/events.sh [BIN_DIR] [ROUNDS] [POOLS]
#
# BIN_DIR holds a release `celeriac` and `celeriac-bench` (default
# target/release, or $CARGO_TARGET_DIR/release); ROUNDS (default 5) runs
# per side; POOLS (default threads) as celeriac-bench's --pools. Raw JSON
# lines, tagged with "side", go to $BENCH_OUT/events.jsonl (default
# bench/out).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-${CARGO_TARGET_DIR:-$here/../target}/release}"; dir="$(cd "$dir" && pwd)"
rounds="${2:-5}"; pools="${3:-threads}"
[ -x "$dir/celeriac" ] && [ -x "$dir/celeriac-bench" ] || { echo "$dir: no celeriac and celeriac-bench" >&2; exit 2; }
outdir="${BENCH_OUT:-$here/out}"; mkdir -p "$outdir"
out="$outdir/events.jsonl"; : >"$out"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/celeriac-events-bench.XXXXXX")"
child=""; monitor=""
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
stop_monitor() {
    if [ -n "$monitor" ]; then kill "$monitor" 2>/dev/null || true; wait "$monitor" 2>/dev/null || true; monitor=""; fi
}
trap 'stop_monitor; bench_cleanup' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start_private_redis
echo "== $dir; private redis on $url; $rounds rounds; pools $pools; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# Seconds of CPU the Redis server has used (user + system).
redis_cpu() {
    redis-cli -p "$port" info cpu | tr -d '\r' |
        awk -F: '$1 == "used_cpu_user" || $1 == "used_cpu_sys" { s += $2 } END { print s }'
}

run_side() {
    local side="$1"; shift
    redis-cli -p "$port" flushall >/dev/null
    if [ "$side" = monitor ]; then
        "$dir/celeriac" events --dump --json --broker "$url" >/dev/null 2>>"$tmp/log" &
        monitor=$!
        sleep 0.5
    fi
    local cpu0 cpu1
    cpu0="$(redis_cpu)"
    "$dir/celeriac-bench" run --only W1 --redis "$url" --w1-repeat 1 --pools "$pools" \
        --celeriac-bin "$dir/celeriac" --worker-pidfile "$tmp/worker.pid" "$@" 2>>"$tmp/log" |
        sed "s/^{/{\"side\":\"$side\",/" >>"$out"
    cpu1="$(redis_cpu)"
    stop_monitor
    # Redis's CPU over the whole run (warm-up included) per W1 task.
    python3 -c "import json,sys; print(json.dumps({'side': sys.argv[1], 'workload': 'W1', 'system': 'redis-server', 'metric': 'redis_cpu_per_task', 'value': round((float(sys.argv[3]) - float(sys.argv[2])) * 1e6 / 20000, 2), 'unit': 'us'}))" \
        "$side" "$cpu0" "$cpu1" >>"$out"
}

for r in $(seq 1 "$rounds"); do
    case $((r % 3)) in
        1) order="off on monitor" ;;
        2) order="on monitor off" ;;
        *) order="monitor off on" ;;
    esac
    for side in $order; do
        echo "-- round $r/$rounds: $side" >&2
        case "$side" in
            off) run_side off ;;
            *) run_side "$side" --worker-arg=-E ;;
        esac
    done
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
groups = {}
for r in rows:
    if r["metric"] not in ("throughput", "enqueue_rate", "worker_cpu_per_task", "redis_cpu_per_task"):
        continue
    key = (r["system"], r["metric"], r["unit"])
    groups.setdefault(key, {}).setdefault(r["side"], []).append(r["value"])
print("| system | metric | off | on (-E) | on/off | on + monitor | monitor/off | runs |")
print("|---|---|---|---|---|---|---|---|")
for (s, m, u), v in sorted(groups.items()):
    off, on, mon = (statistics.median(v[k]) if v.get(k) else float("nan") for k in ("off", "on", "monitor"))
    print(f"| {s} | {m} | {off:.4g} {u} | {on:.4g} {u} | {on/off:.3f} | {mon:.4g} {u} | {mon/off:.3f} | {len(v.get('off', []))} |")
PY
