#!/usr/bin/env bash
# The main job: services up, then the seed scenario end to end, printing expected
# against actual for every store after each step. Exits non-zero on any mismatch.
#
#   1. 10,000 unique events + 1,000 re-sends + 100 invalid lines, produced and processed;
#   2. the same file produced 10 more times and processed: nothing changes;
#   3. 15 new events: 10,015.
#
# The ClickHouse sink runs inside the processor (--clickhouse-in-run); after each step
# ClickHouse must hold exactly Delta's keys (FINAL count and key checksum).
#
# Each run uses topics, group and table of its own (named demo<time>), so it can be
# run again on the same broker. Usage: scripts/demo.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
cargo_flags=()
if [[ ${1:-} == --release ]]; then profile=release; cargo_flags=(--release); fi

scripts/services.sh build-deps
scripts/services.sh up
cargo build --locked "${cargo_flags[@]}" --bin idempipe
bin=target/$profile/idempipe

source scripts/lib.sh
new_pipeline demo 1s
idem() { "$bin" --config "$work/idempipe.toml" "$@"; }

failed=0
check() { # step, delta rows expected, dlq expected, processed distinct expected
  local step=$1
  idem verify --json >"$work/verify.json"
  python3 - "$step" "$2" "$3" "$4" "$work/verify.json" <<'PY' || failed=1
import json, sys
step, rows, dlq, processed, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
v = json.load(open(path))
checks = [
    ("delta_rows", rows), ("delta_distinct_keys", rows), ("dlq_records", dlq),
    ("processed_distinct_keys", processed),
    ("clickhouse_final_rows", rows), ("clickhouse_keys_match", True),
]
print(f"\n== {step}")
print(f"{'store count':<26}{'expected':>10}{'actual':>10}")
bad = False
for name, want in checks:
    got = v.get(name)
    shown_want = "-" if want is None else str(want).lower()
    shown_got = "-" if got is None else str(got).lower()
    mark = ""
    if want is not None and got != want:
        mark, bad = "  MISMATCH", True
    print(f"{name:<26}{shown_want:>10}{shown_got:>10}{mark}")
print(f"{'clickhouse_rows (raw)':<26}{'':>10}{v.get('clickhouse_rows', '-')!s:>10}")
print(f"{'processed_records (raw)':<26}{'':>10}{v.get('processed_records', '-')!s:>10}")
print(f"{'raw_records':<26}{'':>10}{v.get('raw_records', '-')!s:>10}")
sys.exit(1 if bad else 0)
PY
}

echo "== run $run_id: topics $run_id.*, table $work/delta/events"
idem setup
idem generate --unique 10000 --duplicates 1000 --invalid 100 --seed 42 --out "$work/seed.jsonl"
idem produce --input "$work/seed.jsonl"
idem run --until-idle 3s --clickhouse-in-run
check "seed: 10,000 unique + 1,000 re-sends + 100 invalid" 10000 100 10000

for i in $(seq 10); do idem produce --input "$work/seed.jsonl" >/dev/null; done
echo "produced the same file 10 more times"
idem run --until-idle 3s --clickhouse-in-run
check "after 10 replays of the same file" 10000 1100 10000

idem generate --unique 15 --seed 4242 --days 1 --out "$work/new.jsonl"
idem produce --input "$work/new.jsonl"
idem run --until-idle 3s --clickhouse-in-run
check "after 15 new events" 10015 1100 10015

echo
echo "== the batches (idempipe analyze; charts in $work/batches.html)"
idem analyze --html "$work/batches.html"

if ((failed)); then echo "demo: MISMATCH (see above)" >&2; exit 1; fi
echo
echo "demo: every store matches"
