#!/usr/bin/env bash
# A Keycloak OpenID Connect provider for the tests (DICOMCLOUD_TEST_OIDC_ISSUER): the
# realm `dicomcloud` of tests/oidc/realm-dicomcloud.json, with its client-credentials clients.
#
#   scripts/keycloak.sh fetch                 # distribution from Maven Central into the cache (once)
#   scripts/keycloak.sh start DIR PORT        # start in the background; prints the issuer URL
#   scripts/keycloak.sh stop DIR              # stop the server started in DIR
#
# The server is org.keycloak:keycloak-quarkus-dist:<version>:zip, fetched by
# `mvn dependency:copy` from Maven Central only (nothing else is downloaded), unpacked into
# ${DICOMCLOUD_CACHE:-$HOME/.cache/dicomcloud}/keycloak-<version> and built there once
# (`kc.sh build`: embedded H2 file database, no health/metrics), so a start is
# `kc.sh start --optimized`. A server's first start creates the schema and the realm, which
# takes longer than the rest of the start: so fetch also runs the server once on the
# realm file and keeps its database (seeds/<hash of the realm file>.mv.db), and each start
# begins from a copy of it (a realm file that has no seed yet gets one on its first start).
# A second fetch is a no-op. DIR is the instance's home: its database (fresh at each
# start: nothing persists across a restart), realm import, temporary files, logs/.
# The server listens on 127.0.0.1:PORT over plain HTTP, with no fixed hostname: a
# token's `iss` follows the host the client asked (localhost:PORT or 127.0.0.1:PORT).
#
# Environment:
#   KEYCLOAK_VERSION        server version (default 26.5.5)
#   KEYCLOAK_JAVA_HOME      the JDK that runs it (default: the one of `java`, 17 or newer)
#   KEYCLOAK_HEAP           JVM memory options (default "-Xms64m -Xmx512m -XX:TieredStopAtLevel=1")
#   KEYCLOAK_REALM          realm file to import (default tests/oidc/realm-dicomcloud.json)
#   KEYCLOAK_START_TIMEOUT  seconds to wait for the realm to answer (default 180)
#   DICOMCLOUD_CACHE        cache root (default $HOME/.cache/dicomcloud)
set -euo pipefail
# shellcheck source=lib/maven.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/maven.sh"
# shellcheck source=lib/server.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"

KEYCLOAK_VERSION=${KEYCLOAK_VERSION:-26.5.5}
REALM=dicomcloud
repo=$(cd "$(dirname "$0")/.." && pwd)
cache_root=${DICOMCLOUD_CACHE:-${HOME:-/root}/.cache/dicomcloud}
home=$cache_root/keycloak-$KEYCLOAK_VERSION
default_realm=$repo/tests/oidc/realm-dicomcloud.json
# Build-time options (`kc.sh build`, persisted in the distribution): `start --optimized`
# then skips the re-augmentation. Another list here means another stamp, and the next
# fetch builds again.
BUILD_OPTIONS=(--db=dev-file --health-enabled=false --metrics-enabled=false)
build_stamp="${BUILD_OPTIONS[*]}"
# C1 only: the JIT compiles less while the server starts (and it serves few requests).
heap=${KEYCLOAK_HEAP:--Xms64m -Xmx512m -XX:TieredStopAtLevel=1}
scratch=""  # a work folder that the EXIT trap removes
seed_db=""
started_in=""
started_pid=""

log() { printf '[keycloak] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

usage() {
    sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cleanup() {  # on exit: a half-made seed (and its server) or download goes, its logs stay
    local rc=$? kept=$cache_root/keycloak-failed-logs
    if [ -n "$scratch" ]; then
        stop "$scratch" 2>/dev/null || true
        if [ "$rc" -ne 0 ] && { compgen -G "$scratch/*.log" || compgen -G "$scratch/logs/*.log"; } >/dev/null; then
            rm -rf "$kept"
            mkdir -p "$kept"
            cp "$scratch"/*.log "$scratch"/logs/*.log "$kept/" 2>/dev/null || true
            log "logs kept in $kept"
        fi
        rm -rf "$scratch"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

java_home() {  # the JDK that runs Keycloak: KEYCLOAK_JAVA_HOME, else the one `java` is
    local java
    if [ -n "${KEYCLOAK_JAVA_HOME:-}" ]; then
        [ -x "$KEYCLOAK_JAVA_HOME/bin/java" ] || die "no bin/java in KEYCLOAK_JAVA_HOME=$KEYCLOAK_JAVA_HOME"
        echo "$KEYCLOAK_JAVA_HOME"
        return 0
    fi
    java=$(command -v java) || die "java is not installed (apt-get install openjdk-17-jre-headless)"
    java=$(readlink -f "$java")
    dirname "$(dirname "$java")"
}

# --- fetch ------------------------------------------------------------------------------

fetch_dist() {
    if [ -f "$home/.complete" ] && [ "$(cat "$home/.complete")" = "$build_stamp" ]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn is not installed (apt-get install maven)"
    local t0 jdk work
    jdk=$(java_home)
    t0=$(date +%s)
    mkdir -p "$cache_root"
    work=$(mktemp -d "$cache_root/keycloak-$KEYCLOAK_VERSION.fetch.XXXXXX")
    scratch=$work
    maven_pom "$work/pom.xml" keycloak-dist
    log "fetching org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip from Maven Central"
    if ! maven_run "$work" dependency:copy \
        "-Dartifact=org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" -DoutputDirectory="$work"; then
        die "mvn could not fetch Keycloak $KEYCLOAK_VERSION"
    fi
    local zip=$work/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip dist=$work/dist/keycloak-$KEYCLOAK_VERSION
    if command -v unzip >/dev/null 2>&1; then
        unzip -q "$zip" -d "$work/dist"
    else
        python3 -m zipfile -e "$zip" "$work/dist"
    fi
    rm -f "$zip"
    [ -f "$dist/lib/quarkus-run.jar" ] || die "unexpected layout in keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
    # Augment once, for this configuration (the distribution comes built for production
    # defaults), so that a start skips it.
    if ! JAVA_HOME=$jdk JAVA_OPTS_KC_HEAP="-Xms64m -Xmx512m" sh "$dist/bin/kc.sh" \
        build "${BUILD_OPTIONS[@]}" >"$work/build.log" 2>&1; then
        tail -40 "$work/build.log" >&2
        die "kc.sh build failed (Java: $jdk)"
    fi
    printf '%s\n' "$build_stamp" >"$dist/.complete"
    # Replace a stale or half-made copy; a concurrent fetch that finished first wins.
    if ! { [ -f "$home/.complete" ] && [ "$(cat "$home/.complete")" = "$build_stamp" ]; }; then
        rm -rf "$home"
        mv "$dist" "$home"
    fi
    rm -rf "$work"
    scratch=""
    log "Keycloak $KEYCLOAK_VERSION ready in $home in $(($(date +%s) - t0)) s (Java: $jdk)"
}

fetch() {
    fetch_dist
    if [ -f "$default_realm" ]; then
        seed "$default_realm"
    fi
}

# --- one server -----------------------------------------------------------------------------

prepare() {  # prepare DIR REALM_FILE: DIR as the server's home (kc.home.dir)
    local dir=$1 realm_file=$2 part
    # The distribution's read-only parts are links into the cache; Keycloak also looks
    # there (lib/) to tell that it was built.
    for part in lib providers themes; do
        ln -sfn "$home/$part" "$dir/$part"
    done
    rm -rf "$dir/data"
    mkdir -p "$dir/conf" "$dir/data/import" "$dir/data/h2" "$dir/logs"
    : >"$dir/conf/keycloak.conf"
    cp "$realm_file" "$dir/data/import/realm-$REALM.json"
    if [ -f "$dir/logs/keycloak.log" ]; then mv -f "$dir/logs/keycloak.log" "$dir/logs/keycloak.log.previous"; fi
}

ready() {  # ready PORT: the realm's discovery document answers
    local url="http://127.0.0.1:$1/realms/$REALM/.well-known/openid-configuration"
    if command -v curl >/dev/null 2>&1; then
        curl -sf -o /dev/null --max-time 5 "$url"
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$url" \
            >/dev/null 2>&1
    fi
}

launch() {  # launch DIR PORT: start the server of DIR and wait until the realm answers
    local dir=$1 port=$2 t0 timeout pid jdk
    jdk=$(java_home)
    t0=$(date +%s)
    timeout=${KEYCLOAK_START_TIMEOUT:-180}
    # setsid: the server is not in the caller's process group (a Ctrl-C there goes to
    # the caller, whose trap runs `stop`); kc.sh forwards TERM to its JVM and waits for it.
    # The realm file is imported unless the database has the realm already (a seed).
    # hostname-strict=false and no hostname: the issuer is the URL a client asked.
    JAVA_HOME=$jdk JAVA_OPTS_KC_HEAP=$heap setsid sh "$home/bin/kc.sh" \
        "-Dkc.home.dir=$dir" "-Djboss.server.config.dir=$dir/conf" "-Djava.io.tmpdir=$dir/data/tmp" \
        start --optimized --import-realm --cache=local \
        --http-enabled=true --http-host=127.0.0.1 --http-port="$port" --hostname-strict=false \
        >"$dir/logs/keycloak.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/keycloak.pid"
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -40 "$dir/logs/keycloak.log" >&2 2>/dev/null || true
            rm -f "$dir/keycloak.pid"
            die "Keycloak exited during start-up (logs in $dir/logs)"
        fi
        if ready "$port"; then
            break
        fi
        if [ $(($(date +%s) - t0)) -ge "$timeout" ]; then
            tail -40 "$dir/logs/keycloak.log" >&2 2>/dev/null || true
            stop "$dir"
            die "Keycloak did not answer within $timeout s (logs in $dir/logs)"
        fi
        sleep 0.2
    done
    started_in=$(($(date +%s) - t0))
    started_pid=$pid
}

seed() {  # seed REALM_FILE: sets seed_db to the seeded database of REALM_FILE, made if missing
    local realm_file=$1 db dir
    db=$home/seeds/$(sha256sum "$realm_file" | cut -c1-16).mv.db
    if [ ! -f "$db" ]; then
        log "seeding a database with $realm_file (once for each version of the file)"
        mkdir -p "$home/seeds"
        dir=$(mktemp -d "$home/seeds/run.XXXXXX")
        scratch=$dir
        prepare "$dir" "$realm_file"
        launch "$dir" "$(free_port)"
        stop "$dir"  # a clean shutdown: H2 has written everything
        [ -f "$dir/data/h2/keycloakdb.mv.db" ] || die "no database in $dir/data/h2 after seeding"
        mv -f "$dir/data/h2/keycloakdb.mv.db" "$db"
        rm -rf "$dir"
        scratch=""
        log "seeded $db in $started_in s"
        # Seeds of realm files not started for a month (older versions of the file) go.
        find "$home/seeds" -maxdepth 1 -name '*.mv.db' -mtime +30 -delete 2>/dev/null || true
    fi
    touch "$db"
    seed_db=$db
}

# --- start / stop -------------------------------------------------------------------------

start() {
    local dir=${1:?DIR} port=${2:?PORT} realm_file=${KEYCLOAK_REALM:-$default_realm}
    case $port in '' | *[!0-9]*) die "PORT must be a number, not $port" ;; esac
    [ -f "$realm_file" ] || die "no realm file $realm_file"
    fetch_dist
    seed "$realm_file"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/keycloak.pid" ] && kill -0 "$(cat "$dir/keycloak.pid")" 2>/dev/null; then
        die "a Keycloak is already running from $dir (pid $(cat "$dir/keycloak.pid"))"
    fi
    if port_open "$port"; then
        die "127.0.0.1:$port is already in use"
    fi
    prepare "$dir" "$realm_file"
    cp "$seed_db" "$dir/data/h2/keycloakdb.mv.db"
    launch "$dir" "$port"
    log "Keycloak $KEYCLOAK_VERSION (pid $started_pid) on 127.0.0.1:$port, started in $started_in s, home $dir"
    echo "http://127.0.0.1:$port/realms/$REALM"
}

stop() { stop_pidfile "${1:?DIR}/keycloak.pid" Keycloak; }  # kc.sh passes TERM on to the JVM

case ${1:-} in
    fetch) fetch; echo "$home" ;;
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) usage ;;
esac
