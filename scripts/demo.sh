#!/usr/bin/env bash
# Replay the original tool's example session live: four test containers, a
# private haproxy, and haproxy-docker-config adding, checking, deleting and
# verifying servers. Each command is printed (prefixed "# ") with its output;
# a non-zero exit (1 = not balanced / not found) is shown as "(exit N)".
# Everything it starts is removed again on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" >/dev/null
export PATH="$ROOT/.venv/bin:$PATH"
export no_proxy="127.0.0.1,localhost" NO_PROXY="127.0.0.1,localhost"  # curl stays local

dir="$(mktemp -d /tmp/hdc-demo.XXXXXX)"
cfg="$dir/haproxy.cfg"
pidfile="$dir/haproxy.pid"
ids=()
seen_pids=()

record_pids() {  # remember every haproxy pid ever listed, for cleanup
    if [ -f "$pidfile" ]; then
        # shellcheck disable=SC2207
        seen_pids+=($(cat "$pidfile"))
    fi
}

cleanup() {
    set +e
    record_pids
    for pid in "${seen_pids[@]}"; do
        # only a pid that is still haproxy (guards against pid reuse)
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = haproxy ]; then
            kill -9 "$pid" 2>/dev/null
        fi
    done
    if [ "${#ids[@]}" -gt 0 ]; then
        docker rm -f "${ids[@]}" >/dev/null 2>&1
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

run() {  # print and run a command; a failure is shown, not fatal
    echo "# $*"
    local rc=0
    "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "(exit $rc)"
    fi
    echo
}

port_free() {
    python -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

wait_http() {  # until the frontend answers (a hot restart rebinds it)
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.05
    done
    return 0
}

# --- four containers -------------------------------------------------------
for _ in 1 2 3 4; do
    echo "# docker run -d -p 127.0.0.1::8080 hdc-test-httpd"
    id="$(docker run -d -p 127.0.0.1::8080 hdc-test-httpd)"
    ids+=("$id")
    echo "$id"
done
echo
ID1="${ids[0]:0:12}" ID2="${ids[1]:0:12}" ID3="${ids[2]:0:12}" ID4="${ids[3]:0:12}"

# --- haproxy ---------------------------------------------------------------
port=8380
if ! port_free "$port"; then
    port="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
cat >"$cfg" <<CFG
global
    maxconn 256
    stats socket $dir/admin.sock mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

listen dockerha-app1
    bind 127.0.0.1:$port
    balance roundrobin
    #DOCKERSERVER   <%= id %> <%= ip %>:<%= port %> check inter 2000 rise 2 fall 5
CFG
echo "# cat $cfg"
cat "$cfg"
echo
echo "# haproxy -f $cfg -p $pidfile -D"
haproxy -f "$cfg" -p "$pidfile" -D
record_pids
echo

# --- the session -----------------------------------------------------------
hdc=(haproxy-docker-config -f "$cfg")
run docker ps
run "${hdc[@]}" -l dockerha-app1 --add "$ID1,$ID2,$ID3" -h "$pidfile"
record_pids
wait_http "$port"
run cat "$cfg"
for _ in 1 2 3; do
    run curl -s "http://127.0.0.1:$port/"
done
run "${hdc[@]}" -l dockerha-app1 -c -v
run "${hdc[@]}" -l dockerha-app1 -c "$ID4"
run "${hdc[@]}" -l dockerha-app1 --delete "$ID3" --show -h "$pidfile"
record_pids
run "${hdc[@]}" -l dockerha-app1 --verify
run docker kill "$ID2"
run "${hdc[@]}" -l dockerha-app1 --verify
