# The two quick-start commands (see README.md). Each does its own set-up.
#   make up    build shoal and run a one-node cluster on the local Docker engine
#   make test  run the whole test suite (unit, scenario and Docker end-to-end)

SHELL := /bin/bash
.PHONY: up test images tools

up: images
	cargo run --release -p shoal-cli --bin shoal -- up

test: tools images
	cargo build -p shoal-cli --bin shoal
	SHOAL_REQUIRE_DOCKER=1 cargo nextest run --workspace --no-fail-fast

# Local test images (no registry needed): idempotent.
images:
	tests/images/build-test-images.sh

# cargo-nextest ships with this machine kind; install it only if it is missing.
tools:
	@command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
