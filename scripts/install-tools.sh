#!/usr/bin/env bash
# Installs what building (and, with `--test`, testing) pulse needs on a fresh
# machine, from crates.io, npm and Debian only. Idempotent: whatever is already
# there at the right version is skipped, so a second run takes a second or two.
#
#   scripts/install-tools.sh          build tools: wasm32 target, cargo-leptos,
#                                     wasm-bindgen-cli (Cargo.lock's version), wasm-opt, brotli
#   scripts/install-tools.sh --test   the same, plus Chromium, redis-server, nginx and end2end's npm packages
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LEPTOS_VERSION=0.3.10   # 0.3.11 needs rustc 1.96
BINARYEN_VERSION=132          # cargo-leptos's release build runs wasm-opt; Debian's is too old
BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
TOOLS="${CARGO_HOME:-$HOME/.cargo}/pulse-tools"
export PATH="$BIN:$PATH"

say() { printf '[tools] %s\n' "$*"; }

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if [ $apt_updated -eq 0 ]; then $sudo apt-get update -qq; apt_updated=1; fi
  say "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The wasm-bindgen CLI must match the library version in Cargo.lock exactly.
wasm_bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$wasm_bindgen_version" ] || { echo "wasm-bindgen not found in Cargo.lock" >&2; exit 1; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

if ! cargo leptos --version 2>/dev/null | grep -q "$CARGO_LEPTOS_VERSION"; then
  say "cargo install cargo-leptos@$CARGO_LEPTOS_VERSION (about 15 minutes, once)"
  cargo install --locked "cargo-leptos@$CARGO_LEPTOS_VERSION"
fi

if ! wasm-bindgen --version 2>/dev/null | grep -q " $wasm_bindgen_version\$"; then
  # Not --locked: one of its locked dependencies is not on the registry mirror.
  say "cargo install wasm-bindgen-cli@$wasm_bindgen_version"
  cargo install --force "wasm-bindgen-cli@$wasm_bindgen_version"
fi

if ! wasm-opt --version 2>/dev/null | grep -q "version $BINARYEN_VERSION"; then
  say "npm install binaryen@$BINARYEN_VERSION (wasm-opt)"
  mkdir -p "$TOOLS"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS" "binaryen@$BINARYEN_VERSION"
  ln -sf "$TOOLS/node_modules/.bin/wasm-opt" "$BIN/wasm-opt"
fi

# `make release` precompresses the site with these.
apt_install brotli gzip

if [ "${1:-}" = "--test" ]; then
  apt_install chromium redis-server nginx-light
  if [ ! -d end2end/node_modules/@playwright/test ] || [ end2end/package-lock.json -nt end2end/node_modules/.package-lock.json ]; then
    say "npm ci (end2end)"
    (cd end2end && npm ci --silent --no-audit --no-fund)
  fi
fi
say "ready"
