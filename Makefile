# pulse — `make run` builds and serves the app, `make test` runs every check.
# Both install what they need first (scripts/install-tools.sh); see README.md.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := $(HOME)/.cargo/bin:$(PATH)

SITE    := target/site
BIN     := target/release/pulse
# Everything either half of the app is built from.
SOURCES := $(shell find src style public -type f) Cargo.toml Cargo.lock Leptos.toml
# Marks a finished front-end build (WASM, JS, CSS, public/, precompressed).
FRONT   := target/front.stamp
# The load generator (bench/).
BENCH   := bench/target/release/pulse-bench

.PHONY: run dev release test lint e2e bench bench-bin image tools test-tools clean

## run: install the tools, build the release binary, serve on http://127.0.0.1:3000
run: tools $(BIN)
	$(BIN)

## dev: live-reloading development server (cargo leptos watch --split)
dev: tools
	cargo leptos watch --split

## release: the single self-contained binary, target/release/pulse
release: tools $(BIN)
	@ls -lh $(BIN)

## test: formatting, clippy (server, client, load generator), Rust tests, Playwright in Chromium
test: test-tools lint $(FRONT)
	cargo test --release --features ssr
	$(MAKE) --no-print-directory e2e
	$(MAKE) --no-print-directory bench-bin

## bench: load-test the release server (pinned to core 0; the load generator on core 1)
bench: tools $(BIN) bench-bin
	taskset -c 1 $(BENCH) $(abspath $(BIN))

## image: the static musl binary checked alone, then the OCI image FROM scratch (podman)
image: tools $(FRONT)
	scripts/image.sh

# The load generator is its own crate (own lock file and target dir); CI
# builds it so that it cannot rot.
bench-bin:
	cargo build --release --manifest-path bench/Cargo.toml

## e2e: the Playwright suite against target/release/pulse (run from an empty directory)
e2e:
	cd end2end && PULSE_BIN="$(abspath $(BIN))" npx playwright test

lint:
	cargo fmt --check
	cargo fmt --check --manifest-path bench/Cargo.toml
	cargo clippy --features ssr --all-targets -- -D warnings
	cargo clippy --lib --target wasm32-unknown-unknown --features hydrate -- -D warnings
	cargo clippy --release --manifest-path bench/Cargo.toml -- -D warnings

tools:
	@scripts/install-tools.sh

test-tools:
	@scripts/install-tools.sh --test

# The server embeds the site, so the front end is built first (cargo-leptos
# would build both halves in parallel), then precompressed, then the server.
$(FRONT): $(SOURCES)
	cargo leptos build --release --frontend-only --split
	scripts/precompress.sh $(SITE)
	@touch $@

$(BIN): $(FRONT) $(SOURCES)
	cargo build --release --features ssr --bin pulse
	@touch $@

clean:
	cargo clean
