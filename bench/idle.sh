#!/usr/bin/env bash
# The idle cost of a `celeriac worker` on the default SQLite file broker,
# and the pick-up latency of `call --wait` against it, for one or more
# celeriac binaries, alternating (A B A B ...) so machine noise hits both.
#
# Usage: bench/idle.sh BIN_A [BIN_B ...] [-- ROUNDS]
# Prints, per binary and round, the CPU time the idle worker used in 20 s
# (in clock ticks; 100 ticks = one core-second) and the median, min and max
# of 15 `call celeriac.add --wait` round trips, each 0.3 s apart.
set -euo pipefail
bins=()
rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
    --) rounds="$2"; shift 2 ;;
    *) bins+=("$1"); shift ;;
  esac
done
[ ${#bins[@]} -gt 0 ] || { echo "usage: $0 BIN_A [BIN_B ...] [-- ROUNDS]" >&2; exit 2; }
tmp="$(mktemp -d -t celeriac-idle-XXXXXX)"
trap 'pkill -f "celeriac-idle-bench" 2>/dev/null || true; rm -rf "$tmp"' EXIT

one() {
  local bin="$1" tag="$2" home="$tmp/$2"
  mkdir -p "$home"
  CELERIAC_HOME="$home" "$bin" worker -c 2 -l warn -n "celeriac-idle-bench-$tag" 2>/dev/null &
  local pid=$!
  sleep 3
  local t1 t2
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  sleep 20
  t2=$(awk '{print $14+$15}' "/proc/$pid/stat")
  local lat
  lat=$(for _ in $(seq 1 15); do
    sleep 0.3
    s=$(date +%s%N)
    CELERIAC_HOME="$home" "$bin" call celeriac.add --args '[1,2]' --wait >/dev/null
    e=$(date +%s%N)
    echo $(( (e - s) / 1000000 ))
  done | sort -n | awk '{a[NR]=$1} END {printf "median %d ms, min %d, max %d", a[int((NR+1)/2)], a[1], a[NR]}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '%s\tidle: %d ticks in 20 s\tcall --wait: %s\n' "$bin" "$((t2 - t1))" "$lat"
}

for r in $(seq 1 "$rounds"); do
  i=0
  for b in "${bins[@]}"; do
    one "$b" "r$r-b$i"
    i=$((i + 1))
  done
done
