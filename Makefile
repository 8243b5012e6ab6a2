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
# grpcio: the unix socket is tested with a stock Python gRPC client (Debian's
# python3-grpcio, for the system python3, whatever python3 is first on PATH).
tools:
	@command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
	@python3 -c 'import grpc' 2>/dev/null || /usr/bin/python3 -c 'import grpc' 2>/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq python3-grpcio; }
