#!/usr/bin/env bash
# Build the service image and run it for real: readiness, a tenant through the
# admin API, a v1 and a v2 prediction, a non-root process, the HEALTHCHECK turning
# healthy, a clean exit on SIGTERM, and a read-only root filesystem with a writable
# data volume. Prints each check with PASS/FAIL and its time; exits 1 on any FAIL.
#
#   bash scripts/container_smoke.sh          # or: make container-smoke
#
# The engine comes from scripts/start_docker.sh (on a Debian machine with root it
# installs docker.io and debootstrap when missing and starts dockerd when none
# runs, leaving it running for the next script), and the local python:3.11-slim
# stand-in from scripts/make_base_image.sh when that image cannot be pulled.
# SKIP_IF_NO_ENGINE=1: exit 0 with one SKIP line when no engine can be started.
# IMAGE (dynanoise:smoke) and BASE_IMAGE (python:3.11-slim) override tags.
set -uo pipefail

cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-dynanoise:smoke}
export BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
RUN_ID=smoke-$$
WORK=$(mktemp -d /tmp/dynanoise-smoke.XXXXXX)
FAILED=0
T0=$(date +%s.%N)

# --- helpers ----------------------------------------------------------------------

_now() { date +%s.%N; }
_since() { awk -v a="$1" -v b="$(_now)" 'BEGIN { printf "%.1f s", b - a }'; }
say() { printf '[container-smoke] %s\n' "$*"; }
pass() { printf 'PASS  %-56s %s\n' "$1" "$2"; }
fail() { printf 'FAIL  %-56s %s\n' "$1" "$2"; FAILED=1; }

# check NAME COMMAND...: run COMMAND, PASS when it exits 0. Its output is kept in
# $WORK/last and shown on FAIL; a line it writes to $WORK/detail follows the time.
check() {
    local name=$1 start detail
    shift
    start=$(_now)
    rm -f "$WORK/detail"
    if "$@" >"$WORK/last" 2>&1; then
        detail=$(cat "$WORK/detail" 2>/dev/null)
        pass "$name" "($(_since "$start"))${detail:+ $detail}"
    else
        fail "$name" "($(_since "$start"))"
        sed 's/^/      /' "$WORK/last" | tail -15
    fi
}

_cleanup() {
    local status=$?
    docker rm -f "$RUN_ID-main" "$RUN_ID-ro" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$status"
}
trap _cleanup EXIT
trap 'exit 130' INT TERM

no_engine() {
    if [ "${SKIP_IF_NO_ENGINE:-0}" = 1 ]; then
        echo "SKIP  container smoke: no container engine could be started ($1)"
        exit 0
    fi
    say "no container engine: $1"
    exit 1
}

# --- the engine ---------------------------------------------------------------------

start_engine() {
    local reason
    reason=$(bash scripts/start_docker.sh) || no_engine "$reason"
}

# --- the checks' building blocks ---------------------------------------------------

ADMIN_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') # 64 hex digits
DIGIT='[0, 0, 0.31, 0.81, 0.56, 0.06, 0, 0, 0, 0, 0.81, 0.94, 0.62, 0.94, 0.31, 0, 0, 0.19, 0.94, 0.12, 0, 0.69, 0.5, 0, 0, 0.25, 0.75, 0, 0, 0.5, 0.5, 0, 0, 0.31, 0.5, 0, 0, 0.56, 0.5, 0, 0, 0.25, 0.69, 0, 0.06, 0.75, 0.44, 0, 0, 0.12, 0.88, 0.31, 0.62, 0.75, 0, 0, 0, 0, 0.38, 0.81, 0.62, 0, 0, 0]'

# The host port Docker published the container's 8000 on.
base_url() { echo "http://$(docker port "$1" 8000/tcp | head -1)"; }

wait_ready() {
    local url
    url=$(base_url "$1")
    for _ in $(seq 1 120); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/v2/health/ready")" = 200 ] && return 0
        [ "$(docker inspect --format '{{.State.Running}}' "$1")" = true ] || { docker logs --tail 20 "$1"; return 1; }
        sleep 0.5
    done
    echo "not ready after 60 s"; docker logs --tail 20 "$1"; return 1
}

# create_tenant CONTAINER NAME: POST /admin/tenants; the API key goes to $WORK/NAME.key.
create_tenant() {
    local body
    body=$(curl -sS -w '\n%{http_code}' -X POST "$(base_url "$1")/admin/tenants" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d "{\"name\": \"$2\", \"noise_mode\": \"keyed\"}")
    echo "$body"
    [ "$(tail -1 <<<"$body")" = 201 ] || return 1
    head -n -1 <<<"$body" | python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])' >"$WORK/$2.key"
}

# predict CONTAINER TENANT PATH BODY KEY: POST, expect 200 and KEY in the JSON answer.
predict() {
    local body
    body=$(curl -sS -w '\n%{http_code}' -X POST "$(base_url "$1")$3" \
        -H "Authorization: Bearer $(cat "$WORK/$2.key")" -H 'Content-Type: application/json' -d "$4")
    echo "$body"
    [ "$(tail -1 <<<"$body")" = 200 ] && head -n -1 <<<"$body" | grep -q "\"$5\""
}

# Every process in the container runs as a non-zero uid (docker top: host's view).
non_root() {
    local uids
    uids=$(docker top "$1" -eo uid,pid,args | awk 'NR > 1 { print $1 }' | sort -u)
    echo "uids: $uids (docker exec id -u: $(docker exec "$1" id -u))"
    echo "uid $(paste -sd ' ' <<<"$uids")" >"$WORK/detail"
    [ -n "$uids" ] && ! grep -qx 0 <<<"$uids" && ! grep -qx root <<<"$uids"
}

wait_healthy() {
    local status
    for _ in $(seq 1 90); do
        status=$(docker inspect --format '{{.State.Health.Status}}' "$1")
        [ "$status" = healthy ] && { echo "after $(_since "$2") from docker run" >"$WORK/detail"; return 0; }
        [ "$status" = unhealthy ] && break
        sleep 1
    done
    echo "health: $status"; docker inspect --format '{{json .State.Health}}' "$1"; return 1
}

# docker stop sends SIGTERM and SIGKILL after 10 s: exit code 0 means a clean exit.
stops_cleanly() {
    local start code
    start=$(_now)
    docker stop -t 10 "$1" >/dev/null
    code=$(docker inspect --format '{{.State.ExitCode}}' "$1")
    echo "exit code $code after $(_since "$start")"
    echo "exit code $code" >"$WORK/detail"
    [ "$code" = 0 ]
}

read_only_root() { ! docker exec "$1" touch /app/smoke-write-test; }
data_on_volume() { ls -l "$WORK/data"; [ -s "$WORK/data/dynanoise.db" ]; }

# --- run ------------------------------------------------------------------------------

start_engine

start=$(_now)
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || timeout 120 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    pass "base image $BASE_IMAGE (present or pulled)" "($(_since "$start"))"
else
    if bash scripts/make_base_image.sh; then
        pass "base image $BASE_IMAGE (made with debootstrap)" "($(_since "$start"))"
    else
        fail "base image $BASE_IMAGE" "($(_since "$start"))"; exit 1
    fi
fi

start=$(_now)
if DOCKER_BUILDKIT=0 docker build --build-arg PYTHON_IMAGE="$BASE_IMAGE" -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
    pass "docker build $IMAGE" "($(_since "$start"), $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1 / 1e6}'))"
else
    fail "docker build $IMAGE" "($(_since "$start"))"; tail -30 "$WORK/build.log"; exit 1
fi

# The image as shipped: defaults only, SQLite inside the container.
STARTED_MAIN=$(_now)
docker run -d --name "$RUN_ID-main" -p 127.0.0.1::8000 \
    -e DYNANOISE_ADMIN_TOKEN="$ADMIN_TOKEN" "$IMAGE" >/dev/null || { fail "docker run" ""; exit 1; }
check "ready: GET /v2/health/ready is 200" wait_ready "$RUN_ID-main"
check "tenant created: POST /admin/tenants is 201" create_tenant "$RUN_ID-main" acme
check "v1 prediction: POST /v1/models/digits/predict" \
    predict "$RUN_ID-main" acme /v1/models/digits/predict "{\"instances\": [$DIGIT]}" predictions
check "v2 prediction: POST /v2/models/digits/infer" \
    predict "$RUN_ID-main" acme /v2/models/digits/infer \
    "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 64], \"datatype\": \"FP32\", \"data\": $DIGIT}]}" outputs
check "non-root: every process runs as uid != 0" non_root "$RUN_ID-main"
check "HEALTHCHECK turns healthy" wait_healthy "$RUN_ID-main" "$STARTED_MAIN"
check "SIGTERM: docker stop -t 10 exits 0" stops_cleanly "$RUN_ID-main"

# As compose and Kubernetes run it: read-only root, tmpfs for /tmp and the metrics
# files, no capabilities, and the SQLite store on a writable volume.
mkdir -p "$WORK/data" && chown 10001:10001 "$WORK/data"
docker run -d --name "$RUN_ID-ro" -p 127.0.0.1::8000 \
    --read-only --tmpfs /tmp --tmpfs /app/metrics:uid=10001,gid=10001,mode=0700 \
    --cap-drop ALL --security-opt no-new-privileges:true -v "$WORK/data:/app/data" \
    -e DYNANOISE_ADMIN_TOKEN="$ADMIN_TOKEN" "$IMAGE" >/dev/null || { fail "docker run --read-only" ""; exit 1; }
check "read-only root: ready with a data volume" wait_ready "$RUN_ID-ro"
check "read-only root: tenant created" create_tenant "$RUN_ID-ro" globex
check "read-only root: v1 prediction" \
    predict "$RUN_ID-ro" globex /v1/models/digits/predict "{\"instances\": [$DIGIT]}" predictions
check "read-only root: writes outside volumes refused" read_only_root "$RUN_ID-ro"
check "read-only root: SQLite store written to the volume" data_on_volume
check "read-only root: docker stop -t 10 exits 0" stops_cleanly "$RUN_ID-ro"

if [ "$FAILED" = 0 ]; then
    say "all checks passed in $(_since "$T0")"
else
    say "FAILED (total $(_since "$T0"))"
fi
exit "$FAILED"
