# mur: every target installs what it needs, so a fresh machine runs
#   make demo   (install everything, train Fashion-MNIST through the server)
#   make test   (install everything, run every test)
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Debian packages the project needs (Python side, protoc, the dataset).
APT_PACKAGES := python3-torch python3-grpcio python3-protobuf python3-numpy \
  python3-matplotlib python3-tqdm python3-venv python3-pip python3-pytest \
  protobuf-compiler protobuf-compiler-grpc dataset-fashion-mnist \
  libhwy-dev g++ make openssl python3-optuna
SYS_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
PROTO_SRC := proto/mur/v1/optimizer.proto

.PHONY: help deps apt node-deps py-deps proto native native-engine build test test-ts test-py demo \
  bench-engine bench-e2e bench-load bench-scale reproduce clean

help:
	@echo "make demo   - install everything, then train Fashion-MNIST with torch.optim and through mur, side by side"
	@echo "make test   - install everything, then run every test"
	@echo "make bench-engine | bench-e2e | bench-load | bench-scale | reproduce"

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

node_modules/.package-lock.json: package.json package-lock.json ts-server/package.json ts-client/package.json
	bash scripts/npm-quiet.sh ci --no-audit --no-fund

node-deps: node_modules/.package-lock.json

# Two distributions, both editable: the library `mur` (python-runner) and the
# lab `mur_lab` (python-runner/lab: demo, validation, benchmarks, experiments).
$(VENV)/.installed: python-runner/pyproject.toml python-runner/lab/pyproject.toml | apt
	$(SYS_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e python-runner -e python-runner/lab
	touch $@

py-deps: apt $(VENV)/.installed

deps: apt node-deps py-deps

# Generated code: ts-proto for TypeScript, protoc + grpc_python_plugin for Python.
proto: deps
	bash scripts/gen-proto.sh

build: proto native native-engine
	bash scripts/npm-quiet.sh run build --workspaces

test: build torch2 jax
	PY=$(PY) bash scripts/test-all.sh

# The same MLP trained with torch.optim.Adam, mur Adam additive and mur Adam
# hybrid (its defaults), side by side: accuracy, ms per batch, a PNG of the
# curves (~15 s; DEMO_ARGS="--epochs 1 --train-size 20000" for other sizes).
demo: build
	$(PY) -m mur_lab.demo $(DEMO_ARGS)

clean:
	rm -rf ts-server/native/build
	rm -rf node_modules */node_modules ts-server/dist ts-client/dist ts-server/generated ts-client/generated python-runner/mur/_proto $(VENV)

# Native TensorFlow backend for tfjs-node from the tensorflow-cpu wheel
# (cached in $${MUR_CACHE:-~/.cache/mur}); says why and goes on when impossible.
native: node-deps py-deps
	bash scripts/native-backend.sh

# The fused native engine (ts-server/native: C++, Highway SIMD, both cores),
# rebuilt when its sources change.
NATIVE_ADDON := ts-server/native/build/Release/mur_native.node
NATIVE_SRC := $(wildcard ts-server/native/src/*.cc ts-server/native/src/*.h ts-server/native/src/*/*.h) ts-server/native/binding.gyp
native-engine: $(NATIVE_ADDON)
$(NATIVE_ADDON): $(NATIVE_SRC) | node-deps apt
	bash scripts/native-engine.sh

# Engine throughput per optimizer x rule x backend x threads beside torch.optim
# in its strongest CPU form (torch 2.x fused from the cached venv, else foreach
# or default) and Debian's torch 1.13.
bench-engine: build torch2
	cd ts-server && MUR_LOG=silent node dist/bench/engine.js

# RemoteOptimizer step vs a local torch.optim step, with a time breakdown (issue 3).
bench-e2e: build
	$(PY) -m mur_lab.bench_e2e

# Sharded servers under torch.distributed: steps/s and remote step time for
# 1, 2, 4 servers x 1, 2, 4 gloo ranks (ZeroRedundancyOptimizer over
# mur.RemoteOptimizer), 4M and 16M parameters, on loopback, plus the same
# table on paper for separate hosts (docs/scale-out.md). BENCH_SCALE_ARGS="--params 1M
# --servers 1,2 --ranks 1,2" for a quick run.
bench-scale: build
	$(PY) -m mur_lab.bench_scale $(BENCH_SCALE_ARGS)

# One server under 32 client processes (100k-parameter Adam sessions, random
# gradients), gRPC then shm: steps/s, p50/p99 step latency, errors, server RSS
# before / at peak / after close. BENCH_LOAD_ARGS="--duration 10" shortens it
# (default 45 s per transport; --clients, --params, --transports).
bench-load: build
	cd ts-server && MUR_LOG=silent node dist/bench/load.js $(BENCH_LOAD_ARGS)

# The paper reproduction through the server (issues 5, 11): equal-budget Optuna
# tuning per optimizer x rule, seeds, verdicts -> results/REPORT.md, results.json,
# plots (21 min on 2 shared cores). Optuna is python3-optuna in APT_PACKAGES.
reproduce: build
	$(PY) -m mur_lab.experiments.reproduce

# torch 2.x (fused CPU optimizers) in its own venv, for comparing against it in
# bench-engine. Wheels are kept in $${MUR_CACHE:-~/.cache/mur}/pip/wheels, so a
# rebuild of the venv downloads nothing and works offline; says why and goes on
# when impossible.
TORCH2_VENV := .venv-torch2
TORCH2_PACKAGES := 'torch>=2,<3' numpy grpcio protobuf pytest
.PHONY: torch2

torch2: $(TORCH2_VENV)/.installed

$(TORCH2_VENV)/.installed: | apt
	@cache="$${MUR_CACHE:-$$HOME/.cache/mur}/pip"; log=$$(mktemp); \
	echo "torch2: installing torch 2.x into $(TORCH2_VENV) (wheels cached in $$cache)"; \
	mkdir -p "$$cache/wheels" && $(SYS_PYTHON) -m venv $(TORCH2_VENV) >"$$log" 2>&1 \
	  && { $(TORCH2_VENV)/bin/python -m pip download -q --retries 1 --no-cache-dir -d "$$cache/wheels" \
	         $(TORCH2_PACKAGES) >>"$$log" 2>&1 || echo "torch2: could not download from PyPI, trying cached wheels"; } \
	  && $(TORCH2_VENV)/bin/python -m pip install -q --no-index --find-links "$$cache/wheels" \
	       $(TORCH2_PACKAGES) >>"$$log" 2>&1 \
	  && touch $@ \
	  && echo "torch2: $$($(TORCH2_VENV)/bin/python -c 'import torch; print(torch.__version__)') in $(TORCH2_VENV)" \
	  || echo "torch2: skipped, no torch 2.x ($$(grep '^ERROR' "$$log" | tail -n1 | grep . || tail -n1 "$$log"))"; \
	rm -f "$$log"

# JAX (CPU jaxlib), optax and Keras 3 for mur.optax, mur.keras and the
# cross-framework matrix (python -m mur.validate --frameworks). Its own venv on
# the system Python with --system-site-packages, so Debian's torch 1.13, grpcio
# and protobuf are used as they are (torch 2.x wheels are not needed here);
# numpy stays below 2 because Debian's torch 1.13 is built against numpy 1.x.
# Wheels are kept in $${MUR_CACHE:-~/.cache/mur}/pip/wheels as for torch2; says
# why and goes on when impossible. mur itself comes from PYTHONPATH=python-runner
# (scripts/test-all.sh), as for torch2.
JAX_VENV := .venv-jax
JAX_PACKAGES := 'jax[cpu]' optax 'keras>=3' 'numpy<2'
.PHONY: jax

jax: $(JAX_VENV)/.installed

$(JAX_VENV)/.installed: | apt
	@cache="$${MUR_CACHE:-$$HOME/.cache/mur}/pip"; log=$$(mktemp); \
	echo "jax: installing jax, optax and keras into $(JAX_VENV) (wheels cached in $$cache)"; \
	mkdir -p "$$cache/wheels" && $(SYS_PYTHON) -m venv --system-site-packages $(JAX_VENV) >"$$log" 2>&1 \
	  && { $(JAX_VENV)/bin/python -m pip download -q --retries 1 --no-cache-dir -d "$$cache/wheels" \
	         $(JAX_PACKAGES) >>"$$log" 2>&1 || echo "jax: could not download from PyPI, trying cached wheels"; } \
	  && $(JAX_VENV)/bin/python -m pip install -q --no-index --find-links "$$cache/wheels" \
	       $(JAX_PACKAGES) >>"$$log" 2>&1 \
	  && KERAS_BACKEND=jax PYTHONPATH=python-runner $(JAX_VENV)/bin/python -c \
	       'import torch, numpy, jax, optax, keras, grpc, mur; torch.from_numpy(numpy.zeros(1, numpy.float32))' >>"$$log" 2>&1 \
	  && touch $@ \
	  && echo "jax: $$(KERAS_BACKEND=jax $(JAX_VENV)/bin/python -c 'import jax, optax, keras, numpy, torch; print("jax", jax.__version__, "optax", optax.__version__, "keras", keras.__version__, "numpy", numpy.__version__, "torch", torch.__version__)' 2>/dev/null) in $(JAX_VENV)" \
	  || echo "jax: skipped, no jax/optax/keras ($$(grep '^ERROR\|Error' "$$log" | tail -n1 | grep . || tail -n1 "$$log"))"; \
	rm -f "$$log"
