#!/usr/bin/env bash
# Make a Docker engine answer `docker info`, for scripts/container_smoke.sh,
# scripts/compose_e2e.sh and .ci/run. Idempotent: a running engine is reused.
# Otherwise, as root on Debian: install docker.io and debootstrap when missing
# (debootstrap makes the local base image, scripts/make_base_image.sh), start
# dockerd in the background (its own session, so it outlives this script and
# serves the next one), log to $DOCKERD_LOG, and wait until it answers.
#
#   bash scripts/start_docker.sh     # exit 0: the engine answers
#                                    # exit 1: no engine can be started here; the
#                                    #   reason is the one line on stdout
#
# Progress goes to stderr. DOCKERD_LOG: /var/log/dynanoise-dockerd.log.
# DOCKER_WAIT_SECONDS: how long to wait for dockerd (60).
set -uo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dynanoise-dockerd.log}
WAIT=${DOCKER_WAIT_SECONDS:-60}

say() { printf '[start_docker] %s\n' "$*" >&2; }
no_engine() { echo "$*"; exit 1; }
answers() { docker info >/dev/null 2>&1; }

# wait_for_engine SECONDS [PID]: until `docker info` answers; gives up early when
# PID (a dockerd this script started) has exited.
wait_for_engine() {
    local deadline=$((SECONDS + $1)) pid=${2:-}
    while [ "$SECONDS" -lt "$deadline" ]; do
        answers && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            answers # it may have lost a race to another dockerd that now answers
            return
        fi
        sleep 0.5
    done
    answers
}

# apt_install PACKAGE...: as root, with apt-get; its log in /tmp/start_docker.apt.log.
apt_install() {
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null || return 1
    say "installing $* (apt log: /tmp/start_docker.apt.log)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } \
        >/tmp/start_docker.apt.log 2>&1 && return 0
    tail -5 /tmp/start_docker.apt.log >&2
    return 1
}

started=$(date +%s.%N)
if command -v docker >/dev/null && answers; then
    say "engine already running: reused"
    command -v debootstrap >/dev/null || [ "$(id -u)" -ne 0 ] || apt_install debootstrap \
        || say "debootstrap could not be installed: no local base image can be made"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    no_engine "no Docker engine answers, and installing or starting one needs root"
fi

missing=()
command -v dockerd >/dev/null && command -v docker >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || no_engine "no apt-get to install ${missing[*]} (not Debian?)"
    apt_install "${missing[@]}" || no_engine "apt-get install ${missing[*]} failed (/tmp/start_docker.apt.log)"
    command -v dockerd >/dev/null || no_engine "docker.io installed but no dockerd on PATH"
fi

# A dockerd that is starting (another script's, or the package's service) gets
# its chance before a second one is started.
if pgrep -x dockerd >/dev/null; then
    say "a dockerd is running but does not answer yet: waiting"
    wait_for_engine "$WAIT" && { say "engine answers"; exit 0; }
    no_engine "a dockerd runs but does not answer after $WAIT s"
fi

say "starting dockerd (log: $DOCKERD_LOG)"
setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
pid=$!
if wait_for_engine "$WAIT" "$pid"; then
    say "dockerd $(dockerd --version | awk '{print $3}' | tr -d ,) answers (pid $pid) after $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }')"
    exit 0
fi
tail -5 "$DOCKERD_LOG" 2>/dev/null | sed 's/^/      /' >&2
kill "$pid" 2>/dev/null
no_engine "dockerd did not answer within $WAIT s (log: $DOCKERD_LOG)"
