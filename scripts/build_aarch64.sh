#!/usr/bin/env bash
# Build autocore's wheel for a Raspberry Pi architecture on an x86_64 Debian or
# Ubuntu machine, under QEMU user-mode emulation, and run the hot-path tests
# against the installed wheel. For checking the compiled modules on ARM when no
# Pi, ARM runner or container registry is at hand; the release wheels come from
# .github/workflows/wheels.yml.
#
#   sudo scripts/build_aarch64.sh [ROOT]
#
#   AUTOCORE_EMU_ARCH=arm64 (default)  Debian 12 arm64, as 64-bit Raspberry Pi OS 12:
#                                      every extension must compile
#   AUTOCORE_EMU_ARCH=armhf            Debian 12 armhf (armv7l), as 32-bit Raspberry Pi OS:
#                                      no pysimdjson wheel, so every module but _envelope compiles
#                                      and _envelope stays pure, as in the armv7l wheels
#   ROOT                               the emulated root file system
#                                      (default /var/tmp/autocore-$AUTOCORE_EMU_ARCH)
#
# Steps, each timed: qemu-user-static and debootstrap from apt; binfmt_misc
# registration; a minimal Debian 12 root with python3, g++ and ca-certificates;
# a copy of this tree; `pip wheel` there (build isolation: Cython, setuptools and,
# on arm64, pysimdjson come from PyPI); a venv with only that wheel and the test
# extra; pytest on the hot-path tests (test_topics, test_topics_hypothesis,
# test_envelope, test_ring, test_compress) and test_packaging,
# run from a copy of the tests, so autocore is imported from the wheel.
# A second run reuses ROOT and skips the bootstrap. Emulation is slow: the
# C++ compile of simdjson dominates (see README, "Building wheels").
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH="${AUTOCORE_EMU_ARCH:-arm64}"
ROOT="${1:-/var/tmp/autocore-$ARCH}"
SUITE=bookworm
MIRROR="${AUTOCORE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
case "$ARCH" in
    arm64) QEMU=aarch64; REQUIRE=1; EXPECT=1 ;;
    armhf) QEMU=arm; REQUIRE=_frames,_topics,_ring,_compress,_sqlwrite; EXPECT=_frames,_topics,_ring,_compress,_sqlwrite ;;
    *) echo "AUTOCORE_EMU_ARCH must be arm64 or armhf" >&2; exit 2 ;;
esac

log() { printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap, chroot, binfmt_misc)" >&2; exit 1; }

log "host packages: qemu-user-static, binfmt-support, debootstrap"
if ! command -v debootstrap >/dev/null || ! command -v "qemu-$QEMU-static" >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static binfmt-support debootstrap >/dev/null
fi

log "binfmt_misc: run $ARCH binaries through qemu-$QEMU-static"
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$QEMU" ]; then
    update-binfmts --enable "qemu-$QEMU" || update-binfmts --import "qemu-$QEMU"
fi
grep -q enabled "/proc/sys/fs/binfmt_misc/qemu-$QEMU"

mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

if [ ! -x "$ROOT/usr/bin/python3" ]; then
    log "debootstrap $SUITE $ARCH into $ROOT (first stage)"
    rm -rf "$ROOT"
    debootstrap --foreign --arch="$ARCH" --variant=minbase \
        --include=python3,python3-venv,python3-dev,g++,ca-certificates "$SUITE" "$ROOT" "$MIRROR"
    cp "$(command -v "qemu-$QEMU-static")" "$ROOT/usr/bin/"
    log "debootstrap second stage (emulated)"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage
fi

for fs in proc sys dev; do
    mount --bind "/$fs" "$ROOT/$fs"
    mounted+=("$ROOT/$fs")
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The host's CA bundle, for networks whose proxy signs with a local CA the emulated
# system's ca-certificates does not know (pip there gets it as PIP_CERT).
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca-bundle.crt"

log "copying this tree to $ROOT/build/autocore"
rm -rf "$ROOT/build"
mkdir -p "$ROOT/build/autocore" "$ROOT/build/tests-copy"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -C "$ROOT/build/autocore" -xf -
cp -r tests deploy conftest.py pyproject.toml "$ROOT/build/tests-copy/"

in_root() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

log "emulated python: $(in_root python3 -c 'import platform, struct; print(platform.python_version(), platform.machine(), struct.calcsize("P") * 8, "bit")')"
if [ ! -x "$ROOT/build-venv/bin/python" ]; then
    in_root python3 -m venv /build-venv
    in_root /build-venv/bin/python -m pip install -q --upgrade pip
fi

log "pip wheel (AUTOCORE_REQUIRE_EXTENSIONS=$REQUIRE), emulated"
start=$(date +%s)
in_root /usr/bin/env AUTOCORE_REQUIRE_EXTENSIONS="$REQUIRE" \
    /build-venv/bin/python -m pip wheel --no-deps /build/autocore -w /build/dist
log "wheel built in $(( $(date +%s) - start )) s: $(cd "$ROOT/build/dist" && ls autocore-*.whl)"
(cd "$ROOT/build/dist" && python3 -m zipfile -l autocore-*.whl | grep -E '\.so ' || true) >&2

log "fresh venv with only that wheel and the test extra"
rm -rf "$ROOT/test-venv"
in_root python3 -m venv /test-venv
in_root /test-venv/bin/python -m pip install -q --upgrade pip
in_root /bin/sh -c '/test-venv/bin/python -m pip install -q "$(ls /build/dist/autocore-*.whl)[test]"'

log "hot-path tests against the installed wheel, emulated"
start=$(date +%s)
in_root /bin/sh -c "cd /build/tests-copy && TZ='<-03>3' AUTOCORE_EXPECT_EXTENSIONS=$EXPECT \
    /test-venv/bin/python -c 'import autocore, autocore._fast as f; print(autocore.__file__, f.IMPLEMENTATIONS)' && \
    TZ='<-03>3' AUTOCORE_EXPECT_EXTENSIONS=$EXPECT /test-venv/bin/python -m pytest -q \
    tests/test_topics.py tests/test_topics_hypothesis.py tests/test_envelope.py tests/test_ring.py \
    tests/test_compress.py tests/test_packaging.py"
log "tests done in $(( $(date +%s) - start )) s"
