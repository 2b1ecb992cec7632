#!/usr/bin/env bash
# The test command: install what is missing, start a throwaway PostgreSQL, a
# single-node Kafka (scripts/kafka.sh, DICOMCLOUD_TEST_KAFKA), a Redis
# without persistence (DICOMCLOUD_TEST_REDIS) and a Keycloak with the test realm
# (scripts/keycloak.sh, DICOMCLOUD_TEST_OIDC_ISSUER), then
# ruff, mypy and pytest over the whole tests/ tree. Exits non-zero if any step fails
# (pytest's "no tests collected", exit 5, counts as a failure).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -m 'not e2e'    # extra arguments go to pytest
#
# The cluster lives in a temporary directory, listens on 127.0.0.1 on a free port with
# trust authentication, runs as the `postgres` user when started as root (PostgreSQL
# refuses root), and is stopped and removed on exit, whatever happens.
set -uo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
started=$(date +%s)

section() { printf '\n==== %s ====\n' "$*"; }

section "dependencies"
if ! bash scripts/install-deps.sh; then
    echo "scripts/test.sh: FAILED: scripts/install-deps.sh"
    exit 1
fi
python=$repo/.venv/bin/python
free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- throwaway PostgreSQL ---------------------------------------------------------------

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
pg_dir=""

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

stop_postgres() {
    if [ -n "$pg_dir" ] && [ -d "$pg_dir" ]; then
        if [ -f "$pg_dir/data/postmaster.pid" ]; then
            as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
        fi
        rm -rf "$pg_dir"
    fi
}
stop_with() {  # stop_with SCRIPT DIR: `scripts/SCRIPT stop DIR`, then DIR goes
    if [ -n "$2" ] && [ -d "$2" ]; then
        bash "$repo/scripts/$1" stop "$2" || true
        rm -rf "$2"
    fi
}
kafka_dir=""
redis_dir=""
stop_redis() {
    if [ -n "$redis_dir" ] && [ -d "$redis_dir" ]; then
        local pid
        pid=$(cat "$redis_dir/redis.pid" 2>/dev/null) || pid=""
        if [ -n "$pid" ]; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
        rm -rf "$redis_dir"
    fi
}
keycloak_dir=""
trap 'stop_postgres; stop_with kafka.sh "$kafka_dir"; stop_redis; stop_with keycloak.sh "$keycloak_dir"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_postgres() {
    pg_dir=$(mktemp -d /tmp/dicomcloud-pg.XXXXXX) || return 1  # /tmp: the postgres user must reach it
    chmod 755 "$pg_dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$pg_dir" || return 1
    fi
    local port
    port=$(free_port) || return 1
    as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust -E UTF8 --no-locale \
        --no-sync >"$pg_dir/initdb.log" 2>&1 || { cat "$pg_dir/initdb.log"; return 1; }
    as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $pg_dir -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null || { cat "$pg_dir/server.log"; return 1; }
    export DICOMCLOUD_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
    echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $pg_dir)"
}

section "PostgreSQL"
if [ -z "$pg_bin" ] || ! start_postgres; then
    echo "scripts/test.sh: FAILED: could not start a PostgreSQL cluster"
    exit 1
fi

# --- throwaway Kafka (from Maven Central, KRaft, 127.0.0.1) ------------------------------

start_kafka() {
    local port t0 address
    t0=$(date +%s)
    bash scripts/kafka.sh fetch >/dev/null || return 1
    echo "Kafka jars ready in $(($(date +%s) - t0)) s"
    kafka_dir=$(mktemp -d /tmp/dicomcloud-kafka.XXXXXX) || return 1
    port=$(free_port) || return 1
    t0=$(date +%s)
    address=$(bash scripts/kafka.sh start "$kafka_dir" "$port") || return 1
    export DICOMCLOUD_TEST_KAFKA="$address"
    echo "Kafka on $address, started in $(($(date +%s) - t0)) s (data in $kafka_dir)"
}

section "Kafka"
if ! start_kafka; then
    echo "scripts/test.sh: FAILED: could not start a Kafka broker"
    exit 1
fi

# --- throwaway Redis (no persistence, 127.0.0.1) -----------------------------------------

start_redis() {
    local port
    redis_dir=$(mktemp -d /tmp/dicomcloud-redis.XXXXXX) || return 1
    port=$(free_port) || return 1
    redis-server --bind 127.0.0.1 --port "$port" --dir "$redis_dir" --save "" --appendonly no \
        --daemonize yes --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log" || return 1
    for _ in $(seq 100); do
        if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
            export DICOMCLOUD_TEST_REDIS="redis://127.0.0.1:$port/0"
            echo "Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2) on 127.0.0.1:$port (in $redis_dir)"
            return 0
        fi
        sleep 0.1
    done
    cat "$redis_dir/redis.log"
    return 1
}

section "Redis"
if ! start_redis; then
    echo "scripts/test.sh: FAILED: could not start a Redis server"
    exit 1
fi

# --- throwaway Keycloak (from Maven Central, realm tests/oidc/realm-dicomcloud.json) ------

start_keycloak() {
    local port t0 issuer
    t0=$(date +%s)
    bash scripts/keycloak.sh fetch >/dev/null || return 1
    echo "Keycloak ready in $(($(date +%s) - t0)) s"
    keycloak_dir=$(mktemp -d /tmp/dicomcloud-keycloak.XXXXXX) || return 1
    port=$(free_port) || return 1
    t0=$(date +%s)
    issuer=$(bash scripts/keycloak.sh start "$keycloak_dir" "$port") || return 1
    export DICOMCLOUD_TEST_OIDC_ISSUER="$issuer"
    echo "Keycloak issuer $issuer, started in $(($(date +%s) - t0)) s (home $keycloak_dir)"
}

section "Keycloak"
if ! start_keycloak; then
    echo "scripts/test.sh: FAILED: could not start a Keycloak server"
    exit 1
fi

# --- checks ---------------------------------------------------------------------------

names=()
results=()
failed=0

run_step() {  # run_step NAME COMMAND...
    local name=$1 t0 rc
    shift
    section "$name: $*"
    t0=$(date +%s)
    "$@"
    rc=$?
    if [ "$name" = pytest ] && [ "$rc" -eq 5 ]; then
        echo "pytest collected no tests: that is a failure"
    fi
    if [ "$rc" -eq 0 ]; then
        results+=("ok ($(($(date +%s) - t0)) s)")
    else
        results+=("FAILED, exit $rc ($(($(date +%s) - t0)) s)")
        failed=1
    fi
    names+=("$name")
}

export PYTHONDONTWRITEBYTECODE=1
run_step ruff "$repo/.venv/bin/ruff" check src tests
run_step mypy "$repo/.venv/bin/mypy"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    run_step pytest "$python" -m pytest --durations=15 "$@"  # paths given: just those
else
    run_step pytest "$python" -m pytest tests --durations=15 "$@"
fi

section "summary"
for i in "${!names[@]}"; do
    printf '  %-7s %s\n' "${names[$i]}" "${results[$i]}"
done
total=$(($(date +%s) - started))
if [ "$failed" -ne 0 ]; then
    echo "scripts/test.sh: FAILED after ${total} s"
    exit 1
fi
echo "scripts/test.sh: all checks passed in ${total} s"
