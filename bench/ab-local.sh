#!/usr/bin/env bash
# A/B of two celeriac builds on the local workloads only, W3 (CPU-bound
# speedup) and W4 (per-task overhead: thread pool, job server, process
# pool), in alternating runs (A B, B A, ...), with no Redis. Prints the
# median of each figure per side and the ratio B/A, as bench/ab.sh does.
#
#   bench/ab-local.sh A_DIR B_DIR [ROUNDS]
#
# A_DIR and B_DIR each hold a release `celeriac-bench`. ROUNDS (default 5)
# is the number of runs per side. Raw JSON lines, tagged with "side", go to
# $BENCH_OUT/ab-local.jsonl (default bench/out). Extra arguments for
# `celeriac-bench run` (both sides; default `--w4-repeat 1 --w3-repeat 3`)
# may be given in $AB_ARGS, and the
# workloads in $AB_ONLY (default W3,W4).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -ge 2 ] || { sed -n '2,14p' "$0"; exit 2; }
a_dir="$(cd "$1" && pwd)"; b_dir="$(cd "$2" && pwd)"; rounds="${3:-5}"
for d in "$a_dir" "$b_dir"; do
    [ -x "$d/celeriac-bench" ] || { echo "$d: no celeriac-bench" >&2; exit 2; }
done
outdir="${BENCH_OUT:-$here/out}"; mkdir -p "$outdir"
out="$outdir/ab-local.jsonl"; : >"$out"
echo "== A: $a_dir" >&2
echo "== B: $b_dir" >&2
echo "== $rounds rounds; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
run_side() {
    local side="$1" dir="$2"
    # shellcheck disable=SC2086
    "$dir/celeriac-bench" run --only "${AB_ONLY:-W3,W4}" ${AB_ARGS:---w4-repeat 1 --w3-repeat 3} 2>/dev/null |
        sed "s/^{/{\"side\":\"$side\",/" >>"$out"
}
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="A B"; else order="B A"; fi
    for side in $order; do
        echo "-- round $r/$rounds: $side (load $(cut -d' ' -f1 /proc/loadavg))" >&2
        if [ "$side" = A ]; then run_side A "$a_dir"; else run_side B "$b_dir"; fi
    done
done
python3 "$here/ab_table.py" "$out"
