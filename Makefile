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

# The tracking store's micro-benchmarks (divan), what plugin build settings give, then the
# side-by-side summary (also written to target/bench-summary.md), which ends in one verdict per
# target and fails (non-zero) when a result check fails. Not part of `make test`: timings are
# noisy, and a missed timing target is a verdict, not a failure.
bench:
	$(CARGO) bench --locked -p hmr-track
	bench/scripts/build-profiles.sh
	$(CARGO) bench --locked -p hmr-bench
