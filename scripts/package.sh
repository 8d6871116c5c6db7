#!/usr/bin/env bash
# Builds the release binary and packages it for shipping in dist/: `idempipe`, without
# debug sections (about a quarter of the size), and `idempipe.debug`, its line tables.
# Keep the two side by side: a panic's backtrace then names files and lines (the binary
# finds the debug file through its .gnu_debuglink); without it, function names only.
# Usage: scripts/package.sh [DIR]   (default dist)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
cargo build --locked --release --bin idempipe
mkdir -p "$out"
cp target/release/idempipe "$out/idempipe.full"
objcopy --only-keep-debug "$out/idempipe.full" "$out/idempipe.debug"
# The link names the file, which must then sit beside the binary (or in .debug/ there).
(cd "$out" && objcopy --strip-debug --add-gnu-debuglink=idempipe.debug idempipe.full idempipe)
rm "$out/idempipe.full"
ls -l "$out/idempipe" "$out/idempipe.debug" >&2
