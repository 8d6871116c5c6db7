#!/usr/bin/env bash
# idempipe beside its peer, the seed's own design in PySpark (benches/spark_peer.py:
# Structured Streaming, MD5 key, dropDuplicates per micro-batch, MERGE ... WHEN NOT
# MATCHED THEN INSERT *, the processed topic from the same batch), one after the other on
# the same broker, the same files and the same trigger (release build; BENCHMARKS.md,
# "Beside Spark"). Workloads (BENCH_WORKLOADS, default "seed million year latency"):
#   seed:     10,000 unique + 1,000 re-sends + 100 invalid, sent 11 times (the first and
#             10 replays), then 15 new events: a backlog drained from the start;
#   million:  900,000 unique + 100,000 re-sends (1,000,000 events), drained;
#   year:     a replay of a whole year of history: 450,000 events over 365 dates, every
#             one already stored, into a table of BENCH_YEAR_ROWS (default 40,000,000)
#             rows prefilled by `bench-prefill` in arrival (time) order, so that every
#             file of a date spans the whole date; each engine on a copy of that table;
#   latency:  1,000 events a second for BENCH_LATENCY_SECONDS (default 60) to a running
#             processor with a 200 ms trigger: produce to Delta commit, p50/p99.
# Each engine on a topic and table of its own, measured over its whole process tree
# (benches/proc_tree.py): events a second (first batch's start to last batch's end), peak
# resident memory, CPU seconds per million events, and whether the table ends exact
# (rows = distinct keys = the generator's count, by idempipe's verify).
# Prints one table; writes the JSON (data/spark<time>/spark.json, or BENCH_JSON=FILE).
# Environment: BENCH_KAFKA_PORT (scripts/lib.sh bench_broker), SPARK_DRIVER_MEMORY
# (default 2g), SPARK_MASTER (default local[2]).
set -euo pipefail
cd "$(dirname "$0")/.."
workloads=" ${BENCH_WORKLOADS:-seed million year latency} "
source scripts/lib.sh
source scripts/pyenv.sh
pyenv_ready 'pyspark=pyspark==4.2.0' 'delta=delta-spark==4.4.0'
bench_broker
export IDEMPIPE_BROKERS=127.0.0.1:$port
bench_release
root=data/spark$(date +%s)
mkdir -p "$root"
results=()

# engine_run ENGINE WORKLOAD EXPECTED FILE... : a pipeline of its own; the files produced
# to its raw topic, then drained by ENGINE; appends a JSON result. With $from_table set,
# the pipeline's table starts as a copy of that table.
engine_run() {
  local engine=$1 workload=$2 expected=$3
  shift 3
  new_pipeline "${engine:0:5}$workload" 1s
  local cfg=$work/idempipe.toml
  if [[ -n ${from_table:-} ]]; then
    mkdir -p "$work/delta"
    cp -r "$from_table" "$work/delta/events"
  fi
  echo "batch_log = \"$work/batches.jsonl\"" | cat - "$cfg" >"$cfg.new" && mv "$cfg.new" "$cfg"
  "$bin" --config "$cfg" setup --skip-clickhouse >/dev/null
  local f sent=0
  for f in "$@"; do
    "$bin" --config "$cfg" produce --input "$f" >/dev/null
    sent=$((sent + $(wc -l <"$f")))
  done
  if [[ $engine == idempipe ]]; then
    "$IDEMPIPE_PYTHON" benches/proc_tree.py "$work/usage.json" -- \
      "$bin" --config "$cfg" run --until-idle 5s >/dev/null 2>"$work/run.log"
  else
    spark_peer "$work" "$cfg" "1 second" 10 >/dev/null 2>"$work/run.log"
  fi
  "$bin" --config "$cfg" verify --json 2>/dev/null >"$work/verify.json" || true
  results+=("$(python3 - "$engine" "$workload" "$expected" "$sent" "$work" <<'PY'
import json, sys
from datetime import datetime
engine, workload, expected, sent, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
usage = json.load(open(f"{work}/usage.json"))
v = json.load(open(f"{work}/verify.json"))
def t(x):
    return x if isinstance(x, (int, float)) else datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp()
lines = [json.loads(l) for l in open(f"{work}/batches.jsonl")]
secs = t(lines[-1]["ended_at"]) - t(lines[0]["started_at"])
rows, keys = v.get("delta_rows"), v.get("delta_distinct_keys")
print(json.dumps({
    "engine": engine, "phase": workload, "events": sent, "batches": len(lines),
    "inserted": sum(l.get("inserted") or 0 for l in lines),
    "seconds": round(secs, 2), "events_per_s": round(sent / secs) if secs > 0 else None,
    "peak_rss_mib": usage["peak_rss_mib"], "cpu_s_per_million": round(usage["cpu_seconds"] * 1e6 / sent, 1),
    "process_seconds": usage["wall_seconds"], "delta_rows": rows, "distinct_keys": keys,
    "exact": rows == keys == expected,
}))
PY
)")
  echo "bench: ${results[-1]}" >&2
}

# spark_peer WORK CONFIG TRIGGER IDLE [ARGS...]: the peer on the pipeline of CONFIG.
spark_peer() {
  local work=$1 cfg=$2 trigger=$3 idle=$4
  shift 4
  local topic processed dlq
  topic=$(sed -n 's/^raw_topic = "\(.*\)"/\1/p' "$cfg")
  processed=$(sed -n 's/^processed_topic = "\(.*\)"/\1/p' "$cfg")
  dlq=$(sed -n 's/^dlq_topic = "\(.*\)"/\1/p' "$cfg")
  "$IDEMPIPE_PYTHON" benches/proc_tree.py "$work/usage.json" -- "$IDEMPIPE_PYTHON" benches/spark_peer.py \
    --brokers "$IDEMPIPE_BROKERS" --raw-topic "$topic" --processed-topic "$processed" --dlq-topic "$dlq" \
    --table "$PWD/$work/delta/events" --checkpoint "$PWD/$work/checkpoint" --trigger "$trigger" \
    --until-idle "$idle" --batches "$work/batches.jsonl" "$@"
}

if [[ $workloads == *" seed "* ]]; then
  "$bin" generate --unique 10000 --duplicates 1000 --invalid 100 --seed 42 --out "$root/seed.jsonl" >/dev/null
  "$bin" generate --unique 15 --seed 4242 --days 1 --out "$root/new.jsonl" >/dev/null
  seed_files=("$root/seed.jsonl")
  for _ in $(seq 10); do seed_files+=("$root/seed.jsonl"); done
  seed_files+=("$root/new.jsonl")
  for engine in idempipe spark; do engine_run "$engine" seed 10015 "${seed_files[@]}"; done
fi
if [[ $workloads == *" million "* ]]; then
  "$bin" generate --unique 900000 --duplicates 100000 --invalid 0 --seed 44 --out "$root/million.jsonl" >/dev/null
  for engine in idempipe spark; do engine_run "$engine" million 900000 "$root/million.jsonl"; done
fi
if [[ $workloads == *" year "* ]]; then
  year_rows=${BENCH_YEAR_ROWS:-40000000}
  new_pipeline yearfill 1s
  from_table=$PWD/$work/delta/events
  "$bin" --config "$work/idempipe.toml" setup --skip-clickhouse >/dev/null
  /usr/bin/time -f '%e s, peak RSS %M KiB' "$bin" --config "$work/idempipe.toml" bench-prefill --rows "$year_rows" \
    --days 365 >"$work/prefill.json" 2>"$work/prefill.log"
  echo "bench: prefill $(cat "$work/prefill.json"), $(tail -1 "$work/prefill.log"), $(du -sh "$from_table" | cut -f1)" >&2
  all_days=$(python3 -c "print(','.join(str(d) for d in range(365)))")
  "$bin" bench-events --rows "$year_rows" --days 365 --namespace h --count 450000 --on-days "$all_days" \
    --out "$root/year.jsonl" >/dev/null
  for engine in idempipe spark; do engine_run "$engine" year "$year_rows" "$root/year.jsonl"; done
  [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$from_table" data/{idemp,spark}year*/delta
  from_table=
fi
if [[ $workloads == *" latency "* ]]; then
  seconds=${BENCH_LATENCY_SECONDS:-60}
  # idempipe: its own probe (bench-latency) against a running processor.
  new_pipeline idemplat 200ms
  "$bin" --config "$work/idempipe.toml" setup --skip-clickhouse >/dev/null
  "$bin" --config "$work/idempipe.toml" run >"$work/run.log" 2>&1 &
  run_pid=$!
  sleep 5
  "$bin" --config "$work/idempipe.toml" bench-latency --rate 1000 --seconds "$seconds" --json >"$work/latency.json"
  kill -TERM "$run_pid"
  wait "$run_pid" || true
  results+=("$(python3 -c "import json;d=json.load(open('$work/latency.json'));print(json.dumps({'engine':'idempipe','phase':'latency','p50_ms':d['p50_ms'],'p99_ms':d['p99_ms'],'max_ms':d['max_ms']}))")")
  # Spark: the same rate from a file of as many events; each event's Kafka timestamp to
  # its batch's commit.
  "$bin" generate --unique $((seconds * 1000)) --duplicates 0 --invalid 0 --seed 45 --out "$root/trickle.jsonl" >/dev/null
  new_pipeline sparklat 200ms
  "$bin" --config "$work/idempipe.toml" setup --skip-clickhouse >/dev/null
  spark_peer "$work" "$work/idempipe.toml" "200 milliseconds" 10 --latencies "$work/latencies.txt" \
    >"$work/peer.out" 2>"$work/run.log" &
  peer_pid=$!
  until grep -q started "$work/peer.out" 2>/dev/null; do sleep 1; done
  sleep 5
  "$bin" --config "$work/idempipe.toml" produce --input "$root/trickle.jsonl" --rate 1000 >/dev/null
  wait "$peer_pid"
  results+=("$(python3 - "$work/latencies.txt" <<'PY'
import json, sys
ms = sorted(float(l) for l in open(sys.argv[1]))
q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]
print(json.dumps({"engine": "spark", "phase": "latency", "events": len(ms), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": ms[-1]}))
PY
)")
fi

json=${BENCH_JSON:-$root/spark.json}
printf '%s\n' "${results[@]}" | python3 -c "import json,sys;print(json.dumps([json.loads(l) for l in sys.stdin],indent=1))" >"$json"
python3 - "$json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
print(f"{'phase':<9}{'engine':<10}{'events':>10}{'events/s':>10}{'peak MiB':>10}{'CPU s/M':>9}{'exact':>7}")
for r in rows:
    if r["phase"] == "latency":
        print(f"{'latency':<9}{r['engine']:<10} p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms")
    else:
        print(f"{r['phase']:<9}{r['engine']:<10}{r['events']:>10}{r['events_per_s'] or 0:>10}{r['peak_rss_mib']:>10}"
              f"{r['cpu_s_per_million']:>9}{str(r['exact']).lower():>7}")
by = {(r["engine"], r["phase"]): r for r in rows}
for phase in ("seed", "million", "year"):
    i, s = by.get(("idempipe", phase)), by.get(("spark", phase))
    if i and s and s["events_per_s"]:
        print(f"{phase}: idempipe at {i['events_per_s'] / s['events_per_s']:.1f} times Spark's events a second")
PY
echo "bench: results in $json" >&2
