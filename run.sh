#!/usr/bin/env bash
# autocore's entry points, each installing what it needs first:
#   ./run.sh demo [autocore demo options]   the gateway's main job on embedded defaults
#   ./run.sh test [pytest options]          the whole test suite on three installs
#   ./run.sh test-minimal [pytest options]  only the third: the 32-bit ARM build
#   ./run.sh image-test                     build the container image and smoke-test it (root)
# Installs Mosquitto (and the PostgreSQL server for the tests) with apt-get when
# missing, creates a virtual environment ($AUTOCORE_VENV, default .venv) and
# installs autocore into it with its Cython extensions compiled and uvloop; the
# tests also use $AUTOCORE_VENV-pure (pure-Python build, no accelerators) and
# $AUTOCORE_VENV-minimal (what the armv7l wheels hold: topic parser and ring buffer
# compiled, envelope validator pure because pysimdjson is absent at build time, no uvloop).
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
ensure_faketime() { compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null || apt_install faketime; }  # clock-jump tests
# LazyFS for the power-cut tests, built once from ../shared into a cache (its script
# apt-gets fuse3 and the build tools); without ../shared those tests skip and say why.
ensure_lazyfs() {
    export AUTOCORE_LAZYFS_DIR="${AUTOCORE_LAZYFS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/autocore/lazyfs}"
    local script=../shared/tools/build-lazyfs.sh
    if [ -f "$script" ]; then
        bash "$script" "$AUTOCORE_LAZYFS_DIR" >/dev/null
    else
        log "$script not found: the power-cut tests will be skipped"
    fi
}

# ensure_venv DIR BUILD: a virtual environment with autocore installed from this
# tree and the test tools. BUILD is one of
#   compiled  every Cython extension required, plus the accelerators (uvloop)
#   pure      AUTOCORE_NO_EXTENSIONS=1; neither pysimdjson nor uvloop installed
#   minimal   what the 32-bit ARM wheels hold: every module but _envelope compiled without
#             pysimdjson in the build environment, so _envelope stays pure; no uvloop
# One pip command builds and installs autocore with its dependencies, so the build
# switches apply to the copy that ends up installed.
ensure_venv() {
    local venv="$1" build="$2"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating virtual environment $venv"
        "$PYTHON" -m venv "$venv"
    fi
    local pip=("$venv/bin/python" -m pip)
    "${pip[@]}" install -q --upgrade pip
    log "installing autocore ($build build) into $venv"
    case "$build" in
        compiled)
            AUTOCORE_NO_EXTENSIONS= AUTOCORE_REQUIRE_EXTENSIONS=1 "${pip[@]}" install -q ".[accel,test,postgres]"
            ;;
        pure)
            "${pip[@]}" uninstall -q -y pysimdjson uvloop >/dev/null 2>&1 || true
            AUTOCORE_NO_EXTENSIONS=1 "${pip[@]}" install -q ".[test]"
            ;;
        minimal)
            "${pip[@]}" uninstall -q -y pysimdjson uvloop >/dev/null 2>&1 || true
            "${pip[@]}" install -q "setuptools>=77" "Cython>=3.0"
            AUTOCORE_NO_EXTENSIONS= AUTOCORE_REQUIRE_EXTENSIONS=_frames,_topics,_ring,_compress,_sqlwrite \
                "${pip[@]}" install -q --no-build-isolation ".[test]"
            ;;
    esac
}

# without_accelerators DIR: fail unless neither pysimdjson nor uvloop is importable there.
without_accelerators() {
    "$1/bin/python" - <<'PY'
import importlib.util, sys
found = [m for m in ("simdjson", "uvloop") if importlib.util.find_spec(m)]
sys.exit(f"accelerators installed in this venv: {found}" if found else 0)
PY
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
        ensure_faketime
        ensure_lazyfs
        ensure_venv "$VENV" compiled
        ensure_venv "$VENV-pure" pure
        ensure_venv "$VENV-minimal" minimal
        without_accelerators "$VENV-pure"
        without_accelerators "$VENV-minimal"
        # Installed systems run at UTC-3: naive-local timestamps must hold there.
        export TZ="${AUTOCORE_TEST_TZ:-<-03>3}"
        log "test leg 1/3: compiled install with uvloop (hot-path tests run against both builds)"
        AUTOCORE_EXPECT_EXTENSIONS=1 "$VENV/bin/python" -m pytest "$@"
        # Legs 2 and 3 prove the other builds; the slow fault and multi-gateway tests
        # exercise storage, client and broker, which do not differ between builds.
        log "test leg 2/3: pure install with AUTOCORE_NO_EXTENSIONS=1, without pysimdjson and uvloop"
        AUTOCORE_NO_EXTENSIONS=1 "$VENV-pure/bin/python" -m pytest -m "not slow" "$@"
        log "test leg 3/3: 32-bit ARM build (every module but _envelope compiled), without pysimdjson and uvloop"
        AUTOCORE_EXPECT_EXTENSIONS=_frames,_topics,_ring,_compress,_sqlwrite "$VENV-minimal/bin/python" -m pytest -m "not slow" "$@"
        ;;
    test-minimal)
        ensure_mosquitto
        ensure_postgres
        ensure_openssl
        ensure_venv "$VENV-minimal" minimal
        without_accelerators "$VENV-minimal"
        export TZ="${AUTOCORE_TEST_TZ:-<-03>3}"
        log "32-bit ARM build (every module but _envelope compiled), without pysimdjson and uvloop"
        AUTOCORE_EXPECT_EXTENSIONS=_frames,_topics,_ring,_compress,_sqlwrite "$VENV-minimal/bin/python" -m pytest "$@"
        ;;
    image-test)
        exec scripts/image_test.sh "$@"
        ;;
    *)
        echo "usage: ./run.sh demo [options] | ./run.sh test [pytest options]" \
             "| ./run.sh test-minimal [pytest options] | ./run.sh image-test" >&2
        exit 2
        ;;
esac
