#!/usr/bin/env bash
# W1 (threads, n tasks) of two celeriac builds in alternating runs through
# one private Redis, with the CPU each side costs: per run, the end-to-end
# rate, the worker's CPU per task (from /proc, as celeriac-bench reports
# it) and Redis's own CPU per task (INFO cpu, user + sys, before and after
# the run). Redis's CPU per task is what caps W1 on a small machine, and it
# is less sensitive to a busy neighbour than the rate.
#
#   bench/ab-redis-cpu.sh A_DIR B_DIR [ROUNDS] [N]
#
# A_DIR and B_DIR each hold a release `celeriac` and `celeriac-bench`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
a_dir="$(cd "$1" && pwd)"; b_dir="$(cd "$2" && pwd)"; rounds="${3:-3}"; n="${4:-20000}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/celeriac-ab-cpu.XXXXXX")"
child=""
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start_private_redis
redis_cpu() { redis-cli -p "$port" info cpu | awk -F: '/^used_cpu_(user|sys):/{s+=$2} END{printf "%.4f", s}'; }
echo "side  tasks/s  worker_cpu_us_per_task  redis_cpu_us_per_task  load"
one() {
    local side="$1" dir="$2" c0 c1
    redis-cli -p "$port" flushall >/dev/null
    c0="$(redis_cpu)"
    "$dir/celeriac-bench" run --only W1 --pools threads --n "$n" --w1-repeat 1 --redis "$url" \
        --celeriac-bin "$dir/celeriac" --worker-pidfile "$tmp/worker.pid" >"$tmp/out.jsonl" 2>>"$tmp/log" || true
    c1="$(redis_cpu)"
    python3 - "$side" "$c0" "$c1" "$n" "$tmp/out.jsonl" <<'PY'
import json, sys
side, c0, c1, n, f = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rows = {r["metric"]: r["value"] for r in map(json.loads, open(f)) if r.get("workload") == "W1"}
# The warm-up's 20 tasks run on the same Redis.
print(side, rows.get("throughput"), rows.get("worker_cpu_per_task"),
      round((c1 - c0) * 1e6 / (n + 20), 1), open("/proc/loadavg").read().split()[0], flush=True)
PY
}
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then one A "$a_dir"; one B "$b_dir"; else one B "$b_dir"; one A "$a_dir"; fi
done
