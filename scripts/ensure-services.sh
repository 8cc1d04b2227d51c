#!/usr/bin/env bash
# Make sure Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672) answer:
# start them if installed, install them from Debian's packages if missing,
# then wait until both answer. Exits non-zero, with one line saying which, if
# either cannot be brought up: tests must never silently skip a broker.
set -euo pipefail

REDIS_PORT=6379
RABBIT_PORT=5672
WAIT_S=${JOBKIT_SERVICES_WAIT_S:-90}

say() { echo "ensure-services: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

redis_ok() { command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p $REDIS_PORT ping 2>/dev/null)" = "PONG" ]; }
# An open port is not enough: RabbitMQ accepts TCP before it can serve AMQP.
rabbit_ok() {
    port_open $RABBIT_PORT || return 1
    command -v rabbitmqctl >/dev/null || return 0
    as_root rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1 || as_root rabbitmqctl -q status >/dev/null 2>&1
}

apt_updated=0
install_pkg() {
    if [ $apt_updated -eq 0 ]; then
        say "installing $1 (apt-get update first)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

wait_for() {  # name check
    local deadline=$((SECONDS + WAIT_S))
    until "$2"; do
        if [ $SECONDS -ge $deadline ]; then say "$1 did not answer within ${WAIT_S}s"; return 1; fi
        sleep 1
    done
    say "$1 is up"
}

if ! redis_ok; then
    command -v redis-server >/dev/null || install_pkg redis-server
    say "starting redis-server"
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $REDIS_PORT --save "" --appendonly no >/dev/null
fi
wait_for redis redis_ok

if ! port_open $RABBIT_PORT; then
    command -v rabbitmq-server >/dev/null || install_pkg rabbitmq-server
    say "starting rabbitmq-server"
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
    as_root timeout "$WAIT_S" rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi
wait_for rabbitmq rabbit_ok

# The test suite runs in parallel processes (pytest-xdist), each on a vhost of its own;
# the Dramatiq conformance check (tests/test_conformance.py) runs on jobkit-conformance.
if command -v rabbitmqctl >/dev/null; then
    for vhost in jobkit-test-gw1 jobkit-test-gw2 jobkit-test-gw3 jobkit-conformance; do
        as_root rabbitmqctl -q add_vhost "$vhost" >/dev/null 2>&1 || true
        as_root rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null 2>&1 \
            || { say "cannot give guest access to vhost $vhost"; exit 1; }
    done
fi
