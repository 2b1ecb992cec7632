# shellcheck shell=bash
# Sourced by scripts/kafka.sh and scripts/keycloak.sh: ports on 127.0.0.1 and a server
# started in the background with its pid in a file. The sourcing script defines log.

free_port() {  # a TCP port free on 127.0.0.1 now
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop_pidfile FILE NAME: SIGTERM to the process in FILE, then SIGKILL to its session
# (it was started by setsid) if it is still there after 20 s; FILE goes.
stop_pidfile() {
    local file=$1 name=$2 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name $pid did not stop within 20 s: killing it"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}
