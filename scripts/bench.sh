#!/usr/bin/env bash
# The throughput and latency benchmark (release build), in one run on fresh topics and
# tables of its own (the key index's targets, BENCHMARKS.md):
#   0. latency: a processor with a 200 ms trigger and a trickle of 1,000 probe events a
#      second for 60 s; produce-to-visible-in-Delta percentiles (first, on the empty broker);
#   1. produce: N unique events plus 10% exact re-sends, generated and sent at full speed;
#   2. drain: a bare librdkafka consumer reads that topic end to end (the ceiling);
#   3. first ingest: `run` over the whole topic into an empty table;
#   4. replay: the same file produced again, `run` over it (all duplicates);
#   5. large table: a second table prefilled with 10 x N rows, then the same file
#      ingested into it (the cost must not grow with the table);
#   6. s3: phases 3 and 4 again with the table on the loopback S3 server (moto, started
#      by scripts/services.sh s3-up) on a raw topic of its own, then `run` restarted on
#      each of the two tables (local disk, S3) with nothing new to read: the start-up
#      time (process start to idle exit), then the same on two tables prefilled with
#      10 x N rows (restart-large).
# With BENCH_KEY_CHECK=index, the large-table and restart phases also report the key
# index's size and build time (index_keys, index_build_seconds, index_bytes_per_key);
# the other key checks build no index, so those fields are left out.
# Phases 3 and 4 also report where the batches' time went (the batch log's phases:
# collect, parse, dedup, reload, check, produce, write, commit, as shares of the batches'
# wall time). With BENCH_PROFILE=1 the first ingest runs under `perf record` (sampling
# at 499 Hz) and the hottest functions are printed and kept in $work/profile.txt.
# Prints one table and writes it as JSON ($work/bench.json, or BENCH_JSON=FILE).
# Usage: scripts/bench.sh [N]   (default 1000000). Environment:
#   BENCH_KEY_CHECK    index (every key in memory) or scan (the scan-and-MERGE path)
#                      measures another key check than the default cache
#   BENCH_SKIP         phases to skip, e.g. "large latency s3 restart-large"
#   BENCH_LATENCY_RATE, BENCH_LATENCY_SECONDS   the latency phase's probe events a second
#                      (default 1000) and how long it sends them (default 60)
#   BENCH_JSON         where the JSON goes
#   S3_PORT            the loopback S3 server's port (default 9300)
#   BENCH_PROFILE      1: profile the first ingest with perf (Debian's linux-perf)
#   BENCH_KAFKA_PORT, BENCH_KAFKA_IMPL, TANSU_BIN   the benchmark's own cluster
#                      (scripts/lib.sh `bench_broker`: Apache Kafka on 19092 and 19094,
#                      or tansu)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
dups=$((n / 10))
skip=" ${BENCH_SKIP:-} "
key_check=${BENCH_KEY_CHECK:-cache}

source scripts/lib.sh
bench_broker
export IDEMPIPE_BROKERS=127.0.0.1:$port IDEMPIPE_KEY_CHECK=$key_check
bench_release

# Phases 3 and 4 on config $1, whose raw topic holds the generated file once: `run` into
# its (empty) table, then the file again and `run` over it; rates from its batch log $2.
# Phases are named first_ingest$3 and replay$3, logs $main/$4ingest.log and $4replay.log.
ingest_and_replay() { # config, batch log, phase suffix, log prefix
  local events secs rate batches files done_batches shares
  if [[ ${BENCH_PROFILE:-} == 1 && -z $3 ]]; then perf_out=$main/perf.data; fi
  timed "$1" run --until-idle 3s >/dev/null 2>"$main/$4ingest.log"
  perf_out=""
  read -r events secs rate batches files < <(from_log "$2" 0 100000000)
  shares=$(phases_of "$2" 0 100000000)
  record "first_ingest$3" "$events" "$secs" "$rate" "$rss" "$files" "\"batches\":$batches,\"phase_shares\":$shares"
  done_batches=$batches
  echo "first ingest$3: $events events in $secs s ($rate/s), $batches batches; time shares $shares" >&2
  if [[ -f $main/perf.data && -z $3 ]]; then
    perf report -i "$main/perf.data" --stdio --no-children --sort dso,sym --percent-limit 1 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -40 >"$main/profile.txt"
    echo "first ingest's hottest functions (perf, $main/profile.txt):" >&2
    cat "$main/profile.txt" >&2
  fi
  "$bin" --config "$1" produce --input "$main/events.jsonl" >/dev/null
  timed "$1" run --until-idle 3s >/dev/null 2>"$main/$4replay.log"
  read -r events secs rate batches files < <(from_log "$2" "$done_batches" 100000000)
  shares=$(phases_of "$2" "$done_batches" 100000000)
  record "replay$3" "$events" "$secs" "$rate" "$rss" "$files" "\"batches\":$batches,\"phase_shares\":$shares"
  echo "replay$3: $events events in $secs s ($rate/s); time shares $shares" >&2
}

# A copy of config $1 at $2 whose table is s3://idempipe/$3/events on the loopback S3
# server, with its batch log at $4 and raw topic $5.
s3_config() { # config, out, table name, batch log, raw topic
  {
    echo "delta_path = \"s3://idempipe/$3/events\""
    echo "batch_log = \"$4\""
    sed -e '/^delta_path = /d' -e "s/^raw_topic = .*/raw_topic = \"$5\"/" -e "s/^group = .*/group = \"$3-s3\"/" "$1"
    printf '\n[storage]\naws_endpoint_url = "http://127.0.0.1:%s"\naws_allow_http = "true"\n' "${S3_PORT:-9300}"
    printf 'aws_region = "us-east-1"\naws_access_key_id = "bench"\naws_secret_access_key = "bench"\n'
  } >"$2"
}

# The start-up line of `run` in a log: how long the key index took and how big it is,
# as JSON fields; nothing unless the key check is the index (no other builds one).
index_of() { # log
  [[ $key_check == index ]] || return 0
  python3 - "$1" <<'PY'
import re, sys
text = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[1]).read())
m = re.search(r"keys=(\d+) files=(\d+) version=\S+ heap_mib=(\d+) elapsed=([\d.]+)(ms|s|µs)", text)
if m:
    keys, heap = int(m[1]), int(m[3]) * 2**20
    secs = float(m[4]) / (1000 if m[5] == "ms" else 1e6 if m[5] == "µs" else 1)
    print(f'"index_keys":{keys},"index_build_seconds":{secs:.2f},"index_bytes_per_key":{heap / max(keys, 1):.1f}')
else:
    print('"index_keys":null')
PY
}
results=()
record() { # phase events seconds rate rss_kib files [extra json]
  results+=("{\"phase\":\"$1\",\"events\":$2,\"seconds\":$3,\"events_per_sec\":$4,\"peak_rss_kib\":${5:-null},\"delta_files\":${6:-null}${7:+,$7}}")
}

# Latency first, on the empty broker.
if [[ $skip != *" latency "* ]]; then
  new_pipeline benchlat 200ms
  lat=$work
  cfg_t=$lat/idempipe.toml
  "$bin" --config "$cfg_t" setup --skip-clickhouse >/dev/null
  "$bin" --config "$cfg_t" run >/dev/null 2>"$lat/run.log" &
  run_pid=$!
  sleep 3   # start-up: metadata and Delta's offsets
  "$bin" --config "$cfg_t" bench-latency --rate "${BENCH_LATENCY_RATE:-1000}" --seconds "${BENCH_LATENCY_SECONDS:-60}" >"$lat/latency.json"
  kill -TERM "$run_pid"; wait "$run_pid" || true
  echo "latency: $(cat "$lat/latency.json")" >&2
  latency_json=$(python3 -c "import json;d=json.load(open('$lat/latency.json'));d['phase']='latency';print(json.dumps(d))")
fi


new_pipeline bench 2s
main=$work
cfg=$main/idempipe.toml
"$bin" --config "$cfg" setup --skip-clickhouse >/dev/null
"$bin" --config "$cfg" generate --unique "$n" --duplicates "$dups" --seed 7 --out "$main/events.jsonl" >/dev/null
messages=$((n + dups))
timed "$cfg" produce --input "$main/events.jsonl" --json >"$main/produce.json"
read -r p_secs p_rate < <(python3 -c "import json;d=json.load(open('$main/produce.json'));print(d['seconds'],d['messages_per_sec'])")
record produce "$messages" "$p_secs" "$p_rate" "$rss"
echo "produce: $(cat "$main/produce.json")" >&2

timed "$cfg" drain >"$main/drain.json"
read -r d_secs drain_rate < <(python3 -c "import json;d=json.load(open('$main/drain.json'));print(d['seconds'],d['messages_per_sec'])")
record drain "$messages" "$d_secs" "$drain_rate" "$rss"
echo "drain: $(cat "$main/drain.json")" >&2

ingest_and_replay "$cfg" "$main/delta/events.batches.jsonl" "" ""
"$bin" --config "$cfg" verify --json >"$main/verify.json" 2>/dev/null || true

if [[ $skip != *" large "* ]]; then
  new_pipeline benchlarge 2s
  large=$work
  cfg_l=$large/idempipe.toml
  "$bin" --config "$cfg_l" setup --skip-clickhouse >/dev/null
  prefill_rows=$((10 * n))
  echo "large table: prefilling $prefill_rows rows" >&2
  timed "$cfg_l" bench-prefill --rows "$prefill_rows" >"$large/prefill.json"
  echo "prefill: $(cat "$large/prefill.json") peak_rss_kib=$rss" >&2
  "$bin" --config "$cfg_l" produce --input "$main/events.jsonl" >/dev/null
  timed "$cfg_l" run --until-idle 3s >/dev/null 2>"$large/ingest.log"
  read -r events secs rate batches files < <(from_log "$large/delta/events.batches.jsonl" 0 100000000)
  index_json=$(index_of "$large/ingest.log")
  record large_table_ingest "$events" "$secs" "$rate" "$rss" "$files" "\"batches\":$batches,\"table_rows_before\":$prefill_rows${index_json:+,$index_json}"
  echo "large-table ingest: $events events in $secs s ($rate/s), peak RSS ${rss} KiB${index_json:+; $index_json}" >&2
fi

if [[ $skip != *" s3 "* ]]; then
  # The same file on a raw topic of its own, into a table on the loopback S3 server.
  scripts/services.sh s3-up >/dev/null
  cfg_s=$main/idempipe-s3.toml
  s3_config "$cfg" "$cfg_s" "$run_id" "$main/s3.batches.jsonl" "$run_id.s3.raw_events"
  "$bin" --config "$cfg_s" setup --skip-clickhouse >/dev/null
  "$bin" --config "$cfg_s" produce --input "$main/events.jsonl" >/dev/null
  ingest_and_replay "$cfg_s" "$main/s3.batches.jsonl" _s3 s3-
  # Start-up on each table, nothing new to read: process start to idle exit (with the
  # index, its build within it: listing the table, reading every file's keys).
  for where in local s3; do
    c=$cfg; [[ $where == s3 ]] && c=$cfg_s
    timed "$c" run --until-idle 1s >/dev/null 2>"$main/restart-$where.log"
    index_json=$(index_of "$main/restart-$where.log")
    record "restart_$where" 0 "$secs" 0 "$rss" "" "$index_json"
    echo "restart on $where: ${secs} s to idle exit${index_json:+; $index_json}" >&2
  done
  # The same start-up on two tables of 10 x N prefilled rows (local disk, S3), with an
  # empty raw topic: how the start-up grows with the table on each store.
  if [[ $skip != *" restart-large "* ]]; then
    new_pipeline benchrestart 2s
    rl=$work
    s3_config "$rl/idempipe.toml" "$rl/idempipe-s3.toml" "$run_id" "$rl/s3.batches.jsonl" "$run_id.raw_events"
    for where in local s3; do
      c=$rl/idempipe.toml; [[ $where == s3 ]] && c=$rl/idempipe-s3.toml
      "$bin" --config "$c" setup --skip-clickhouse >/dev/null
      timed "$c" bench-prefill --rows "$((10 * n))" >"$rl/prefill-$where.json"
      echo "prefill on $where: $(cat "$rl/prefill-$where.json") in ${secs} s" >&2
      timed "$c" run --until-idle 1s >/dev/null 2>"$rl/restart-$where.log"
      index_json=$(index_of "$rl/restart-$where.log")
      record "restart_large_$where" 0 "$secs" 0 "$rss" "" "\"table_rows\":$((10 * n))${index_json:+,$index_json}"
      echo "restart on a $((10 * n))-row table on $where: ${secs} s${index_json:+; $index_json}" >&2
    done
  fi
fi

[[ -n ${latency_json:-} ]] && results+=("$latency_json")
json=${BENCH_JSON:-$main/bench.json}
python3 - "$json" "$n" "$dups" "$key_check" "$(nproc)" "$(free -g | awk '/Mem:/{print $2}')" "${results[@]}" <<'PY'
import json, sys
out, n, dups, key_check, cores, mem = sys.argv[1:7]
rows = [json.loads(r) for r in sys.argv[7:]]
by = {r["phase"]: r for r in rows}
drain = by["drain"]["events_per_sec"]
for r in rows:
    if r["phase"] != "latency":
        r["ratio_to_drain"] = round(float(r["events_per_sec"]) / drain, 3)
doc = {"unique": int(n), "resends": int(dups), "key_check": key_check, "cores": int(cores), "memory_gib": int(mem), "phases": rows}
json.dump(doc, open(out, "w"), indent=2)
print(f"\n{n} unique + {dups} re-sends = {int(n) + int(dups)} messages per pass; key check: {key_check}; {cores} cores, {mem} GiB")
print("| phase | events | seconds | events/s | ratio to drain | peak RSS MiB | Delta files written |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if r["phase"] == "latency" or r["phase"].startswith("restart_"):
        continue
    rss = "" if r.get("peak_rss_kib") is None else f'{r["peak_rss_kib"] / 1024:.0f}'
    files = "" if r.get("delta_files") is None else r["delta_files"]
    print(f'| {r["phase"]} | {r["events"]:,} | {float(r["seconds"]):.2f} | {float(r["events_per_sec"]):,.0f} | {r["ratio_to_drain"]:.2f} | {rss} | {files} |')
if "first_ingest" in by and "large_table_ingest" in by:
    large = by["large_table_ingest"]
    index = (f' (index: {large["index_keys"]} keys, {large.get("index_bytes_per_key")} B/key,'
             f' built in {large.get("index_build_seconds")} s)') if "index_keys" in large else ""
    print(f'\nlarge table / empty table rate: {large["events_per_sec"] / by["first_ingest"]["events_per_sec"]:.2f}{index}')
if "first_ingest_s3" in by:
    for phase in ("first_ingest", "replay"):
        print(f'{phase} on s3 / on local disk: {float(by[phase + "_s3"]["events_per_sec"]) / float(by[phase]["events_per_sec"]):.2f}')
    for phase in ("restart", "restart_large"):
        for where in ("local", "s3"):
            r = by.get(f"{phase}_{where}")
            if r:
                index = (f', key index of {r["index_keys"]} keys built in {r.get("index_build_seconds")} s'
                         if "index_keys" in r else "")
                print(f'{phase} on {where}: {float(r["seconds"]):.2f} s to idle exit{index}, peak RSS {r["peak_rss_kib"] / 1024:.0f} MiB')
if "latency" in by:
    l = by["latency"]
    print(f'latency at {l["rate"]:.0f} events/s, 200 ms trigger: p50 {l["p50_ms"]:.0f} ms, p90 {l["p90_ms"]:.0f} ms, p99 {l["p99_ms"]:.0f} ms, max {l["max_ms"]:.0f} ms ({l["events"]} events, {l["commits"]} commits)')
print(f"\nJSON: {out}")
PY
