#!/usr/bin/env bash
# Starts a private RabbitMQ node for the tests, never the machine's own:
# its own node name, AMQP and distribution ports (free loopback ports), data,
# log and Erlang cookie under DIR, no plugins, and 100 vhosts t0..t99 with
# full rights for guest (loaded at boot: one per test, see
# celeriac_testkit::rabbit_server). Prints the URL without a vhost once the
# node accepts connections. `DIR/stop` stops it; with WATCH_PID, the node
# also stops when that process exits. If DIR/tls holds ca.pem, server.pem and
# server.key, the node also listens for TLS on a free port written to
# DIR/tls_port; a DIR/advanced.config is used as the node's advanced config.
#
# Usage: scripts/rabbitmq-private.sh DIR [WATCH_PID]
set -euo pipefail
dir="$1"; watch="${2:-}"
bin=/usr/lib/rabbitmq/bin
[ -x "$bin/rabbitmq-server" ] || { echo "rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"; dist="$(free_port)"
node="celeriac-test-$port@localhost"
mkdir -p "$dir/home"
: > "$dir/enabled_plugins"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/home/.erlang.cookie"
chmod 400 "$dir/home/.erlang.cookie"
python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
vhosts = [{"name": "/"}] + [{"name": f"t{i}"} for i in range(100)]
perms = [{"user": "guest", "vhost": v["name"], "configure": ".*", "write": ".*", "read": ".*"} for v in vhosts]
json.dump({"users": [{"name": "guest", "password": "guest", "tags": "administrator"}],
           "vhosts": vhosts, "permissions": perms}, open(f"{d}/definitions.json", "w"))
PY
cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$port
loopback_users = none
load_definitions = $dir/definitions.json
CONF
if [ -f "$dir/tls/server.pem" ]; then
  tls_port="$(free_port)"
  cat >> "$dir/rabbitmq.conf" <<CONF
listeners.ssl.default = 127.0.0.1:$tls_port
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
  echo "$tls_port" > "$dir/tls_port"
fi
cat > "$dir/stop" <<STOP
#!/bin/sh
HOME="$dir/home" $bin/rabbitmqctl -q -n "$node" stop >/dev/null 2>&1 || kill "\$(cat "$dir/pid" 2>/dev/null)" 2>/dev/null || true
STOP
chmod +x "$dir/stop"
(
  cd "$dir"
  if [ -f "$dir/advanced.config" ]; then export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"; fi
  HOME="$dir/home" RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT="$dist" \
  RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/pid" \
  RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
  RABBITMQ_FEATURE_FLAGS_FILE="$dir/feature_flags" \
  setsid "$bin/rabbitmq-server" > "$dir/server.log" 2>&1 < /dev/null &
)
for _ in $(seq 1 600); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "$node" > "$dir/node"
    if [ -n "$watch" ]; then
      setsid sh -c "while kill -0 $watch 2>/dev/null; do sleep 1; done; '$dir/stop'" > /dev/null 2>&1 < /dev/null &
    fi
    echo "amqp://guest:guest@127.0.0.1:$port"
    exit 0
  fi
  sleep 0.1
done
echo "RabbitMQ did not start within 60 s; its log:" >&2
tail -20 "$dir/server.log" >&2
"$dir/stop"
exit 1
