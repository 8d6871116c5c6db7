#!/usr/bin/env bash
# The test command: services up (installing them if missing), then every test.
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh up

# The independent Delta reader the tests use to check the table (the Python `deltalake`).
if ! python3 -c 'import deltalake' 2>/dev/null; then
  echo "test: installing the Python deltalake package (independent Delta reader)" >&2
  python3 -m pip install --quiet 'deltalake>=1.0' 'pyarrow>=15' >&2
fi

cargo test --locked --no-fail-fast "$@"
