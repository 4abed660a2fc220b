# The one entry point for people and CI. `make test` is what .ci/run calls.
CARGO ?= cargo

.PHONY: run test check fmt lint bench

run:
	$(CARGO) run -p host

test: check
	$(CARGO) test --workspace --locked

check:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The tracking store's micro-benchmarks (divan), then the side-by-side summary (also written
# to target/bench-summary.md), then what plugin build settings give.
bench:
	$(CARGO) bench --locked -p hmr-track
	$(CARGO) bench --locked -p hmr-bench
	bench/scripts/build-profiles.sh
