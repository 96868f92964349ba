#!/usr/bin/env bash
# moto (an in-memory AWS emulator, `moto[server]` from PyPI) for the strict S3 suites in
# `paas-components/tests/storage_s3.rs`: unlike s3s-fs it stores keys as a flat map and checks
# conditional writes (If-None-Match / If-Match) atomically with the write, so the whole
# storage kit runs against it with `conditional_put=etag`.
#
# Idempotent: creates a venv and pip-installs the pinned moto into it if missing (about a
# minute, once; cached in MOTO_VENV), starts `moto_server` in the background if nothing
# listens on the port, waits until it answers (at most ~60 s), creates the test bucket (moto
# keeps everything in memory, so a restarted server has none), and prints the `export` line
# the suites read. Progress goes to stderr, so `eval "$(.ci/services/moto.sh)"` works. Warm
# (installed and running), it takes well under a second.
#
# Environment (all optional): MOTO_VENV (default /var/cache/multicloud-ci/moto-venv),
# MOTO_PORT (9010), MOTO_TEST_BUCKET (test-bucket), MOTO_LOG (/var/tmp/moto-ci.log).
# moto accepts any credentials; the URL carries test-only values.
set -euo pipefail
# shellcheck source=../service-lib.sh
source "$(dirname "$0")/../service-lib.sh"

VERSION=5.2.5
VENV="${MOTO_VENV:-/var/cache/multicloud-ci/moto-venv}"
PORT="${MOTO_PORT:-9010}"
BUCKET="${MOTO_TEST_BUCKET:-test-bucket}"
LOG="${MOTO_LOG:-/var/tmp/moto-ci.log}"
BIN="$VENV/bin/moto_server"
# Written after a successful install of exactly this version, so a warm run skips pip.
MARKER="$VENV/.moto-$VERSION"

log() { echo "moto.sh: $*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if [ ! -x "$BIN" ] || [ ! -e "$MARKER" ]; then
    log "installing moto[server]==$VERSION into $VENV (pip; about a minute, once)"
    mkdir -p "$(dirname "$VENV")"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "moto[server]==$VERSION" >&2
    touch "$MARKER"
fi

restart_if_orphaned "moto_server -H 127.0.0.1 -p $PORT"
if ! listening; then
    log "starting moto_server on 127.0.0.1:$PORT (log in $LOG)"
    # From / : a server must not depend on the checkout it was started from.
    (cd / && exec nohup "$BIN" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 </dev/null) &
    for _ in $(seq 1 120); do
        listening && break
        sleep 0.5
    done
    listening || { log "moto_server did not come up within 60 s; see $LOG"; exit 1; }
fi

# CreateBucket: 200 when created, 409 (BucketAlreadyOwnedByYou) when it is already there.
# moto does not check signatures, so a plain PUT will do.
status="$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$PORT/$BUCKET")"
case "$status" in
    200 | 409) ;;
    *) log "creating bucket $BUCKET failed with HTTP $status; see $LOG"; exit 1 ;;
esac
log "bucket $BUCKET ready at http://127.0.0.1:$PORT"

echo "export S3_MOTO_TEST_URL='s3://$BUCKET?endpoint=http://127.0.0.1:$PORT&region=us-east-1&access_key_id=motoaccesskey&secret_access_key=motosecretkey&conditional_put=etag'"
