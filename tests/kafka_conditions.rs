//! The promise under conditions real Kafka clusters produce: a raw topic deleted and
//! recreated under the processor (its offsets start over below the ones Delta stores),
//! partitions added with the admin API while the processor and the ClickHouse sink run,
//! the cluster stopped, credentials changed. Against the real cluster (the tests' own, or
//! one of the test's own where a test stops it), ClickHouse and the built binary.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    Harness, PrivateKafka, RUN_TIMEOUT, add_partitions, assert_exact, brokers, count, free_port, http_get,
    recreate_topic, wait_until,
};
use idempipe::event::EventTime;
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
fn resets(p: &Harness) -> Vec<Value> {
    p.batch_log().iter().flat_map(|r| r["offset_resets"].as_array().cloned().unwrap_or_default()).collect()
}

/// A raw topic deleted and recreated after 1,000 events were stored: by default `run`
/// stops with an error naming the topic, a partition, its stored offset and the broker's
/// range, and stores nothing; with `fail_on_data_loss = false` it records the reset in
/// Delta, the batch log and `status`, and stores the new topic's events from offset 0.
#[test]
fn a_recreated_raw_topic_stops_the_processor_or_with_consent_is_read_from_its_start() {
    let p = Harness::new("recreated");
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

/// The raw topic deleted and recreated under a running processor: by default it stops
/// with the error naming the topic and stores nothing of the new topic; a processor
/// running with `fail_on_data_loss = false` when the topic is recreated again records
/// the resets and stores the new topic's events from offset 0; the processed topic
/// recreated under its ClickHouse sink is loaded from offset 0 too.
#[test]
fn a_raw_topic_recreated_under_a_running_processor_stops_it_or_is_read_from_its_start() {
    let p = Harness::new("recreated_running");
    p.ingest_generated(1_000, 0, 0, 4111);
    let mut run = p.spawn(&["run"], "run");
    wait_until(RUN_TIMEOUT, "the processor started", || p.log("run").contains("starting after the offsets stored"));
    recreate_topic(&brokers(), &p.raw_topic(), 4);
    let (file, _) = p.generate_as("after", 300, 0, 0, 4112);
    p.produce(&file);
    wait_until(RUN_TIMEOUT, "the processor to stop", || run.try_wait().unwrap().is_some());
    let log = p.log("run");
    assert!(!run.wait().unwrap().success(), "{log}");
    assert!(log.contains(&format!("of topic {}", p.raw_topic())) && log.contains("fail_on_data_loss = false"), "{log}");
    assert_eq!(count(&p.verify(), "delta_rows"), 1_000, "nothing stored from the new topic");

    let mut run = p.spawn(&["run", "--fail-on-data-loss=false", "--clickhouse-in-run"], "run-lenient");
    let rows = || p.verify()["delta_rows"].as_u64().unwrap_or(0);
    wait_until(RUN_TIMEOUT, "the new topic's events stored", || rows() == 1_300);
    let resets_before = resets(&p).len();
    // The processed topic too, under the ClickHouse sink: it reads the new one from 0.
    recreate_topic(&brokers(), &p.raw_topic(), 4);
    recreate_topic(&brokers(), &p.processed_topic(), 4);
    let (file, _) = p.generate_as("again", 200, 0, 0, 4113);
    p.produce(&file);
    wait_until(RUN_TIMEOUT, "the recreated topic's events stored", || {
        assert_eq!(run.try_wait().unwrap(), None, "the processor exited:\n{}", p.tail("run-lenient"));
        rows() == 1_500
    });
    assert!(resets(&p).len() > resets_before, "the second recreation is recorded");
    wait_until(RUN_TIMEOUT, "the new processed records loaded", || {
        p.verify()["clickhouse_final_rows"].as_u64() == Some(1_500)
    });
    assert!(p.log("run-lenient").contains("the ClickHouse sink reads on from offset 0"), "{}", p.tail("run-lenient"));
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (1_500, 1_500), "{v}");
    assert_eq!((count(&v, "processed_distinct_keys"), &v["clickhouse_keys_match"]), (200, &json!(true)), "{v}");
    for (partition, stored, end) in stored(&p.status()) {
        assert_eq!(stored.map_or(0, |s| s + 1), end, "partition {partition} read to its end");
    }
}

/// Retention deleting segments of the raw topic the table has not read (a stopped
/// processor, the topic given a 2 s retention for a while): by default `run` stops naming the lost
/// offsets and stores nothing; with `fail_on_data_loss = false` it records how many
/// offsets were lost per partition and stores what is left.
#[test]
fn retention_deleting_unread_segments_stops_the_processor_or_with_consent_is_recorded() {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::Consumer;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p = Harness::new("retention");
    p.ingest_generated(400, 0, 0, 4121);
    let raw = p.raw_topic();
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let retention =
        AlterConfig::new(ResourceSpecifier::Topic(&raw)).set("retention.ms", "2000").set("segment.ms", "500");
    for result in futures::executor::block_on(admin.alter_configs(&[retention], &AdminOptions::new())).unwrap() {
        result.unwrap();
    }
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let send = |origin: &str, per_partition: usize| {
        for partition in 0..4 {
            for i in 0..per_partition {
                let value = format!(
                    r#"{{"user_id":"{origin}-{partition}-{i}","event_type":"kept","timestamp":"2024-07-01T00:00:00Z"}}"#
                );
                producer.send(BaseRecord::<(), _>::to(&raw).payload(&value).partition(partition)).unwrap();
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    // Unread events; their segments roll (segment.ms) and pass their retention: every
    // partition is emptied.
    send("unread", 100);
    let lows = || {
        let consumer: rdkafka::consumer::BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
        (0..4)
            .map(|partition| consumer.fetch_watermarks(&raw, partition, Duration::from_secs(10)).unwrap().0)
            .collect::<Vec<_>>()
    };
    let before = stored(&p.status());
    wait_until(Duration::from_secs(60), "retention to delete the unread events", || {
        lows().iter().zip(&before).all(|(low, (_, stored, _))| *low > stored.map_or(0, |s| s + 1))
    });
    let lows = lows();
    // Retention back to a week: the events sent now stay.
    let week = AlterConfig::new(ResourceSpecifier::Topic(&raw)).set("retention.ms", "604800000");
    for result in futures::executor::block_on(admin.alter_configs(&[week], &AdminOptions::new())).unwrap() {
        result.unwrap();
    }
    send("left", 25);

    let (status, log) = p.run_until_idle_ending(&[], RUN_TIMEOUT);
    assert!(!status.success() && log.contains("fail_on_data_loss = false"), "{log}");
    assert_eq!(count(&p.verify(), "delta_rows"), 400, "nothing stored past the loss");

    p.run_until_idle(&["--fail-on-data-loss=false"]);
    let resets = resets(&p);
    assert_eq!(resets.len(), 4, "{resets:?}");
    for reset in &resets {
        let partition = reset["partition"].as_i64().unwrap();
        let old = before.iter().find(|(p, _, _)| *p == partition).unwrap().1.map_or(0, |s| s + 1);
        let low = lows[partition as usize];
        assert_eq!((reset["low"].as_i64(), reset["lost"].as_i64()), (Some(low), Some(low - old)), "{reset}");
    }
    let v = p.verify();
    assert_eq!(count(&v, "delta_rows"), 400 + 4 * 25, "the events left are stored: {v}");
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
    let p = Harness::with_options(&format!("grown_{mode}"), &format!("consumer_mode = \"{mode}\""));
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
    let p = Harness::new("sink_grown");
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
    let p = Harness::with_brokers("unready", &kafka.brokers(), "");
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

/// The longest wait between consecutive batches the batch log records, from the first
/// batch that ended after `from` (an [`EventTime`] in microseconds).
fn longest_pause_after(p: &Harness, from: i64) -> Duration {
    let ends: Vec<i64> = p
        .batch_log()
        .iter()
        .filter_map(|b| b["ended_at"].as_str().and_then(|t| EventTime::parse(t).ok()).map(EventTime::micros))
        .collect();
    let last_before = ends.iter().copied().filter(|e| *e <= from).max().unwrap_or(from);
    let mut longest = 0;
    let mut previous = last_before;
    for end in ends.into_iter().filter(|e| *e > from) {
        longest = longest.max(end - previous);
        previous = end;
    }
    Duration::from_micros(longest as u64)
}

/// Broker failover, on a cluster of the test's own (2 brokers, topics with 2 replicas,
/// `min.insync.replicas` 1), while events keep arriving and the processor and the
/// ClickHouse sink run: broker 1 killed (SIGKILL) and started again later, then the KRaft
/// controller killed and started again. Nothing is lost, nothing doubled; the processor's
/// longest pause stays within the time the cluster takes to fence a dead broker
/// (`broker.session.timeout.ms`, 9 s) and move its partitions' leadership, plus the
/// clients' retries; `/readyz` answers 200 whenever batches commit (the errors about
/// the dead broker do not make a working processor unready).
#[test]
fn a_broker_or_the_controller_killed_under_the_processor_and_the_sink_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = PrivateKafka::plain(dir.path().join("kafka"));
    let p = Harness::with_brokers("failover", &kafka.brokers(), "");
    p.setup();
    let (file, expected) = p.generate(12_000, 1_200, 60, 4601);
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let run = p.spawn(&["run", "--trigger", "300ms", "--max-batch-events", "500", "--metrics-addr", &metrics], "run");
    let _sink = p.spawn(&["sink-clickhouse", "--metrics-addr", &format!("127.0.0.1:{}", free_port())], "sink");
    // About 45 s of events at 300/s, through the whole failover.
    let mut producer = p.spawn(&["produce", "--input", file.to_str().unwrap(), "--rate", "300"], "produce");
    let mut run = run;
    let alive = |run: &mut common::Background| {
        assert_eq!(run.try_wait().unwrap(), None, "the processor exited; its log:\n{}", p.tail("run"))
    };
    wait_until(RUN_TIMEOUT, "three committed batches", || p.batch_log_lines() >= 3);

    let killed = EventTime::now().micros();
    kafka.kill_broker(1);
    let batches = p.batch_log_lines();
    wait_until(Duration::from_secs(120), "batches committed with broker 1 dead", || {
        alive(&mut run);
        p.batch_log_lines() >= batches + 5
    });
    let ready = http_get(port, "/readyz");
    assert_eq!(ready.as_ref().map(|r| r.0), Some(200), "a processor that commits is ready: {ready:?}");
    let pause = longest_pause_after(&p, killed);
    eprintln!("failover: broker 1 killed; longest pause between batches {pause:?}");
    assert!(pause < Duration::from_secs(9 + 21), "the processor paused {pause:?} with broker 1 dead");
    kafka.start_broker(1);

    let killed = EventTime::now().micros();
    kafka.kill_controller();
    let batches = p.batch_log_lines();
    wait_until(Duration::from_secs(120), "batches committed with the controller dead", || {
        alive(&mut run);
        p.batch_log_lines() >= batches + 5
    });
    let pause = longest_pause_after(&p, killed);
    eprintln!("failover: controller killed; longest pause between batches {pause:?}");
    kafka.start_controller();

    assert!(producer.wait().unwrap().success(), "{}", p.tail("produce"));
    wait_until(RUN_TIMEOUT, "every event stored", || {
        alive(&mut run);
        p.verify()["delta_rows"].as_u64() == Some(count(&expected, "distinct_keys"))
    });
    wait_until(RUN_TIMEOUT, "every event loaded into ClickHouse", || {
        p.verify()["clickhouse_final_rows"].as_u64() == Some(count(&expected, "distinct_keys"))
    });
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(200));
    Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap();
    assert!(run.wait().unwrap().success(), "{}", p.tail("run"));
    assert_exact(&p.verify(), &expected);
}

/// Instances joining and leaving a group in the middle of batches (a 2 s trigger, events
/// arriving throughout), under the cooperative protocol (`partition.assignment.strategy =
/// cooperative-sticky`) or the new one (`group.protocol = consumer`, KIP-848): a
/// rebalance that takes some partitions away while others stay must neither lose the
/// retained partitions' offsets collected so far nor read them twice into Delta.
fn instances_join_and_leave_mid_batch(label: &str, settings: &[(&str, &str)]) {
    let settings: Vec<(String, String)> = settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let p = Harness::with_options(label, "consumer_mode = \"group\"").with_kafka_settings(&settings);
    if settings.iter().any(|(k, v)| k == "group.protocol" && v == "consumer") {
        // The new protocol's session and heartbeat are the broker's: with the client-side
        // ones the tests' configuration sets, every command refuses to start, naming them.
        let out = p.output(&["setup"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("`kafka.session.timeout.ms`"), "{err}");
        assert!(err.contains("group.protocol=consumer"), "{err}");
        let config = std::fs::read_to_string(&p.config).unwrap();
        let kept: Vec<&str> = config
            .lines()
            .filter(|l| !l.starts_with("\"session.timeout.ms\"") && !l.starts_with("\"heartbeat."))
            .collect();
        std::fs::write(&p.config, kept.join("\n") + "\n").unwrap();
    }
    p.setup();
    let (file, expected) = p.generate(8_000, 800, 40, 4701);
    let mut producer = p.spawn(&["produce", "--input", file.to_str().unwrap(), "--rate", "400"], "produce");
    let run = ["run", "--trigger", "2s"];
    let mut first = p.spawn(&run, "first");
    wait_until(RUN_TIMEOUT, "the first instance's first batch", || p.batch_log_lines() >= 1);
    // Each newcomer joins while the first collects a batch; each leaves (SIGTERM) while
    // the first collects another.
    let mut instances = Vec::new();
    for round in 0..3 {
        let q = p.instance(&format!("joiner{round}"));
        let mut joiner = q.spawn(&run, "run");
        wait_until(RUN_TIMEOUT, "the newcomer's assignment", || {
            assert_eq!(joiner.try_wait().unwrap(), None, "{}", q.tail("run"));
            q.log("run").contains("partitions assigned")
        });
        let batches = p.batch_log_lines() + q.batch_log_lines();
        wait_until(RUN_TIMEOUT, "batches after the join", || p.batch_log_lines() + q.batch_log_lines() >= batches + 2);
        Command::new("kill").args(["-TERM", &joiner.id().to_string()]).status().unwrap();
        assert!(joiner.wait().unwrap().success(), "{}", q.tail("run"));
        instances.push(q);
        assert_eq!(first.try_wait().unwrap(), None, "{}", p.tail("first"));
    }
    assert!(producer.wait().unwrap().success(), "{}", p.tail("produce"));
    Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
    assert!(first.wait().unwrap().success(), "{}", p.tail("first"));
    let revoked = p.log("first").matches("partitions revoked").count();
    assert!(revoked >= 1, "the first instance gave partitions away");
    // Whatever is left, read by one instance: a lost offset stays lost (Delta's stored
    // offsets are past it), a doubled row stays doubled.
    p.run_until_idle(&["--clickhouse-in-run"]);
    assert_exact(&p.verify(), &expected);
}

#[test]
fn instances_joining_and_leaving_mid_batch_lose_nothing_with_cooperative_sticky() {
    instances_join_and_leave_mid_batch("cooperative", &[("partition.assignment.strategy", "cooperative-sticky")]);
}

#[test]
fn instances_joining_and_leaving_mid_batch_lose_nothing_with_the_consumer_protocol() {
    instances_join_and_leave_mid_batch("kip848", &[("group.protocol", "consumer")]);
}

/// The broker's SCRAM password changed under a running processor: when its connections
/// authenticate again with the old one (the brokers ask for it every 5 s,
/// `connections.max.reauth.ms`), it stops with an error saying that no retry mends it (it
/// used to log warnings and wait for good).
#[test]
fn refused_credentials_stop_the_processor_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = PrivateKafka::reauthenticating(dir.path().join("kafka"), "idempipe", "first-secret", 5_000);
    let p = Harness::with_brokers("refused", &kafka.brokers(), "").with_kafka_settings(&kafka.client_settings());
    p.setup();
    let (file, _) = p.generate(300, 0, 0, 4501);
    p.produce(&file);
    let mut run = p.spawn(&["run"], "run");
    wait_until(RUN_TIMEOUT, "the events stored", || p.verify()["delta_rows"].as_u64() == Some(300));

    kafka.change_password("second-secret");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while run.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            // Its warnings and errors, not the last seconds' debug lines alone.
            let log = p.log("run");
            let notable: Vec<&str> = log.lines().filter(|l| !l.contains(" DEBUG ")).collect();
            panic!("the processor did not stop; its log but debug lines:\n{}", notable.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let p = Harness::new("transactions");
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

/// An authorization an ACL refuses (a cluster with SCRAM users and Kafka's authorizer):
/// idempipe's user may do everything but write the processed topic. `run` stops with an
/// error naming the refusal and the topic, and writes nothing: no row in Delta, no
/// record in the processed topic.
#[test]
fn an_acl_refusing_the_processed_topic_stops_the_processor_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = PrivateKafka::with_acls(dir.path().join("kafka"), "idempipe", "acl-secret");
    let p = Harness::with_brokers("acl", &kafka.brokers(), "").with_kafka_settings(&kafka.client_settings());
    let user = "User:idempipe";
    kafka.acl(&["--add", "--allow-principal", user, "--operation", "All", "--topic", "*", "--group", "*"]);
    kafka.acl(&["--add", "--allow-principal", user, "--operation", "All", "--cluster"]);
    kafka.acl(&["--add", "--deny-principal", user, "--operation", "Write", "--topic", &p.processed_topic()]);
    p.setup();
    let (file, _) = p.generate(200, 0, 0, 4801);
    p.produce(&file);
    let (status, log) = p.run_until_idle_ending(&[], RUN_TIMEOUT);
    assert!(!status.success(), "{log}");
    assert!(log.contains("uthorization") && log.contains(&p.processed_topic()), "{log}");
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "processed_records")), (0, 0), "{v}");
}

/// What the processor's clients actually run with, as librdkafka reports its own
/// configuration (`debug=conf`): the consumer reads committed records only
/// (`isolation.level=read_committed`: records of aborted or open transactions are never
/// events) and the producer is idempotent with acks from all replicas.
#[test]
fn the_clients_run_with_read_committed_and_idempotence() {
    let p = Harness::new("client_conf");
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

/// The raw and processed topics recreated under `run --clickhouse-in-run` after a leader
/// change (broker 1 killed and started again, so that its partitions' leader epochs
/// grew): librdkafka ignores the new topics' metadata as older than the epochs it keeps,
/// and a consumer of the old topic never fetched such a partition again, with no error.
/// The processor and the sink replace their consumers after the reset, the processor its
/// producer once an acknowledgement shows the processed topic started over, and every
/// event of the new topic is stored and loaded.
#[test]
fn topics_recreated_after_a_leader_change_are_read_from_their_start() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = PrivateKafka::plain(dir.path().join("kafka"));
    let p = Harness::with_brokers("recreated_epoch", &kafka.brokers(), "");
    p.ingest_generated(1_000, 0, 0, 4131);
    let mut run = p.spawn(&["run", "--fail-on-data-loss=false", "--clickhouse-in-run"], "run");
    let rows = || p.verify()["delta_rows"].as_u64().unwrap_or(0);
    let alive = |run: &mut common::Background| {
        assert_eq!(run.try_wait().unwrap(), None, "the processor exited; its log:\n{}", p.tail("run"))
    };
    wait_until(RUN_TIMEOUT, "the processor started", || p.log("run").contains("starting after the offsets stored"));
    // Broker 1's partitions move to broker 2 (their leader epoch grows), and stay there.
    kafka.kill_broker(1);
    let (file, _) = p.generate_as("during", 100, 0, 0, 4132);
    p.produce(&file);
    wait_until(RUN_TIMEOUT, "events stored with broker 1 dead", || {
        alive(&mut run);
        rows() == 1_100
    });
    kafka.start_broker(1);
    wait_until(RUN_TIMEOUT, "broker 1 back in the cluster", || {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = kafka.client_config().create().unwrap();
        consumer.fetch_metadata(None, Duration::from_secs(5)).is_ok_and(|m| m.brokers().len() == 2)
    });

    recreate_topic(&kafka.brokers(), &p.raw_topic(), 4);
    recreate_topic(&kafka.brokers(), &p.processed_topic(), 4);
    let (file, _) = p.generate_as("again", 400, 0, 0, 4133);
    p.produce(&file);
    wait_until(RUN_TIMEOUT, "the recreated topic's events stored", || {
        alive(&mut run);
        rows() == 1_500
    });
    wait_until(RUN_TIMEOUT, "the new processed records loaded", || {
        p.verify()["clickhouse_final_rows"].as_u64() == Some(1_500)
    });
    let log = p.log("run");
    for consumer in ["raw", "processed"] {
        assert!(log.contains(&format!("replacing the {consumer} topic's consumer")), "{}", p.tail("run"));
    }
    // The producer too: the processed partitions broker 2 led from the start took the
    // new topic's metadata and acknowledged records below the old offsets, so the records
    // still pending (for the partitions broker 1 had led) were purged and sent again by a
    // new producer, instead of waiting out `message.timeout.ms`.
    assert!(log.contains("acknowledged below the partition's last acknowledged offset"), "{}", p.tail("run"));
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (1_500, 1_500), "{v}");
    assert_eq!((count(&v, "processed_distinct_keys"), &v["clickhouse_keys_match"]), (400, &json!(true)), "{v}");
}
