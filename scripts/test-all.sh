#!/usr/bin/env bash
# Every test of the project; `make test` runs it after installing and building.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NPM="$PWD/scripts/npm-quiet.sh"  # npm without the `nodedir` warning of ~/.npmrc
export MUR_LOG=silent
# `make build` built the native engine or failed: its tests must run, not skip.
export MUR_EXPECT_NATIVE_ENGINE=1

echo "== ts-server on the native engine (mocha: the whole table, goldens, rules, bad input, gRPC)"
MUR_BACKEND=native $NPM test -w ts-server

echo "== ts-server on the tfjs wasm backend (mocha)"
MUR_BACKEND=wasm $NPM test -w ts-server

if (cd ts-server && TF_CPP_MIN_LOG_LEVEL=3 node -e 'require("@tensorflow/tfjs-node")' >/dev/null 2>&1); then
  echo "== ts-server on the native tensorflow backend (mocha)"
  MUR_BACKEND=tensorflow MUR_EXPECT_NATIVE=1 $NPM test -w ts-server
else
  echo "== native tensorflow backend unavailable here (see 'make native'): its suite is not run"
fi

echo "== ts-client against an in-process server (mocha)"
$NPM test -w ts-client

echo "== additive rule vs torch.optim, golden trajectories regenerated with this machine's torch"
golden=$(mktemp --suffix=.json)
trap 'rm -f "$golden"' EXIT
"$PY" python-runner/scripts/make_golden.py "$golden"
for backend in native wasm; do
  (cd ts-server && MUR_BACKEND=$backend MUR_GOLDEN="$golden" $NPM exec -- mocha --no-config --require dist/test/setup.js --timeout 60000 dist/test/torch-golden.test.js)
done

echo "== python-runner (pytest: RemoteOptimizer against a live server, mur.reference against torch.optim)"
"$PY" -m pytest -q python-runner/tests python-runner/lab/tests

# The same suite on a current torch 2.x (PyPI, the cached venv `make torch2` builds).
T2=${TORCH2_PY:-.venv-torch2/bin/python}
if [ -x "$T2" ] && "$T2" -c 'import torch' 2>/dev/null; then
  echo "== python-runner again on torch $("$T2" -c 'import torch; print(torch.__version__)')"
  # The library's suite: the lab (python-runner/lab) needs matplotlib and tqdm, which this venv does not have,
  # except the benchmarks (make bench-e2e and bench-train run here, beside torch's fused optimizers).
  PYTHONPATH="$PWD/python-runner:$PWD/python-runner/lab" "$T2" -m pytest -q python-runner/tests \
    python-runner/lab/tests/test_bench.py
else
  echo "== torch 2.x venv unavailable (see 'make torch2'): the suite ran on Debian's torch only"
fi

# The JAX/optax and Keras clients and the cross-framework matrix (the venv `make jax` builds:
# jax, optax, keras from PyPI beside Debian's torch).
JX=${JAX_PY:-.venv-jax/bin/python}
if [ -x "$JX" ] && KERAS_BACKEND=jax "$JX" -c 'import jax, optax, keras' 2>/dev/null; then
  echo "== mur.optax and mur.keras on $(KERAS_BACKEND=jax "$JX" -c 'import jax, optax, keras; print("jax", jax.__version__, "optax", optax.__version__, "keras", keras.__version__)')"
  KERAS_BACKEND=jax PYTHONPATH="$PWD/python-runner:$PWD/python-runner/lab" "$JX" -m pytest -q \
    python-runner/tests/test_optax.py python-runner/tests/test_trust_ratio.py python-runner/tests/test_adafactor_optax.py python-runner/tests/test_muon_optax.py \
    python-runner/tests/test_schedule_free_optax.py python-runner/tests/test_lion_optax.py \
    python-runner/tests/test_keras.py \
    python-runner/lab/tests/test_frameworks.py
  echo "== cross-framework matrix, quick size (torch, optax, keras, and mur's additive rule through each client)"
  matrix=$(mktemp -d)
  KERAS_BACKEND=jax PYTHONPATH="$PWD/python-runner:$PWD/python-runner/lab" "$JX" -m mur.validate \
    --frameworks torch,optax,keras --quick --out "$matrix"
  rm -rf "$matrix"
else
  echo "== jax venv unavailable (see 'make jax'): mur.optax, mur.keras and the framework matrix are not tested"
fi

echo "== cross-framework validation, quick size (torch.optim vs mur.reference vs the server)"
"$PY" -m mur.validate --quick

echo "== paper reproduction, quick size (through the server; writes results/quick/)"
"$PY" -m mur_lab.experiments.reproduce --quick --out "$(mktemp -d)"
