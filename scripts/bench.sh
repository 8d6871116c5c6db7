#!/usr/bin/env bash
# First throughput figures (release build): N unique events plus 10% exact re-sends,
# through Kafka (tansu) and Delta, in one run on fresh topics and a fresh table:
#   1. drain: a bare librdkafka consumer reads the raw topic end to end (the ceiling);
#   2. ingest: `run` over the whole topic into an empty table;
#   3. replay: the same file produced again, `run` over it (all duplicates).
# Prints one JSON line per phase and a table. Usage: scripts/bench.sh [N]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
dups=$((n / 10))

# A broker of its own, on tansu's memory storage: its sqlite storage fetches a record
# range with a running sum over the partition, far too slow to drain a million records.
# (The memory storage cannot resume inside a stored batch, see the README; a benchmark
# reads each topic front to back, so it never does.)
port=${BENCH_KAFKA_PORT:-19092}
tansu_bin=${TANSU_BIN:-$HOME/.cargo/bin/tansu}
mkdir -p data/services
if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  [[ -x $tansu_bin ]] || scripts/services.sh up >/dev/null   # installs tansu if missing
  setsid nohup "$tansu_bin" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ \
    >data/services/bench-tansu.log 2>&1 </dev/null &
  echo $! >data/services/bench-tansu.pid
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.2; done
fi
export IDEMPIPE_BROKERS=127.0.0.1:$port
cargo build --locked --release --bin idempipe 2>&1 | tail -1
bin=target/release/idempipe
source scripts/lib.sh
new_pipeline bench 2s
idem() { "$bin" --config "$work/idempipe.toml" "$@"; }
# Peak RSS (KiB) and wall seconds of one command, from GNU time.
timed() { /usr/bin/time -f '%M %e' -o "$work/time" "$bin" --config "$work/idempipe.toml" "$@"; read -r rss secs <"$work/time"; }

idem setup >/dev/null
idem generate --unique "$n" --duplicates "$dups" --seed 7 --out "$work/events.jsonl" >/dev/null
messages=$((n + dups))
timed produce --input "$work/events.jsonl" --json >"$work/produce.json"
echo "produce: $(cat "$work/produce.json")"

timed drain >"$work/drain.json"
drain_rate=$(python3 -c "import json;print(json.load(open('$work/drain.json'))['messages_per_sec'])")
echo "drain: $(cat "$work/drain.json") peak_rss_kib=$rss"

# The run includes the group join (tansu waits for the rebalance timeout) and the idle
# tail; the rate is taken over the batches themselves, from the batch log.
rate_from_log() { # first batch line, last batch line
  python3 - "$work/delta/events.batches.jsonl" "$1" "$2" <<'PY'
import json, sys
from datetime import datetime
lines = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):int(sys.argv[3])]
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
events = sum(l["events_in"] for l in lines)
secs = t(lines[-1]["ended_at"]) - t(lines[0]["started_at"])
print(f"{events} {secs:.3f} {events / secs:.0f} {len(lines)}")
PY
}
timed run --until-idle 3s >/dev/null 2>"$work/ingest.log"
ingest_rss=$rss
read -r ingest_events ingest_secs ingest_rate ingest_batches < <(rate_from_log 0 100000)
done_batches=$ingest_batches

idem produce --input "$work/events.jsonl" >/dev/null
timed run --until-idle 3s >/dev/null 2>"$work/replay.log"
replay_rss=$rss
read -r replay_events replay_secs replay_rate replay_batches < <(rate_from_log "$done_batches" 100000)

idem verify --json >"$work/verify.json"
files=$(python3 -c "import json;print(json.load(open('$work/verify.json'))['delta_files'])")
rows=$(python3 -c "import json;print(json.load(open('$work/verify.json'))['delta_rows'])")

python3 - <<PY
drain = $drain_rate
rows = [
    ("bare consumer drain (ceiling)", $messages, None, drain, None),
    ("first ingest, empty table", $ingest_events, $ingest_secs, $ingest_rate, $ingest_rss),
    ("replay, all duplicates", $replay_events, $replay_secs, $replay_rate, $replay_rss),
]
print(f"\n{$n} unique + {$dups} re-sends = {$messages} messages; delta_rows={$rows}, delta files={$files}")
print(f"| phase | messages | seconds | events/s | ratio to drain | peak RSS MiB |")
print(f"|---|---:|---:|---:|---:|---:|")
for name, m, s, r, rss in rows:
    print(f"| {name} | {m} | {'' if s is None else s} | {r:,.0f} | {r / drain:.2f} | {'' if rss is None else f'{rss / 1024:.0f}'} |")
PY
