#!/usr/bin/env bash
# `make image`: the static musl binary (the site embedded), checked alone from
# an empty directory, then the OCI image `localhost/pulse:latest` FROM scratch
# with podman (Debian's; buildah works the same), run once where containers
# can run. Expects the front end built (make's $(FRONT)).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl
BIN="target/$TARGET/release/pulse"
say() { printf '[image] %s\n' "$*"; }

rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
say "cargo build --release --features ssr --target $TARGET"
cargo build --release --features ssr --bin pulse --target "$TARGET"
file "$BIN" | grep -Eq "statically linked|static-pie linked" || { file "$BIN"; echo "not static" >&2; exit 1; }

# The binary alone, from an empty directory, with an empty environment.
empty=$(mktemp -d)
trap 'rm -rf "$empty"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT
cp "$BIN" "$empty/pulse"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$empty" && exec env -i LEPTOS_SITE_ADDR="127.0.0.1:$port" PULSE_METRICS_ADDR=127.0.0.1:0 ./pulse >"$empty/log" 2>&1) &
pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null
curl -fsS "http://127.0.0.1:$port/" | grep -q "<title>" || { cat "$empty/log"; exit 1; }
curl -fsS -H 'accept-encoding: br' -o /dev/null -w '%{http_code} %{size_download} bytes\n' \
  "http://127.0.0.1:$port/pkg/pulse.css"
kill -TERM "$pid"; wait "$pid" || true; pid=""
say "the static binary serves from an empty directory: $(du -h "$BIN" | cut -f1)"

if ! command -v podman >/dev/null; then
  say "podman is not installed (apt-get install podman): image not built"
  exit 0
fi
ctx=$(mktemp -d)
cp "$BIN" "$ctx/pulse"
cp deploy/Containerfile "$ctx/Containerfile"
podman build --quiet -t localhost/pulse:latest "$ctx"
rm -rf "$ctx"
say "built localhost/pulse:latest ($(podman image inspect localhost/pulse:latest --format '{{.Size}}') bytes, user $(podman image inspect localhost/pulse:latest --format '{{.Config.User}}'))"
if out=$(podman run --rm localhost/pulse:latest --version 2>&1); then
  say "podman run: $out"
else
  say "containers cannot run on this machine: $out"
fi
