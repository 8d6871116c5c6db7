//! The promise under conditions real Kafka clusters produce: a raw topic deleted and
//! recreated under the processor (its offsets start over below the ones Delta stores),
//! partitions added with the admin API while the processor and the ClickHouse sink run,
//! the cluster stopped, credentials changed. Against the real cluster (the tests' own, or
//! one of the test's own where a test stops it), ClickHouse and the built binary.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    Pipeline, PrivateKafka, RUN_TIMEOUT, add_partitions, assert_exact, brokers, count, free_port, http_get,
    recreate_topic, wait_until,
};
use serde_json::{Value, json};

/// The stored offset `status` reports per raw partition.
fn stored(status: &Value) -> Vec<(i64, Option<i64>, i64)> {
    status["processor"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["partition"].as_i64().unwrap(), p["stored"].as_i64(), p["end"].as_i64().unwrap()))
        .collect()
}

/// The offset resets the batch log records.
fn resets(p: &Pipeline) -> Vec<Value> {
    p.batch_log().iter().flat_map(|r| r["offset_resets"].as_array().cloned().unwrap_or_default()).collect()
}

/// A raw topic deleted and recreated after 1,000 events were stored: by default `run`
/// stops with an error naming the topic, a partition, its stored offset and the broker's
/// range, and stores nothing; with `fail_on_data_loss = false` it records the reset in
/// Delta, the batch log and `status`, and stores the new topic's events from offset 0.
#[test]
fn a_recreated_raw_topic_stops_the_processor_or_with_consent_is_read_from_its_start() {
    let p = Pipeline::new("recreated");
    p.ingest_generated(1_000, 0, 0, 4101);
    let before = stored(&p.status());
    assert!(before.iter().all(|(_, s, _)| s.is_some()), "every partition has stored offsets: {before:?}");

    recreate_topic(&brokers(), &p.raw_topic(), 4);
    let (file, _) = p.generate_as("after", 300, 0, 0, 4102);
    p.produce(&file);

    // Before: the processor waited for offsets the new topic had not reached, and said
    // nothing; `--until-idle` never ended.
    let (status, log) = p.run_until_idle_ending(&[], RUN_TIMEOUT);
    assert!(!status.success(), "run must stop on the recreated topic; its log:\n{log}");
    let raw = p.raw_topic();
    assert!(
        log.contains(&format!("of topic {raw}: the Delta table stores offsets up to"))
            && log.contains("starts over below offset")
            && log.contains("fail_on_data_loss = false"),
        "the error names the topic, the stored offset and the setting:\n{log}"
    );
    assert_eq!(count(&p.verify(), "delta_rows"), 1_000, "nothing stored from the new topic");
    assert!(resets(&p).is_empty());

    p.run_until_idle(&["--fail-on-data-loss=false", "--clickhouse-in-run"]);
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (1_300, 1_300), "{v}");
    // The processed topic kept its records: the old events and the new.
    assert_eq!(count(&v, "processed_distinct_keys"), 1_300, "{v}");
    assert_eq!((count(&v, "clickhouse_final_rows"), &v["clickhouse_keys_match"]), (1_300, &json!(true)), "{v}");
    let resets = resets(&p);
    let partitions_with_old_offsets = before.iter().filter(|(_, s, _)| s.is_some()).count();
    assert_eq!(resets.len(), partitions_with_old_offsets, "one reset per partition: {resets:?}");
    for reset in &resets {
        assert_eq!((reset["low"].as_i64(), reset["lost"].as_u64()), (Some(0), None), "rewound: {reset}");
        let partition = reset["partition"].as_i64().unwrap();
        let old = before.iter().find(|(p, _, _)| *p == partition).unwrap().1.unwrap();
        assert_eq!(reset["expected"].as_i64(), Some(old + 1), "{reset}");
    }
    // Delta now stores the new topic's offsets (moved back), and status shows the resets.
    let status = p.status();
    for (partition, stored, end) in stored(&status) {
        assert_eq!(stored.map_or(0, |s| s + 1), end, "partition {partition} is read to its end");
    }
    assert_eq!(status["offset_resets"].as_array().map(Vec::len), Some(resets.len()), "{status}");
    let text = p.ok(&["status"]);
    assert!(text.contains("offset reset") && text.contains("rewound"), "{text}");

    // Decided once: another run reads nothing again and resets nothing.
    let lines = p.batch_log_lines();
    p.run_until_idle(&["--fail-on-data-loss=false"]);
    assert_eq!(p.batch_log_lines(), lines, "no batch and no reset");
    assert_eq!(count(&p.verify(), "delta_rows"), 1_300);
}

/// The raw topic grown from 4 partitions to 6 while the processor runs: within a minute
/// it reads the two new partitions from offset 0, in both consumer modes.
#[test]
fn partitions_added_while_the_processor_runs_are_read_in_assign_mode() {
    partitions_added_while_running("assign");
}

#[test]
fn partitions_added_while_the_processor_runs_are_read_in_group_mode() {
    partitions_added_while_running("group");
}

fn partitions_added_while_running(mode: &str) {
    let p = Pipeline::with_options(&format!("grown_{mode}"), &format!("consumer_mode = \"{mode}\""));
    p.setup();
    let (file, _) = p.generate(1_000, 0, 0, 4201);
    p.produce(&file);
    let run = p.spawn(&["run"], "run");
    let rows = || p.verify()["delta_rows"].as_u64().unwrap_or(0);
    let alive = |run: &mut common::Background| {
        assert_eq!(run.try_wait().unwrap(), None, "the processor exited; its log:\n{}", p.tail("run"))
    };
    wait_until(RUN_TIMEOUT, "the first 1,000 events stored", || rows() == 1_000);

    add_partitions(&brokers(), &p.raw_topic(), 6);
    let (file, _) = p.generate_as("after", 1_200, 0, 0, 4202);
    p.produce(&file);
    let ends = stored(&p.status());
    assert_eq!(ends.len(), 6);
    assert!(
        ends.iter().filter(|(p, _, _)| *p >= 4).all(|(_, _, end)| *end > 0),
        "new partitions hold events: {ends:?}"
    );

    // Within a minute of the partitions' appearance (the check runs every 10 s, librdkafka's
    // metadata refresh too), with room for a slow machine.
    let mut run = run;
    wait_until(Duration::from_secs(120), "the events on all six partitions stored", || {
        alive(&mut run);
        rows() == 2_200
    });
    let status = p.status();
    for (partition, stored, end) in stored(&status) {
        assert_eq!(stored.map_or(0, |s| s + 1), end, "partition {partition} read to its end: {status}");
    }
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (2_200, 2_200), "{v}");
    assert_eq!(count(&v, "processed_distinct_keys"), 2_200, "{v}");
}

/// The processed topic grown from 4 partitions to 6 while the ClickHouse sink runs: the
/// sink loads the new partitions too.
#[test]
fn partitions_added_while_the_clickhouse_sink_runs_are_loaded() {
    let p = Pipeline::new("sink_grown");
    p.setup();
    let _sink = p.spawn(&["sink-clickhouse"], "sink");
    // The sink has started on the topic's four partitions.
    wait_until(RUN_TIMEOUT, "the sink started", || {
        std::fs::read_to_string(p.path("sink.log")).unwrap_or_default().contains("ClickHouse sink ready")
    });
    add_partitions(&brokers(), &p.processed_topic(), 6);
    let (file, expected) = p.generate(1_500, 100, 0, 4301);
    p.produce(&file);
    p.run_until_idle(&[]);
    let topic = common::read_all(&p.processed_topic());
    assert!(topic.iter().any(|r| r.partition >= 4), "the processor wrote to the new partitions");
    let clickhouse_rows = || p.verify()["clickhouse_final_rows"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(120), "every processed record loaded into ClickHouse", || {
        clickhouse_rows() == 1_500
    });
    assert_exact(&p.verify(), &expected);
}

/// The broker stopped under a running processor: its clients' errors are counted, and
/// once they have lasted 20 s `/readyz` answers 503 naming them (it used to stay 200,
/// errors being warnings); with the broker back and a batch committed it is ready again.
#[test]
fn persistent_kafka_errors_make_the_processor_unready_until_the_broker_answers() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = PrivateKafka::plain(dir.path().join("kafka"));
    let p = Pipeline::with_brokers("unready", &kafka.brokers(), "");
    p.setup();
    let (file, _) = p.generate(500, 0, 0, 4401);
    p.produce(&file);
    let port = free_port();
    let _run = p.spawn(&["run", "--metrics-addr", &format!("127.0.0.1:{port}")], "run");
    let rows = || p.verify()["delta_rows"].as_u64().unwrap_or(0);
    wait_until(RUN_TIMEOUT, "the first events stored", || rows() == 500);
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(200));

    kafka.stop();
    wait_until(Duration::from_secs(120), "/readyz to fail", || http_get(port, "/readyz").is_some_and(|r| r.0 == 503));
    let (_, body) = http_get(port, "/readyz").unwrap();
    assert!(body.contains("kafka: errors for"), "{body}");
    let metrics = http_get(port, "/metrics").unwrap().1;
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("idempipe_client_errors_total{service=\"kafka\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no kafka error count in:\n{metrics}"));
    assert!(errors >= 2.0, "{errors}");

    kafka.start_again();
    let (file, _) = p.generate_as("more", 300, 0, 0, 4402);
    p.produce(&file);
    wait_until(RUN_TIMEOUT, "the new events stored", || rows() == 800);
    wait_until(Duration::from_secs(60), "/readyz to recover", || http_get(port, "/readyz").is_some_and(|r| r.0 == 200));
}

/// The broker's SCRAM password changed under a running processor: when its connections
/// drop and it reconnects with the old one, it stops with an error saying that no retry
/// mends it (it used to log warnings and wait for good).
#[test]
fn refused_credentials_stop_the_processor_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = PrivateKafka::start(dir.path().join("kafka"), Some(("idempipe", "first-secret")));
    let p = Pipeline::with_brokers("refused", &kafka.brokers(), "").with_kafka_settings(&kafka.client_settings());
    p.setup();
    let (file, _) = p.generate(300, 0, 0, 4501);
    p.produce(&file);
    let mut run = p.spawn(&["run"], "run");
    wait_until(RUN_TIMEOUT, "the events stored", || p.verify()["delta_rows"].as_u64() == Some(300));

    kafka.change_password("second-secret");
    wait_until(Duration::from_secs(120), "the processor to stop", || run.try_wait().unwrap().is_some());
    let status = run.wait().unwrap();
    let log = p.tail("run");
    assert!(!status.success(), "{log}");
    assert!(log.contains("no retry mends") && log.contains("uthentication"), "{log}");
    // The whole log, not its end: a password logged at start-up or on the first refusal
    // is as much a leak.
    let whole = p.log("run");
    assert!(whole.lines().count() > 0);
    for password in ["first-secret", "second-secret"] {
        assert!(!whole.contains(password), "the password is logged:\n{whole}");
    }
}

/// A transactional upstream: committed and aborted transactions interleaved with plain
/// messages on the raw topic, each partition ending on a transaction marker. Exactly the
/// committed and the plain events are stored (Delta, the processed topic, ClickHouse); the
/// offsets the markers and the aborted records take are read past: `status` and the lag
/// metric show every partition read to its end, and the batch log counts them as skipped,
/// not lost.
#[test]
fn transactional_upstreams_store_committed_and_plain_events_only() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p = Pipeline::new("transactions");
    p.setup();
    let raw = p.raw_topic();
    let producer = |transactional: Option<&str>| -> BaseProducer {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", brokers()).set("enable.idempotence", "true");
        if let Some(id) = transactional {
            config.set("transactional.id", id);
        }
        config.create().unwrap()
    };
    let event = |origin: &str, i: usize| {
        format!(
            r#"{{"user_id":"{origin}-{i}","event_type":"txn","timestamp":"2024-06-01T00:00:{:02}Z","origin":"{origin}"}}"#,
            i % 60
        )
    };
    let send = |producer: &BaseProducer, origin: &str, range: std::ops::Range<usize>| {
        for i in range {
            let value = event(origin, i);
            let key = format!("{origin}-{i}");
            producer.send(BaseRecord::to(&raw).payload(&value).key(&key)).unwrap();
        }
    };
    let timeout = Duration::from_secs(30);
    let txn = producer(Some(&format!("{}-txn", p.name)));
    txn.init_transactions(timeout).unwrap();
    let plain = producer(None);
    let (mut committed, mut aborted, mut plains) = (0, 0, 0);
    for round in 0..8 {
        txn.begin_transaction().unwrap();
        send(&txn, "committed", committed..committed + 40);
        send(&plain, "plain", plains..plains + 30);
        plain.flush(timeout).unwrap();
        txn.commit_transaction(timeout).unwrap();
        committed += 40;
        plains += 30;
        txn.begin_transaction().unwrap();
        send(&txn, "aborted", aborted..aborted + 25);
        txn.flush(timeout).unwrap();
        txn.abort_transaction(timeout).unwrap();
        aborted += 25;
        if round == 7 {
            // Every partition ends on a marker.
            txn.begin_transaction().unwrap();
            for partition in 0..4 {
                let value = event("committed", committed);
                let key = format!("committed-{committed}");
                txn.send(BaseRecord::to(&raw).payload(&value).key(&key).partition(partition)).unwrap();
                committed += 1;
            }
            txn.commit_transaction(timeout).unwrap();
        }
    }

    let port = free_port();
    let mut run = p.spawn(&["run", "--metrics-addr", &format!("127.0.0.1:{port}"), "--clickhouse-in-run"], "run");
    let rows = || p.verify()["delta_rows"].as_u64().unwrap_or(0);
    wait_until(RUN_TIMEOUT, "the committed and plain events stored", || rows() == (committed + plains) as u64);
    // Read to the end: every partition's stored offset reaches the end, markers included.
    wait_until(Duration::from_secs(60), "status to show every partition read to its end", || {
        stored(&p.status()).iter().all(|(_, stored, end)| stored.map_or(0, |s| s + 1) == *end)
    });
    // The lag metric comes from librdkafka's statistics (every 5 s): each partition's
    // lag reaches 0.
    let lags = || -> Vec<String> {
        let metrics = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        metrics.lines().filter(|l| l.starts_with("idempipe_consumer_lag{")).map(str::to_owned).collect()
    };
    wait_until(Duration::from_secs(60), "the lag metric at 0 on every partition", || {
        let lags = lags();
        lags.len() == 4 && lags.iter().all(|l| l.ends_with(" 0"))
    });
    Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap();
    assert!(run.wait().unwrap().success(), "{}", p.tail("run"));

    let v = p.verify();
    let stored_events = (committed + plains) as u64;
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (stored_events, stored_events), "{v}");
    assert_eq!(count(&v, "dlq_records"), 0, "{v}");
    assert_eq!((count(&v, "clickhouse_final_rows"), &v["clickhouse_keys_match"]), (stored_events, &json!(true)), "{v}");
    let mut origins = std::collections::BTreeMap::<String, usize>::new();
    for record in common::read_all(&p.processed_topic()) {
        let row: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        let user = row["user_id"].as_str().unwrap();
        *origins.entry(user.split('-').next().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(origins, [("committed".to_owned(), committed), ("plain".to_owned(), plains)].into(), "{v}");
    let skipped: u64 = p.batch_log().iter().map(|b| count(b, "offset_gaps")).sum();
    // Each aborted record and each marker (two per round, plus the last) is skipped.
    let markers = 8 * 2 * 4;
    assert!(skipped >= aborted as u64, "skipped {skipped}, aborted {aborted}, markers up to {markers}");
}

/// What the processor's clients actually run with, as librdkafka reports its own
/// configuration (`debug=conf`): the consumer reads committed records only
/// (`isolation.level=read_committed`: records of aborted or open transactions are never
/// events) and the producer is idempotent with acks from all replicas.
#[test]
fn the_clients_run_with_read_committed_and_idempotence() {
    let p = Pipeline::new("client_conf");
    p.setup();
    let (file, _) = p.generate(50, 0, 0, 4901);
    p.produce(&file);
    let out = p
        .command(&["run", "--until-idle", "2s", "--kafka", "debug=conf"])
        .env("IDEMPIPE_LOG", "info,librdkafka=debug")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let dumps: Vec<&str> = log.split("Client configuration:").skip(1).collect();
    let consumer =
        dumps.iter().find(|d| d.contains("group.id")).unwrap_or_else(|| panic!("no consumer configuration in:\n{log}"));
    assert!(consumer.contains("isolation.level = read_committed"), "{consumer}");
    assert!(
        consumer.contains("enable.auto.commit = false") && consumer.contains("auto.offset.reset = error"),
        "{consumer}"
    );
    let producer = dumps
        .iter()
        .find(|d| d.contains("enable.idempotence = true"))
        .unwrap_or_else(|| panic!("no idempotent producer in:\n{log}"));
    // librdkafka lists what differs from its defaults; its acks default is all (-1), which
    // idempotence requires.
    assert!(!producer.contains("acks = 0") && !producer.contains("acks = 1"), "{producer}");
}
