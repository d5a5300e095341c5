#!/usr/bin/env bash
# A/B of two celeriac builds on W6 (a group and a chord of N adds sent by
# Python Celery's client, drained by one `celeriac worker -c 2`, through
# one private Redis), in alternating runs, so that a slow stretch of the
# machine hits both sides alike. Prints the median of each figure per side
# (rate, and the worker's, Redis's and the client's CPU seconds) and B/A.
#
#   bench/ab-canvas.sh A_DIR B_DIR [ROUNDS] [-- canvas_bench.py options]
#
# A_DIR and B_DIR each hold a release `celeriac` (copy
# target/release/celeriac aside before a change, rebuild, and pass
# target/release as B). ROUNDS (default 5) is the number of runs per side;
# each round runs A then B, or B then A, in turn. Options after `--` go to
# bench/peers/canvas_bench.py for both sides (default: --modes drain
# --n 10000). With A_DIR = B_DIR and different options per side, set
# A_OPTS and B_OPTS instead (e.g. B_OPTS="--poll-ms 0"). Raw JSON lines,
# tagged with "side", go to $BENCH_OUT/ab-canvas.jsonl (default bench/out).
# WITH_CELERY=1 adds a side C to every round, Celery 5.7 prefork with the
# same concurrency and options, run between A and B, and prints C's
# medians and B/C, so that the ratio to Celery comes from the same rounds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -ge 2 ] || { sed -n '2,17p' "$0"; exit 2; }
a_dir="$(cd "$1" && pwd)"; b_dir="$(cd "$2" && pwd)"; shift 2
rounds=5
if [ $# -gt 0 ] && [ "$1" != "--" ]; then rounds="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
common=("$@")
[ ${#common[@]} -gt 0 ] || common=(--modes drain --n 10000)
for d in "$a_dir" "$b_dir"; do
    [ -x "$d/celeriac" ] || { echo "$d: no celeriac" >&2; exit 2; }
done
outdir="${BENCH_OUT:-$here/out}"; mkdir -p "$outdir"
out="$outdir/ab-canvas.jsonl"; : >"$out"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/celeriac-ab-canvas.XXXXXX")"
child=""
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
py="$("$here/peers/setup.sh")"
start_private_redis
echo "== A: $a_dir ${A_OPTS:-}" >&2
echo "== B: $b_dir ${B_OPTS:-}" >&2
echo "== private redis on $url; $rounds rounds; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

run_side() {
    local side="$1" dir="$2" opts="$3"
    redis-cli -p "$port" flushall >/dev/null
    local system=(--system celeriac --celeriac-bin "$dir/celeriac" --worker-pidfile "$tmp/worker.pid")
    if [ "$side" = C ]; then
        system=(--system celery-prefork --worker-pidfile "$tmp/celery-worker.pid")
    fi
    # shellcheck disable=SC2086 # word-split the per-side options
    "$py" "$here/peers/canvas_bench.py" --redis "$url" "${system[@]}" \
        "${common[@]}" $opts 2>>"$tmp/log" |
        sed "s/^{/{\"side\":\"$side\",/" >>"$out" &
    child=$!
    wait "$child"
    child=""
}

for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="A B"; else order="B A"; fi
    [ "${WITH_CELERY:-0}" = 1 ] && order="${order/ / C }"
    for side in $order; do
        echo "-- round $r/$rounds: $side" >&2
        case "$side" in
            A) run_side A "$a_dir" "${A_OPTS:-}" ;;
            B) run_side B "$b_dir" "${B_OPTS:-}" ;;
            C) run_side C "" "" ;;
        esac
    done
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
fields = [("value", "tasks/s"), ("worker_cpu_s", "s"), ("redis_cpu_s", "s"), ("client_cpu_s", "s")]
groups = {}
for r in rows:
    for f, unit in fields:
        if r.get(f) is not None:
            groups.setdefault((r["metric"], f, unit), {"A": [], "B": [], "C": []})[r["side"]].append(r[f])
with_c = any(v["C"] for v in groups.values())
head = "| canvas | figure | A median | B median | B/A |"
rule = "|---|---|--:|--:|--:|"
if with_c:
    head += " C (Celery) median | B/C |"
    rule += "--:|--:|"
print(head + " A runs | B runs |" + (" C runs |" if with_c else ""))
print(rule + "---|---|" + ("---|" if with_c else ""))
for (m, f, u), v in sorted(groups.items()):
    if not v["A"] or not v["B"]:
        continue
    a, b = statistics.median(v["A"]), statistics.median(v["B"])
    name = "rate" if f == "value" else f.replace("_s", "")
    runs = lambda xs: ", ".join(f"{x:.4g}" for x in xs)
    row = f"| {m} | {name} ({u}) | {a:.4g} | {b:.4g} | {b / a if a else float('nan'):.3f} |"
    if with_c:
        c = statistics.median(v["C"]) if v["C"] else float("nan")
        row += f" {c:.4g} | {b / c if c else float('nan'):.2f} |"
    row += f" {runs(v['A'])} | {runs(v['B'])} |"
    if with_c:
        row += f" {runs(v['C'])} |"
    print(row)
PY
