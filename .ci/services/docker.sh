#!/usr/bin/env bash
# Docker Engine for the compute suite in `paas-components/tests/compute_docker.rs`.
#
# Idempotent: apt-installs docker.io and busybox-static if dockerd is missing (about 20 s,
# once), starts dockerd in the background if `docker info` fails, waits until it answers (at
# most ~60 s), builds the test image if it is not there, and prints the `export` lines the
# suite reads. Progress goes to stderr, so `eval "$(.ci/services/docker.sh)"` works. Warm
# (installed, running, image built), it takes well under a second.
#
# No image can be pulled on these machines (SERVICES.md), so the test image is built locally
# with the classic builder from Debian's static busybox: `FROM scratch`, the binary, and its
# applet links. It is tagged DOCKER_TEST_IMAGE (the backend's default image for command
# specs), and also `busybox:latest` unless that exists already, because the compute kit's
# image case asks for `busybox` by name.
#
# Environment (all optional): DOCKER_SOCKET (default /var/run/docker.sock),
# DOCKER_TEST_IMAGE (multicloud-test/busybox:1), DOCKERD_LOG (/var/tmp/dockerd-ci.log).
set -euo pipefail

SOCKET="${DOCKER_SOCKET:-/var/run/docker.sock}"
IMAGE="${DOCKER_TEST_IMAGE:-multicloud-test/busybox:1}"
LOG="${DOCKERD_LOG:-/var/tmp/dockerd-ci.log}"

log() { echo "docker.sh: $*" >&2; }

engine() { docker -H "unix://$SOCKET" "$@"; }

if ! command -v dockerd >/dev/null || [ ! -x /bin/busybox ]; then
    log "installing docker.io and busybox-static (apt; about 20 s, once)"
    install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            docker.io busybox-static >&2
    }
    # A stale package index is the usual reason for a failed install.
    install || { apt-get update >&2 && install; }
fi

if ! engine info >/dev/null 2>&1; then
    log "starting dockerd on $SOCKET (log in $LOG)"
    # From / : a server must not depend on the checkout it was started from. setsid: it must
    # outlive this script and the CI job's process group.
    (cd / && exec setsid dockerd -H "unix://$SOCKET" >"$LOG" 2>&1 </dev/null) &
    for _ in $(seq 1 120); do
        engine info >/dev/null 2>&1 && break
        sleep 0.5
    done
    engine info >/dev/null 2>&1 || { log "dockerd did not come up within 60 s; see $LOG"; exit 1; }
fi

if ! engine image inspect "$IMAGE" >/dev/null 2>&1; then
    log "building $IMAGE from /bin/busybox (classic builder)"
    context="$(mktemp -d)"
    trap 'rm -rf "$context"' EXIT
    cp /bin/busybox "$context/busybox"
    cat >"$context/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
EOF
    DOCKER_BUILDKIT=0 engine build -q -t "$IMAGE" "$context" >&2
fi
if ! engine image inspect busybox:latest >/dev/null 2>&1; then
    engine tag "$IMAGE" busybox:latest
fi
log "engine up on $SOCKET with image $IMAGE"

echo "export DOCKER_TEST_URL='docker://$SOCKET?default_image=$IMAGE'"
echo "export DOCKER_TEST_IMAGE='$IMAGE'"
