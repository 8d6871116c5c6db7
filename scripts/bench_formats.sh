#!/usr/bin/env bash
# Input formats side by side (release build, one run, one broker): the same N events plus
# 10% exact re-sends, each variant on fresh topics and a table of its own:
#   json      JSON messages, the whole message kept as `payload` (the default);
#   typed     JSON messages, `session_id` and `value` declared columns (string, long),
#             `payload = "rest"`;
#   avro      Avro in the Confluent wire format through the schema registry
#             (scripts/registry.sh), the built-in schema of the generator's events;
#   protobuf  the same in Protobuf (the file generated with `--format protobuf`: user ids
#             and times as text).
# After a warm-up pipeline on the fresh cluster, for each: produce (encoding included), first ingest into the empty table, then the file
# produced again and its replay (every event a duplicate); rates over the batches (batch
# log), peak RSS of each `run`. Prints one table and writes it as JSON ($work/formats.json,
# or BENCH_JSON=FILE).
# Usage: scripts/bench_formats.sh [N]   (default 1000000). Environment:
#   BENCH_FORMATS      the variants, in order (default "json typed avro protobuf")
#   BENCH_JSON         where the JSON goes
#   BENCH_KAFKA_PORT, BENCH_KAFKA_IMPL   the benchmark's own cluster (scripts/lib.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
dups=$((n / 10))
variants=${BENCH_FORMATS:-json typed avro protobuf}

source scripts/lib.sh
bench_broker
export IDEMPIPE_BROKERS=127.0.0.1:$port
bench_release
scripts/registry.sh up
registry=$(scripts/registry.sh url)

# A fresh cluster's first minutes are slower (leaders settling, the JVMs warming up): a
# throwaway pipeline takes them, so that the first variant is not the one that pays.
new_pipeline fmtwarmup 2s
"$bin" --config "$work/idempipe.toml" setup --skip-clickhouse >/dev/null
"$bin" --config "$work/idempipe.toml" generate --unique 200000 --seed 3 --out "$work/events.jsonl" >/dev/null
"$bin" --config "$work/idempipe.toml" produce --input "$work/events.jsonl" >/dev/null
"$bin" --config "$work/idempipe.toml" run --until-idle 3s >/dev/null 2>"$work/run.log"

results=()
record() { # variant phase events seconds rate rss_kib
  results+=("{\"variant\":\"$1\",\"phase\":\"$2\",\"events\":$3,\"seconds\":$4,\"events_per_sec\":$5,\"peak_rss_kib\":${6:-null}}")
}

for variant in $variants; do
  new_pipeline "fmt$variant" 2s
  cfg=$work/idempipe.toml
  log=$work/delta/events.batches.jsonl
  format=json top="" tables=""
  case $variant in
    json) ;;
    typed)
      top='payload = "rest"'
      tables=$'[columns]\nsession_id = "string"\nvalue = "long"' ;;
    avro | protobuf)
      format=$variant
      top=$'message_format = "schema-registry"\n'"schema_registry_url = \"$registry\"" ;;
    *) echo "bench_formats: unknown variant $variant" >&2; exit 2 ;;
  esac
  # Top-level keys before the [kafka] table, other tables after it.
  TOP=$top awk '/^\[kafka\]/ && !done { print ENVIRON["TOP"]; done = 1 } { print }' "$cfg" >"$cfg.new"
  printf '\n%s\n' "$tables" >>"$cfg.new"
  mv "$cfg.new" "$cfg"
  "$bin" --config "$cfg" setup --skip-clickhouse >/dev/null
  "$bin" --config "$cfg" generate --format "$format" --unique "$n" --duplicates "$dups" --seed 7 \
    --out "$work/events.jsonl" >/dev/null
  timed "$cfg" produce --input "$work/events.jsonl" --format "$format" --json >"$work/produce.json"
  read -r p_secs p_rate p_bytes < <(python3 -c "import json;d=json.load(open('$work/produce.json'));print(d['seconds'],d['messages_per_sec'],d['bytes'])")
  record "$variant" produce $((n + dups)) "$p_secs" "$p_rate" "$rss"
  echo "$variant produce: $(cat "$work/produce.json")" >&2

  timed "$cfg" run --until-idle 3s >/dev/null 2>"$work/ingest.log"
  read -r events secs rate batches _ < <(from_log "$log" 0 100000000)
  record "$variant" first_ingest "$events" "$secs" "$rate" "$rss"
  echo "$variant first ingest: $events events in $secs s ($rate/s), $batches batches, peak RSS $rss KiB" >&2
  done_batches=$batches

  "$bin" --config "$cfg" produce --input "$work/events.jsonl" --format "$format" >/dev/null
  timed "$cfg" run --until-idle 3s >/dev/null 2>"$work/replay.log"
  read -r events secs rate batches _ < <(from_log "$log" "$done_batches" 100000000)
  record "$variant" replay "$events" "$secs" "$rate" "$rss"
  echo "$variant replay: $events events in $secs s ($rate/s), peak RSS $rss KiB" >&2
  "$bin" --config "$cfg" verify --json >"$work/verify.json" 2>/dev/null || true
  python3 - "$work/verify.json" "$n" "$variant" "$p_bytes" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
n, variant = int(sys.argv[2]), sys.argv[3]
rows, keys = v.get("delta_rows"), v.get("delta_distinct_keys")
print(f"{variant}: delta {rows} rows for {keys} keys (expected {n} each); raw bytes {sys.argv[4]}", file=sys.stderr)
if rows != n or keys != n:
    sys.exit(f"{variant}: not exact")
PY
done

out=${BENCH_JSON:-$work/formats.json}
commit=$(git rev-parse --short HEAD)
{
  printf '{"commit":"%s","n":%s,"cores":%s,"results":[' "$commit" "$n" "$(nproc)"
  (IFS=,; printf '%s' "${results[*]}")
  printf ']}\n'
} >"$out"
python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"commit {d['commit']}, {d['n']} events + 10% re-sends, {d['cores']} cores")
print(f"{'variant':<10} {'phase':<13} {'events':>9} {'seconds':>8} {'events/s':>9} {'peak RSS MiB':>12}")
for r in d["results"]:
    rss = f"{r['peak_rss_kib'] / 1024:.0f}" if r["peak_rss_kib"] else "-"
    print(f"{r['variant']:<10} {r['phase']:<13} {r['events']:>9} {r['seconds']:>8.2f} {float(r['events_per_sec']):>9.0f} {rss:>12}")
PY
echo "JSON: $out" >&2
