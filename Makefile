# mur: every target installs what it needs, so a fresh machine runs
#   make demo   (install everything, train Fashion-MNIST through the server)
#   make test   (install everything, lint, run every test)
#   make lint   (every linter, formatter check and type check; make format rewrites)
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Debian packages the project needs (Python side, protoc, the dataset; OpenBLAS's
# pthread build for Muon's matrix products, Eigen only for scripts/bench-blas.sh).
APT_PACKAGES := python3-torch python3-grpcio python3-protobuf python3-numpy \
  python3-matplotlib python3-tqdm python3-venv python3-pip python3-pytest \
  protobuf-compiler protobuf-compiler-grpc dataset-fashion-mnist \
  libhwy-dev g++ make openssl python3-optuna clang-format \
  libopenblas-pthread-dev libeigen3-dev
SYS_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
PROTO_SRC := proto/mur/v1/optimizer.proto

.PHONY: help deps apt node-deps py-deps proto native native-engine build test test-ts test-py demo \
  bench-engine bench-e2e bench-train bench-lane bench-load bench-scale reproduce clean lint lint-py lint-ts lint-cxx format

help:
	@echo "make demo   - install everything, then train Fashion-MNIST with torch.optim and through mur, side by side"
	@echo "make test   - install everything, then lint and run every test"
	@echo "make lint   - every linter and formatter in check mode (make format rewrites the files)"
	@echo "make bench-engine | bench-e2e | bench-train | bench-lane | bench-load | bench-scale | reproduce"
	@echo "  bench-e2e   - RemoteOptimizer step on every transport vs torch default, foreach and fused (torch 2.x venv)"
	@echo "  bench-train - ms per Fashion-MNIST batch: torch fused AdamW vs mur vs mur overlap; step vs the limit kernel"
	@echo "  bench-lane  - a tiny same-host step (the fast lane's round trip) vs torch fused, busy gaps between steps"

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

test: lint build torch2 jax
	PY=$(PY) bash scripts/test-all.sh

# Linters and formatters, configs at the root: ruff (ruff.toml: lint and format) and mypy
# (mypy.ini: the library) for Python, in .venv-lint (pins: requirements-lint.txt); ESLint with
# typescript-eslint's type-checked rules (eslint.config.mjs) and prettier (.prettierrc.json:
# 140 columns, the width the TypeScript was written to) for TypeScript, npm devDependencies of
# the root package.json; clang-format (.clang-format, Debian's) for the C++ engine. `make lint`
# exits non-zero on any finding; `make format` rewrites every file the formatters own.
LINT_VENV := .venv-lint

# Files left out of lint and format (make patterns: a % matches any tail). Empty: every
# file is checked. Only for a branch that rewrites files wholesale, never on main.
LINT_PENDING :=

# The files a tool owns: tracked or new in this checkout (never git-ignored ones: generated
# code, venvs, node_modules, builds), less LINT_PENDING.
lint-files = $(filter-out $(LINT_PENDING),$(wildcard $(shell git ls-files -co --exclude-standard -- $(1))))
PY_FILES = $(call lint-files,'*.py')
TS_FILES = $(call lint-files,'*.ts' '*.mjs')
CXX_FILES = $(call lint-files,'*.cc' '*.h')
# mypy follows imports into pending modules: their lines are dropped from its report.
lint-space := $(subst x, ,x)
LINT_PENDING_RE = ^($(subst $(lint-space),|,$(strip $(subst %,.*,$(LINT_PENDING))))):

$(LINT_VENV)/.installed: requirements-lint.txt | apt
	$(SYS_PYTHON) -m venv --system-site-packages $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install -q -r requirements-lint.txt
	touch $@

lint: lint-py lint-ts lint-cxx

lint-py: $(LINT_VENV)/.installed proto
	@echo "ruff check, ruff format --check: $(words $(PY_FILES)) Python files"
	@$(LINT_VENV)/bin/ruff check --force-exclude $(PY_FILES)
	@$(LINT_VENV)/bin/ruff format --check --force-exclude $(PY_FILES)
	@echo "$(LINT_VENV)/bin/mypy  # mypy.ini"; out=$$($(LINT_VENV)/bin/mypy 2>&1); rc=$$?; \
	  [ $$rc -le 1 ] || { printf '%s\n' "$$out"; exit $$rc; }; \
	  $(if $(strip $(LINT_PENDING)),out=$$(printf '%s\n' "$$out" | grep -vE '$(LINT_PENDING_RE)');) \
	  if printf '%s\n' "$$out" | grep -qE '^[^ ]+:[0-9]+: error:'; then printf '%s\n' "$$out" | grep -v '^Found [0-9]* errors\? in'; exit 1; fi; \
	  echo "mypy: no issues$(if $(strip $(LINT_PENDING)), outside LINT_PENDING)"

# ts-client is typed against @mur/server's declarations (ts-server/dist): built by lint-ts when
# missing or older than the server's sources (build rebuilds them anyway).
TS_SERVER_DTS := ts-server/dist/src/index.d.ts
$(TS_SERVER_DTS): $(shell git ls-files -- 'ts-server/src/*.ts') ts-server/tsconfig.json ts-server/package.json $(PROTO_SRC) | proto
	bash scripts/npm-quiet.sh run build -w ts-server

lint-ts: proto $(TS_SERVER_DTS)
	@echo "eslint, prettier --check: $(words $(TS_FILES)) TypeScript files"
	@node_modules/.bin/eslint --max-warnings 0 $(TS_FILES)
	@node_modules/.bin/prettier --check --log-level warn $(TS_FILES)

lint-cxx: apt
	@echo "clang-format --dry-run: $(words $(CXX_FILES)) C++ files"
	@$(if $(CXX_FILES),clang-format --dry-run -Werror $(CXX_FILES),true)

format: $(LINT_VENV)/.installed node-deps apt
	@echo "ruff (import order, format), prettier, clang-format: rewriting $(words $(PY_FILES) $(TS_FILES) $(CXX_FILES)) files"
	@$(LINT_VENV)/bin/ruff check --force-exclude --select I --fix --quiet $(PY_FILES)
	@$(LINT_VENV)/bin/ruff format --force-exclude --quiet $(PY_FILES)
	@node_modules/.bin/prettier --write --log-level warn $(TS_FILES)
	@$(if $(CXX_FILES),clang-format -i $(CXX_FILES),true)

# The same MLP trained with torch.optim.Adam, mur Adam additive and mur Adam
# hybrid (its defaults), side by side: accuracy, ms per batch, a PNG of the
# curves (~15 s; DEMO_ARGS="--epochs 1 --train-size 20000" for other sizes).
demo: build
	$(PY) -m mur_lab.demo $(DEMO_ARGS)

clean:
	rm -rf ts-server/native/build
	rm -rf node_modules */node_modules ts-server/dist ts-client/dist ts-server/generated ts-client/generated python-runner/mur/_proto $(VENV) \
	  $(LINT_VENV) .mypy_cache .ruff_cache

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

# The Python benches run on torch 2.x from the cached venv (`make torch2`: its fused
# optimizers are the strongest local step), mur and mur_lab from this checkout on
# PYTHONPATH (that venv has neither, nor matplotlib and tqdm, which the benches do not
# import); on Debian's torch 1.13 in .venv when that venv could not be built.
bench-py = if [ -f $(TORCH2_VENV)/.installed ]; then \
	  set -x; PYTHONPATH=$(CURDIR)/python-runner:$(CURDIR)/python-runner/lab $(CURDIR)/$(TORCH2_VENV)/bin/python $(1); \
	else echo "no torch 2.x venv (make torch2): the bench runs on Debian's torch 1.13"; set -x; $(PY) $(1); fi

# RemoteOptimizer step on shm, tcp and grpc vs torch's default, foreach and fused steps,
# gradients made by backward after zero_grad() and kept in the arena, 1 and 2 threads,
# 1 to 64M parameters and a 300-tensor model; the wire's ceiling; Fashion-MNIST ms/batch
# (issues 3, 21). BENCH_E2E_ARGS="--quick" (or --sizes, --threads, --grads) shortens it.
bench-e2e: build torch2
	@$(call bench-py,-m mur_lab.bench_e2e $(BENCH_E2E_ARGS))

# ms per Fashion-MNIST batch (MLP, CNN, transformer) with torch fused AdamW, mur and mur
# overlap=True, alternating blocks; the remote AdamW step vs torch fused and the limit
# kernel at 4M, 64M, 256M on 2 threads (issue 21). BENCH_TRAIN_ARGS="--quick" shortens it.
bench-train: build torch2
	@$(call bench-py,-m mur_lab.bench_train $(BENCH_TRAIN_ARGS))

bench-lane: build torch2
	@$(call bench-py,-m mur_lab.bench_lane $(BENCH_LANE_ARGS))

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
