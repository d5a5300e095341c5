# shellcheck shell=bash
# Shared by bench/run.sh and bench/peers/run.sh (source it). Both keep their
# scratch files in $tmp and the step running now in $child.

# Stops the running step, any worker process group left behind (its pid in
# $tmp/worker.pid or $tmp/celery-worker.pid), the private Redis and the
# private RabbitMQ node (if one was started in $tmp/rabbit), removes
# $tmp, and exits with the status the script was exiting with.
bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "${child:-}" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        # Up to 30 s for the step to stop its worker and pools, then force.
        for _ in $(seq 300); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    # A worker left behind by a killed step leads its own process group.
    for f in "$tmp/worker.pid" "$tmp/celery-worker.pid"; do
        if [ -f "$f" ]; then
            kill -KILL -- "-$(cat "$f")" 2>/dev/null || true
        fi
    done
    if [ -f "$tmp/redis.pid" ]; then
        local rpid
        rpid="$(cat "$tmp/redis.pid")"
        kill -TERM "$rpid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$rpid" 2>/dev/null || true
    fi
    if [ -x "$tmp/rabbit/stop" ]; then
        "$tmp/rabbit/stop"
    fi
    rm -rf "$tmp"
    exit "$rc"
}

# Starts one private redis-server on a free loopback port (retrying if the
# port is taken) and sets $port and $url; exits the script if it cannot.
start_private_redis() {
    port=""
    local cand
    for _ in 1 2 3 4 5; do
        cand="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
        if redis-server --port "$cand" --bind 127.0.0.1 --save "" --appendonly no \
            --daemonize yes --pidfile "$tmp/redis.pid" --dir "$tmp" \
            --logfile "$tmp/redis.log" >/dev/null 2>&1; then
            for _ in $(seq 50); do
                # Ours only if the server answering is the one whose pid we
                # hold (a daemonizing redis-server exits 0 even when the port
                # is taken).
                if [ -s "$tmp/redis.pid" ] && redis-cli -p "$cand" info server 2>/dev/null |
                    grep -q "^process_id:$(cat "$tmp/redis.pid")"; then
                    port="$cand"
                    break
                fi
                sleep 0.1
            done
            [ -n "$port" ] && break
            [ -f "$tmp/redis.pid" ] && kill "$(cat "$tmp/redis.pid")" 2>/dev/null || true
        fi
    done
    if [ -z "$port" ]; then
        echo "could not start redis-server" >&2
        cat "$tmp/redis.log" >&2 2>/dev/null || true
        exit 1
    fi
    url="redis://127.0.0.1:$port/0"
}
