#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) one after another, at
# low priority, and prints one summary line per target. Needs a nightly
# toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Corpora grow in
# fuzz/corpus/<target> (not committed); crashes land in fuzz/artifacts.
set -u
cd "$(dirname "$0")"
secs=${1:-600}
targets=${TARGETS:-"message_decode message_body url_redis url_sqlite url_connect"}
status=0
for t in $targets; do
    case $t in
        message_*) dict=json.dict ;;
        *) dict=url.dict ;;
    esac
    mkdir -p "corpus/$t"
    log="${LOGDIR:-/tmp}/fuzz-$t.log"
    nice -n 10 cargo +nightly fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
        -dict="$dict" -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
    echo "$t rc=$rc secs=$secs runs=${runs:-?} corpus_files=$(ls "corpus/$t" | wc -l) corpus_kb=$(du -sk "corpus/$t" | cut -f1) | $done_line"
done
exit $status
