#!/usr/bin/env bash
# docker/smoke-test.sh: end-to-end test of docker/Dockerfile, docker/compose.yaml and the
# scaled set-up (docker/compose.scale.yaml: replicas behind nginx) on a machine without
# Docker Hub access (and without a running Docker engine).
#
#   sudo bash docker/smoke-test.sh
#
# What it does, each step skipped when already done:
#   1. installs Debian's docker.io, docker-compose and debootstrap if missing;
#   2. starts a private dockerd (own data root, exec root, pidfile and socket) unless
#      one already answers on that socket, and points DOCKER_HOST at it;
#   3. makes the base image ctm-serve-base:bookworm with debootstrap (minbase + python3,
#      python3-venv, ca-certificates, plus the host's local CAs) and `docker import`;
#   4. copies this machine's CPU torch wheel into docker/wheels/ (TORCH_SOURCE=local);
#   5. builds ctm-serve:latest and ctm-serve-nginx:latest through the compose files, brings
#      ctm-serve up as project "ctm-smoke", waits for the container to be healthy, checks
#      /healthz and /sample?n=5&seed=1, and checks the image (non-root user, baked-in
#      checkpoints);
#   6. brings compose.scale.yaml up as project "ctm-smoke-scale" (2 replicas + nginx, one
#      shared checkpoint folder) and checks that requests through nginx reach every replica,
#      that a seeded /sample is the same from each, and that a checkpoint added to the
#      folder serves on every replica within the reload poll interval; then kills one
#      replica under load (docker/replica_kill.py: SIGKILL to its host PID, 16 clients of
#      GETs through nginx) and checks that no GET fails and that the restart policy has it
#      serving through nginx again within 30 s;
#   7. tears down what it started: the compose projects, the wheel copy, and dockerd.
# Images stay in the data root as a build cache, so a second run is fast.
#
# Environment (all optional):
#   CTM_HOST_PORT       host port to publish (default 8000; a free one if 8000 is taken)
#   CTM_TORCH_WHEEL     CPU torch wheel to build with (default /opt/wheels/torch-*+cpu-cp311-*.whl;
#                       none found: torch comes from the CPU wheel index instead)
#   CTM_DOCKER_ROOT     dockerd data root, kept between runs (default /var/lib/ctm-docker)
#   CTM_DOCKER_EXEC     dockerd exec root; socket and pidfile go beside it (default /run/ctm-docker)
#   CTM_ROOTFS_CACHE    cached debootstrap tarball (default /var/cache/ctm-serve-docker/bookworm-rootfs.tar)
#   CTM_DEBIAN_MIRROR   debootstrap mirror (default http://deb.debian.org/debian)
#   CTM_HEALTH_TIMEOUT  seconds to wait for "healthy" (default 240)
#   CTM_KEEP_DOCKERD=1  leave the dockerd this script started running
#   CTM_COMPOSE         compose command (default: "docker compose" if present, else docker-compose)
#   CTM_SMOKE_SCALE=0   skip step 6 (the replicas behind nginx)
#   CTM_SMOKE_REPLICAS  replicas in step 6 (default 2)
#   CTM_SMOKE_POLL_S    CTM_RELOAD_POLL_S of the replicas in step 6 (default 2)
#   CTM_SMOKE_KILL=0    skip the replica kill under load in step 6
#   DOCKER_HOST         use this engine instead of starting one (it is never stopped)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPOSE_FILE="$REPO_ROOT/docker/compose.yaml"
SCALE_FILE="$REPO_ROOT/docker/compose.scale.yaml"
PROJECT=ctm-smoke
SCALE_PROJECT=ctm-smoke-scale
IMAGE=ctm-serve:latest
NGINX_IMAGE=ctm-serve-nginx:latest
BASE_IMAGE=ctm-serve-base:bookworm
DOCKER_ROOT="${CTM_DOCKER_ROOT:-/var/lib/ctm-docker}"
DOCKER_EXEC="${CTM_DOCKER_EXEC:-/run/ctm-docker}"
DOCKER_SOCK="$DOCKER_EXEC.sock"
DOCKER_PIDFILE="$DOCKER_EXEC.pid"
DOCKERD_LOG="$DOCKER_EXEC.log"
ROOTFS_CACHE="${CTM_ROOTFS_CACHE:-/var/cache/ctm-serve-docker/bookworm-rootfs.tar}"
DEBIAN_MIRROR="${CTM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HEALTH_TIMEOUT="${CTM_HEALTH_TIMEOUT:-240}"
WHEEL_DIR="$REPO_ROOT/docker/wheels"

T0=$SECONDS
STEP_NAME=""
STEP_T0=$SECONDS
STARTED_DOCKERD=0
DOCKERD_PID=""
STARTED_PROJECT=0
STARTED_SCALE_PROJECT=0
CREATED_WHEEL_DIR=0
COPIED_WHEEL=""
ROOTFS_TMP=""
CKPT_TMP=""

log() { printf '[smoke %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
end_step() {
    if [[ -n "$STEP_NAME" ]]; then
        log "---- done: $STEP_NAME ($((SECONDS - STEP_T0))s)"
    fi
}
step() {
    end_step
    STEP_NAME="$*"
    STEP_T0=$SECONDS
    printf '\n'
    log "==== $STEP_NAME"
}

compose() { "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$PROJECT" "$@"; }
scale_compose() { "${COMPOSE[@]}" -f "$SCALE_FILE" -p "$SCALE_PROJECT" "$@"; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    printf '\n'
    log "==== cleanup (exit status so far: $rc)"
    if [[ $STARTED_PROJECT == 1 ]]; then
        if [[ $rc != 0 ]]; then
            log "container logs (last 80 lines):"
            compose logs --no-color --tail 80 2>&1 | sed 's/^/    /'
        fi
        log "compose down (project $PROJECT)"
        compose down --remove-orphans 2>&1 | sed 's/^/    /'
    fi
    if [[ $STARTED_SCALE_PROJECT == 1 ]]; then
        if [[ $rc != 0 ]]; then
            log "container logs of $SCALE_PROJECT (last 40 lines each):"
            scale_compose logs --no-color --tail 40 2>&1 | sed 's/^/    /'
        fi
        log "compose down (project $SCALE_PROJECT)"
        scale_compose down --remove-orphans 2>&1 | sed 's/^/    /'
    fi
    if [[ -n "$COPIED_WHEEL" ]]; then
        rm -f "$COPIED_WHEEL"
    fi
    if [[ $CREATED_WHEEL_DIR == 1 ]]; then
        rmdir "$WHEEL_DIR" 2>/dev/null
    fi
    if [[ -n "$ROOTFS_TMP" ]]; then
        rm -rf "$ROOTFS_TMP"
    fi
    if [[ -n "$CKPT_TMP" ]]; then
        rm -rf "$CKPT_TMP"
    fi
    if [[ $STARTED_DOCKERD == 1 ]]; then
        if [[ $rc != 0 && -f "$DOCKERD_LOG" ]]; then
            log "dockerd log (last 20 lines):"
            tail -n 20 "$DOCKERD_LOG" | sed 's/^/    /'
        fi
        if [[ "${CTM_KEEP_DOCKERD:-0}" == 1 ]]; then
            log "leaving dockerd (pid $DOCKERD_PID) running: DOCKER_HOST=unix://$DOCKER_SOCK"
        else
            log "stopping the dockerd this script started (pid $DOCKERD_PID)"
            kill "$DOCKERD_PID" 2>/dev/null
            for _ in $(seq 1 30); do
                kill -0 "$DOCKERD_PID" 2>/dev/null || break
                sleep 1
            done
            if kill -0 "$DOCKERD_PID" 2>/dev/null; then
                log "dockerd still running after 30s; sending SIGKILL"
                kill -9 "$DOCKERD_PID" 2>/dev/null
                sleep 1
            fi
            # dockerd leaves its default network namespace mounted (nsfs) in its exec root.
            mapfile -t leftover < <(awk -v root="$DOCKER_EXEC/" \
                'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r)
            for mnt in "${leftover[@]}"; do
                umount "$mnt" 2>/dev/null || umount -l "$mnt"
            done
        fi
    fi
    if [[ $rc == 0 ]]; then
        log "SMOKE TEST PASSED in $((SECONDS - T0))s"
    else
        log "SMOKE TEST FAILED (exit $rc) after $((SECONDS - T0))s"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Classic-builder output: list the RUN/COPY steps that ran (were not taken from the cache).
build_summary() {
    awk '/^Step [0-9]+\/[0-9]+ :/ { if (s != "") print "    ran: " substr(s, 1, 100); s = ""
                                   if ($4 == "RUN" || $4 == "COPY") s = $0; n++; next }
         /^ ---> Using cache/ { cached++; s = ""; next }
         END { if (s != "") print "    ran: " substr(s, 1, 100)
               printf "    %d steps, %d from cache\n", n, cached }' "$1" || true
}

port_in_use() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

# ---------------------------------------------------------------------------
step "preflight"
[[ -f "$REPO_ROOT/service/__main__.py" ]] || fail "service/__main__.py is missing: nothing to serve yet"
shopt -s nullglob
ckpts=("$REPO_ROOT"/checkpoints/*.safetensors)
shopt -u nullglob
((${#ckpts[@]} > 0)) || fail "no checkpoints/*.safetensors to bake into the image"
log "repo: $REPO_ROOT; ${#ckpts[@]} checkpoint(s): $(cd "$REPO_ROOT/checkpoints" && echo *.safetensors)"
unreadable="$(find "$REPO_ROOT/checkpoints" -maxdepth 1 -name '*.safetensors' ! -perm -o=r -printf '%f(%m) ')"
if [[ -n "$unreadable" ]]; then
    log "note: not world-readable: $unreadable- fine when baked in (the Dockerfile" \
        "chmods them), unreadable to the container user when this folder is bind-mounted"
fi

# ---------------------------------------------------------------------------
step "tools: docker.io, docker-compose, debootstrap"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [[ -n "${CTM_COMPOSE:-}" ]]; then
    read -r -a COMPOSE <<<"$CTM_COMPOSE"
elif command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    COMPOSE=(docker-compose)
fi
if ((${#missing[@]})); then
    ((EUID == 0)) || fail "need root to apt-get install: ${missing[*]}"
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
if [[ ${COMPOSE[0]} == docker-compose ]] && ! command -v docker-compose >/dev/null; then
    fail "docker-compose is not installed"
fi
log "docker client: $(docker version --format '{{.Client.Version}}' 2>/dev/null || true)"
log "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -n 1))"
log "validate compose files: ${COMPOSE[*]} -f docker/compose.yaml [-f docker/compose.host-checkpoints.yaml] config -q;" \
    "-f docker/compose.scale.yaml config -q"
compose config -q
"${COMPOSE[@]}" -f "$COMPOSE_FILE" -f "$REPO_ROOT/docker/compose.host-checkpoints.yaml" config -q
scale_compose config -q

# ---------------------------------------------------------------------------
step "docker engine"
if [[ -n "${DOCKER_HOST:-}" ]]; then
    docker version >/dev/null 2>&1 || fail "DOCKER_HOST=$DOCKER_HOST is set but does not answer"
    log "using the engine at DOCKER_HOST=$DOCKER_HOST (not managed by this script)"
else
    export DOCKER_HOST="unix://$DOCKER_SOCK"
    if docker version >/dev/null 2>&1; then
        log "a dockerd already answers on $DOCKER_HOST; using it and leaving it running"
    else
        ((EUID == 0)) || fail "need root to start dockerd"
        mkdir -p "$DOCKER_ROOT" "$DOCKER_EXEC"
        # Sandbox-friendly and leaves no host state behind: no docker0 bridge, no
        # iptables rules, no ip_forward change. Builds use the host network; the compose
        # project gets its own bridge network and its port is published by docker-proxy.
        log "starting dockerd: data root $DOCKER_ROOT, socket $DOCKER_SOCK, log $DOCKERD_LOG"
        dockerd \
            --data-root "$DOCKER_ROOT" \
            --exec-root "$DOCKER_EXEC" \
            --pidfile "$DOCKER_PIDFILE" \
            --host "$DOCKER_HOST" \
            --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
            >"$DOCKERD_LOG" 2>&1 &
        DOCKERD_PID=$!
        STARTED_DOCKERD=1
        for _ in $(seq 1 60); do
            docker version >/dev/null 2>&1 && break
            kill -0 "$DOCKERD_PID" 2>/dev/null || fail "dockerd exited; see $DOCKERD_LOG"
            sleep 1
        done
        docker version >/dev/null 2>&1 || fail "dockerd did not answer within 60s"
    fi
fi
log "engine: $(docker version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}')"
log "$(docker info --format 'storage driver {{.Driver}}, cgroup {{.CgroupVersion}}, data root {{.DockerRootDir}}')"

# ---------------------------------------------------------------------------
step "base image $BASE_IMAGE"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "already present; skipping debootstrap"
else
    if [[ ! -s "$ROOTFS_CACHE" ]]; then
        ((EUID == 0)) || fail "need root for debootstrap"
        ROOTFS_TMP="$(mktemp -d /var/tmp/ctm-rootfs.XXXXXX)"
        log "debootstrap --variant=minbase bookworm (+python3 python3-venv ca-certificates) from $DEBIAN_MIRROR"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$ROOTFS_TMP/rootfs" "$DEBIAN_MIRROR" >"$ROOTFS_TMP/debootstrap.log" 2>&1 \
            || { tail -n 20 "$ROOTFS_TMP/debootstrap.log"; fail "debootstrap failed"; }
        # Trust what the host trusts (e.g. a TLS-intercepting proxy's CA), so that pip
        # inside the build reaches PyPI the way the host does.
        shopt -s nullglob
        host_cas=(/usr/local/share/ca-certificates/*.crt)
        shopt -u nullglob
        if ((${#host_cas[@]})); then
            log "adding ${#host_cas[@]} local CA certificate(s) from /usr/local/share/ca-certificates"
            cp "${host_cas[@]}" "$ROOTFS_TMP/rootfs/usr/local/share/ca-certificates/"
            chroot "$ROOTFS_TMP/rootfs" update-ca-certificates >/dev/null 2>&1
        fi
        rm -rf "$ROOTFS_TMP"/rootfs/var/lib/apt/lists/* "$ROOTFS_TMP"/rootfs/var/cache/apt/*.bin \
            "$ROOTFS_TMP"/rootfs/var/cache/apt/archives/*.deb
        mkdir -p "$(dirname "$ROOTFS_CACHE")"
        tar -C "$ROOTFS_TMP/rootfs" --numeric-owner -cf "$ROOTFS_CACHE.tmp" .
        mv "$ROOTFS_CACHE.tmp" "$ROOTFS_CACHE"
        rm -rf "$ROOTFS_TMP"
        ROOTFS_TMP=""
        log "rootfs cached at $ROOTFS_CACHE ($(du -h "$ROOTFS_CACHE" | cut -f1))"
    else
        log "using cached rootfs $ROOTFS_CACHE"
    fi
    docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' "$ROOTFS_CACHE" "$BASE_IMAGE" >/dev/null
fi
log "$BASE_IMAGE: $(docker run --rm --network none "$BASE_IMAGE" python3 --version 2>/dev/null)," \
    "$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# ---------------------------------------------------------------------------
step "torch source"
wheel="${CTM_TORCH_WHEEL:-}"
if [[ -z "$wheel" ]]; then
    shopt -s nullglob
    found=(/opt/wheels/torch-*+cpu-cp311-*.whl)
    shopt -u nullglob
    ((${#found[@]})) && wheel="${found[-1]}"
fi
if [[ -n "$wheel" ]]; then
    [[ -f "$wheel" ]] || fail "CTM_TORCH_WHEEL=$wheel does not exist"
    export CTM_TORCH_SOURCE=local
    if [[ ! -d "$WHEEL_DIR" ]]; then
        mkdir -p "$WHEEL_DIR"
        CREATED_WHEEL_DIR=1
    fi
    dest="$WHEEL_DIR/$(basename "$wheel")"
    if [[ ! -e "$dest" ]]; then
        cp "$wheel" "$dest"
        COPIED_WHEEL="$dest"
    fi
    log "TORCH_SOURCE=local: $(basename "$wheel") -> docker/wheels/"
else
    export CTM_TORCH_SOURCE=index
    log "no local CPU torch wheel; TORCH_SOURCE=index (https://download.pytorch.org/whl/cpu)"
fi

# ---------------------------------------------------------------------------
step "build $IMAGE (compose build)"
export CTM_BASE_IMAGE="$BASE_IMAGE"
export CTM_BUILD_NETWORK=host
log "CTM_BASE_IMAGE=$CTM_BASE_IMAGE CTM_TORCH_SOURCE=$CTM_TORCH_SOURCE CTM_BUILD_NETWORK=host"
build_log="$(mktemp /tmp/ctm-smoke-build.XXXXXX.log)"
if ! compose build >"$build_log" 2>&1; then
    tail -n 40 "$build_log" | sed 's/^/    /'
    fail "image build failed (full log: $build_log)"
fi
build_summary "$build_log"
grep -E '^torch [0-9]' "$build_log" | sed 's/^/    /' || true
rm -f "$build_log"
image_size="$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
log "$IMAGE: $image_size"

if [[ "${CTM_SMOKE_SCALE:-1}" != 0 ]]; then
    step "build $NGINX_IMAGE (compose build nginx)"
    build_log="$(mktemp /tmp/ctm-smoke-build.XXXXXX.log)"
    if ! scale_compose build nginx >"$build_log" 2>&1; then
        tail -n 40 "$build_log" | sed 's/^/    /'
        fail "nginx image build failed (full log: $build_log)"
    fi
    build_summary "$build_log"
    rm -f "$build_log"
    log "$NGINX_IMAGE: $(docker image inspect -f '{{.Size}}' "$NGINX_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')," \
        "$(docker run --rm --network none --entrypoint nginx "$NGINX_IMAGE" -v 2>&1)," \
        "user $(docker image inspect -f '{{.Config.User}}' "$NGINX_IMAGE")"
fi

# ---------------------------------------------------------------------------
step "image checks"
user="$(docker image inspect -f '{{.Config.User}}' "$IMAGE")"
[[ -n "$user" && "$user" != root && "$user" != 0 ]] || fail "image runs as root (User='$user')"
uid="$(docker run --rm --network none --entrypoint id "$IMAGE" -u)"
[[ "$uid" != 0 ]] || fail "container uid is 0"
log "runs as user '$user' (uid $uid)"
[[ -n "$(docker image inspect -f '{{if .Config.Healthcheck}}{{.Config.Healthcheck.Test}}{{end}}' "$IMAGE")" ]] \
    || fail "image has no HEALTHCHECK"
log "HEALTHCHECK present"
mapfile -t baked < <(docker run --rm --network none --entrypoint sh "$IMAGE" -c \
    'cd /app/checkpoints && ls -1 -- *.safetensors 2>/dev/null')
for ckpt in "${ckpts[@]}"; do
    name="$(basename "$ckpt")"
    [[ " ${baked[*]} " == *" $name "* ]] || fail "checkpoints/$name is not baked into the image"
done
# Compare names, not counts: a checkpoint written while this runs may be in the image too.
log "${#baked[@]} checkpoint(s) baked into /app/checkpoints: ${baked[*]}"
docker run --rm --network none --entrypoint python "$IMAGE" -c \
    'import torch; assert torch.version.cuda is None; print("torch", torch.__version__, "(CPU)")' \
    | sed 's/^/    /'

# ---------------------------------------------------------------------------
# wait_healthy CONTAINER...: wait until each container's healthcheck says healthy; fail when
# one turns unhealthy, stops or restarts, or after HEALTH_TIMEOUT seconds.
wait_healthy() {
    local deadline=$((SECONDS + HEALTH_TIMEOUT)) cid name state status health restarts all
    local -A last=()
    while :; do
        all=1
        for cid in "$@"; do
            state="$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' "$cid")"
            read -r status health restarts <<<"$state"
            name=""
            if (($# > 1)); then
                name="$(docker inspect -f '{{.Name}}' "$cid")"
                name="${name#/}: "
            fi
            if [[ "$state" != "${last[$cid]:-}" ]]; then
                log "${name}status=$status health=$health restarts=$restarts"
                last[$cid]="$state"
            fi
            [[ $health == none ]] && fail "${name}container has no healthcheck"
            [[ $health == unhealthy ]] && fail "${name}container became unhealthy"
            [[ $status == exited || $status == dead || $restarts != 0 ]] \
                && fail "${name}container stopped (status=$status, restarts=$restarts)"
            [[ $health == healthy ]] || all=0
        done
        ((all)) && break
        ((SECONDS < deadline)) || fail "not healthy after ${HEALTH_TIMEOUT}s"
        sleep 2
    done
    log "healthy after $((SECONDS - STEP_T0))s"
}

# serve LABEL EXPECTED_MODELS [extra compose files...]: compose up, wait for healthy,
# check /healthz, /readyz (EXPECTED_MODELS loaded) and /sample?n=5&seed=1.
serve() {
    local label="$1" expected="$2"
    shift 2
    local files=(-f "$COMPOSE_FILE")
    local extra
    for extra in "$@"; do files+=(-f "$REPO_ROOT/docker/$extra"); done

    step "compose up: $label"
    log "${COMPOSE[*]} ${files[*]//"$REPO_ROOT/"/} -p $PROJECT up -d --no-build"
    "${COMPOSE[@]}" "${files[@]}" -p "$PROJECT" up -d --no-build 2>&1 | sed 's/^/    /'
    cid="$(compose ps -q ctm-serve)"
    [[ -n "$cid" ]] || fail "no container for service ctm-serve"
    log "container ${cid:0:12} publishes 127.0.0.1:$CTM_HOST_PORT -> 8000"

    step "wait for healthy: $label (timeout ${HEALTH_TIMEOUT}s)"
    wait_healthy "$cid"

    step "HTTP checks: $label"
    python3 - "$CTM_HOST_PORT" "$expected" <<'EOF'
import json, math, sys, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
expected = int(sys.argv[2])

def get(path):
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(base + path, timeout=30) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    ms = (time.perf_counter() - t) * 1000
    if status != 200:
        sys.exit(f"    GET {path} -> {status}: {body[:500].decode(errors='replace')}")
    return status, body, ms

status, body, ms = get("/healthz")
print(f"    GET /healthz -> {status} ({ms:.0f} ms): {body[:200].decode(errors='replace')}")

status, body, ms = get("/readyz")
models = json.loads(body).get("models", [])
print(f"    GET /readyz -> {status} ({ms:.0f} ms): models {models}")
if len(models) != expected:
    sys.exit(f"    expected {expected} model(s) loaded, got {len(models)}")

status, body, ms = get("/sample?n=5&seed=1")
data = json.loads(body)
samples = data.get("samples") if isinstance(data, dict) else None
if not isinstance(samples, list) or len(samples) != 5:
    sys.exit(f"    expected 'samples' with 5 entries: {str(data)[:300]}")

def flat(x):
    if isinstance(x, list):
        for y in x:
            yield from flat(y)
    else:
        yield x

values = list(flat(samples))
if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
    sys.exit(f"    samples are not finite numbers: {samples}")
shown = ", ".join(f"{v:.4f}" for v in values[:5])
print(f"    GET /sample?n=5&seed=1 -> {status} ({ms:.0f} ms): {len(samples)} samples [{shown}]")
extra = {k: v for k, v in data.items() if k != "samples"}
if extra:
    print(f"    other fields: {json.dumps(extra)[:200]}")
EOF
    log "HTTP checks passed"
}

STARTED_PROJECT=1
compose down --remove-orphans >/dev/null 2>&1 || true # leftovers of an interrupted run
if [[ -z "${CTM_HOST_PORT:-}" ]]; then
    CTM_HOST_PORT=8000
    if port_in_use "$CTM_HOST_PORT"; then
        CTM_HOST_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
        log "port 8000 is taken on this machine; publishing on $CTM_HOST_PORT instead"
    fi
elif port_in_use "$CTM_HOST_PORT"; then
    fail "CTM_HOST_PORT=$CTM_HOST_PORT is already in use"
fi
export CTM_HOST_PORT

# 1. The checkpoints baked into the image.
serve "baked-in checkpoints" "${#baked[@]}"

# 2. A host folder mounted over them (compose.host-checkpoints.yaml): a world-readable
#    copy of one checkpoint, so that the model count shows the mount is what is served.
CKPT_TMP="$(mktemp -d /tmp/ctm-smoke-checkpoints.XXXXXX)"
one="$REPO_ROOT/checkpoints/two_gmm_1D.safetensors"
[[ -f "$one" ]] || one="${ckpts[0]}"
cp "$one" "$CKPT_TMP/"
chmod 755 "$CKPT_TMP"
chmod 644 "$CKPT_TMP"/*.safetensors
export CTM_CHECKPOINTS="$CKPT_TMP"
serve "host folder mounted ($(basename "$one") only)" 1 compose.host-checkpoints.yaml

# 3. Replicas behind nginx (compose.scale.yaml), all mounting the same folder read-only.
if [[ "${CTM_SMOKE_SCALE:-1}" == 0 ]]; then
    end_step
    log "CTM_SMOKE_SCALE=0: skipping the replicas behind nginx"
    exit 0
fi
REPLICAS="${CTM_SMOKE_REPLICAS:-2}"
export CTM_RELOAD_POLL_S="${CTM_SMOKE_POLL_S:-2}"
# A checkpoint to add while they serve: another shipped one, or a copy of the first under a
# new name.
added="$(basename "$one" .safetensors)_copy.safetensors"
for ckpt in "${ckpts[@]}"; do
    if [[ "$ckpt" != "$one" ]]; then
        added="$(basename "$ckpt")"
        break
    fi
done

step "compose up: $REPLICAS replicas behind nginx"
log "compose down (project $PROJECT): frees port $CTM_HOST_PORT for nginx"
compose down --remove-orphans 2>&1 | sed 's/^/    /'
STARTED_PROJECT=0
STARTED_SCALE_PROJECT=1
scale_compose down --remove-orphans >/dev/null 2>&1 || true # leftovers of an interrupted run
log "CTM_CHECKPOINTS=$CKPT_TMP ($(basename "$one") only) CTM_RELOAD_POLL_S=$CTM_RELOAD_POLL_S"
log "${COMPOSE[*]} -f docker/compose.scale.yaml -p $SCALE_PROJECT up -d --no-build --scale ctm-serve=$REPLICAS"
scale_compose up -d --no-build --scale ctm-serve="$REPLICAS" 2>&1 | sed 's/^/    /'
mapfile -t replicas < <(scale_compose ps -q ctm-serve)
nginx_cid="$(scale_compose ps -q nginx)"
((${#replicas[@]} == REPLICAS)) || fail "expected $REPLICAS ctm-serve containers, got ${#replicas[@]}"
[[ -n "$nginx_cid" ]] || fail "no container for service nginx"
[[ -z "$(docker inspect -f '{{range $p, $b := .HostConfig.PortBindings}}{{$p}} {{end}}' "${replicas[@]}" | tr -d '[:space:]')" ]] \
    || fail "a replica publishes a host port"
log "replicas publish no port; nginx publishes 127.0.0.1:$CTM_HOST_PORT -> 8000"

step "wait for healthy: $REPLICAS replicas and nginx (timeout ${HEALTH_TIMEOUT}s)"
wait_healthy "${replicas[@]}" "$nginx_cid"

step "HTTP checks through nginx: every replica answers, alike; reload from the shared folder"
# Each replica as NAME=ADDRESS, its address on the project network (what X-Served-By names).
replica_args=()
for cid in "${replicas[@]}"; do
    replica_args+=("$(docker inspect -f '{{.Name}}={{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cid")")
done
ro_out="$(docker exec "${replicas[0]}" touch /app/checkpoints/x 2>&1)" \
    && fail "the checkpoint folder is writable from a replica"
log "checkpoint folder read-only in the replicas: ${ro_out##*: }"
python3 - "$CTM_HOST_PORT" "$one" "$REPO_ROOT/checkpoints/$added" "$CKPT_TMP/$added" \
    "$CTM_RELOAD_POLL_S" "${replica_args[@]}" <<'EOF'
import json, os, shutil, subprocess, sys, time, urllib.error, urllib.request

port, first, source, target, poll = sys.argv[1:6]
poll = float(poll)
replicas = dict(arg.lstrip("/").split("=", 1) for arg in sys.argv[6:])  # name -> address
by_address = {address: name for name, address in replicas.items()}
base = f"http://127.0.0.1:{port}"


def get(path):
    try:
        with urllib.request.urlopen(base + path, timeout=30) as r:
            status, body, served_by = r.status, r.read(), r.headers.get("X-Served-By")
    except urllib.error.HTTPError as e:
        status, body, served_by = e.code, e.read(), e.headers.get("X-Served-By")
    if status != 200:
        sys.exit(f"    GET {path} -> {status} (from {served_by}): {body[:300].decode(errors='replace')}")
    return body, served_by


def from_every_replica(path):
    """GET path through nginx until every replica has answered; their bodies must be equal."""
    answers, counts = {}, {}
    for _ in range(20 * len(replicas)):
        body, served_by = get(path)
        if not served_by:
            sys.exit(f"    GET {path}: no X-Served-By header")
        address = served_by.split(",")[-1].strip().rsplit(":", 1)[0]  # the last one tried answered
        if address not in by_address:
            sys.exit(f"    GET {path}: X-Served-By {served_by} is none of the replicas {replicas}")
        name = by_address[address]
        counts[name] = counts.get(name, 0) + 1
        answers.setdefault(name, json.loads(body))
        if len(answers) == len(replicas):
            break
    missing = sorted(set(replicas) - set(answers))
    if missing:
        sys.exit(f"    GET {path}: {missing} never answered in {sum(counts.values())} requests ({counts})")
    firsts = list(answers.values())
    if any(answer != firsts[0] for answer in firsts[1:]):
        sys.exit(f"    GET {path}: replicas answered differently: {answers}")
    shown = ", ".join(f"{name} ×{count}" for name, count in sorted(counts.items()))
    print(f"    GET {path} -> 200 from every replica ({shown}), identical answers")
    return firsts[0]


body, _ = get("/nginx-health")
print(f"    GET /nginx-health -> 200: {body.decode().strip()}")
ready = from_every_replica("/readyz")
print(f"      models {ready.get('models')}")
name = os.path.basename(first).removesuffix(".safetensors")
sample = from_every_replica(f"/sample?model={name}&n=5&seed=1")
print(f"      {name}: sha256 {sample['model_sha256'][:12]}, samples {str(sample['samples'])[:80]}")

# Hot reload: a watcher in each replica asks its own /models every 0.1 s; once all report the
# new model missing, the file is put into the shared folder (a temporary name, then a rename,
# as ctm_core's checkpoint writer does), and each watcher reports when the model appeared.
added = os.path.basename(target).removesuffix(".safetensors")
watch = """if 1:
    import json, sys, time, urllib.request
    name, limit = sys.argv[1], float(sys.argv[2])
    def names():
        with urllib.request.urlopen("http://127.0.0.1:8000/models", timeout=10) as r:
            return [m["name"] for m in json.load(r)["models"]]
    print("present" if name in names() else "absent", flush=True)
    sys.stdin.readline()  # the file is in place
    end = time.time() + limit
    while time.time() < end:
        if name in names():
            print(time.time(), flush=True)
            break
        time.sleep(0.1)
    else:
        print("timeout", flush=True)
"""
limit = 2 * poll + 15
watchers = {
    replica: subprocess.Popen(
        ["docker", "exec", "-i", replica, "python", "-c", watch, added, str(limit)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    for replica in replicas
}
for replica, proc in watchers.items():
    line = proc.stdout.readline().strip()
    if line != "absent":
        sys.exit(f"    {replica}: {added} should not be served yet: {line or 'watcher failed'}")
tmp = os.path.join(os.path.dirname(target), f".{added}.tmp")
shutil.copyfile(source, tmp)
os.chmod(tmp, 0o644)
os.replace(tmp, target)
t0 = time.time()
for proc in watchers.values():
    proc.stdin.write("go\n")
    proc.stdin.flush()
seen = {}
for replica, proc in watchers.items():
    out, _ = proc.communicate(timeout=limit + 30)
    line = out.strip()
    if proc.returncode != 0 or line in ("", "timeout"):
        sys.exit(f"    {replica}: {added} not served within {limit:g} s of the copy ({line or proc.returncode})")
    seen[replica] = float(line) - t0
shown = ", ".join(f"{replica} {seconds:.1f} s" for replica, seconds in sorted(seen.items()))
print(f"    {os.path.basename(target)} copied into the shared folder; in /models of {shown}"
      f" (CTM_RELOAD_POLL_S={poll:g})")
# One poll interval, plus loading the file on a busy machine.
late = {replica: s for replica, s in seen.items() if s > poll + 5}
if late:
    sys.exit(f"    later than the poll interval ({poll:g} s) + 5 s: {late}")
sample = from_every_replica(f"/sample?model={added}&n=5&seed=1")
print(f"      {added}: sha256 {sample['model_sha256'][:12]}, samples {str(sample['samples'])[:80]}")
EOF
log "HTTP checks through nginx passed"

# A replica killed under load (SIGKILL to its host PID, as a crash): no GET through nginx may
# fail, and the restart policy must have it serving through nginx again within 30 s.
if [[ "${CTM_SMOKE_KILL:-1}" != 0 ]] && ((EUID != 0)); then
    log "skipping the replica kill under load: it signals a host PID, which needs root"
elif [[ "${CTM_SMOKE_KILL:-1}" != 0 ]]; then
    step "replica killed under load: no failed GET, serving again within 30 s"
    CTM_COMPOSE="${COMPOSE[*]}" python3 "$REPO_ROOT/docker/replica_kill.py" -f "$SCALE_FILE" \
        -p "$SCALE_PROJECT" --deadline 30 2>&1 | sed 's/^/    /' \
        || fail "replica kill under load: a GET failed, or the replica was not back in time"
    log "replica kill test passed"
fi

end_step
