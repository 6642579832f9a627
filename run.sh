#!/usr/bin/env bash
# autocore's two entry points, each installing what it needs first:
#   ./run.sh demo [autocore demo options]   the gateway's main job on embedded defaults
#   ./run.sh test [pytest options]          the whole test suite, compiled and pure builds
# Installs Mosquitto (and the PostgreSQL server for the tests) with apt-get when
# missing, creates a virtual environment ($AUTOCORE_VENV, default .venv) and
# installs autocore into it with its Cython extensions compiled; the tests also
# use a second one ($AUTOCORE_VENV-pure) holding the pure-Python build.
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
ensure_openssl() { command -v openssl >/dev/null 2>&1 || apt_install openssl; }  # TLS test certificates

# ensure_venv DIR BUILD: a virtual environment with autocore installed from this
# tree, BUILD=compiled (Cython extensions required) or BUILD=pure.
ensure_venv() {
    local venv="$1" build="$2"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating virtual environment $venv"
        "$PYTHON" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --upgrade pip
    log "installing autocore ($build build) into $venv"
    if [ "$build" = compiled ]; then
        AUTOCORE_NO_EXTENSIONS= AUTOCORE_REQUIRE_EXTENSIONS=1 \
            "$venv/bin/python" -m pip install -q --force-reinstall --no-deps .
    else
        AUTOCORE_NO_EXTENSIONS=1 "$venv/bin/python" -m pip install -q --force-reinstall --no-deps .
    fi
    "$venv/bin/python" -m pip install -q ".[test]"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        ensure_mosquitto
        ensure_venv "$VENV" compiled
        exec "$VENV/bin/autocore" demo "$@"
        ;;
    test)
        ensure_mosquitto
        ensure_postgres
        ensure_openssl
        ensure_venv "$VENV" compiled
        ensure_venv "$VENV-pure" pure
        # Installed systems run at UTC-3: naive-local timestamps must hold there.
        export TZ="${AUTOCORE_TEST_TZ:-<-03>3}"
        log "test leg 1/2: compiled install (hot-path tests run against both builds)"
        AUTOCORE_EXPECT_EXTENSIONS=1 "$VENV/bin/python" -m pytest "$@"
        log "test leg 2/2: pure install with AUTOCORE_NO_EXTENSIONS=1"
        AUTOCORE_NO_EXTENSIONS=1 "$VENV-pure/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./run.sh demo [options] | ./run.sh test [pytest options]" >&2
        exit 2
        ;;
esac
