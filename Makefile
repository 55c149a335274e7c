# mur: every target installs what it needs, so a fresh machine runs
#   make demo   (install everything, train Fashion-MNIST through the server)
#   make test   (install everything, run every test)
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Debian packages the project needs (Python side, protoc, the dataset).
APT_PACKAGES := python3-torch python3-grpcio python3-protobuf python3-numpy \
  python3-matplotlib python3-tqdm python3-venv python3-pip python3-pytest \
  protobuf-compiler protobuf-compiler-grpc dataset-fashion-mnist
SYS_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
PROTO_SRC := proto/mur/v1/optimizer.proto

.PHONY: help deps apt node-deps py-deps proto native build test test-ts test-py demo \
  bench-engine bench-e2e reproduce clean

help:
	@echo "make demo   - install everything, then train Fashion-MNIST through a mur server"
	@echo "make test   - install everything, then run every test"
	@echo "make bench-engine | bench-e2e | reproduce"

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

node_modules/.package-lock.json: package.json package-lock.json ts-server/package.json ts-client/package.json
	npm ci --no-audit --no-fund

node-deps: node_modules/.package-lock.json

$(VENV)/.installed: python-runner/pyproject.toml | apt
	$(SYS_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e python-runner
	touch $@

py-deps: apt $(VENV)/.installed

deps: apt node-deps py-deps

# Generated code: ts-proto for TypeScript, protoc + grpc_python_plugin for Python.
proto: deps
	bash scripts/gen-proto.sh

build: proto native
	npm run build --workspaces

test: build
	PY=$(PY) bash scripts/test-all.sh

demo: build
	$(PY) -m mur.demo

clean:
	rm -rf node_modules */node_modules ts-server/dist ts-client/dist ts-server/generated ts-client/generated python-runner/mur/_proto $(VENV)

# Native TensorFlow backend for tfjs-node from the tensorflow-cpu wheel
# (cached in $${MUR_CACHE:-~/.cache/mur}); says why and goes on when impossible.
native: node-deps py-deps
	bash scripts/native-backend.sh

# Engine throughput per optimizer x rule x backend beside torch.optim (issue 2, 4).
bench-engine: build
	cd ts-server && MUR_LOG=silent PYTHON=/usr/bin/python3 node dist/bench/engine.js

# RemoteOptimizer step vs a local torch.optim step, with a time breakdown (issue 3).
bench-e2e: build
	$(PY) -m mur.bench_e2e

# The paper's experiments through the server: results/REPORT.md, JSON, plots (issue 5).
reproduce: build
	$(PY) -m mur.experiments.reproduce
