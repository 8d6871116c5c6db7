#!/usr/bin/env bash
# The already-stored check over a long history (release build; BENCHMARKS.md, "A year of
# history"). For each table size in BENCH_SIZES (default "10000000 30000000 100000000"),
# a table is prefilled straight into Delta with that many events spread over 365 days,
# in time order as a stream writes them; then, for each key check (cache, then index):
#   start:   `run` over 10,000 new events of the last 3 days: process start to the first
#            batch committed, and peak RSS;
# and on the largest table only, each `run --until-idle` on a raw topic of its own:
#   ingest:  1,000,000 new events of the last 3 days;
#   replay:  200,000 events of 30 old days, every one already stored (nothing inserted);
#   new:     100,000 new events on the same 30 old days (all inserted);
#   wide:    (key cache only) 1,000,000 new events on 120 old days: their keys (33 M at
#            100 M rows, 502 MiB) overflow the default 128 MiB `key_cache_bytes`, so
#            every full batch reads them again: the cache's worst case, full all along;
#   and, for reference, the same 1,000,000-event ingest into an empty table.
# BENCH_CHECKS (default "cache index") names the key checks measured, in that order.
# Prints one table and writes it as JSON (data/history<time>/history.json, or BENCH_JSON=FILE). Each
# size's table is deleted after it is measured (BENCH_KEEP=1 keeps them). Uses a fresh
# broker of its own (scripts/lib.sh `bench_broker`: BENCH_KAFKA_PORT, TANSU_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${BENCH_SIZES:-"10000000 30000000 100000000"}
checks=${BENCH_CHECKS:-"cache index"}
days=365
source scripts/lib.sh
bench_broker
export IDEMPIPE_BROKERS=127.0.0.1:$port
bench_release
root=data/history$(date +%s)
mkdir -p "$root"
results=()

# phase NAME TABLE EVENTS CHECK ROWS_BEFORE: the events on a raw topic of their own, then
# `run --until-idle 3s` with key_check CHECK on TABLE; appends a JSON result.
phase() {
  local name=$1 table=$2 events=$3 check=$4 before=$5
  new_pipeline "h$name" 2s
  local cfg=$work/idempipe.toml
  { echo "delta_path = \"$table\""; echo "batch_log = \"$work/batches.jsonl\""; echo "key_check = \"$check\"";
    grep -v '^delta_path = ' "$cfg"; } >"$cfg.new"
  mv "$cfg.new" "$cfg"
  "$bin" --config "$cfg" setup --skip-clickhouse >/dev/null
  "$bin" --config "$cfg" produce --input "$events" >/dev/null
  local t0; t0=$(date +%s.%N)
  /usr/bin/time -f '%M %e' -o "$work/time" "$bin" --config "$cfg" run --until-idle 3s >/dev/null 2>"$work/run.log"
  local result
  result=$(python3 - "$work/batches.jsonl" "$t0" "$work/time" "$name" "$check" "$before" "$events" <<'PY'
import json, sys
from datetime import datetime
log, t0, timef, name, check, before, events = sys.argv[1:8]
lines = [json.loads(l) for l in open(log)]
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
rss_kib, wall = open(timef).read().split()
sent = sum(1 for _ in open(events))
n = sum(l["events_in"] for l in lines)
secs = t(lines[-1]["ended_at"]) - t(lines[0]["started_at"])
print(json.dumps({
    "phase": name, "key_check": check, "table_rows": int(before), "events": n, "sent": sent,
    "inserted": sum(l.get("inserted") or 0 for l in lines),
    "stored_duplicates": sum(l.get("stored_duplicates") or 0 for l in lines),
    "seconds": round(secs, 3), "events_per_sec": round(n / secs), "batches": len(lines),
    "first_commit_seconds": round(t(lines[0]["ended_at"]) - float(t0), 2),
    "peak_rss_mib": round(int(rss_kib) / 1024), "wall_seconds": float(wall)}))
PY
)
  results+=("$result")
  echo "$result" >&2
}

# events FILE NAMESPACE COUNT DAYS ROWS: writes events of the history of ROWS rows.
events() {
  "$bin" bench-events --rows "$5" --days "$days" --namespace "$2" --count "$3" --on-days "$4" --out "$1" >/dev/null
}

last3="$((days - 3)),$((days - 2)),$((days - 1))"
old30=$(python3 -c "print(','.join(str(d) for d in range(10, 310, 10)))")
old120=$(python3 -c "print(','.join(str(d) for d in range(1, 361, 3)))")
largest=$(tr ' ' '\n' <<<"$sizes" | sort -n | tail -1)
for rows in $sizes; do
  table=$PWD/$root/t$rows/events
  new_pipeline "hprefill$rows" 2s
  { echo "delta_path = \"$table\""; grep -v '^delta_path = ' "$work/idempipe.toml"; } >"$work/p.toml"
  "$bin" --config "$work/p.toml" setup --skip-clickhouse >/dev/null
  /usr/bin/time -f '%M %e' -o "$work/time" "$bin" --config "$work/p.toml" bench-prefill --rows "$rows" --days "$days" \
    >"$work/prefill.json" 2>"$work/prefill.log"
  read -r rss secs <"$work/time"
  echo "prefill $rows rows: $(cat "$work/prefill.json") in $secs s, peak RSS $((rss / 1024)) MiB, $(du -sh "$table" | cut -f1)" >&2
  for check in $checks; do
    events "$root/start-$check-$rows.jsonl" "s$check" 10000 "$last3" "$rows"
    phase "start" "$table" "$root/start-$check-$rows.jsonl" "$check" "$rows"
  done
  if [[ $rows == "$largest" ]]; then
    events "$root/replay.jsonl" h 200000 "$old30" "$rows"
    for check in $checks; do
      events "$root/ingest-$check.jsonl" "l$check" 1000000 "$last3" "$rows"
      phase ingest "$table" "$root/ingest-$check.jsonl" "$check" "$rows"
      phase replay "$table" "$root/replay.jsonl" "$check" "$rows"
      events "$root/new-$check.jsonl" "n$check" 100000 "$old30" "$rows"
      phase new "$table" "$root/new-$check.jsonl" "$check" "$rows"
      if [[ $check == cache ]]; then
        events "$root/wide.jsonl" w 1000000 "$old120" "$rows"
        phase wide "$table" "$root/wide.jsonl" cache "$rows"
      fi
    done
    events "$root/ingest-empty.jsonl" "lempty" 1000000 "$last3" "$rows"
    new_pipeline hempty 2s
    "$bin" --config "$work/idempipe.toml" setup --skip-clickhouse >/dev/null
    phase ingest_empty "$PWD/$work/delta/events" "$root/ingest-empty.jsonl" cache 0
  fi
  [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$root/t$rows"
done

json=${BENCH_JSON:-$root/history.json}
python3 - "$json" "${results[@]}" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(r) for r in sys.argv[2:]]
json.dump({"phases": rows}, open(out, "w"), indent=2)
print("| phase | key check | table rows | events | inserted | events/s | start to first commit, s | peak RSS MiB |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f'| {r["phase"]} | {r["key_check"]} | {r["table_rows"]:,} | {r["events"]:,} | {r["inserted"]:,} | {r["events_per_sec"]:,} | {r["first_commit_seconds"]} | {r["peak_rss_mib"]} |')
print(f"\nJSON: {out}")
PY
