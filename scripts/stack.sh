#!/usr/bin/env bash
# The distributed stack on one machine, without containers: Debian's PostgreSQL and
# Redis, Apache Kafka from Maven Central (scripts/kafka.sh), and every dicomcloud
# service as a process of its own — two storescp sharing the DIMSE port, two
# consumers in one group, a loader, a webworker, a converter and a DICOMweb server.
#
#   scripts/stack.sh up [DIR]      # start everything in the background (default DIR: ./dicomcloud-stack)
#   scripts/stack.sh status [DIR]  # which processes run
#   scripts/stack.sh down [DIR]    # stop the services, then Kafka, Redis and PostgreSQL (data stays in DIR)
#
# Ports (environment): DIMSE_PORT 11112, HTTP_PORT 8080, KAFKA_PORT 19092, PG_PORT 15432, REDIS_PORT 16379.
# Logs: DIR/logs/<service>.log. Run scripts/install-deps.sh first (it installs what this needs).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
dir=${2:-./dicomcloud-stack}
DIMSE_PORT=${DIMSE_PORT:-11112}
HTTP_PORT=${HTTP_PORT:-8080}
KAFKA_PORT=${KAFKA_PORT:-19092}
PG_PORT=${PG_PORT:-15432}
REDIS_PORT=${REDIS_PORT:-16379}
SERVICES=(storescp-1 storescp-2 consumer-1 consumer-2 loader webworker converter server)

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

start_postgres() {
    local bin pg
    bin=$(pg_bin) || true
    [ -n "$bin" ] || die "PostgreSQL is not installed (scripts/install-deps.sh installs it)"
    pg=$dir/pg
    if [ ! -f "$pg/data/PG_VERSION" ]; then
        mkdir -p "$pg"
        chmod 755 "$dir" "$pg"
        [ "$(id -u)" -ne 0 ] || chown postgres: "$pg"
        as_pg "$bin/initdb" -D "$pg/data" -U postgres -A trust -E UTF8 --no-locale >"$dir/logs/initdb.log" 2>&1 ||
            die "initdb failed: see $dir/logs/initdb.log"
    fi
    as_pg "$bin/pg_ctl" -D "$pg/data" -l "$pg/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $pg -c max_connections=200" start >/dev/null ||
        die "PostgreSQL did not start: see $pg/server.log"
    log "PostgreSQL on 127.0.0.1:$PG_PORT"
}

stop_postgres() {
    local bin
    bin=$(pg_bin) || return 0
    [ -f "$dir/pg/data/postmaster.pid" ] || return 0
    as_pg "$bin/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1 || true
}

start_redis() {
    command -v redis-server >/dev/null || die "redis-server is not installed (scripts/install-deps.sh installs it)"
    mkdir -p "$dir/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$(cd "$dir/redis" && pwd)" --save '' \
        --appendonly no --daemonize yes --pidfile "$(cd "$dir/redis" && pwd)/redis.pid" \
        --logfile "$(cd "$dir" && pwd)/logs/redis.log"
    log "Redis on 127.0.0.1:$REDIS_PORT"
}

stop_redis() {
    local pid
    [ -f "$dir/redis/redis.pid" ] || return 0
    pid=$(cat "$dir/redis/redis.pid")
    kill "$pid" 2>/dev/null || true
    rm -f "$dir/redis/redis.pid"
}

service_args() {  # service_args NAME
    local name=$1 service=${1%%-*}
    local args=("$service" --data-dir "$dir/data" --database-url "postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
        --bus "kafka://127.0.0.1:$KAFKA_PORT?partitions=4" --redis-url "redis://127.0.0.1:$REDIS_PORT/0")
    case $service in
        storescp) args+=(--dimse-port "$DIMSE_PORT" --dimse-reuse-port) ;;
        server) args+=(--http-port "$HTTP_PORT") ;;
    esac
    printf '%s\n' "${args[@]}"
}

up() {
    mkdir -p "$dir/logs" "$dir/pids"
    dir=$(cd "$dir" && pwd)
    local exe=$repo/.venv/bin/dicomcloud name pid
    [ -x "$exe" ] || die "no $exe: run scripts/install-deps.sh first"
    start_postgres
    start_redis
    bash "$repo/scripts/kafka.sh" start "$dir/kafka" "$KAFKA_PORT" >/dev/null
    for name in "${SERVICES[@]}"; do
        mapfile -t args < <(service_args "$name")
        setsid "$exe" "${args[@]}" >>"$dir/logs/$name.log" 2>&1 </dev/null &
        echo $! >"$dir/pids/$name"
        # The first of each kind creates the topics and migrates the schema: let it finish.
        [ "$name" != storescp-1 ] && [ "$name" != consumer-1 ] || sleep 2
    done
    sleep 2
    status
    log "DIMSE: AE DICOMCLOUD on port $DIMSE_PORT; DICOMweb: http://127.0.0.1:$HTTP_PORT/dicom-web"
    log "logs in $dir/logs; stop with: scripts/stack.sh down $dir"
}

status() {
    local name pid failed=0
    for name in "${SERVICES[@]}"; do
        pid=$(cat "$dir/pids/$name" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            printf '  %-11s running (pid %s)\n' "$name" "$pid"
        else
            printf '  %-11s not running (log: %s)\n' "$name" "$dir/logs/$name.log"
            failed=1
        fi
    done
    return $failed
}

down() {
    local name pid
    for name in "${SERVICES[@]}"; do
        pid=$(cat "$dir/pids/$name" 2>/dev/null || true)
        [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true
    done
    for name in "${SERVICES[@]}"; do
        pid=$(cat "$dir/pids/$name" 2>/dev/null || true)
        for _ in $(seq 1 75); do
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        rm -f "$dir/pids/$name"
    done
    bash "$repo/scripts/kafka.sh" stop "$dir/kafka" || true
    stop_redis
    stop_postgres
    log "stopped; data stays in $dir"
}

case $cmd in
    up) up ;;
    status) status ;;
    down) down ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
