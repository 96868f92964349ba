#!/usr/bin/env bash
# Azure Blob emulator (Azurite) for the `azure` storage suite.
#
# Idempotent: installs azurite from npm if missing, starts azurite-blob in the background if
# nothing listens on the port, waits until it answers (at most ~60 s), creates the test
# container, and prints the `export` lines the suites read. Progress goes to stderr, so
# `eval "$(.ci/services/azurite.sh)"` works.
#
# Environment (all optional): AZURITE_PREFIX (install dir, default /opt/azurite),
# AZURITE_PORT (10000), AZURITE_DIR (data dir, /var/tmp/azurite-ci), AZURE_TEST_CONTAINER
# (test-container).
set -euo pipefail
# shellcheck source=../service-lib.sh
source "$(dirname "$0")/../service-lib.sh"

PREFIX="${AZURITE_PREFIX:-/opt/azurite}"
PORT="${AZURITE_PORT:-10000}"
DATA_DIR="${AZURITE_DIR:-/var/tmp/azurite-ci}"
CONTAINER="${AZURE_TEST_CONTAINER:-test-container}"
ACCOUNT=devstoreaccount1
# Azurite's documented, public development key (not a secret).
KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
BIN="$PREFIX/node_modules/.bin/azurite-blob"

log() { echo "azurite.sh: $*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if [ ! -x "$BIN" ]; then
    log "installing azurite into $PREFIX (npm)"
    mkdir -p "$PREFIX"
    npm install --prefix "$PREFIX" --no-audit --no-fund azurite >&2
fi

restart_if_orphaned "azurite-blob --blobHost 127.0.0.1 --blobPort $PORT"
if ! listening; then
    mkdir -p "$DATA_DIR"
    log "starting azurite-blob on 127.0.0.1:$PORT (data in $DATA_DIR)"
    # From / : a server must not depend on the checkout it was started from.
    (cd / && exec nohup "$BIN" --blobHost 127.0.0.1 --blobPort "$PORT" --location "$DATA_DIR" \
        --silent --skipApiVersionCheck --loose >"$DATA_DIR/azurite.log" 2>&1 </dev/null) &
    for _ in $(seq 1 120); do
        listening && break
        sleep 0.5
    done
    listening || { log "azurite did not come up within 60 s; see $DATA_DIR/azurite.log"; exit 1; }
fi

# Create the container (201 created, 409 already there): a Shared Key signed REST call, in
# node because that is what azurite needs anyway.
node - "$PORT" "$ACCOUNT" "$KEY" "$CONTAINER" <<'JS' >&2
const [port, account, key, container] = process.argv.slice(2);
const crypto = require('crypto');
const http = require('http');
const date = new Date().toUTCString();
const version = '2021-08-06';
const path = `/${account}/${container}`;
const toSign = ['PUT', '', '', '', '', '', '', '', '', '', '', '',
  `x-ms-date:${date}\nx-ms-version:${version}`,
  `/${account}${path}\nrestype:container`].join('\n');
const sig = crypto.createHmac('sha256', Buffer.from(key, 'base64')).update(toSign, 'utf8').digest('base64');
const req = http.request({ host: '127.0.0.1', port, method: 'PUT', path: `${path}?restype=container`,
  headers: { 'x-ms-date': date, 'x-ms-version': version, 'Content-Length': 0,
    Authorization: `SharedKey ${account}:${sig}` } }, (res) => {
  res.resume();
  if (res.statusCode === 201 || res.statusCode === 409) {
    console.log(`azurite.sh: container ${container} ready (${res.statusCode})`);
  } else {
    console.log(`azurite.sh: creating container ${container} failed: HTTP ${res.statusCode}`);
    process.exitCode = 1;
  }
});
req.on('error', (e) => { console.log(`azurite.sh: ${e.message}`); process.exitCode = 1; });
req.end();
JS

echo "export AZURE_TEST_URL='azure://$CONTAINER?emulator=true&endpoint=http://127.0.0.1:$PORT/$ACCOUNT'"
