#!/usr/bin/env bash
# Maintenance beside the batch loop: does a long compaction hold batches back, or cost a
# group member its membership?
#
# Usage: scripts/bench_compaction.sh [ROWS (3000000)] [RATE (1000)]
# Prefills a table of ROWS events over 365 days in commits of 5,000 rows (two small files
# per commit: a compaction of the whole table, about 1,000 files into 365), then runs the
# processor in `group` mode with a 1 s trigger and `--compact-every 20s` while RATE events
# a second of 3 recent days arrive for 90 s. Prints each compaction, every batch's wait
# after the previous one's commit (the loop's own time between batches: its checks,
# maintenance if it ran in the loop), the longest time between two commits, and the
# group's assignments. Uses a fresh cluster of its own (scripts/lib.sh `bench_broker`:
# Apache Kafka, or tansu with BENCH_KAFKA_IMPL=tansu; BENCH_KAFKA_PORT), or the brokers in
# COMPACT_BROKERS (e.g. scripts/services.sh's, 127.0.0.1:9092). Writes data/hcompact<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-3000000}
rate=${2:-1000}
source scripts/lib.sh
if [[ -n ${COMPACT_BROKERS:-} ]]; then
  export IDEMPIPE_BROKERS=$COMPACT_BROKERS
else
  bench_broker
  export IDEMPIPE_BROKERS=127.0.0.1:$port
fi
cargo build --locked --release --bin idempipe >&2
bin=$PWD/target/release/idempipe
new_pipeline hcompact 1s
cfg=$work/idempipe.toml
{ echo 'consumer_mode = "group"'; cat "$cfg"; } >"$cfg.new"
mv "$cfg.new" "$cfg"
"$bin" --config "$cfg" setup --skip-clickhouse >/dev/null
"$bin" --config "$cfg" bench-prefill --rows "$rows" --chunk 5000 --days 365 >"$work/prefill.json" 2>"$work/prefill.log"
events=$((rate * 90))
"$bin" bench-events --rows "$rows" --days 365 --namespace t --count "$events" --on-days 300,301,302 \
  --out "$work/events.jsonl" >/dev/null
"$bin" --config "$cfg" run --compact-every 20s 2>"$work/run.log" >/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
# The produce rate is the producer's own: nothing waits on the processor.
sleep 3
"$bin" --config "$cfg" produce --input "$work/events.jsonl" --rate "$rate" >/dev/null
# Caught up: the last event is in Delta.
until [[ $("$bin" --config "$cfg" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["processor_lag"])') == 0 ]]; do
  sleep 1
done
kill -TERM $pid
wait $pid || true
python3 - "$work" "$events" <<'PY'
import datetime, json, sys
work, events = sys.argv[1], int(sys.argv[2])
def at(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
batches = [json.loads(l) for l in open(f"{work}/delta/events.batches.jsonl")]
batches = [b for b in batches if b.get("events_in")]
waits = [(at(b["started_at"]) - at(a["ended_at"])).total_seconds() for a, b in zip(batches, batches[1:])]
between = [(at(b["ended_at"]) - at(a["ended_at"])).total_seconds() for a, b in zip(batches, batches[1:])]
log = open(f"{work}/run.log").read().splitlines()
windows = []
for line in log:
    if "compacted the Delta table" in line or "partitions assigned" in line or "partitions revoked" in line:
        print(line[11:23], line.split("  INFO ")[-1][:160])
    if "compacted the Delta table" in line:
        end = at(line[:27])
        text = line.split("elapsed=")[1].split()[0]
        took = float(text[:-2]) / 1000 if text.endswith("ms") else float(text[:-1])
        windows.append((end - datetime.timedelta(seconds=took), end))
def during(b):
    return any(at(b["started_at"]) < end and at(b["ended_at"]) > start for start, end in windows)
inserted = sum(b["inserted"] or 0 for b in batches)
print(f"\n{len(batches)} batches, {inserted} of {events} events inserted, "
      f"{sum(b['conflicts'] for b in batches)} lost commit races")
print(f"a batch from its start to its commit: at most {max((at(b['ended_at']) - at(b['started_at'])).total_seconds() for b in batches):.2f} s "
      f"(of it, collecting: the 1 s trigger)")
overlapping = [i for i, b in enumerate(batches) if during(b)]
if overlapping:
    print(f"batches overlapping a compaction: {len(overlapping)}, their longest wait after the previous commit "
          f"{max(waits[i - 1] for i in overlapping if i > 0):.3f} s")
print(f"wait before a batch (after the previous commit): max {max(waits):.3f} s, "
      f"longest five {sorted(round(w, 3) for w in waits)[-5:]} (a wait of one trigger is a collection "
      "that found nothing: the batch log records batches with events)")
print(f"longest time between two commits: {max(between):.2f} s")
print(f"assignments: {sum('partitions assigned' in l for l in log)}, revocations: {sum('partitions revoked' in l for l in log)} "
      "(one at the shutdown)")
if inserted != events:
    sys.exit(f"MISMATCH: {inserted} inserted, {events} produced")
PY
echo "$work"
