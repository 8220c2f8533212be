# Chorus developer commands. Everything built lives under $(CHORUS_CACHE)
# (default ~/.cache/chorus), outside the repository.
SHELL := /bin/bash
CHORUS_CACHE ?= $(HOME)/.cache/chorus
export CHORUS_CACHE
export CARGO_TARGET_DIR ?= $(CHORUS_CACHE)/target
.DEFAULT_GOAL := help

.PHONY: help demo test bench bench-operator cluster-up cluster-down db-up db-down control-plane images tools crds fmt lint

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

demo: ## provision a tenant with the operator on the local control plane and chat in its web client
	@scripts/demo.sh

test: ## every check: fmt, clippy, unit tests, integration suites on a real control plane + PostgreSQL
	@scripts/test.sh

bench: ## load-test the chat runtime (release build, loopback, dev PostgreSQL); prints the README figures
	@scripts/bench.sh

bench-operator: ## the operator at scale on a kwok-only control plane of its own (ARGS="--tenants 10000 --namespaces 100 --hold")
	@scripts/bench-operator.sh

cluster-up: ## start the local cluster (control plane, one real node, kwok, metrics-server); prints `export KUBECONFIG=...`
	@scripts/cluster.sh up

cluster-down: ## stop the cluster started by cluster-up; leaves no process, mount, netns, veth or iptables rule
	@scripts/cluster.sh down

db-up: ## start the dev PostgreSQL on 127.0.0.1:55432; prints the admin URL
	@scripts/db.sh up dev

db-down: ## stop the dev PostgreSQL
	@scripts/db.sh down dev

control-plane: ## build the cluster's binaries from Go modules (cached): control plane, node, kwok, metrics-server
	@scripts/build-control-plane.sh

images: ## OCI image archives of chat-runtime, chorus-operator, chorus-backup and nats-server (no Docker); imported into a running node
	@scripts/images.sh

tools: ## build helm and kubeconform from Go modules (cached)
	@scripts/build-tools.sh

crds: ## regenerate crds/ and the chart's CRD copy from the Rust types
	cargo run -q -p chorus-operator --bin crdgen -- --write

fmt: ## format Rust and Go sources
	cargo fmt --all
	gofmt -w tests/control-plane

lint: ## clippy with warnings denied
	cargo clippy --workspace --all-targets -- -D warnings
