#!/usr/bin/env bash
# The whole benchmark suite (issue 6) in one command: celeriac beside its
# Python peers, against ONE private redis-server.
#
#   bench/run.sh [--quick] [--only W6,...]
#
# 1. builds target/release/celeriac and target/release/celeriac-bench
#    (cargo build --release -p celeriac-cli -p celeriac-bench);
# 2. creates/updates the peers' venv (bench/peers/setup.sh);
# 3. starts one redis-server on a free loopback port (no persistence; the
#    system Redis on 6379 is never used);
# 4. W5 bench/peers/redis_ceiling.sh; celeriac W1+W2 (celeriac-bench,
#    worker -P threads and -P processes); celeriac W1+W2 on the default
#    broker, one sqlite:// file in $tmp (worker -P threads, a separate
#    client process); Celery W1+W2 (prefork, threads);
#    celeriac W3+W4; Python W3+W4 (bench/peers/local_bench.py); W7
#    (bench/peers/automap_bench.py: 1M tiny tasks through `celeriac map
#    --chunk auto` to two `celeriac worker` processes, beside
#    multiprocessing.Pool(2).starmap with default chunks); W6 canvas
#    (a group and a chord of 10,000 adds from one Python Celery client,
#    bench/peers/canvas_bench.py) to a celeriac worker and to Celery
#    prefork. Redis is flushed between steps. W1+W2 on AMQP: celeriac
#    (-P threads) and Celery prefork with a private RabbitMQ node
#    (scripts/rabbitmq-private.sh, a vhost each) as the broker and results
#    in the private Redis, side by side (systems `*-amqp`); skipped with a
#    note if rabbitmq-server is not installed;
# 5. all JSON lines go to bench/out/results.jsonl, and the Markdown table
#    (celeriac beside the peers, with ratios) to bench/out/table.md and
#    stdout.
# --quick uses small N (about a minute); the full run takes about 7-8 minutes.
# --only W1,W6 runs only the steps of those workloads (W1W2, W3W4 count for
# both of theirs).
# Every process started here is stopped on exit, error or Ctrl-C. The exit
# status is non-zero if any step failed (the other steps still run).
# Environment: BENCH_OUT (default bench/out), CARGO (default cargo).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
peers="$here/peers"
quick=0
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --only) only="${2:?--only takes a list such as W1,W6}"; shift ;;
        --only=*) only="${1#--only=}" ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

outdir="${BENCH_OUT:-$here/out}"
mkdir -p "$outdir"
results="$outdir/results.jsonl"
table="$outdir/table.md"
logfile="$outdir/run.log"
: >"$results"
: >"$logfile"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/celeriac-bench.XXXXXX")"
child=""

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { echo "== $*" | tee -a "$logfile" >&2; }

start=$(date +%s)
mode="$([ "$quick" = 1 ] && echo quick || echo full)"
say "celeriac benchmark suite ($mode run), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. Release binaries (only these two packages, not the whole workspace).
say "building: ${CARGO:-cargo} build --release -p celeriac-cli -p celeriac-bench"
(cd "$root" && "${CARGO:-cargo}" build --release -p celeriac-cli -p celeriac-bench) 2>>"$logfile" || {
    tail -30 "$logfile" >&2
    exit 1
}
target_dir="$(cd "$root" && "${CARGO:-cargo}" metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
    echo "$root/target")"
bench_bin="$target_dir/release/celeriac-bench"
celeriac_bin="$target_dir/release/celeriac"

# 2. The peers' venv.
py="$("$peers/setup.sh")"
say "python: $py ($("$py" -c 'import sys; print(sys.version.split()[0])'))"

# 3. One private Redis on a free loopback port (retry if the port is taken).
start_private_redis
say "private redis-server $(redis-server --version | awk '{print $3}') pid $(cat "$tmp/redis.pid") on $url"

if [ "$quick" = 1 ]; then
    redis_n=50000
    celery_args=(--n 1000 --latency-n 500 --warmup 10)
    local_args=(--quick)
    bench_args=(--quick)
    step_limit=240
    canvas_n=2000
    automap_args=(--n 200000 --repeat 1)
else
    redis_n=200000
    celery_args=(--n 5000 --latency-n 2000)
    local_args=()
    bench_args=()
    step_limit=420
    canvas_n=10000
    automap_args=(--n 1000000 --repeat 3)
fi

failed=()
# run_step NAME CMD...: stdout (JSON lines) appended to $results, stderr
# shown and logged. A step that overruns $step_limit seconds gets SIGTERM
# (then SIGKILL 30 s later) and counts as failed, so a hung peer cannot
# stall the suite.
run_step() {
    local name="$1"; shift
    if [ -n "$only" ]; then
        local w want=0
        for w in ${only//,/ }; do
            case "$name" in *"$w"*) want=1 ;; esac
        done
        [ "$want" = 1 ] || return 0
    fi
    say "$name: $*"
    local t0=$SECONDS rc=0
    timeout --kill-after=30 "$step_limit" "$@" >>"$results" 2> >(tee -a "$logfile" >&2) &
    child=$!
    wait "$child" || rc=$?
    child=""
    [ "$rc" = 124 ] && say "$name: TIMED OUT after ${step_limit}s"
    say "$name: exit $rc after $((SECONDS - t0))s"
    [ "$rc" = 0 ] || failed+=("$name")
}
flush() { redis-cli -p "$port" flushall >/dev/null; }

# 4. The workloads.
run_step W5-redis "$peers/redis_ceiling.sh" 127.0.0.1 "$port" "$redis_n"
flush
run_step W1W2-celeriac "$bench_bin" run "${bench_args[@]}" --only W1,W2 --redis "$url" \
    --celeriac-bin "$celeriac_bin" --worker-pidfile "$tmp/worker.pid"
run_step W1W2-celeriac-sqlite "$bench_bin" run "${bench_args[@]}" --only W1,W2 \
    --broker "sqlite://$tmp/bench.db" --pools threads \
    --celeriac-bin "$celeriac_bin" --worker-pidfile "$tmp/worker.pid"
for pool in prefork threads; do
    flush
    run_step "W1W2-celery-$pool" "$py" "$peers/celery_bench.py" --redis "$url" --pool "$pool" \
        --concurrency 2 "${celery_args[@]}" --worker-pidfile "$tmp/celery-worker.pid"
done
# W1+W2 on RabbitMQ: celeriac and Celery prefork on one private node.
amqp_wanted=1
if [ -n "$only" ]; then
    amqp_wanted=0
    for w in ${only//,/ }; do case "W1W2-amqp" in *"$w"*) amqp_wanted=1 ;; esac; done
fi
if [ "$amqp_wanted" = 1 ] && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    mkdir -p "$tmp/rabbit"
    if rabbit_url="$("$root/scripts/rabbitmq-private.sh" "$tmp/rabbit" $$ 2>>"$logfile")"; then
        say "private rabbitmq-server at $rabbit_url"
        flush
        run_step W1W2-amqp-celeriac "$bench_bin" run "${bench_args[@]}" --only W1,W2 --pools threads \
            --redis "$url" --broker "$rabbit_url/t1" \
            --celeriac-bin "$celeriac_bin" --worker-pidfile "$tmp/worker.pid"
        flush
        run_step W1W2-amqp-celery-prefork "$py" "$peers/celery_bench.py" --redis "$url" \
            --broker "$rabbit_url/t2" --pool prefork \
            --concurrency 2 "${celery_args[@]}" --worker-pidfile "$tmp/celery-worker.pid"
    else
        say "private rabbitmq-server did not start (see $logfile)"
        failed+=("W1W2-amqp")
    fi
elif [ "$amqp_wanted" = 1 ]; then
    say "W1W2-amqp skipped: rabbitmq-server is not installed"
fi
# W6: the same Python client and canvas for both; celeriac first, then
# Celery prefork, in the same run.
flush
run_step W6-celeriac "$py" "$peers/canvas_bench.py" --redis "$url" --system celeriac \
    --celeriac-bin "$celeriac_bin" --rust-client "$bench_bin" --n "$canvas_n" \
    --worker-pidfile "$tmp/worker.pid"
flush
run_step W6-celery-prefork "$py" "$peers/canvas_bench.py" --redis "$url" --system celery-prefork \
    --n "$canvas_n" --worker-pidfile "$tmp/celery-worker.pid"
flush
run_step W3W4-celeriac "$bench_bin" run "${bench_args[@]}" --only W3,W4
run_step W3W4-python "$py" "$peers/local_bench.py" "${local_args[@]}"
# W7: auto-batched map through Redis vs multiprocessing.Pool, same run.
flush
run_step W7-automap "$py" "$peers/automap_bench.py" --redis "$url" \
    --celeriac-bin "$celeriac_bin" "${automap_args[@]}"

# 5. The combined table.
elapsed=$(( $(date +%s) - start ))
{
    echo "# celeriac benchmarks ($mode run)"
    echo
    echo "- **Date:** $(date -u '+%Y-%m-%d %H:%M UTC'); whole suite ${elapsed}s"
    echo "- **Machine:** $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)," \
         "load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- **Toolchain:** $(rustc --version 2>/dev/null || echo rustc ?), release profile;" \
         "$("$py" --version 2>&1); redis-server $(redis-server --version | awk '{print $3}' | sed 's/^v=//')"
    echo "- **Raw data:** \`$(realpath --relative-to="$root" "$results" 2>/dev/null || echo "$results")\`" \
         "(one JSON line per measurement)"
    if [ "${#failed[@]}" -gt 0 ]; then
        echo "- **FAILED steps:** ${failed[*]} (their rows are missing)"
    fi
    echo
    "$bench_bin" report "$results"
} >"$table"
echo >&2
cat "$table"
say "table: $table; JSON lines: $results; log: $logfile; ${elapsed}s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED steps: ${failed[*]}" >&2
    exit 1
fi
