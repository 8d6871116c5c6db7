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

# tansu completes a group join only after the rebalance timeout: keep it short.
[kafka]
"max.poll.interval.ms" = "10000"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
TOML
}
