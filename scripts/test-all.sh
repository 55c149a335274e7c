#!/usr/bin/env bash
# Every test of the project; `make test` runs it after installing everything.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ts-server (mocha)"
npm test -w ts-server
