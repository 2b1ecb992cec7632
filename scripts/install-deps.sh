#!/usr/bin/env bash
# Install what dicomcloud's tests need; safe to run again (does nothing when all is there).
#
#   - Debian packages: dcmtk (storescu, echoscu, findscu), postgresql (initdb, pg_ctl),
#     redis-server and a Python 3.11 with venv. `apt-get update` runs only when something is missing.
#     Services are not started (and need not be: scripts/test.sh starts its own cluster).
#   - .venv with Python 3.11 and `pip install -e '.[test]'`, skipped while the stamp
#     (hash of pyproject.toml + interpreter) still matches.
#
# Environment: PYTHON=/path/to/python3.11 picks the interpreter for a new venv.
set -euo pipefail

cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

log() { printf '[install-deps] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        log "need root to run: $*"
        return 1
    fi
}

# --- Debian packages -----------------------------------------------------------------

have_postgres() { compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; }

python_ok() {  # a Python 3.11 that can build a venv with pip
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' \
        >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 /usr/bin/python3.11; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$(command -v "$candidate")"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

missing=()
for tool in storescu echoscu findscu; do
    command -v "$tool" >/dev/null 2>&1 || { missing+=(dcmtk); break; }
done
have_postgres || missing+=(postgresql)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)  # the Kafka broker (scripts/kafka.sh)
command -v mvn >/dev/null 2>&1 || missing+=(maven)                     # fetches the broker from Maven Central
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)     # the read cache's tests (scripts/test.sh)
if [ ! -d .venv ] && ! find_python >/dev/null; then
    missing+=(python3.11 python3.11-venv)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null
else
    log "Debian packages present (dcmtk, postgresql, redis-server)"
fi
command -v storescu >/dev/null || { log "storescu still missing"; exit 1; }
command -v redis-server >/dev/null || { log "redis-server still missing"; exit 1; }
have_postgres || { log "PostgreSQL server binaries still missing"; exit 1; }

# --- Python virtual environment ------------------------------------------------------

if [ ! -x .venv/bin/python ]; then
    python=$(find_python) || { log "no Python 3.11 with venv found"; exit 1; }
    log "creating .venv with $python"
    rm -rf .venv
    "$python" -m venv .venv
fi

stamp_file=.venv/.dicomcloud-deps
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $(.venv/bin/python -c 'import sys; print(sys.version)' | head -1)"
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
    && .venv/bin/python -c 'import dicomcloud, pytest, pydicom' >/dev/null 2>&1; then
    log ".venv up to date"
else
    log "pip install -e '.[test]' (this takes a minute on a new machine)"
    .venv/bin/python -m pip install -q -e '.[test]'
    printf '%s' "$stamp" >"$stamp_file"
fi
log "done"
