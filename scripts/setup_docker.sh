#!/bin/sh
# Make this host ready for the docker backend and its tests, from nothing (CI starts bare):
#   1. install Docker Engine (docker.io) and debootstrap with apt when no engine answers,
#   2. start dockerd in the background (as root) when none is running, and wait until it answers,
#   3. build the offline base image (no container registry is reachable here) if its tag is missing,
#      with debootstrap from the Debian archive this host's own apt sources name.
# Idempotent: each step is skipped when its result is already there. Needs root for 1-3.
# Env: OFFLINE_BASE_TAG (default orchestrate/base:offline), DOCKERD_LOG (default /tmp/dockerd.log),
#      OFFLINE_BASE_MIRROR (a Debian archive URL; default: the one in this host's apt sources).
set -eu

cd "$(dirname "$0")/.."
TAG="${OFFLINE_BASE_TAG:-orchestrate/base:offline}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
orchestrate() {
    if [ -x .venv/bin/orchestrate ]; then .venv/bin/orchestrate "$@"
    else python3 -c 'from orchestrator.cli.main import cli; cli()' "$@"; fi
}

engine_answers() { docker info >/dev/null 2>&1; }

if ! engine_answers; then
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
        echo "installing docker.io and debootstrap with apt"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap
    fi
    if ! engine_answers; then
        echo "starting dockerd (log: $DOCKERD_LOG)"
        nohup dockerd >"$DOCKERD_LOG" 2>&1 &
        tries=0
        until engine_answers; do
            tries=$((tries + 1))
            if [ "$tries" -gt 60 ]; then
                echo "dockerd did not answer within 60 s; last lines of $DOCKERD_LOG:" >&2
                tail -n 20 "$DOCKERD_LOG" >&2
                exit 1
            fi
            sleep 1
        done
    fi
fi
echo "docker engine: $(docker version --format '{{.Server.Version}}')"

command -v debootstrap >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "offline base image $TAG exists"
else
    echo "building the offline base image $TAG (debootstrap, a few minutes)"
    orchestrate image build-base --offline --tag "$TAG" ${OFFLINE_BASE_MIRROR:+--mirror "$OFFLINE_BASE_MIRROR"}
fi
