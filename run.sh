#!/usr/bin/env bash
# autocore's two entry points, each installing what it needs first:
#   ./run.sh demo [autocore demo options]   the gateway's main job on embedded defaults
#   ./run.sh test [pytest options]          the whole test suite, compiled and pure builds
# Installs Mosquitto (and the PostgreSQL server for the tests) with apt-get when
# missing, creates a virtual environment ($AUTOCORE_VENV, default .venv) and
# installs autocore into it with its Cython extensions compiled.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${AUTOCORE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

log() { printf '==> %s\n' "$*" >&2; }

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        log "missing system packages; install them with: sudo apt-get install -y $*"
        exit 1
    fi
    log "installing $* (apt-get)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
    fi
}

have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }

have_postgres() {
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

ensure_mosquitto() { have_mosquitto || apt_install mosquitto mosquitto-clients; }
ensure_postgres() { have_postgres || apt_install postgresql; }

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtual environment $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    log "installing autocore with its compiled extensions"
    AUTOCORE_NO_EXTENSIONS= "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps . \
        && "$VENV/bin/python" -m pip install -q ".[test]"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        ensure_mosquitto
        ensure_venv
        exec "$VENV/bin/autocore" demo "$@"
        ;;
    test)
        ensure_mosquitto
        ensure_postgres
        ensure_venv
        # Installed systems run at UTC-3: naive-local timestamps must hold there.
        export TZ="${AUTOCORE_TEST_TZ:-<-03>3}"
        export AUTOCORE_EXPECT_EXTENSIONS=1
        log "test leg 1/2: compiled build (both builds of the hot path)"
        "$VENV/bin/python" -m pytest "$@"
        log "test leg 2/2: AUTOCORE_NO_EXTENSIONS=1 (pure Python everywhere)"
        AUTOCORE_NO_EXTENSIONS=1 AUTOCORE_EXPECT_EXTENSIONS= "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./run.sh demo [options] | ./run.sh test [pytest options]" >&2
        exit 2
        ;;
esac
