#!/usr/bin/env bash
# Makes the native TensorFlow backend (@tensorflow/tfjs-node) available with no
# download beyond the package registries:
#   1. the tensorflow-cpu wheel from PyPI carries TensorFlow's C and eager C
#      APIs (libtensorflow_cc.so.2, libtensorflow_framework.so.2) and headers;
#   2. they are staged where tfjs-node's binding.gyp looks (deps/lib, deps/include);
#   3. the addon is built from source with node-gyp and put where tfjs-node
#      loads it from;
#   4. a TensorFlow-backed op is checked against plain arithmetic.
# npm never runs tfjs-node's own install script (denied in package.json's
# allowScripts): it downloads from a host these machines cannot reach.
# Where any step is impossible this prints one line saying why and exits 0:
# the server then runs on the wasm backend.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TF_VERSION=2.21.0
CACHE=${MUR_CACHE:-$HOME/.cache/mur}
PKG=$ROOT/node_modules/@tensorflow/tfjs-node
PY=${PYTHON:-/usr/bin/python3}

skip() { echo "native backend: unavailable ($*); the server will use wasm"; exit 0; }

verify() {
  (cd "$ROOT/ts-server" && TF_CPP_MIN_LOG_LEVEL=2 node -e '
    const tf = require("@tensorflow/tfjs-node");
    if (tf.getBackend() !== "tensorflow") throw new Error("backend is " + tf.getBackend());
    const y = tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5], [6]])).dataSync();
    if (y[0] !== 17 || y[1] !== 39) throw new Error("matMul gave " + Array.from(y));
    console.log("native backend: ok (TensorFlow " + tf.version.tfjs + " on libtensorflow " + process.argv[1] + ")");
  ' "$TF_VERSION") 2>&1 | grep -v '^I0000 \|^WARNING: All log messages' | tail -n 3
  return "${PIPESTATUS[0]}"
}

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || skip "no tensorflow-cpu wheel for $(uname -s)-$(uname -m)"
[ -d "$PKG" ] || skip "@tensorflow/tfjs-node is not in node_modules (run npm ci)"

ADDON=$(cd "$ROOT/ts-server" && node -e '
  const p = require("path"), d = p.dirname(require.resolve("@tensorflow/tfjs-node/package.json"));
  console.log(require("@mapbox/node-pre-gyp").find(p.join(d, "package.json")));') \
  || skip "cannot locate the addon path of tfjs-node"
STAMP=$PKG/deps/.mur-built-$TF_VERSION
if [ -f "$STAMP" ] && [ -f "$ADDON" ] && verify; then exit 0; fi

# 1. The wheel (about 270 MB), cached outside the repo.
WHEELS=$CACHE/wheels
mkdir -p "$WHEELS"
WHEEL=$(ls "$WHEELS"/tensorflow_cpu-$TF_VERSION-cp*-manylinux*_x86_64.whl 2>/dev/null | head -n 1)
if [ -z "$WHEEL" ]; then
  echo "native backend: downloading tensorflow-cpu==$TF_VERSION from PyPI"
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "tensorflow-cpu==$TF_VERSION" >/dev/null 2>&1 \
    || python3 -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "tensorflow-cpu==$TF_VERSION" >/dev/null 2>&1 \
    || skip "pip download tensorflow-cpu==$TF_VERSION failed"
  WHEEL=$(ls "$WHEELS"/tensorflow_cpu-$TF_VERSION-cp*-manylinux*_x86_64.whl 2>/dev/null | head -n 1)
  [ -n "$WHEEL" ] || skip "no manylinux x86_64 wheel of tensorflow-cpu==$TF_VERSION was downloaded"
fi

# 2. The libraries and headers, extracted once into the cache.
TFDIR=$CACHE/tf-$TF_VERSION
if [ ! -f "$TFDIR/.extracted" ]; then
  rm -rf "$TFDIR" && mkdir -p "$TFDIR"
  "$PY" - "$WHEEL" "$TFDIR" <<'EOF' || skip "cannot extract $WHEEL"
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
libs = {"tensorflow/libtensorflow_cc.so.2", "tensorflow/libtensorflow_framework.so.2"}
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n in libs or n.startswith("tensorflow/include/")]
    if not libs <= set(names):
        sys.exit("the wheel has no TensorFlow C library")
    for n in names:
        z.extract(n, dest)
EOF
  touch "$TFDIR/.extracted"
fi
rm -rf "$PKG/deps" && mkdir -p "$PKG/deps/lib"
cp "$TFDIR/tensorflow/libtensorflow_cc.so.2" "$TFDIR/tensorflow/libtensorflow_framework.so.2" "$PKG/deps/lib/"
# binding.gyp links -ltensorflow -ltensorflow_framework; install.js checks for
# libtensorflow.so.2.9.1; the libraries' own sonames stay as they are.
( cd "$PKG/deps/lib" &&
  ln -s libtensorflow_cc.so.2 libtensorflow.so &&
  ln -s libtensorflow_cc.so.2 libtensorflow.so.2 &&
  ln -s libtensorflow_cc.so.2 libtensorflow.so.2.9.1 &&
  ln -s libtensorflow_framework.so.2 libtensorflow_framework.so )
ln -s "$TFDIR/tensorflow/include" "$PKG/deps/include"

# 3. The addon, from source.
NODE_GYP=$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js
[ -f "$NODE_GYP" ] || skip "node-gyp (bundled with npm) not found"
NODEDIR=()
[ -f /usr/include/node/node_api.h ] && NODEDIR=(--nodedir=/usr)
command -v g++ >/dev/null && command -v make >/dev/null || skip "no C++ toolchain (g++, make)"
echo "native backend: building the tfjs-node addon against libtensorflow $TF_VERSION"
# The variables node-pre-gyp would pass; binding.gyp copies the addon to module_path.
NAPI=$(basename "$(dirname "$ADDON")"); NAPI=${NAPI#napi-v}
(cd "$PKG" && node "$NODE_GYP" rebuild "${NODEDIR[@]}" --module_name=tfjs_binding \
   --module_path="$(dirname "$ADDON")" --napi_build_version="$NAPI" >"$CACHE/node-gyp.log" 2>&1) \
  || skip "the addon did not build (log: $CACHE/node-gyp.log)"
[ -f "$ADDON" ] || skip "the addon was built but not placed at $ADDON"

# 4. It loads and computes.
verify || skip "the addon built but does not load"
touch "$STAMP"
