#!/usr/bin/env bash
# Writes a brotli (.br) and a gzip (.gz) variant next to every compressible
# file of the built site, for the server to embed and serve to clients that
# accept them. Run after `cargo leptos build`, before the server is compiled.
set -euo pipefail
site="${1:-target/site}"
find "$site" -type f \( -name '*.js' -o -name '*.wasm' -o -name '*.css' -o -name '*.svg' \
  -o -name '*.html' -o -name '*.txt' -o -name '*.json' -o -name '*.map' \) -print0 |
  while IFS= read -r -d '' f; do
    brotli --force --keep --quality=11 "$f"
    gzip --force --keep --best --no-name "$f"
  done
