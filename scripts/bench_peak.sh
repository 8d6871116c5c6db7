#!/usr/bin/env bash
# The processor's peak memory when its largest batches and a compaction run at once
# (BENCHMARKS.md, "A batch and a compaction at once").
#
# Usage: scripts/bench_peak.sh [ROWS (3000000)] [EVENTS (1000000)]
# BENCH_PAD=BYTES adds a field of that many random hex characters to every new event (the
# generated ones are about 100 bytes), to see how a batch's memory grows with its events'
# size: `BENCH_PAD=1000 scripts/bench_peak.sh 3000000 400000`. BENCH_RUN_ARGS: more
# arguments for every `run`, e.g. "--max-batch-bytes 33554432 --kafka queued.max.messages.kbytes=65536".
# Prefills a table of ROWS events over 3 days in commits of 50,000 rows (one small file
# per date per commit: each date's files make a compaction of about 64 MiB at once), and
# produces EVENTS new events of the same 3 days, so every batch is a full one (200,000
# events, the default). Then, each on its own copy of the table, under GNU time:
#   batches:      `run --until-idle 3s`, compaction off;
#   deferred:     `--compact-every 6s`: the compaction comes due while the batches are full
#                 and waits for them to end (up to another 6 s; about 6 s of batches from
#                 about 2 s in);
#   both:         `--compact-every 1s`: due a second in and put off for a second at most,
#                 so compactions run beside the full batches (the worst case: batches
#                 full for longer than one more `compact_every`);
#   compaction:   `idempipe compact` alone.
# Each compaction's end and length are printed beside the batches' span.
# Prints each one's peak RSS and wall time. Other settings are the defaults. Uses a fresh
# broker of its own (scripts/lib.sh `bench_broker`: BENCH_KAFKA_PORT, TANSU_BIN). Writes data/hpeak<time>/ (its logs; the
# tables and the events, about 2 GB, are deleted at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-3000000}
events=${2:-1000000}
source scripts/lib.sh
bench_broker
export IDEMPIPE_BROKERS=127.0.0.1:$port
cargo build --locked --release --bin idempipe >&2
bin=$PWD/target/release/idempipe
new_pipeline hpeak 2s
cfg=$work/idempipe.toml
"$bin" --config "$cfg" setup --skip-clickhouse >/dev/null
"$bin" --config "$cfg" bench-prefill --rows "$rows" --chunk 50000 --days 3 >"$work/prefill.json" 2>"$work/prefill.log"
"$bin" bench-events --rows "$rows" --days 3 --namespace t --count "$events" --on-days 0,1,2 \
  --out "$work/events.jsonl" >/dev/null
if [[ -n ${BENCH_PAD:-} ]]; then
  python3 - "$work/events.jsonl" "$BENCH_PAD" <<'PY'
import os, sys
path, pad = sys.argv[1], int(sys.argv[2])
with open(path) as f, open(path + ".pad", "w") as out:
    for line in f:
        out.write(line.rstrip()[:-1] + ',"payload":"' + os.urandom(pad // 2 + 1).hex()[:pad] + '"}\n')
os.replace(path + ".pad", path)
PY
fi
echo "new events: $(wc -l <"$work/events.jsonl"), $(($(stat -c %s "$work/events.jsonl") / 1048576)) MiB" >&2
"$bin" --config "$cfg" produce --input "$work/events.jsonl" >/dev/null
table=$work/delta/events
for copy in batches deferred both compaction; do
  cp -r "$table" "$work/$copy"
done

# measure NAME ARGS...: runs idempipe with a config of NAME's own (its table copy, its own
# consumer group, so each run reads the whole topic), prints peak RSS and wall time.
measure() {
  local name=$1
  shift
  local own=$work/$name.toml
  { echo "delta_path = \"$PWD/$work/$name\""; echo "group = \"$run_id-$name\""; echo "batch_log = \"$work/$name.batches.jsonl\"";
    grep -v -e '^delta_path = ' -e '^group = ' "$cfg"; } >"$own"
  /usr/bin/time -f '%M %e' -o "$work/$name.time" "$bin" --config "$own" "$@" >/dev/null 2>"$work/$name.log"
  read -r kib wall <"$work/$name.time"
  printf '%-11s peak RSS %4d MiB, %6.1f s\n' "$name" $((kib / 1024)) "$wall"
}
# shellcheck disable=SC2086 # BENCH_RUN_ARGS is a list of words
{
  measure batches run --until-idle 3s --compact-every off ${BENCH_RUN_ARGS:-}
  measure deferred run --until-idle 10s --compact-every 6s ${BENCH_RUN_ARGS:-}
  measure both run --until-idle 3s --compact-every 1s ${BENCH_RUN_ARGS:-}
}
measure compaction compact
python3 - "$work" "$events" <<'PY'
import json, sys
work, events = sys.argv[1], int(sys.argv[2])
for name in ("batches", "deferred", "both"):
    batches = [json.loads(l) for l in open(f"{work}/{name}.batches.jsonl")]
    batches = [b for b in batches if b.get("events_in")]
    inserted = sum(b["inserted"] or 0 for b in batches)
    print(f"{name}: {len(batches)} batches of up to {max(b['events_in'] for b in batches)} events, "
          f"{inserted} of {events} inserted, from {batches[0]['started_at'][11:23]} to {batches[-1]['ended_at'][11:23]}")
    if inserted != events:
        sys.exit(f"MISMATCH: {inserted} inserted, {events} produced")
# Each compaction's end and `elapsed`, beside the batches' span above.
for name in ("deferred", "both"):
    for line in open(f"{work}/{name}.log"):
        if "compacted the Delta table" in line or "compaction due" in line:
            print(f"{name}: {line[11:23]}: " + line.split("  INFO ")[-1].strip()[:160])
PY
rm -rf "$work/delta" "$work/batches" "$work/deferred" "$work/both" "$work/compaction" "$work/events.jsonl"
echo "$work"
