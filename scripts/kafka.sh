#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft: broker + controller in one JVM) for tests and
# for a laptop run of the distributed pipeline (ARCHITECTURE §7).
#
#   scripts/kafka.sh fetch                 # jars from Maven Central into the cache (once)
#   scripts/kafka.sh start DIR PORT        # format + start in the background; prints HOST:PORT
#   scripts/kafka.sh stop DIR              # stop the broker started in DIR (data stays in DIR)
#
# The broker is org.apache.kafka:kafka_2.13 with its runtime dependencies, fetched by
# `mvn dependency:copy-dependencies` from Maven Central only (nothing else is downloaded),
# into ${DICOMCLOUD_CACHE:-$HOME/.cache/dicomcloud}/kafka-<version>/libs; a second fetch
# is a no-op. It runs on the machine's Java 17 and listens on 127.0.0.1 only.
#
# Environment:
#   KAFKA_VERSION          broker version (default 4.1.1)
#   KAFKA_HEAP             JVM heap options (default "-Xms128m -Xmx512m")
#   KAFKA_PARTITIONS       num.partitions for auto-created topics (default 1)
#   KAFKA_CONTROLLER_PORT  controller listener port (default: a free port)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker (default 90)
#   DICOMCLOUD_CACHE       cache root (default $HOME/.cache/dicomcloud)
set -euo pipefail
# shellcheck source=lib/maven.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/maven.sh"
# shellcheck source=lib/server.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
SCALA=2.13
cache_root=${DICOMCLOUD_CACHE:-${HOME:-/root}/.cache/dicomcloud}
home=$cache_root/kafka-$KAFKA_VERSION
libs=$home/libs

log() { printf '[kafka] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# --- fetch ------------------------------------------------------------------------------

fetch() {
    if [ -f "$home/.complete" ] && compgen -G "$libs/kafka_$SCALA-$KAFKA_VERSION.jar" >/dev/null; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn is not installed (apt-get install maven)"
    command -v java >/dev/null 2>&1 || die "java is not installed (apt-get install openjdk-17-jre-headless)"
    local work t0
    t0=$(date +%s)
    mkdir -p "$home"
    work=$(mktemp -d "$home/fetch.XXXXXX")
    # log4j-slf4j-impl + log4j-core: the broker logs through SLF4J 1.7; Kafka's own
    # distribution ships this Log4j 2 binding beside its jars, its POMs do not name it.
    maven_pom "$work/pom.xml" kafka-broker-runtime "org.apache.kafka:kafka_$SCALA:$KAFKA_VERSION" \
        org.apache.logging.log4j:log4j-slf4j-impl:2.24.3 org.apache.logging.log4j:log4j-core:2.24.3
    log "fetching org.apache.kafka:kafka_$SCALA:$KAFKA_VERSION and its runtime dependencies from Maven Central"
    if ! maven_run "$work" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$work/libs"; then
        rm -rf "$work"
        die "mvn could not fetch Kafka $KAFKA_VERSION"
    fi
    rm -rf "$libs"
    mv "$work/libs" "$libs"
    rm -rf "$work"
    touch "$home/.complete"
    log "fetched $(ls "$libs" | wc -l) jars into $libs in $(($(date +%s) - t0)) s"
}

# --- start / stop -------------------------------------------------------------------------

java_cmd() {  # java_cmd DIR MAIN: sets the array `cmd` (append the main's arguments)
    local dir=$1 main=$2
    # shellcheck disable=SC2206  # KAFKA_HEAP is a list of options
    cmd=(java ${KAFKA_HEAP:--Xms128m -Xmx512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -Djava.awt.headless=true "-Dlog4j2.configurationFile=file:$dir/log4j2.properties"
        "-Dkafka.logs.dir=$dir/logs" -cp "$libs/*" "$main")
}

start() {
    local dir=${1:?DIR} port=${2:?PORT} cport cmd
    case $port in '' | *[!0-9]*) die "PORT must be a number, not $port" ;; esac
    fetch
    mkdir -p "$dir/logs"
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/kafka.pid" ] && kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
        die "a broker is already running from $dir (pid $(cat "$dir/kafka.pid"))"
    fi
    if port_open "$port"; then
        die "127.0.0.1:$port is already in use"
    fi
    # Without python3: the port after PORT.
    cport=${KAFKA_CONTROLLER_PORT:-$(free_port 2>/dev/null || echo $((port + 1)))}
    cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=${KAFKA_PARTITIONS:-1}
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=${KAFKA_OFFSETS_PARTITIONS:-5}
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=${KAFKA_OFFSETS_PARTITIONS:-5}
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
auto.create.topics.enable=true
delete.topic.enable=true
EOF
    cat >"$dir/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $dir/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
    if [ ! -f "$dir/data/meta.properties" ]; then
        # A cluster id is 16 random bytes, base64url without padding (Uuid.randomUuid);
        # one that starts with "-" would be read as an option.
        local cluster_id=-
        while [ "${cluster_id#-}" != "$cluster_id" ]; do
            cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        done
        java_cmd "$dir" kafka.tools.StorageTool
        "${cmd[@]}" format -t "$cluster_id" -c "$dir/server.properties" \
            >"$dir/logs/format.log" 2>&1 || { cat "$dir/logs/format.log" >&2; die "kafka-storage format failed"; }
    fi
    local t0 timeout pid
    # A restart on the same DIR: the "started" line below must be this start's.
    if [ -f "$dir/logs/server.log" ]; then mv -f "$dir/logs/server.log" "$dir/logs/server.log.previous"; fi
    t0=$(date +%s)
    timeout=${KAFKA_START_TIMEOUT:-90}
    # setsid: the broker is not in the caller's process group (a Ctrl-C there goes to
    # the caller, whose trap runs `stop`); nohup-like redirections detach its output.
    java_cmd "$dir" kafka.Kafka
    setsid "${cmd[@]}" "$dir/server.properties" >"$dir/logs/stdout.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/kafka.pid"
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -30 "$dir/logs/stdout.log" "$dir/logs/server.log" >&2 2>/dev/null || true
            rm -f "$dir/kafka.pid"
            die "the broker exited during start-up (logs in $dir/logs)"
        fi
        if grep -q "Kafka Server started" "$dir/logs/server.log" 2>/dev/null && port_open "$port"; then
            break
        fi
        if [ $(($(date +%s) - t0)) -ge "$timeout" ]; then
            tail -30 "$dir/logs/server.log" >&2 2>/dev/null || true
            stop "$dir"
            die "the broker did not start within $timeout s (logs in $dir/logs)"
        fi
        sleep 0.2
    done
    log "Kafka $KAFKA_VERSION (pid $pid) on 127.0.0.1:$port, started in $(($(date +%s) - t0)) s, data in $dir"
    echo "127.0.0.1:$port"
}

stop() { stop_pidfile "${1:?DIR}/kafka.pid" broker; }

case ${1:-} in
    fetch) fetch; echo "$libs" ;;
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) usage ;;
esac
