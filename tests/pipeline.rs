//! End-to-end tests against the real Kafka cluster and the built binary.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Harness, count, read_all, wait_until};
use rdkafka::consumer::Consumer;

fn assert_delta(p: &Harness, rows: u64) -> serde_json::Value {
    let v = p.verify();
    assert_eq!(count(&v, "delta_rows"), rows, "{v}");
    assert_eq!(count(&v, "delta_distinct_keys"), rows, "{v}");
    v
}

/// ClickHouse holds exactly Delta's keys: `FINAL` count and key checksum agree.
fn assert_clickhouse(v: &serde_json::Value, rows: u64) {
    assert_eq!(count(v, "clickhouse_final_rows"), rows, "{v}");
    assert!(count(v, "clickhouse_rows") >= rows, "{v}");
    assert_eq!(v["clickhouse_keys_match"], true, "{v}");
    assert_eq!(v["clickhouse_key_checksum"], v["delta_key_checksum"], "{v}");
    assert_eq!(count(v, "clickhouse_missing_keys"), 0, "{v}");
}

#[test]
fn seed_scenario_replays_change_nothing_and_new_events_land() {
    let p = Harness::new("seed");
    p.setup();
    let file = p.path("seed.jsonl");
    let out = p.ok(&[
        "generate",
        "--unique",
        "10000",
        "--duplicates",
        "1000",
        "--seed",
        "11",
        "--out",
        file.to_str().unwrap(),
        "--json",
    ]);
    let expected: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(count(&expected, "distinct_keys"), 10_000);

    p.produce(&file);
    p.run_until_idle(&["--clickhouse-in-run"]);
    let v = assert_delta(&p, 10_000);
    assert_eq!(count(&v, "processed_distinct_keys"), 10_000, "{v}");
    assert_eq!(count(&v, "processed_records"), 10_000, "no crash, so no re-send: {v}");
    assert_clickhouse(&v, 10_000);
    check_delta_with_chdb(&p, &v);
    let version = count(&v, "delta_version");

    for _ in 0..10 {
        p.produce(&file);
    }
    p.run_until_idle(&["--clickhouse-in-run"]);
    let v = assert_delta(&p, 10_000);
    assert_eq!(count(&v, "processed_records"), 10_000, "a replay sends nothing new: {v}");
    assert_clickhouse(&v, 10_000);
    assert_eq!(count(&v, "raw_records"), 11 * 11_000, "{v}");
    assert!(count(&v, "delta_version") > version, "replays still record their offsets");

    let fresh = p.path("fresh.jsonl");
    p.ok(&["generate", "--unique", "15", "--seed", "12", "--days", "1", "--out", fresh.to_str().unwrap()]);
    // Seed 12 spreads over 2024-01-01 like seed 11; the contract makes them distinct
    // events unless user, type and time all match, which the check below would catch.
    p.produce(&fresh);
    p.run_until_idle(&["--clickhouse-in-run"]);
    let v = assert_delta(&p, 10_015);
    assert_eq!(count(&v, "processed_distinct_keys"), 10_015, "{v}");
    assert_clickhouse(&v, 10_015);
}

/// Other spellings of one instant, integer ids and invalid lines, counted by hand from
/// the contract rather than by the code under test.
#[test]
fn a_file_of_spellings_ids_and_invalid_lines_lands_exactly() {
    let p = Harness::new("spellings");
    p.setup();
    let mut lines = Vec::new();
    for user in 0..20 {
        // Four spellings of one event, plus its integer-id twin: 1 distinct key.
        for ts in [
            r#""2024-03-10T12:00:00Z""#,
            r#""2024-03-10T13:30:00+01:30""#,
            r#""2024-03-10 12:00:00.000000""#,
            "1710072000000",
        ] {
            lines.push(format!(r#"{{"user_id":"{user}","event_type":"buy","timestamp":{ts},"n":{}}}"#, lines.len()));
        }
        lines.push(format!(r#"{{"user_id":{user},"event_type":"buy","timestamp":"2024-03-10T12:00:00.0000009Z"}}"#));
        // A different microsecond, and a different type: 2 more distinct keys.
        lines.push(format!(r#"{{"user_id":"{user}","event_type":"buy","timestamp":"2024-03-10T12:00:00.000001Z"}}"#));
        lines.push(format!(r#"{{"user_id":"{user}","event_type":"view","timestamp":"2024-03-10T12:00:00Z"}}"#));
    }
    let invalid = [
        r#"{"user_id":"x","event_type":"buy","timestamp":"2024-02-30T00:00:00Z"}"#,
        r#"{"user_id":"","event_type":"buy","timestamp":"2024-03-10T12:00:00Z"}"#,
        r#"{"user_id":1.5,"event_type":"buy","timestamp":"2024-03-10T12:00:00Z"}"#,
        r#"{"event_type":"buy","timestamp":"2024-03-10T12:00:00Z"}"#,
        r#"{"user_id":"x","event_type":"buy","timestamp":"1710072000000"}"#,
        r#"["x","buy","2024-03-10T12:00:00Z"]"#,
        "not json at all",
    ];
    lines.extend(invalid.iter().map(|s| s.to_string()));
    let file = p.path("spellings.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    p.produce(&file);
    p.run_until_idle(&[]);
    let v = assert_delta(&p, 20 * 3);
    assert_eq!(count(&v, "dlq_records"), invalid.len() as u64, "{v}");

    // An independent reader (Python `deltalake`) sees the same table and schema.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_delta.py");
    let out = std::process::Command::new(common::python()).arg(script).arg(p.delta_path()).output().unwrap();
    assert!(out.status.success(), "Python deltalake check failed: {}", String::from_utf8_lossy(&out.stderr));
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(count(&py, "rows"), 60, "{py}");
    assert_eq!(count(&py, "distinct_keys"), 60, "{py}");
    assert_eq!(count(&py, "partitions"), 1, "all events are on 2024-03-10: {py}");
}

#[test]
fn invalid_messages_reach_the_dead_letter_topic_with_their_reason() {
    let p = Harness::new("dlq");
    p.setup();
    let file = p.path("mixed.jsonl");
    p.ok(&[
        "generate",
        "--unique",
        "200",
        "--duplicates",
        "20",
        "--invalid",
        "24",
        "--seed",
        "5",
        "--out",
        file.to_str().unwrap(),
    ]);
    p.produce(&file);
    p.run_until_idle(&[]);
    let v = assert_delta(&p, 200);
    assert_eq!(count(&v, "dlq_records"), 24, "{v}");

    // Every dead letter names its class, reason and source, and the source offset holds
    // exactly the bytes of the dead letter.
    let raw = read_all(&format!("{}_raw", p.name));
    let dead = read_all(&format!("{}_dlq", p.name));
    assert_eq!(dead.len(), 24);
    let mut classes = HashSet::new();
    for d in &dead {
        let class = d.headers["error.class"].clone();
        assert!(!d.headers["error.message"].is_empty());
        assert_eq!(d.headers["source.topic"], format!("{}_raw", p.name));
        let partition: i32 = d.headers["source.partition"].parse().unwrap();
        let offset: i64 = d.headers["source.offset"].parse().unwrap();
        let source = raw.iter().find(|r| r.partition == partition && r.offset == offset).expect("source record exists");
        assert_eq!(source.value, d.value, "the dead letter carries the original bytes");
        classes.insert(class);
    }
    assert!(classes.len() >= 8, "varied classes expected, got {classes:?}");
}

#[test]
fn a_processor_killed_mid_run_loses_nothing_and_doubles_nothing() {
    let p = Harness::new("sigkill");
    p.setup();
    let file = p.path("seed.jsonl");
    p.ok(&[
        "generate",
        "--unique",
        "10000",
        "--duplicates",
        "1000",
        "--invalid",
        "50",
        "--seed",
        "21",
        "--out",
        file.to_str().unwrap(),
    ]);
    p.produce(&file);

    // Small batches, so the kill lands between many commits.
    let mut child =
        p.spawn(&["run", "--trigger", "200ms", "--max-batch-events", "700", "--clickhouse-in-run"], "killed-run");
    wait_until(Duration::from_secs(120), "two committed batches", || p.batch_log_lines() >= 2);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let after_kill = p.verify();
    let stored = count(&after_kill, "delta_rows");
    assert!(stored < 10_000, "the kill should land mid-run, but all {stored} rows were in");

    p.run_until_idle(&["--clickhouse-in-run"]);
    let gaps: u64 = p.batch_log().iter().map(|b| count(b, "offset_gaps")).sum();
    assert_eq!(gaps, 0, "the broker skipped offsets on resume");
    let v = assert_delta(&p, 10_000);
    assert_eq!(count(&v, "dlq_records"), 50, "{v}");
    assert_eq!(count(&v, "processed_distinct_keys"), 10_000, "every stored event reached the processed topic: {v}");
    assert_clickhouse(&v, 10_000);
}

/// The embedded current ClickHouse (chdb) reads our Delta table on its own: same row
/// count, same key checksum as `verify` computed.
fn check_delta_with_chdb(p: &Harness, v: &serde_json::Value) {
    let seen = common::chdb(&["delta", p.delta_path().to_str().unwrap()], None);
    assert_eq!(seen["rows"], v["delta_rows"], "{seen} vs {v}");
    assert_eq!(seen["key_checksum"], v["delta_key_checksum"], "{seen} vs {v}");
}

#[test]
fn setup_twice_changes_nothing() {
    let p = Harness::new("setup");
    let first = p.ok(&["setup"]);
    assert!(first.contains("created"), "{first}");
    let second = p.ok(&["setup"]);
    assert!(!second.contains("created"), "{second}");
    assert!(second.contains("version 0"), "{second}");
}

/// `setup` leaves the replication factor to the broker unless `replication_factor` is
/// set, reads existing topics back instead of assuming them, and refuses a bad value
/// naming it.
#[test]
fn setup_reports_topics_as_the_broker_holds_them() {
    let topics = |out: &str| -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(out).unwrap()["topics"].as_array().unwrap().clone()
    };
    // The broker's default: the test clusters replicate to every broker (two; tansu, a
    // compatibility target, one).
    let brokers = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .create::<rdkafka::consumer::BaseConsumer>()
        .unwrap()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap()
        .brokers()
        .len() as u64;
    let p = Harness::new("replication");
    let created = topics(&p.ok(&["setup", "--skip-clickhouse", "--json"]));
    assert_eq!(created.len(), 3);
    for t in &created {
        assert_eq!((t["created"].as_bool(), t["replicas"].as_u64()), (Some(true), Some(brokers)), "{t}");
    }
    assert_eq!(created.iter().map(|t| count(t, "partitions")).collect::<Vec<_>>(), [4, 4, 1]);

    // An existing raw topic with a partition count of its own is read back as it is, and
    // kept; the others are created with the replication factor asked for: one where the
    // default is more, else three (tansu 0.6.0, one broker, records the factor it is given).
    let asked: u64 = if brokers > 1 { 1 } else { 3 };
    let q = Harness::new("replication");
    let mut existing = q.command(&["setup", "--skip-clickhouse", "--json", "--partitions", "6"]);
    existing.args(["--processed-topic", &format!("{}_other", q.name), "--dlq-topic", &format!("{}_other_dlq", q.name)]);
    assert!(existing.status().unwrap().success());
    let seen = topics(&q.ok(&["setup", "--skip-clickhouse", "--json", "--replication-factor", &asked.to_string()]));
    assert_eq!((seen[0]["created"].as_bool(), count(&seen[0], "partitions")), (Some(false), 6), "{:?}", seen[0]);
    for t in &seen[1..] {
        assert_eq!((t["created"].as_bool(), t["replicas"].as_u64()), (Some(true), Some(asked)), "{t}");
    }

    let out = q.output(&["setup", "--skip-clickhouse", "--replication-factor", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("replication_factor"), "{err}");
}

/// Kafka over TLS (the brokers' own TLS listeners, with a CA the test makes), then over
/// TLS with SASL/SCRAM-SHA-512, through librdkafka's own settings
/// in `[kafka]`: the seed scenario end to end, the ClickHouse sink included; a client
/// without the CA, or with a wrong password, is refused at start-up with the reason.
#[test]
fn kafka_over_tls_and_with_sasl_scram() {
    let dir = tempfile::tempdir().unwrap();
    for scram in [None, Some(("idempipe", "s3cret-scram"))] {
        let label = if scram.is_some() { "sasl" } else { "tls" };
        let kafka = common::PrivateKafka::start(dir.path().join(label), scram);
        let p = Harness::with_brokers(&format!("kafka{label}"), &kafka.brokers(), "")
            .with_kafka_settings(&kafka.client_settings());
        p.ingest_generated(2_000, 200, 10, 5);

        // The same broker without what it asks for.
        let (key, wrong) = match scram {
            None => ("ssl.ca.location", "/etc/ssl/certs/ca-certificates.crt".to_owned()),
            Some(_) => ("sasl.password", "not-the-password".to_owned()),
        };
        let config = std::fs::read_to_string(&p.config).unwrap();
        let right = kafka.client_settings().into_iter().find(|(k, _)| k == key).unwrap().1;
        std::fs::write(&p.config, config.replace(&format!("{right:?}"), &format!("{wrong:?}"))).unwrap();
        let out = p.output(&["status"]);
        let err = String::from_utf8_lossy(&out.stderr);
        let reason = if scram.is_some() { "SASL authentication error" } else { "certificate verify failed" };
        assert!(!out.status.success() && err.contains("refused the connection's TLS or SASL handshake"), "{err}");
        assert!(err.contains(reason) && !err.contains("not-the-password"), "{err}");
    }
}

/// The accepted event-time window: with `max_event_age` and `max_event_future` set, events
/// outside it are dead letters of their own class (`event_time_out_of_window`) and the
/// rest flow; without them, the same hostile times are events.
#[test]
fn events_outside_the_accepted_time_window_are_dead_letters() {
    let p = Harness::with_options("window", "max_event_age = \"1500days\"\nmax_event_future = \"1h\"");
    p.setup();
    // The generator's events lie in 2024: inside a window reaching back 1,500 days.
    let (file, expected) = p.generate(500, 50, 0, 5001);
    let mut lines = std::fs::read_to_string(&file).unwrap();
    for t in ["2020-03-01T00:00:00Z", "0001-01-01T00:00:00Z", "2099-01-01T00:00:00Z", "9999-12-31T23:59:59Z"] {
        lines += &format!("{{\"user_id\":\"hostile\",\"event_type\":\"t\",\"timestamp\":\"{t}\"}}\n");
    }
    std::fs::write(&file, lines).unwrap();
    p.produce(&file);
    p.run_until_idle(&[]);
    let v = p.verify();
    assert_eq!(count(&v, "delta_rows"), count(&expected, "distinct_keys"), "{v}");
    let dead = read_all(&format!("{}_dlq", p.name));
    assert_eq!(dead.len(), 4, "the four events out of the window");
    for letter in &dead {
        assert_eq!(letter.headers["error.class"], "event_time_out_of_window", "{:?}", letter.headers);
        let message = &letter.headers["error.message"];
        assert!(message.contains("`max_event_age`") || message.contains("`max_event_future`"), "{message}");
    }
}

/// The three key checks on one table, one after another, each starting from what the
/// others wrote, the last two after a compaction: a replay inserts nothing and new events
/// on the stored dates all land, whichever check runs (`cache`, the default, is tested
/// throughout the suite; `index` and `scan` only here).
#[test]
fn every_key_check_keeps_one_table_exact() {
    let p = Harness::new("checks");
    p.setup();
    let (stored, expected) = p.generate_as("stored.jsonl", 3000, 300, 0, 61);
    let mut rows = count(&expected, "distinct_keys");
    p.produce(&stored);
    p.run_until_idle(&["--key-check", "cache"]);
    assert_delta(&p, rows);
    for (i, check) in ["index", "scan", "index", "cache"].into_iter().enumerate() {
        if i == 2 {
            let compacted: serde_json::Value = serde_json::from_str(&p.ok(&["compact", "--json"])).unwrap();
            assert!(count(&compacted, "live_files_after") < count(&compacted, "live_files_before"), "{compacted}");
        }
        // Every generated file spreads over the same days: new keys on stored dates.
        let (new, e) = p.generate_as(&format!("new-{i}.jsonl"), 400, 40, 0, 62 + i as u64);
        p.produce(&stored);
        p.produce(&new);
        p.run_until_idle(&["--key-check", check]);
        rows += count(&e, "distinct_keys");
        let v = assert_delta(&p, rows);
        assert_eq!(count(&v, "processed_distinct_keys"), rows, "{check}: {v}");
    }
}
