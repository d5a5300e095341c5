#!/usr/bin/env bash
# A/B of two celeriac builds on W1, W2 (threads and processes, through one
# private Redis) and W4 (local per-task overhead), in alternating runs, so
# that a slow stretch of the machine hits both sides alike. Prints the
# median of each figure per side and the ratio B/A.
#
#   bench/ab.sh A_DIR B_DIR [ROUNDS]
#
# A_DIR and B_DIR each hold a release `celeriac` and `celeriac-bench` (for
# example: copy target/release/{celeriac,celeriac-bench} aside before a
# change, rebuild, and pass target/release as B). ROUNDS (default 5) is the
# number of runs per side; each round runs A then B, or B then A, in turn.
# Raw JSON lines, tagged with "side", go to $BENCH_OUT/ab.jsonl (default
# bench/out). AB_POOLS (default threads,processes) picks the W1/W2 worker
# pools, AB_W4=0 leaves W4 out, and AB_BROKER=sqlite runs W1/W2 through a
# fresh sqlite:// file per run instead of the private Redis;
# AB_SQLITE_SEED_A / AB_SQLITE_SEED_B (optional) name a database file that
# side's run starts from instead of an empty one (for example a file made
# with other creation-time pragmas).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -ge 2 ] || { sed -n '2,15p' "$0"; exit 2; }
a_dir="$(cd "$1" && pwd)"; b_dir="$(cd "$2" && pwd)"; rounds="${3:-5}"
for d in "$a_dir" "$b_dir"; do
    [ -x "$d/celeriac" ] && [ -x "$d/celeriac-bench" ] || { echo "$d: no celeriac and celeriac-bench" >&2; exit 2; }
done
outdir="${BENCH_OUT:-$here/out}"; mkdir -p "$outdir"
out="$outdir/ab.jsonl"; : >"$out"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/celeriac-ab.XXXXXX")"
child=""
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start_private_redis
echo "== A: $a_dir" >&2
echo "== B: $b_dir" >&2
echo "== private redis on $url; $rounds rounds; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

run_side() {
    local side="$1" dir="$2" target
    redis-cli -p "$port" flushall >/dev/null
    if [ "${AB_BROKER:-redis}" = sqlite ]; then
        rm -f "$tmp"/ab.db*
        local seed_var="AB_SQLITE_SEED_$side"
        if [ -n "${!seed_var:-}" ]; then cp "${!seed_var}" "$tmp/ab.db"; fi
        target=(--broker "sqlite://$tmp/ab.db")
    else
        target=(--redis "$url")
    fi
    "$dir/celeriac-bench" run --only W1,W2 "${target[@]}" --w1-repeat 1 \
        --pools "${AB_POOLS:-threads,processes}" \
        --celeriac-bin "$dir/celeriac" --worker-pidfile "$tmp/worker.pid" 2>>"$tmp/log" |
        sed "s/^{/{\"side\":\"$side\",/" >>"$out"
    if [ "${AB_W4:-1}" != 0 ]; then
        "$dir/celeriac-bench" run --only W4 --w4-repeat 1 2>>"$tmp/log" |
            sed "s/^{/{\"side\":\"$side\",/" >>"$out"
    fi
}

for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="A B"; else order="B A"; fi
    for side in $order; do
        echo "-- round $r/$rounds: $side" >&2
        if [ "$side" = A ]; then run_side A "$a_dir"; else run_side B "$b_dir"; fi
    done
done

python3 "$here/ab_table.py" "$out"
