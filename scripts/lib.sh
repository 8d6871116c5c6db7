# Shared by the demo and bench scripts: an isolated pipeline of its own.
#
# new_pipeline PREFIX TRIGGER: sets $run_id and $work (data/<run_id>) and writes
# $work/idempipe.toml with topics, group and table named after the run, so each run can
# be repeated on the same broker.
new_pipeline() {
  run_id=$1$(date +%s)
  work=data/$run_id
  mkdir -p "$work"
  cat >"$work/idempipe.toml" <<TOML
raw_topic = "$run_id.raw_events"
processed_topic = "$run_id.processed_events"
dlq_topic = "$run_id.raw_events_dlq"
group = "$run_id"
delta_path = "$work/delta/events"
clickhouse_table = "$run_id"
trigger = "$2"
# Any free port: several runs can share the machine (the log names the port).
metrics_addr = "127.0.0.1:0"

# A group join waits for the rebalance timeout of members that left: keep it short.
[kafka]
"max.poll.interval.ms" = "10000"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
TOML
}

# bench_release: the release build of idempipe (built if stale); sets $bin to it.
bench_release() {
  cargo build --locked --release --bin idempipe 2>&1 | tail -1
  # shellcheck disable=SC2034 # the sourcing script's
  bin=$PWD/target/release/idempipe
}

# bench_broker: a fresh Kafka cluster of the benchmark's own, stopped when the script
# exits; sets $port (broker 1's). Apache Kafka (scripts/kafka.sh: brokers on
# $BENCH_KAFKA_PORT, default 19092, and +2, the controller on +1; data in
# data/bench-services), or with BENCH_KAFKA_IMPL=tansu, tansu on its memory storage on
# $BENCH_KAFKA_PORT (the figures tansu gave, for comparison; $TANSU_BIN, default
# ~/.cargo/bin/tansu, installed by `KAFKA_IMPL=tansu scripts/services.sh kafka-install`).
# Fresh each run, so every run starts alike.
bench_broker() {
  port=${BENCH_KAFKA_PORT:-19092}
  if [[ ${BENCH_KAFKA_IMPL:-apache} == apache ]]; then
    SERVICES_DIR=data/bench-services KAFKA_PORT=$port scripts/kafka.sh fresh >/dev/null
    trap 'SERVICES_DIR=data/bench-services KAFKA_PORT=$port scripts/kafka.sh down >/dev/null 2>&1 || true' EXIT
    return
  fi
  # tansu's sqlite storage fetches a record range with a running sum over the partition,
  # far too slow to drain a million records; its memory storage slows down as it fills.
  tansu_bin=${TANSU_BIN:-$HOME/.cargo/bin/tansu}
  mkdir -p data/services
  if [[ -f data/services/bench-tansu.pid ]]; then
    kill "$(cat data/services/bench-tansu.pid)" 2>/dev/null || true
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.2; done
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "bench: port $port is taken by something else; set BENCH_KAFKA_PORT" >&2
    exit 1
  fi
  KAFKA_IMPL=tansu scripts/services.sh kafka-install
  setsid nohup "$tansu_bin" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ \
    >data/services/bench-tansu.log 2>&1 </dev/null &
  echo $! >data/services/bench-tansu.pid
  trap 'kill "$(cat data/services/bench-tansu.pid)" 2>/dev/null || true' EXIT
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.2; done
}

# Measuring a benchmark step (the sourcing script sets $bin and $work).
# Peak RSS (KiB) and wall seconds of one command, from GNU time, into $rss and $secs;
# with $perf_out set, under `perf record` writing there.
timed() { # config, args...
  local config=$1; shift
  local wrap=()
  [[ -z ${perf_out:-} ]] || wrap=(perf record -q -F 499 -o "$perf_out" --)
  "${wrap[@]}" /usr/bin/time -f '%M %e' -o "$work/time" "$bin" --config "$config" "$@"
  read -r rss secs <"$work/time"
}
# The batches' phases over batch log lines [from, to): each phase's share of the
# batches' summed wall time, as a JSON object.
phases_of() { # batch log, first line, last line
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):int(sys.argv[3])]
total = {}
for l in lines:
    for k, v in l["phases"].items():
        total[k] = total.get(k, 0) + v
wall = sum(v for k, v in total.items() if k != "parse_ms" and k != "write_ms") or 1
print(json.dumps({k.removesuffix("_ms"): round(v / wall, 3) for k, v in total.items()}, separators=(",", ":")))
PY
}
# Events in, seconds, events/s, batches, files added, over batch log lines [from, to):
# the rate is taken over the batches (first start to last end), so the group join and
# the idle tail of `run --until-idle` are left out.
from_log() { # batch log, first line, last line
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
from datetime import datetime
lines = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):int(sys.argv[3])]
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
events = sum(l["events_in"] for l in lines)
secs = t(lines[-1]["ended_at"]) - t(lines[0]["started_at"])
files = sum(l.get("files_added", 0) for l in lines)
print(f"{events} {secs:.3f} {events / secs:.0f} {len(lines)} {files}")
PY
}
