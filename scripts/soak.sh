#!/usr/bin/env bash
# The soak test: a steady trickle through the whole pipeline for a long time, with the
# processor's automatic maintenance on, sampling every minute what must stay bounded:
# live Delta files, the commit log (files and bytes), data files on disk, the
# processor's memory. At the end every store must hold exactly the generated counts.
#
# Usage: scripts/soak.sh [MINUTES (30)] [EVENTS_PER_SEC (200)]
# SOAK_HEAPTRACK=1 runs the processor under heaptrack (its profile in
# data/soak<time>/heaptrack.*; read it with heaptrack_print): slower, for finding what
# holds memory, not for the RSS figures. SOAK_HEAP_PROFILE=1 instead builds the processor
# with jemalloc's heap profiler (the `heap-profile` feature) and has it dump a profile for
# every SOAK_PROF_INTERVAL_LG (default 31: 2 GiB) bytes it allocates and one at exit, into
# data/soak<time>/jeprof.*.heap, with jemalloc's `jeprof` beside them: `jeprof --base
# EARLY LATE` shows what the heap gained between two dumps (TESTING.md, "Heap profiles").
# Writes data/soak<time>/samples.csv and prints a summary. Uses the ClickHouse of
# scripts/services.sh (started if needed) and a fresh Kafka cluster of its own (brokers on
# port SOAK_KAFKA_PORT, default 19192, and +2, the controller on +1, its data in
# SOAK_SERVICES_DIR, default data/soak-services; with KAFKA_IMPL=tansu, tansu on sqlite,
# SOAK_TANSU_STORAGE its storage), stopped at the end.
# SOAK_DAYS: the dates the generated events span, a new one every 5 minutes of the file
# (default MINUTES / 5, at least 2). SOAK_KEY_CACHE_BYTES: the processor's key cache
# budget (default 4194304, 4 MiB). SOAK_LINGER_MS: how long the trickle producer batches
# what it sends (default 500).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
rate=${2:-200}

scripts/services.sh up >&2
port=${SOAK_KAFKA_PORT:-19192}
SERVICES_DIR=${SOAK_SERVICES_DIR:-data/soak-services} KAFKA_PORT=$port TANSU_STORAGE=${SOAK_TANSU_STORAGE:-sqlite://tansu.db} \
  scripts/services.sh kafka-fresh >&2
stop_broker() {
  SERVICES_DIR=${SOAK_SERVICES_DIR:-data/soak-services} KAFKA_PORT=$port scripts/services.sh kafka-down >&2 || true
}
export IDEMPIPE_BROKERS=127.0.0.1:$port
features=()
[[ -z ${SOAK_HEAP_PROFILE:-} ]] || features=(--features heap-profile)
cargo build --locked --release --bin idempipe "${features[@]}" >&2
source scripts/lib.sh
new_pipeline soak 1s
# The trickle producer batches what it sends for up to SOAK_LINGER_MS (default 500; its
# own copy of the config, so the processor's producers keep theirs): `produce --rate`
# otherwise sends each event as its own record batch (tansu's storages slow down with the
# number of batches they hold).
{ cat "$work/idempipe.toml"; echo "\"linger.ms\" = \"${SOAK_LINGER_MS:-500}\""; } >"$work/produce.toml"
# The binary is copied: a rebuild during the soak does not touch the running one.
cp target/release/idempipe "$work/idempipe"
bin=$work/idempipe
idem() { "$bin" --config "$work/idempipe.toml" "$@"; }
# Maintenance far more often than the defaults, so 30 minutes see many rounds of it.
maint=(--compact-every 2m --checkpoint-every 20 --log-retention 5m --vacuum-every 5m --vacuum-retention 5m)

lines=$(python3 -c "print(int($minutes * 60 * $rate))")
invalid=$((lines / 100))
duplicates=$((lines / 10))
unique=$((lines - invalid - duplicates))
# Live traffic: event times advance through the file, a new date every 5 minutes (so a
# two-hour soak writes 24 dates, and old dates go cold as they do in production), and
# each re-send comes within about a minute of its original.
days=${SOAK_DAYS:-$(( minutes / 5 > 2 ? minutes / 5 : 2 ))}
idem generate --unique "$unique" --duplicates "$duplicates" --invalid "$invalid" --seed 7 --days "$days" \
  --time-order --out "$work/events.jsonl" --json >"$work/expected.json"
idem setup >&2

# The key cache's budget (SOAK_KEY_CACHE_BYTES, default 4 MiB, about 23 minutes of keys
# at 200 events/s) is filled within the first half hour, so the second hour shows whether
# anything but the cache grows: under the default budget (128 MiB) a two-hour soak's
# 1.3 M keys (20 MiB) never fill it, and the cache growing towards its budget would hide
# any other growth.
export IDEMPIPE_KEY_CACHE_BYTES=${SOAK_KEY_CACHE_BYTES:-4194304}
# Started without the shell function, so that $! is the processor itself (its memory
# is sampled).
if [[ -n ${SOAK_HEAPTRACK:-} ]]; then
  heaptrack -o "$PWD/$work/heaptrack" "$bin" --config "$work/idempipe.toml" run --clickhouse-in-run "${maint[@]}" \
    2>"$work/run.log" >"$work/heaptrack.out" &
  wrapper=$!
  # heaptrack runs the processor as its child: sample that one.
  until run_pid=$(pgrep -P "$wrapper" -f "$bin --config"); do sleep 0.2; done
else
  profile=()
  if [[ -n ${SOAK_HEAP_PROFILE:-} ]]; then
    # One allocation in 2^17 bytes (128 KiB) sampled: finer than jemalloc's default 512 KiB.
    profile=("MALLOC_CONF=prof:true,prof_final:true,lg_prof_sample:17,lg_prof_interval:${SOAK_PROF_INTERVAL_LG:-31},prof_prefix:$PWD/$work/jeprof")
    cp "$(ls -t target/release/build/tikv-jemalloc-sys-*/out/build/bin/jeprof | head -1)" "$work/jeprof"
  fi
  # `env` replaces itself with the processor: $! is the processor's pid.
  env "${profile[@]}" "$bin" --config "$work/idempipe.toml" run --clickhouse-in-run "${maint[@]}" 2>"$work/run.log" &
  run_pid=$!
fi
produce_pid=
# Under `set -e` a failing command ends a trap early: every step here succeeds.
trap 'kill $run_pid 2>/dev/null || true; kill ${produce_pid:-} 2>/dev/null || true; stop_broker' EXIT
sleep 5
"$bin" --config "$work/produce.toml" produce --input "$work/events.jsonl" --rate "$rate" \
  >"$work/produce.out" 2>"$work/produce.log" &
produce_pid=$!

table=$work/delta/events
# Files come and go while they are counted (compaction, vacuum, log cleanup): a sample
# never fails the run.
sample() { # minute
  local live log_files log_bytes data_files data_bytes rss rss_parts scrape cache heap
  live=$(idem status --json 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["delta_live_files"], s["processor_lag"], s["delta_version"])' 2>/dev/null || echo "- - -")
  log_files=$(find "$table/_delta_log" -type f 2>/dev/null | wc -l || true)
  log_bytes=$( (du -sb "$table/_delta_log" 2>/dev/null || true) | cut -f1)
  data_files=$(find "$table" -path "$table/_delta_log" -prune -o -type f -name '*.parquet' -print 2>/dev/null | wc -l || true)
  data_bytes=$( (du -sb --exclude=_delta_log "$table" 2>/dev/null || true) | cut -f1)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$run_pid/status" 2>/dev/null || echo -)
  # Of it: anonymous memory (the heap, stacks) and file pages (the binary's code and
  # data as it is paged in: up to its mapped size, given back under memory pressure).
  rss_parts=$(awk '/^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {print (a == "" ? "-" : a) "," (f == "" ? "-" : f)}' "/proc/$run_pid/status" 2>/dev/null || echo -,-)
  # From the processor's metrics: the key cache's own accounting (keys of the files read,
  # bounded by key_cache_bytes), what of the RSS is the cache; and jemalloc's count of
  # the heap, what the program holds (allocated) against the allocator's pages in memory
  # (resident): a leak grows the first, memory freed but kept only the second; of the
  # allocated bytes, those freed into the threads' caches (thread_cached).
  scrape=
  [[ -z $metrics ]] || scrape=$(curl -s -m 5 "http://$metrics/metrics" 2>/dev/null || true)
  metric() { awk -v name="$1" '$1 == name {printf "%d", $2}' <<<"$scrape"; }
  cache=$(metric idempipe_key_cache_bytes)
  heap="$(metric idempipe_heap_allocated_bytes),$(metric idempipe_heap_resident_bytes),$(metric idempipe_heap_thread_cached_bytes)"
  [[ $heap != ,, ]] || heap=-,-,-
  read -r live_files lag version <<<"$live"
  echo "$1,$version,$live_files,$lag,$log_files,${log_bytes:--},$data_files,${data_bytes:--},${rss:--},$rss_parts,${cache:--},$heap" | tee -a "$work/samples.csv"
}
# The processor's metrics address (any free port), from its log line; none (the cache and
# heap columns then read `-`) if the environment turns the line off or changes its format
# (IDEMPIPE_METRICS_ADDR, IDEMPIPE_LOG, IDEMPIPE_LOG_FORMAT).
metrics=
for _ in $(seq 1 300); do
  kill -0 "$run_pid" 2>/dev/null || { echo "soak: the processor stopped: $(tail -3 "$work/run.log")" >&2; exit 1; }
  if serving=$(grep -m1 -o 'serving /metrics.*addr=[0-9.:]*' "$work/run.log" 2>/dev/null); then
    metrics=${serving##*addr=}
    break
  fi
  sleep 0.2
done
[[ -n $metrics ]] || echo "soak: no metrics address in the processor's log: key cache and heap not sampled" >&2
echo "minute,delta_version,live_files,processor_lag,log_files,log_bytes,data_files_on_disk,data_bytes_on_disk,run_rss_kib,run_rss_anon_kib,run_rss_file_kib,key_cache_bytes,heap_allocated_bytes,heap_resident_bytes,heap_thread_cached_bytes" | tee "$work/samples.csv"
minute=0
while kill -0 $produce_pid 2>/dev/null; do
  sleep 60
  minute=$((minute + 1))
  sample $minute
done
wait $produce_pid || { echo "soak: produce failed: $(tail -1 "$work/produce.out" "$work/produce.log")" >&2; exit 1; }
# Caught up: nothing left to process, then one more sample.
for _ in $(seq 1 120); do
  lag=$(idem status --json 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["processor_lag"] + s["clickhouse_sink_lag"])' 2>/dev/null || echo 1)
  [[ $lag == 0 ]] && break
  sleep 1
done
sample end
kill -TERM $run_pid
wait "${wrapper:-$run_pid}" || true

idem verify --json >"$work/verify.json"
idem analyze --html "$work/batches.html" >"$work/analyze.txt"
python3 - "$work" <<'PY'
import csv, json, sys
work = sys.argv[1]
e, v = json.load(open(f"{work}/expected.json")), json.load(open(f"{work}/verify.json"))
rows = list(csv.DictReader(open(f"{work}/samples.csv")))
def col(name):
    return [int(r[name]) for r in rows if r[name] not in ("", "-")]
checks = [
    ("delta_rows", e["distinct_keys"]), ("delta_distinct_keys", e["distinct_keys"]),
    ("dlq_records", e["invalid"]), ("processed_distinct_keys", e["distinct_keys"]),
    ("clickhouse_final_rows", e["distinct_keys"]), ("clickhouse_keys_match", True),
]
bad = [(k, want, v.get(k)) for k, want in checks if v.get(k) != want]
print(f"\nsoak {work}: {e['lines']} lines ({e['distinct_keys']} distinct keys, {e['invalid']} invalid)")
for name in ["live_files", "log_files", "log_bytes", "data_files_on_disk", "data_bytes_on_disk", "run_rss_kib",
             "run_rss_anon_kib", "run_rss_file_kib", "key_cache_bytes", "heap_allocated_bytes", "heap_resident_bytes",
             "heap_thread_cached_bytes"]:
    c = col(name)
    if c:
        first, half = c[:len(c) // 2] or c, c[len(c) // 2:]
        # The second half's maximum against the first's: memory that stays bounded keeps
        # this near 1 (the key cache's target for the RSS: at most 1.1 over two hours).
        ratio = f"{max(half) / max(first):.2f}" if max(first) else "-"
        print(f"{name:<24} max {max(c):>12}  last {c[-1]:>12}  max of second half {max(half):>12}  / first {ratio:>5}")
print(f"delta versions           {col('delta_version')[-1] if col('delta_version') else '-'}")
for k, want, got in bad:
    print(f"MISMATCH {k}: expected {want}, got {got}")
print("exactly once: " + ("no" if bad else "yes"))
sys.exit(1 if bad else 0)
PY
