#!/usr/bin/env bash
# S3-compatible server (s3s-fs) for the `s3` storage suite.
#
# Idempotent: installs s3s-fs with cargo if the binary is missing (minutes, once; the binary is
# cached in S3S_ROOT), starts it in the background if nothing listens on the port, waits until
# it answers (at most ~60 s), creates the test bucket (a directory under the data dir), and
# prints the `export` lines the suites and the bench read (`conditional_put=disabled`: s3s-fs
# checks If-None-Match / If-Match before writing, not atomically). Progress goes to stderr, so
# `eval "$(.ci/services/s3.sh)"` works.
#
# Environment (all optional): S3S_ROOT (cargo install root, default /work/tools),
# S3_PORT (9000), S3_DIR (data dir, /var/tmp/s3s-ci), S3_TEST_BUCKET (test-bucket),
# S3_ACCESS_KEY / S3_SECRET_KEY (the local server's credentials; test-only values).
set -euo pipefail
# shellcheck source=../service-lib.sh
source "$(dirname "$0")/../service-lib.sh"

ROOT="${S3S_ROOT:-/work/tools}"
PORT="${S3_PORT:-9000}"
DATA_DIR="${S3_DIR:-/var/tmp/s3s-ci}"
BUCKET="${S3_TEST_BUCKET:-test-bucket}"
ACCESS_KEY="${S3_ACCESS_KEY:-ciaccesskey}"
SECRET_KEY="${S3_SECRET_KEY:-cisecretkey}"
BIN="$ROOT/bin/s3s-fs"

log() { echo "s3.sh: $*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if [ ! -x "$BIN" ]; then
    if command -v s3s-fs >/dev/null 2>&1; then
        BIN="$(command -v s3s-fs)"
    else
        log "installing s3s-fs 0.14.1 into $ROOT (cargo; takes minutes, once)"
        # Its own target dir, so the build neither uses nor dirties the workspace's.
        CARGO_TARGET_DIR="${S3S_BUILD_DIR:-/var/tmp/s3s-fs-build}" \
            cargo install s3s-fs --version 0.14.1 --locked --features binary \
            --root "$ROOT" -j 2 >&2
    fi
fi

# The bucket is a directory; create it before the server starts so the first request finds it.
mkdir -p "$DATA_DIR/$BUCKET"

restart_if_orphaned "s3s-fs --host 127.0.0.1 --port $PORT"
if ! listening; then
    log "starting s3s-fs on 127.0.0.1:$PORT (data in $DATA_DIR)"
    # From / : a server must not depend on the checkout it was started from.
    (cd / && exec nohup "$BIN" --host 127.0.0.1 --port "$PORT" --access-key "$ACCESS_KEY" \
        --secret-key "$SECRET_KEY" "$DATA_DIR" >"$DATA_DIR.log" 2>&1 </dev/null) &
    for _ in $(seq 1 120); do
        listening && break
        sleep 0.5
    done
    listening || { log "s3s-fs did not come up within 60 s; see $DATA_DIR.log"; exit 1; }
fi
log "bucket $BUCKET ready at http://127.0.0.1:$PORT"

echo "export S3_TEST_URL='s3://$BUCKET?endpoint=http://127.0.0.1:$PORT&region=us-east-1&access_key_id=$ACCESS_KEY&secret_access_key=$SECRET_KEY&conditional_put=disabled'"
