#!/usr/bin/env bash
# Build the gateway's image from the Containerfile with podman on this machine
# and smoke-test what it holds, without an image registry and without
# `podman run`. Called by `./run.sh image-test`; needs root (debootstrap,
# chroot, mounts).
#
#   scripts/image_test.sh
#
#   AUTOCORE_IMAGE_CACHE            cache folder (default ~/.cache/autocore/image): the
#                                   bootstrapped base, podman's storage and layer cache;
#                                   delete it to start cold
#   AUTOCORE_DEBIAN_MIRROR          Debian mirror for debootstrap (default: the one apt uses)
#   AUTOCORE_PODMAN_STORAGE_DRIVER  overlay or vfs (default: overlay where the kernel
#                                   allows it, else vfs, which copies every layer whole:
#                                   a first build stores about 2.6 GB there, 0.75 GB
#                                   with overlay)
#   AUTOCORE_IMAGE_KEEP=1           keep the exported file system and the logs
#
# Steps, each timed:
#  1. podman, debootstrap, Mosquitto and its clients from apt when missing.
#  2. The base: the public name the Containerfile's BASE_IMAGE defaults to
#     (debian:bookworm-slim) cannot be pulled here, so a bookworm minbase root is
#     bootstrapped once, slimmed as the -slim images are (no documentation, man
#     pages or locales; apt keeps no package files), cached as a tarball and
#     `podman import`ed under that name.
#  3. `podman build --isolation chroot` of the real Containerfile, with the host's
#     CA bundle mounted read-only over the build's own (HTTPS here is re-signed by
#     a local CA); `--pull=never`, so the stand-in is what gets used.
#  4. The image's settings (user, volume, port, stop signal, health check) and
#     contents (no compiler, no pip, the CA bundle not kept, the hot path
#     compiled, psycopg's C build loading libpq) are checked.
#  5. `podman create` + `podman export` give its file system. `autocore run`, the
#     image's entrypoint and command with the image's environment and working
#     directory, runs there under chroot as the image's user (a private mount
#     namespace supplies /proc and /dev) against a Mosquitto on a free loopback
#     port: the retained `online` status, /readyz 200, the image's own health
#     check, a device announced and registered in /data/autocore.db, its
#     telemetry stored there, then SIGTERM: exit code 0 and `offline` retained.
# Every process started here is stopped by its PID, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${AUTOCORE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autocore/image}"
IMAGE=localhost/autocore:image-test
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
GATEWAY_UUID=autocore-image-test
DEVICE_UUID=esp32-sensor-001
WAIT_S=30          # longest wait for the gateway, a message or a row
STOP_WAIT_S=30     # TimeoutStopSec of the systemd unit
BASE_IMAGE="$(sed -n 's/^ARG BASE_IMAGE=//p' Containerfile | head -n 1)"
[ -n "$BASE_IMAGE" ] || { echo "Containerfile: no ARG BASE_IMAGE default" >&2; exit 1; }

START_S=$SECONDS
log() { printf '==> [%4ds] %s\n' "$((SECONDS - START_S))" "$*" >&2; }
fail() { printf 'image-test: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root (debootstrap, chroot and mounts need it)"

# -- 1. tools ----------------------------------------------------------------------
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (apt-get)"
    apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -q "$@" >/dev/null; }
    apt_get install "${missing[@]}" || { apt_get update && apt_get install "${missing[@]}"; }
fi
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

WORK="$(mktemp -d /tmp/autocore-image-test.XXXXXX)"
ROOTFS="$WORK/rootfs"
mosquitto_pid=""
gateway_pid=""
container=""
built=""

stop_pid() {  # stop_pid PID: SIGTERM, then SIGKILL after 10 s
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    [ -n "$gateway_pid" ] && stop_pid "$gateway_pid"
    [ -n "$mosquitto_pid" ] && stop_pid "$mosquitto_pid"
    [ -n "$container" ] && podman rm -f "$container" >/dev/null 2>&1 || true
    if [ $rc -ne 0 ]; then
        local logs=(gateway.log mosquitto.log)
        [ -n "$built" ] || logs=(build.log)
        for f in "${logs[@]}"; do
            [ -s "$WORK/$f" ] && { echo "--- last lines of $f" >&2; tail -n 25 "$WORK/$f" >&2; }
        done
    fi
    if [ "${AUTOCORE_IMAGE_KEEP:-}" = 1 ] || [ $rc -ne 0 ]; then
        echo "image-test: logs and file system kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# -- podman, with its storage under the cache -------------------------------------
mkdir -p "$CACHE"
printf '[containers]\ndefault_ulimits = []\n' > "$CACHE/containers.conf"
export CONTAINERS_CONF="$CACHE/containers.conf"
podman_with() {  # podman_with DRIVER ARGS...
    local driver="$1"; shift
    command podman --root "$CACHE/storage-$driver" --runroot "$CACHE/run-$driver" \
        --storage-driver "$driver" --cgroup-manager cgroupfs --events-backend file "$@"
}
DRIVER="${AUTOCORE_PODMAN_STORAGE_DRIVER:-}"
if [ -z "$DRIVER" ]; then
    DRIVER=vfs
    if podman_with overlay info --format '{{.Store.GraphStatus}}' 2>/dev/null | grep -q 'Native Overlay Diff:true'; then
        DRIVER=overlay
    fi
fi
podman() { podman_with "$DRIVER" "$@"; }
log "podman $(command podman --version | awk '{print $3}'), storage driver $DRIVER, cache $CACHE"

# -- 2. the base image --------------------------------------------------------------
debian_mirror() {
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $2 ~ /^https?:/ {print $2; exit}' /etc/apt/sources.list)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

bootstrap_base() {  # bootstrap_base TARBALL
    local tarball="$1" root="$CACHE/bookworm-root" mirror
    mirror="${AUTOCORE_DEBIAN_MIRROR:-$(debian_mirror)}"
    rm -rf "$root"
    log "debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$root" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
    # What the -slim images leave out, now and in every later install.
    cat > "$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
    cat > "$root/etc/apt/apt.conf.d/slim" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
        "$root"/usr/share/groff/* "$root"/usr/share/lintian/* \
        "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/log/bootstrap.log "$root"/dev/* "$root"/etc/resolv.conf
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    : > "$root/etc/hostname"
    # The same sources as the public image: bookworm, its updates and security.
    rm -f "$root/etc/apt/sources.list"
    cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    tar -C "$root" --numeric-owner -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$root"
}

phase_s=$SECONDS
if podman image exists "$BASE_IMAGE"; then
    log "base $BASE_IMAGE: in podman's storage"
else
    tarball="$CACHE/bookworm-slim-$(dpkg --print-architecture).tar"
    [ -s "$tarball" ] || bootstrap_base "$tarball"
    podman import --change 'CMD ["bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
    log "base $BASE_IMAGE: imported from $tarball"
fi
base_s=$((SECONDS - phase_s))

# -- 3. the build ------------------------------------------------------------------
phase_s=$SECONDS
build_args=(--isolation chroot --format docker --pull=never --layers -f Containerfile -t "$IMAGE")
[ -s "$CA_BUNDLE" ] && build_args+=(--volume "$CA_BUNDLE:$CA_BUNDLE:ro")
log "podman build ${build_args[*]} ."
podman build "${build_args[@]}" . > "$WORK/build.log" 2>&1 || fail "podman build (see build.log below)"
built=1
build_s=$((SECONDS - phase_s))
cached_steps=$(grep -c -- '--> Using cache' "$WORK/build.log" || true)
log "built in ${build_s} s (${cached_steps} steps from the layer cache)"

# -- 4. the image's settings and contents --------------------------------------------
phase_s=$SECONDS
podman image inspect "$IMAGE" > "$WORK/inspect.json"
container="$(podman create --no-healthcheck "$IMAGE")"  # no systemd timer to set up
mkdir "$ROOTFS"
podman export "$container" | tar -C "$ROOTFS" --numeric-owner -xf -
podman rm "$container" >/dev/null
container=""

# Shell assignments from the image's config: the user, the command, the environment...
python3 - "$WORK/inspect.json" "$ROOTFS" "$CA_BUNDLE" > "$WORK/image.env" <<'PY'
import json, os, shlex, sys
image = json.load(open(sys.argv[1]))[0]
rootfs, ca_bundle = sys.argv[2], sys.argv[3]
config = image["Config"]
health = image.get("Healthcheck") or config.get("Healthcheck") or {}
problems = []
user = config.get("User", "")
if user.split(":")[0] in ("", "0", "root"):
    problems.append(f"runs as root (User={user!r})")
if config.get("StopSignal") != "SIGTERM":
    problems.append(f"StopSignal is {config.get('StopSignal')!r}")
if "/data" not in (config.get("Volumes") or {}):
    problems.append("no /data volume")
if not health.get("Test") or "/readyz" not in " ".join(health["Test"]):
    problems.append(f"no health check on /readyz: {health}")
env = dict(item.split("=", 1) for item in config.get("Env", []))
if env.get("DATABASE_PATH") != "/data/autocore.db":
    problems.append(f"DATABASE_PATH={env.get('DATABASE_PATH')!r}")
port = env.get("AUTOCORE_METRICS_PORT", "9108")
if f"{port}/tcp" not in (config.get("ExposedPorts") or {}):
    problems.append(f"metrics port {port} not exposed")
for tool in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/g++", "usr/bin/make", "usr/bin/pip3",
             "opt/autocore/bin/pip", "opt/autocore/bin/pip3"):
    if os.path.lexists(os.path.join(rootfs, tool)):
        problems.append(f"{tool} is in the image")
kept = os.path.join(rootfs, ca_bundle.lstrip("/"))
if os.path.isfile(kept) and os.path.getsize(kept) > 0 and os.path.isfile(ca_bundle) \
        and open(kept, "rb").read() == open(ca_bundle, "rb").read():
    problems.append(f"the host's {ca_bundle} was baked into the image")
if problems:
    sys.exit("image settings: " + "; ".join(problems))
command = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
print("IMAGE_USER=" + shlex.quote(user))
print("IMAGE_WORKDIR=" + shlex.quote(config.get("WorkingDir") or "/"))
print("IMAGE_ENV=(" + " ".join(shlex.quote(e) for e in config.get("Env", [])) + ")")
print("IMAGE_CMD=(" + " ".join(shlex.quote(c) for c in command) + ")")
test = health["Test"]
print("IMAGE_HEALTH=(" + " ".join(shlex.quote(c) for c in (test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]])) + ")")
print(f"IMAGE_SIZE_MB={image['Size'] / 1e6:.0f}")
PY
# shellcheck disable=SC1091
source "$WORK/image.env"
log "image $IMAGE: ${IMAGE_SIZE_MB} MB, user $IMAGE_USER, command ${IMAGE_CMD[*]}"

# in_image CMD...: become CMD in the exported file system, as the image's user, with
# the image's environment plus $RUN_ENV, in its working directory. Every step
# execs the next, so CMD keeps the caller's PID: call it in a subshell or with &.
in_image() {
    exec unshare --mount --propagation private /bin/sh -c '
        root="$1"; shift
        mount -t proc proc "$root/proc" && mount --bind /dev "$root/dev" && exec chroot "$@"
    ' in_image "$ROOTFS" --userspec="$IMAGE_USER" "$ROOTFS" \
        /usr/bin/env -i -C "$IMAGE_WORKDIR" HOME="$IMAGE_WORKDIR" "${IMAGE_ENV[@]}" "${RUN_ENV[@]}" "$@"
}
RUN_ENV=()
(in_image autocore info) > "$WORK/info.txt" 2>&1 || { cat "$WORK/info.txt" >&2; fail "autocore info in the image"; }
if [ "$(uname -m)" = x86_64 ] || [ "$(uname -m)" = aarch64 ]; then
    grep -Eq '^hot path: .* python$' "$WORK/info.txt" && { cat "$WORK/info.txt" >&2; fail "a hot-path module is not compiled"; }
fi
sed 's/^/    /' "$WORK/info.txt" >&2
# PostgreSQL support: psycopg's C build must load against the image's libpq.
(in_image python3 -c 'import psycopg; assert psycopg.pq.__impl__ == "c", psycopg.pq.__impl__; print("psycopg", psycopg.__version__, psycopg.pq.__impl__, "on libpq", psycopg.pq.version())') \
    > "$WORK/psycopg.txt" 2>&1 || { cat "$WORK/psycopg.txt" >&2; fail "psycopg in the image"; }
sed 's/^/    /' "$WORK/psycopg.txt" >&2

# -- 5. the gateway against a broker on loopback ------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MQTT_PORT_FREE="$(free_port)"
METRICS_PORT_FREE="$(free_port)"
cat > "$WORK/mosquitto.conf" <<EOF
listener $MQTT_PORT_FREE 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
EOF
"$MOSQUITTO" -c "$WORK/mosquitto.conf" > "$WORK/mosquitto.log" 2>&1 &
mosquitto_pid=$!
python3 - "$MQTT_PORT_FREE" <<'PY' || fail "Mosquitto did not start"
import socket, sys, time
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY

RUN_ENV=(
    MQTT_BROKER=127.0.0.1 "MQTT_PORT=$MQTT_PORT_FREE" "MQTT_CLIENT_ID=$GATEWAY_UUID"
    AUTOCORE_METRICS_HOST=127.0.0.1 "AUTOCORE_METRICS_PORT=$METRICS_PORT_FREE"
    TELEMETRY_FLUSH_INTERVAL=0.5
)
in_image "${IMAGE_CMD[@]}" > "$WORK/gateway.log" 2>&1 &
gateway_pid=$!
log "autocore run in the image (PID $gateway_pid), broker 127.0.0.1:$MQTT_PORT_FREE, endpoints :$METRICS_PORT_FREE"

readyz() {
    python3 - "$METRICS_PORT_FREE" "$WAIT_S" <<'PY'
import sys, time, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
url = f"http://127.0.0.1:{sys.argv[1]}/readyz"
deadline, last = time.monotonic() + float(sys.argv[2]), "no answer"
while time.monotonic() < deadline:
    try:
        with opener.open(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except urllib.error.HTTPError as exc:
        last = f"{exc.code} {exc.read()[:300]!r}"
    except OSError as exc:
        last = str(exc)
    time.sleep(0.2)
sys.exit(f"/readyz: {last}")
PY
}
readyz || fail "/readyz did not answer 200 within ${WAIT_S} s"
[ "$(readlink "/proc/$gateway_pid/root")" = "$ROOTFS" ] || fail "PID $gateway_pid is not the gateway in the image"
log "/readyz 200"

retained_status() {  # the gateway's retained status as "RETAIN-FLAG STATUS"
    mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT_FREE" -t "autocore/devices/$GATEWAY_UUID/status" \
        -C 1 -W 10 -F '%r %p' 2>/dev/null \
        | python3 -c 'import json, sys; flag, _, payload = sys.stdin.read().partition(" "); print(flag, json.loads(payload)["status"])'
}
status="$(retained_status)" || true
[ "$status" = "1 online" ] || fail "retained gateway status: '$status' (expected '1 online')"
log "retained status on autocore/devices/$GATEWAY_UUID/status: online"

RUN_ENV+=(AUTOCORE_METRICS_HOST=0.0.0.0)  # the image's own setting; its check must map it to loopback
(in_image "${IMAGE_HEALTH[@]}") > "$WORK/health.log" 2>&1 || { cat "$WORK/health.log" >&2; fail "the image's HEALTHCHECK command"; }
log "the image's HEALTHCHECK command: exit 0"

publish() {  # publish TOPIC FILE: QoS 1, as the firmware sends it
    mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT_FREE" -q 1 -t "$1" -f "$2"
}
sed "s/esp32-display-001/$DEVICE_UUID/; s/AA:BB:CC:DD:EE:01/AA:BB:CC:DD:EE:42/" \
    tests/data/fixtures/announce.json > "$WORK/announce.json"
DB="$ROOTFS/data/autocore.db"
rows() {  # rows SQL: poll the gateway's SQLite file until SQL returns a positive count
    python3 - "$DB" "$1" "$WAIT_S" <<'PY'
import sqlite3, sys, time
path, sql, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline, count = time.monotonic() + wait, 0
while time.monotonic() < deadline:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)
        try:
            count = conn.execute(sql).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        count = 0
    if count:
        print(count)
        sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
PY
}
publish "autocore/devices/$DEVICE_UUID/announce" "$WORK/announce.json"
rows "SELECT count(*) FROM devices WHERE uuid = '$DEVICE_UUID'" >/dev/null \
    || fail "$DEVICE_UUID was not registered in /data/autocore.db"
log "$DEVICE_UUID announced and registered in /data/autocore.db"
publish "autocore/devices/$DEVICE_UUID/telemetry" tests/data/fixtures/telemetry_analog_system.json
stored="$(rows "SELECT count(*) FROM telemetry_data t JOIN devices d ON d.id = t.device_id WHERE d.uuid = '$DEVICE_UUID'")" \
    || fail "no telemetry row of $DEVICE_UUID in /data/autocore.db"
log "$stored telemetry rows of $DEVICE_UUID stored"

kill -TERM "$gateway_pid"
rc=""
for ((i = 0; i < STOP_WAIT_S * 10; i++)); do
    kill -0 "$gateway_pid" 2>/dev/null || { wait "$gateway_pid" && rc=0 || rc=$?; break; }
    sleep 0.1
done
[ -n "$rc" ] || fail "the gateway ignored SIGTERM for ${STOP_WAIT_S} s"
gateway_pid=""
[ "$rc" -eq 0 ] || fail "the gateway exited with $rc after SIGTERM"
status="$(retained_status)" || true
[ "$status" = "1 offline" ] || fail "retained gateway status after SIGTERM: '$status' (expected '1 offline')"
log "SIGTERM: exit code 0, retained status offline"
smoke_s=$((SECONDS - phase_s))

log "image-test passed in $((SECONDS - START_S)) s (base ${base_s} s, build ${build_s} s, checks ${smoke_s} s);" \
    "image ${IMAGE_SIZE_MB} MB on a local stand-in for $BASE_IMAGE"
