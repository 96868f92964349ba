#!/usr/bin/env bash
# The test command of the README: start every server the suites need, then run all tests.
# Server suites fail (they do not skip) when CI or REQUIRE_SERVERS is set and a server is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/services.sh
# shellcheck disable=SC1091
source .ci/env
export REQUIRE_SERVERS=1
cargo test --workspace --all-features --no-fail-fast "$@"
