#!/usr/bin/env bash
# The torture suite in its full form: 500,000 events with 10% re-sends and 12 aimed
# SIGKILLs in the crash loop, plus every other scenario, against the real services.
# Usage: scripts/torture.sh [SEED]   (a random seed otherwise; each scenario prints its
# seed, and TORTURE_SEED=<seed> replays it). TORTURE_EVENTS / TORTURE_KILLS scale it.
# The short form (20,000 events, 6 kills) runs with every `scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

export TORTURE_EVENTS=${TORTURE_EVENTS:-500000}
export TORTURE_KILLS=${TORTURE_KILLS:-12}
if [[ -n ${1:-} ]]; then export TORTURE_SEED=$1; fi
exec scripts/test.sh --test torture -- --nocapture --test-threads 1
