#!/usr/bin/env bash
# Measures what plugin build settings give: the incremental rebuild after a one-line body
# edit of the example plugin, and the size of the library the host then copies and maps.
# Variants: cargo's default dev profile, line tables only, no debug info, stripped, and the
# mold linker when it is installed (`apt-get install mold`; skipped when absent).
# Usage: bench/scripts/build-profiles.sh  (from the workspace root; takes about a minute)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/crate/src"
cp "$root/example-plugin/src/lib.rs" "$work/crate/src/lib.rs"
base="[package]
name = \"profexp\"
version = \"0.1.0\"
edition = \"2024\"
[lib]
crate-type = [\"cdylib\"]
[dependencies]
plugin-api = { path = \"$root/plugin-api\" }
[workspace]"

run() { # label, profile text, RUSTFLAGS
  printf '%s\n%s\n' "$base" "$2" > "$work/crate/Cargo.toml"
  (cd "$work/crate" && RUSTFLAGS="$3" cargo build -q --target-dir "$work/t-$1")
  local times=()
  for i in 1 2 3 4 5 6 7; do
    sed -i "s/n \* [0-9]*)/n * $((i + 2)))/" "$work/crate/src/lib.rs"
    local s e
    s=$(date +%s%N)
    (cd "$work/crate" && RUSTFLAGS="$3" cargo build -q --target-dir "$work/t-$1")
    e=$(date +%s%N)
    times+=($(((e - s) / 1000000)))
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 4p)
  printf '| %s | %s | %s |\n' "$1" "$median" "$(stat -c %s "$work/t-$1/debug/libprofexp.so")"
}

echo "| variant | median rebuild ms (7 edits) | library bytes |"
echo "|---|---:|---:|"
run default "" ""
run line-tables-only "[profile.dev]
debug = \"line-tables-only\"" ""
run no-debug "[profile.dev]
debug = false" ""
run stripped "[profile.dev]
debug = false
strip = true" ""
if command -v mold >/dev/null; then
  run no-debug+mold "[profile.dev]
debug = false" "-Clink-arg=-fuse-ld=mold"
else
  echo "| no-debug+mold | (mold not installed: apt-get install mold) | |"
fi
