#!/usr/bin/env bash
# Per-task overhead of celeriac-pool vs Python's ThreadPoolExecutor, same
# workloads (no-op tasks, 2 worker threads). Prints both tables and the JSON
# lines ({"bench":"pool.thread.*"} and {"bench":"peer.python.threadpool.*"}).
# Environment: POOL_BENCH_RUNS, POOL_BENCH_SCALE (passed to both).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

echo "== celeriac-pool (cargo bench -p celeriac-pool --bench pool_overhead)"
cargo bench -q -p celeriac-pool --bench pool_overhead
echo
echo "== Python peer (python3 bench/pool/threadpool_peer.py)"
python3 "$here/threadpool_peer.py"
