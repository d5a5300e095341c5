#!/usr/bin/env bash
# Run every Python peer benchmark and collect the JSON lines.
#
#   bench/peers/run.sh [--quick]
#
# 1. setup.sh (venv at bench/.venv-peers);
# 2. one private redis-server on a free loopback port (no persistence);
# 3. W5 redis_ceiling.sh, W1+W2 celery_bench.py for prefork and threads,
#    W3+W4 local_bench.py;
# 4. all JSON lines go to $PEERS_OUT (default bench/peers/out/peers.jsonl),
#    then a table of them is printed.
# --quick uses small N (whole run well under 2 minutes). Redis and the Celery
# worker are cleaned up on exit, error or Ctrl-C. Exit status is non-zero if
# any step failed (the other steps still run).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

out="${PEERS_OUT:-$here/out/peers.jsonl}"
mkdir -p "$(dirname "$out")"
: >"$out"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/celeriac-peers.XXXXXX")"
child=""

# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$(date +%s)
py="$("$here/setup.sh")"
echo "== python: $py" >&2

# Private Redis on a free loopback port (retry if the port gets taken).
start_private_redis
echo "== private redis-server pid $(cat "$tmp/redis.pid") on $url" >&2

if [ "$quick" = 1 ]; then
    redis_n=50000; celery_args=(--n 1000 --latency-n 500 --warmup 10); local_args=(--quick)
else
    redis_n=200000; celery_args=(--n 5000 --latency-n 2000); local_args=()
fi

failed=()
# run_step NAME CMD...: stdout (JSON lines) appended to $out, stderr shown.
run_step() {
    local name="$1"; shift
    echo "== $name: $*" >&2
    local t0=$SECONDS rc=0
    "$@" >>"$out" &
    child=$!
    wait "$child" || rc=$?
    child=""
    echo "== $name: exit $rc after $((SECONDS - t0))s" >&2
    [ "$rc" = 0 ] || failed+=("$name")
}

run_step W5 "$here/redis_ceiling.sh" 127.0.0.1 "$port" "$redis_n"
redis-cli -p "$port" flushall >/dev/null
for pool in prefork threads; do
    run_step "celery-$pool" "$py" "$here/celery_bench.py" --redis "$url" --pool "$pool" \
        --concurrency 2 "${celery_args[@]}" --worker-pidfile "$tmp/worker.pid"
done
run_step local "$py" "$here/local_bench.py" "${local_args[@]}"

echo
echo "Python peers ($([ "$quick" = 1 ] && echo quick || echo full) run, $(( $(date +%s) - start ))s," \
     "$(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)); JSON lines in $out"
"$py" "$here/report.py" "$out"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED steps: ${failed[*]}" >&2
    exit 1
fi
