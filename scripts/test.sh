#!/usr/bin/env bash
# The whole test suite, from a fresh clone. It checks the toolchain, starts a
# private redis-server on a free loopback port (installing the Debian package
# when it is missing and we are root), creates a Python venv with the pinned
# Celery of tests/python/requirements.txt for the interop tests, then runs
# formatting, clippy (-D warnings), the docs, every test and doctest, and the
# examples. Everything it starts is stopped when it exits.
#
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

say() { printf '\n== %s ==\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

run_dir="$(mktemp -d -t celeriac-test-XXXXXX)"
cleanup() {
  if [ -f "$run_dir/redis.pid" ]; then kill "$(cat "$run_dir/redis.pid")" 2>/dev/null || true; fi
  if [ -x "$run_dir/rabbit/stop" ]; then "$run_dir/rabbit/stop"; fi
  rm -rf "$run_dir"
}
trap cleanup EXIT

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $* (Debian packages)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    return 1
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# No incremental caches: CI builds once, and they double the disk used.
export CARGO_INCREMENTAL=0
# Test binaries without symbol tables: a failing test still names its file
# and line, and the build needs a third less disk (CI's disk is small).
export CARGO_PROFILE_DEV_STRIP=symbols

say "toolchain"
command -v cargo >/dev/null || fail "cargo is not installed (https://rustup.rs)"
cargo --version
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt 2>/dev/null || fail "rustfmt is missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy 2>/dev/null || fail "clippy is missing: rustup component add clippy"

command -v python3 >/dev/null || apt_install python3 || fail "python3 is required for the interop tests"

command -v openssl >/dev/null || apt_install openssl || fail "openssl is required to make the TLS test's certificates"

say "headless chromium (the dashboard's browser test)"
{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || apt_install chromium chromium-driver \
  || fail "chromium and chromedriver are not installed: install them (e.g. apt-get install chromium chromium-driver) or run this script as root"
chromedriver --version

say "private redis-server"
command -v redis-server >/dev/null || apt_install redis-server \
  || fail "redis-server is not installed: install it (e.g. apt-get install redis-server) or run this script as root"
redis-server --version
port="$(free_port)"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$run_dir" --daemonize yes --pidfile "$run_dir/redis.pid" --logfile "$run_dir/redis.log"
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; then
    break
  fi
  sleep 0.1
done
export CELERIAC_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
echo "redis-server on 127.0.0.1:$port"

say "private rabbitmq-server (starting in the background)"
# Never the machine's own RabbitMQ on 5672: a node of our own, with its own
# name, ports and data under $run_dir, stopped at exit.
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || apt_install rabbitmq-server \
  || fail "rabbitmq-server is not installed: install it (e.g. apt-get install rabbitmq-server) or run this script as root"
mkdir -p "$run_dir/rabbit"
rabbit_started=$SECONDS
scripts/rabbitmq-private.sh "$run_dir/rabbit" $$ > "$run_dir/rabbit.url" &
rabbit_pid=$!

say "python venv with celery"
venv="$root/.venv"
req="$root/tests/python/requirements.txt"
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$stamp"; then
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; } \
    || fail "cannot create a Python venv: install python3-venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
"$venv/bin/python" -c 'import celery; print("celery", celery.__version__)'
export CELERIAC_TEST_PYTHON="$venv/bin/python"
export CELERIAC_REQUIRE_INTEROP=1

# Keep test artifacts of this run private.
export CELERIAC_HOME="$run_dir/home"
unset CELERIAC_BROKER_URL CELERIAC_RESULT_BACKEND

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy -D warnings"
# Lints and docs build in a directory of their own, removed once they pass,
# so their artifacts never sit on disk beside the test build's.
lint_dir="${CARGO_TARGET_DIR:-$root/target}/lint"
CARGO_TARGET_DIR="$lint_dir" cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" CARGO_TARGET_DIR="$lint_dir" cargo doc --workspace --no-deps --locked --quiet
rm -rf "$lint_dir"

wait "$rabbit_pid" || fail "the private rabbitmq-server did not start"
export CELERIAC_TEST_AMQP_URL="$(cat "$run_dir/rabbit.url")"
export CELERIAC_TEST_AMQP_DIR="$run_dir/rabbit"
echo "rabbitmq-server at $CELERIAC_TEST_AMQP_URL (up $((SECONDS - rabbit_started)) s after its start)"

say "cargo test (unit, integration, doc)"
cargo test --workspace --locked --no-fail-fast

say "examples"
# `cargo run -p celeriac-examples` resolves features for that package alone,
# so the examples and their dependencies build again beside the test build
# (about 1 GB). Where the disk is small (CI), the test executables, which
# are no longer needed, make room first; elsewhere they stay, so that the
# next run only re-runs them.
target_dir="${CARGO_TARGET_DIR:-$root/target}"
avail_mb="$(df -Pm "$target_dir" | awk 'NR == 2 { print $4 }')"
if [ "${avail_mb:-0}" -lt "${CELERIAC_TEST_KEEP_BINARIES_MB:-10240}" ]; then
  echo "$avail_mb MB free: removing the test executables before the examples build"
  find "$target_dir/debug/deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' -delete
fi
for ex in thread_pool job_server worker_and_client celery_messages redis_server task_semantics process_pool async_tasks observer canvas remote_control metrics events subtasks dashboard beat; do
  echo "-- example $ex"
  CELERIAC_BROKER_URL="${CELERIAC_TEST_REDIS_URL%/0}/4" \
    cargo run --quiet --locked -p celeriac-examples --example "$ex" >/dev/null
done
# RabbitMQ's example, on a vhost of the private node no test has claimed.
mkdir -p "$CELERIAC_TEST_AMQP_DIR/vhosts"
ran_rabbit=""
for i in $(seq 0 99); do
  if (set -o noclobber; : > "$CELERIAC_TEST_AMQP_DIR/vhosts/t$i") 2>/dev/null; then
    echo "-- example rabbitmq"
    CELERIAC_BROKER_URL="$CELERIAC_TEST_AMQP_URL/t$i" \
      cargo run --quiet --locked -p celeriac-examples --example rabbitmq >/dev/null
    ran_rabbit=1
    break
  fi
done
[ -n "$ran_rabbit" ] || fail "no free vhost on the private RabbitMQ for the rabbitmq example"
# The book's examples (every layer of both runs in examples/tests/book_layers.rs;
# here, the command lines, against nothing slower than a refused port).
for layer in threads processes async server queue; do
  echo "-- example fibonacci --layer $layer"
  cargo run --quiet --locked -p celeriac-examples --example fibonacci -- --layer "$layer" --inputs 4,3,8,6,10 >/dev/null
done
echo "-- example fibonacci --layer server on Redis"
cargo run --quiet --locked -p celeriac-examples --example fibonacci -- --layer server \
  --broker "${CELERIAC_TEST_REDIS_URL%/0}/5" --inputs 4,3,8,6,10 >/dev/null
echo "-- example crawler --layer queue"
cargo run --quiet --locked -p celeriac-examples --example crawler -- --layer queue --timeout 2 http://127.0.0.1:9/ \
  | grep -qx "crawled 0 pages, 1 failed"

echo "-- example user-project"
cargo run --quiet --locked -p user-project -- tasks | grep -qx proj.add

say "all checks passed"
