#!/usr/bin/env bash
# Builds the native engine addon (ts-server/native) with node-gyp, offline:
# Node's headers come from the installed nodejs (/usr/include/node, via
# --nodedir), Highway from Debian's libhwy-dev. It then checks that the addon
# loads and reports a SIMD target. Any failure stops the build: the native
# engine is the default one, and `make test` expects it.
set -euo pipefail
cd "$(dirname "$0")/../ts-server/native"
die() { echo "native engine: $*" >&2; exit 1; }

NODE_GYP=$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js
[ -f "$NODE_GYP" ] || die "node-gyp (bundled with npm) not found"
NODEDIR=${npm_config_nodedir:-/usr}
[ -f "$NODEDIR/include/node/node_api.h" ] || die "no Node headers under $NODEDIR/include/node (Debian's nodejs ships them; node-gyp must not download them)"
[ -f /usr/include/hwy/highway.h ] || die "Google Highway headers missing (apt-get install libhwy-dev)"

echo "native engine: building the addon (node-gyp, Highway $(dpkg-query -W -f='${Version}' libhwy-dev 2>/dev/null || echo '?'))"
log=$(mktemp)
if ! node "$NODE_GYP" rebuild --nodedir="$NODEDIR" --jobs=2 >"$log" 2>&1; then
  grep -E 'error|Error' "$log" | head -n 20 >&2
  rm -f "$log"
  die "the addon did not build"
fi
rm -f "$log"
node -e '
  const a = require("./build/Release/mur_native.node").describe();
  console.log(`native engine: ok (${a.optimizers.length} optimizers x ${a.rules.length} rules, SIMD target ${a.target}, ${a.threads} threads)`);
' || die "the addon built but does not load"
