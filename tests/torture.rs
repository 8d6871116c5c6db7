//! The torture suite: break things on purpose, then check every store against counts the
//! test knows independently (from the generator, or from what it sent itself).
//!
//! Short form by default (what CI runs); `scripts/torture.sh` runs the full form. Every
//! scenario prints its seed; `TORTURE_SEED=<seed>` replays it. Scale with
//! `TORTURE_EVENTS` (unique events of the crash loop) and `TORTURE_KILLS`; the two-instance
//! scenario with `TORTURE_GROUP_EVENTS`, `TORTURE_GROUP_SECONDS` (how long the producer
//! sends) and `TORTURE_GROUP_KILLS`.
//!
//! Checks after each scenario: Delta holds each distinct valid key exactly once
//! (`delta_rows` = `delta_distinct_keys` = the generator's count); the dead-letter topic
//! holds every invalid message (distinct source offsets); ClickHouse `FINAL` matches Delta
//! key by key (count and key checksum).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Background, Harness, count, read_all};
use idempipe::commands::generate::SplitMix64 as Rng;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The scenario's seed: `TORTURE_SEED`, or a new one (printed, to replay a failure).
fn seed(scenario: &str) -> u64 {
    let seed = env_u64(
        "TORTURE_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000,
    );
    eprintln!("torture {scenario}: seed {seed} (replay with TORTURE_SEED={seed})");
    seed
}

/// Every store holds exactly what the generator says; no batch of the `instances` (the
/// working directories whose batch logs count) skipped an offset.
fn check_stores(p: &Harness, instances: &[&Harness], distinct: u64, invalid: u64) -> Value {
    let v = p.verify();
    assert_eq!(count(&v, "delta_rows"), distinct, "{v}");
    assert_eq!(count(&v, "delta_distinct_keys"), distinct, "{v}");
    assert_eq!(count(&v, "dlq_records"), invalid, "every invalid message is a dead letter: {v}");
    assert_eq!(count(&v, "processed_distinct_keys"), distinct, "{v}");
    assert_eq!(count(&v, "clickhouse_final_rows"), distinct, "{v}");
    assert_eq!(v["clickhouse_keys_match"], true, "{v}");
    let gaps: u64 = instances.iter().flat_map(|i| i.batch_log()).map(|b| count(&b, "offset_gaps")).sum();
    assert_eq!(gaps, 0, "the broker skipped offsets");
    v
}

/// The phase lines the processor logs at debug level (src/pipeline.rs).
const PHASES: [&str; 3] = ["batch phase: produce", "batch phase: delta commit", "batch phase: group offsets"];

/// The last phase line in a log, or "before the first batch".
fn last_phase(log: &str) -> &'static str {
    log.lines()
        .rev()
        .find_map(|l| PHASES.iter().find(|ph| l.contains(**ph)).copied())
        .unwrap_or("before the first batch")
}

/// Waits until `name`'s log holds `nth` lines of `phase` (or `within` passes), then kills
/// it with SIGKILL; returns the last phase it logged. Fails if it exits by itself first.
fn kill_at_phase(
    p: &Harness,
    run: &mut Background,
    name: &str,
    phase: &str,
    nth: usize,
    within: Duration,
) -> &'static str {
    let deadline = Instant::now() + within;
    while p.log(name).matches(phase).count() < nth && Instant::now() < deadline {
        assert!(run.try_wait().unwrap().is_none(), "{name} exited by itself:\n{}", p.tail(name));
        std::thread::sleep(Duration::from_millis(2));
    }
    run.kill().unwrap();
    run.wait().unwrap();
    last_phase(&p.log(name))
}

/// Crash loop: the processor (with the ClickHouse sink inside) is killed with SIGKILL
/// again and again while events arrive, each kill aimed at a phase (during produce, during
/// the Delta commit, between the commit and the group offsets), and restarted each time.
#[test]
fn crash_loop_loses_nothing_and_doubles_nothing() {
    crash_loop("crash loop", &Harness::new("crashloop"), env_u64("TORTURE_EVENTS", 20_000));
}

/// The crash loop with the table on the tests' S3 server: a kill can land between the
/// upload of a batch's data files and its commit, or during the commit's conditional put.
#[test]
fn crash_loop_on_s3_loses_nothing_and_doubles_nothing() {
    let p = Harness::on_s3_with_options("s3crash", "");
    crash_loop("crash loop on s3", &p, env_u64("TORTURE_S3_EVENTS", 10_000));
}

fn crash_loop(scenario: &str, p: &Harness, unique: u64) {
    let seed = seed(scenario);
    let mut rng = Rng(seed);
    let kills = env_u64("TORTURE_KILLS", 6);
    p.setup();
    let (file, expected) = p.generate(unique, unique / 10, unique / 200, seed);
    let distinct = count(&expected, "distinct_keys");
    let invalid = count(&expected, "invalid");

    let mut producer = p.spawn(&["produce", "--input", file.to_str().unwrap()], "produce");
    let mut landed: BTreeMap<&'static str, u32> = BTreeMap::new();
    for k in 0..kills {
        let name = format!("run-{k}");
        let mut run =
            p.spawn(&["run", "--trigger", "200ms", "--max-batch-events", "1000", "--clickhouse-in-run"], &name);
        let target = PHASES[rng.below(3) as usize];
        let nth = 1 + rng.below(3) as usize;
        *landed.entry(kill_at_phase(p, &mut run, &name, target, nth, Duration::from_secs(60))).or_default() += 1;
    }
    assert!(producer.wait().unwrap().success(), "{}", p.tail("produce"));
    eprintln!("torture {scenario}: {kills} kills, landed after {landed:?}");
    // Catching up on what is left takes time in proportion (a debug build does a few
    // thousand events/s here).
    p.run_until_idle_within(&["--clickhouse-in-run"], common::RUN_TIMEOUT + Duration::from_millis(3 * unique));
    check_stores(p, &[p], distinct, invalid);
    eprintln!("torture {scenario}: {distinct} distinct keys, {invalid} dead letters: exact");
}

/// A raw record: key and value, either possibly absent.
type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Sends raw records (any bytes, any size, null keys and values) to `topic`.
fn send_raw(topic: &str, records: &[RawRecord]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("message.max.bytes", "10000000")
        .create()
        .unwrap();
    for (key, value) in records {
        let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(k) = key {
            r = r.key(k.as_slice());
        }
        if let Some(v) = value {
            r = r.payload(v.as_slice());
        }
        producer.send(r).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Bad input: every class of the contract, and worse, between valid events. The valid
/// ones flow; each bad one is in the dead-letter topic with a fitting class.
#[test]
fn bad_input_lands_in_the_dead_letter_topic_and_the_rest_flows() {
    let seed = seed("bad input");
    let p = Harness::new("badinput");
    p.setup();
    let (file, expected) = p.generate(2_000, 0, 0, seed);
    let valid = count(&expected, "distinct_keys");

    let ok = |user: &str| format!(r#"{{"user_id":"{user}","event_type":"t","timestamp":"2024-05-01T00:00:00Z"}}"#);
    let nested = format!(
        r#"{{"user_id":"u","event_type":"t","timestamp":"2024-05-01T00:00:00Z","x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut garbage: Vec<u8> = (0..4096_u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    garbage[0] = 0xff; // never valid UTF-8
    // Five times over max_message_bytes (1 MiB), within the cluster's 10 MiB record limit.
    let big =
        format!(r#"{{"user_id":"u","event_type":"t","timestamp":0,"pad":"{}"}}"#, "x".repeat((5 << 20) - (16 << 10)));
    // Valid events within max_message_bytes whose processed record (the payload escaped
    // again, beside the row's fields) would be over the producer's 1,000,000-byte
    // `message.max.bytes`: one of 999,900 bytes, and one of 600,000 bytes of escaped
    // quotes (1.2 MB once escaped again). Such events stopped the processor for good.
    let pad = |n: usize, what: &str| {
        format!(r#"{{"user_id":"u","event_type":"t","timestamp":0,"pad":"{}"}}"#, what.repeat(n))
    };
    let nearly_a_mebibyte = pad(999_900 - pad(0, "").len(), "x");
    let quotes = pad(300_000, r#"\""#);
    // Huge invalid fields: a rejection that quoted the whole field made a dead letter whose
    // header no broker takes, and the processor stopped for good.
    let event = |event_type: &str, timestamp: &str| {
        format!(r#"{{"user_id":"u","event_type":"{event_type}","timestamp":"{timestamp}"}}"#)
    };
    let controls = event("t", &"\u{80}".repeat(200_000));
    let digits = event("t", &"7".repeat(900_000));
    let quoted_type = event(&r#"\""#.repeat(300_000), "yesterday");
    // (value, the classes that fit it)
    let bad: Vec<(Option<Vec<u8>>, &[&str])> = vec![
        (None, &["null_value"]),
        (Some(big.into_bytes()), &["too_large"]),
        (Some(nearly_a_mebibyte.into_bytes()), &["too_large"]),
        (Some(quotes.into_bytes()), &["too_large"]),
        (Some(garbage), &["not_utf8"]),
        (Some(b"{not json".to_vec()), &["invalid_json"]),
        (Some(nested.into_bytes()), &["too_deep"]),
        (Some(b"[1,2,3]".to_vec()), &["not_object"]),
        (Some(br#"{"user_id":"a","user_id":"b","event_type":"t","timestamp":0}"#.to_vec()), &["duplicate_field"]),
        (Some(br#"{"event_type":"t","timestamp":0}"#.to_vec()), &["missing_field"]),
        (Some(br#"{"user_id":1.5,"event_type":"t","timestamp":0}"#.to_vec()), &["wrong_type"]),
        (Some(br#"{"user_id":"","event_type":"t","timestamp":0}"#.to_vec()), &["empty_field"]),
        (
            Some(br#"{"user_id":"u","event_type":"t","timestamp":"2024-02-30T00:00:00Z"}"#.to_vec()),
            &["invalid_timestamp"],
        ),
        (
            Some(br#"{"user_id":"u","event_type":"t","timestamp":999999999999999999}"#.to_vec()),
            &["timestamp_out_of_range", "invalid_timestamp"],
        ),
        (
            Some(br#"{"user_id":123456789012345678901234567890123,"event_type":"t","timestamp":0}"#.to_vec()),
            &["wrong_type", "invalid_json"],
        ),
        (Some(b"{\"user_id\":\"u\0\",\"event_type\":\"t\",\"timestamp\":0}".to_vec()), &["invalid_json"]),
        (Some([&b"\xef\xbb\xbf"[..], ok("bom").as_bytes()].concat()), &["invalid_json"]),
        (Some(Vec::new()), &["invalid_json"]),
        (Some(controls.into_bytes()), &["invalid_timestamp"]),
        (Some(digits.into_bytes()), &["invalid_timestamp"]),
        (Some(quoted_type.into_bytes()), &["invalid_timestamp"]),
    ];
    let raw_topic = format!("{}_raw", p.name);
    // Bad records, a valid record with a null key, then the valid file.
    let mut records: Vec<RawRecord> = bad.iter().map(|(v, _)| (Some(b"k".to_vec()), v.clone())).collect();
    records.push((None, Some(ok("null-key").into_bytes())));
    // A large valid event that fits everywhere is stored like any other.
    records.push((Some(b"k".to_vec()), Some(pad(500_000, "y").into_bytes())));
    // Hostile event times, all valid: 200 months from year 0001 to 9951 in one batch (200
    // Delta partitions in one commit; more ClickHouse partitions than a current server
    // takes in one insert).
    let hostile: Vec<String> = (0..200)
        .map(|m| {
            format!(
                r#"{{"user_id":"hostile","event_type":"t","timestamp":"{:04}-{:02}-15T00:00:00Z"}}"#,
                1 + m * 50,
                m % 12 + 1
            )
        })
        .collect();
    records.extend(hostile.iter().map(|h| (Some(b"h".to_vec()), Some(h.clone().into_bytes()))));
    send_raw(&raw_topic, &records);
    p.produce(&file);
    p.run_until_idle(&["--clickhouse-in-run"]);

    let stored = valid + 2 + hostile.len() as u64;
    let v = check_stores(&p, &[&p], stored, bad.len() as u64);
    eprintln!("torture bad input: {} bad records refused, {stored} valid stored: {v}", bad.len());
    let raw = read_all(&raw_topic);
    let dead = read_all(&format!("{}_dlq", p.name));
    for (value, classes) in &bad {
        let source = raw.iter().find(|r| &r.value == value).expect("the bad record is in the raw topic");
        let letter = dead
            .iter()
            .find(|d| {
                d.headers.get("source.partition") == Some(&source.partition.to_string())
                    && d.headers.get("source.offset") == Some(&source.offset.to_string())
            })
            .unwrap_or_else(|| panic!("no dead letter for the record at offset {}", source.offset));
        let class = letter.headers["error.class"].as_str();
        assert!(classes.contains(&class), "class {class} for a record that should be one of {classes:?}");
        let message = &letter.headers["error.message"];
        assert!(
            !message.is_empty() && message.len() <= 4096,
            "{} bytes: {}",
            message.len(),
            message.chars().take(200).collect::<String>()
        );
        let original = value.as_deref().unwrap_or_default();
        if letter.headers.get("error.truncated").is_some_and(|t| t == "true") {
            // Too big to send whole: a prefix, with the full length.
            let kept = letter.value.as_deref().unwrap_or_default();
            assert!(original.starts_with(kept) && kept.len() < original.len());
            assert_eq!(letter.headers["source.value_bytes"], original.len().to_string());
        } else {
            assert_eq!(&letter.value, value, "the dead letter carries the original bytes");
        }
    }
}

/// A tiny HTTP server that answers 500 to everything (a broken ClickHouse).
fn http_500() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0_u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 21\r\nConnection: close\r\n\r\nsomething went wrong\n",
            );
        }
    });
    url
}

fn topic_exists(topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", common::brokers()).create().unwrap();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    metadata.topics().iter().any(|t| t.name() == topic)
}

/// Bad configuration fails at start-up with a message naming the cause, a non-zero exit,
/// and no partial writes.
#[test]
fn bad_configuration_fails_clearly_and_writes_nothing() {
    let p = Harness::new("badconfig");
    let fails = |args: &[&str], needle: &str| {
        let started = Instant::now();
        let out = p.output(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: the error should name {needle:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(60), "{args:?} took {:?}", started.elapsed());
    };
    fails(&["--brokerz", "x", "verify"], "--brokerz");
    fails(&["--trigger", "5ms", "run"], "trigger");
    fails(&["--clickhouse-url", "ftp://ch:8443", "run"], "clickhouse_url");
    // A librdkafka setting that would turn a guarantee off.
    fails(&["--kafka", "enable.idempotence=false", "setup"], "kafka.enable.idempotence");
    assert!(!p.delta_path().exists(), "setup created the table although its config was refused");
    let config = p.path("bad.toml");
    std::fs::write(&config, "brokerz = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_idempipe"))
        .args(["--config", config.to_str().unwrap(), "verify"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("brokerz"), "{}", String::from_utf8_lossy(&out.stderr));

    // An unreachable broker: setup and run fail, naming it; nothing is created.
    fails(&["--brokers", "127.0.0.1:1", "setup"], "127.0.0.1:1");
    assert!(!p.delta_path().exists(), "setup created the table although the broker is down");

    // A Delta path that is a file.
    let file = p.path("a-file");
    std::fs::write(&file, "not a table").unwrap();
    fails(&["--delta-path", file.to_str().unwrap(), "setup"], "a-file");
    assert!(!topic_exists(&format!("{}_raw", p.name)), "setup created topics although the Delta path is a file");

    // A ClickHouse that answers 500: setup fails naming its URL, and writes nothing.
    let broken = http_500();
    fails(&["--clickhouse-url", &broken, "setup"], &broken);
    assert!(!p.delta_path().exists(), "setup created the table although ClickHouse fails");
    assert!(!topic_exists(&format!("{}_raw", p.name)), "setup created topics although ClickHouse fails");

    // Set up, then run against a broker that is gone.
    p.setup();
    fails(&["--brokers", "127.0.0.1:1", "run"], "127.0.0.1:1");
}

/// SIGTERM during a batch: the processor finishes it and exits within the trigger
/// interval plus 10 s, and nothing is lost.
#[test]
fn sigterm_during_a_batch_exits_promptly_and_loses_nothing() {
    let seed = seed("sigterm");
    let p = Harness::new("sigterm");
    p.setup();
    let (file, expected) = p.generate(10_000, 1_000, 50, seed);
    p.produce(&file);
    let trigger = Duration::from_secs(2);
    let mut run: Background =
        p.spawn(&["run", "--trigger", "2s", "--max-batch-events", "3000", "--clickhouse-in-run"], "run");
    common::wait_until(Duration::from_secs(60), "a batch in progress", || {
        std::fs::read_to_string(p.path("run.log")).unwrap_or_default().contains("batch phase: produce")
    });
    let signalled = Instant::now();
    let status = Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = run.try_wait().unwrap() {
            break exit;
        }
        assert!(signalled.elapsed() < trigger + Duration::from_secs(10), "no exit within the trigger + 10 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("torture sigterm: exited {exit} after {:?}", signalled.elapsed());
    assert!(exit.success(), "{}", p.tail("run"));
    p.run_until_idle(&["--clickhouse-in-run"]);
    check_stores(&p, &[&p], count(&expected, "distinct_keys"), count(&expected, "invalid"));
}

/// Cluster restart: a Kafka cluster of the test's own is stopped and started again on its
/// storage while the processor runs; the processor and the sink ride it out.
#[test]
fn a_broker_restart_mid_run_loses_nothing() {
    let seed = seed("broker restart");
    let dir = tempfile::tempdir().unwrap();
    let kafka = common::PrivateKafka::plain(dir.path().join("kafka"));
    let brokers = kafka.brokers();
    let p = Harness::with_brokers("brokerrestart", &brokers, "");
    p.setup();
    let (file, expected) = p.generate(10_000, 1_000, 50, seed);
    let mut run = p.spawn(&["run", "--trigger", "300ms", "--max-batch-events", "1000", "--clickhouse-in-run"], "run");
    p.produce(&file);
    common::wait_until(Duration::from_secs(60), "two committed batches", || p.batch_log_lines() >= 2);
    kafka.stop();
    kafka.start_again();
    eprintln!("torture broker restart: restarted after {} batches", p.batch_log_lines());
    // The run keeps going after the restart: wait until Delta has everything.
    common::wait_until(Duration::from_secs(180), "every event in Delta after the restart", || {
        p.verify()["delta_rows"].as_u64() == Some(count(&expected, "distinct_keys"))
    });
    assert!(run.try_wait().unwrap().is_none(), "the processor survived the restart: {}", p.tail("run"));
    Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap();
    run.wait().unwrap();
    p.run_until_idle(&["--clickhouse-in-run"]);
    check_stores(&p, &[&p], count(&expected, "distinct_keys"), count(&expected, "invalid"));
}

/// An object store that lets delta-rs write a commit file and then reports an error, once
/// (after letting `let_through` commits pass): the reply of a commit that happened is lost.
mod lost_reply {
    use std::fmt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use deltalake::logstore::object_store::path::Path;
    use deltalake::logstore::object_store::{
        CopyOptions, Error, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    };
    use futures::stream::BoxStream;

    /// Which commits the fault is aimed at.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Target {
        /// A batch's commit: one that records Kafka offsets (a `txn` action of the
        /// processor's group).
        BatchCommit,
        /// A table-property commit (`metaData` and no `txn`): the tombstone retention
        /// that `run` sets at start.
        PropertyCommit,
    }

    #[derive(Debug)]
    pub(crate) struct LostReply {
        pub(crate) inner: Arc<dyn ObjectStore>,
        pub(crate) target: Target,
        /// The processor's group: a batch commit's txn app ids start with it.
        pub(crate) group: String,
        /// Target commits to let through before the one whose reply is lost.
        pub(crate) let_through: AtomicU32,
        /// How many replies were lost (0 or 1).
        pub(crate) fired: AtomicU32,
        /// Whether the commit aimed at is written before its error (a lost reply), or
        /// not at all (a commit that failed).
        pub(crate) written: bool,
    }

    /// `…/_delta_log/<20 digits>.json`: a commit file.
    fn is_commit(location: &Path) -> bool {
        let name = location.as_ref().rsplit('/').next().unwrap_or_default();
        location.as_ref().contains("_delta_log/")
            && name.len() == 25
            && name.ends_with(".json")
            && name[..20].bytes().all(|b| b.is_ascii_digit())
    }

    impl LostReply {
        /// Whether the commit file `payload` is one the fault is aimed at.
        fn is_target(&self, payload: &PutPayload) -> bool {
            let text: Vec<u8> = payload.iter().flat_map(|chunk| chunk.iter().copied()).collect();
            let text = String::from_utf8_lossy(&text);
            let batch = text.contains(&format!("\"appId\":\"{}-", self.group));
            match self.target {
                Target::BatchCommit => batch,
                Target::PropertyCommit => !batch && text.contains("\"metaData\""),
            }
        }
    }

    impl fmt::Display for LostReply {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "LostReply({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for LostReply {
        async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
            let fire = is_commit(location)
                && self.fired.load(Ordering::SeqCst) == 0
                && self.is_target(&payload)
                && (self.let_through.load(Ordering::SeqCst) == 0 || {
                    self.let_through.fetch_sub(1, Ordering::SeqCst);
                    false
                });
            if fire && !self.written {
                self.fired.store(1, Ordering::SeqCst);
                return Err(Error::Generic {
                    store: "LostReply",
                    source: format!("injected: writing {location} failed").into(),
                });
            }
            let result = self.inner.put_opts(location, payload, opts).await?;
            if fire {
                self.fired.store(1, Ordering::SeqCst);
                return Err(Error::Generic {
                    store: "LostReply",
                    source: format!("injected: {location} was written, then the reply was lost").into(),
                });
            }
            Ok(result)
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }
}

/// A Delta commit whose outcome is unknown: the commit file is written but the store
/// reports an error. The processor must reload, find its own txn, and not write the
/// batch again.
#[test]
fn a_commit_that_landed_but_reported_an_error_is_not_written_twice() {
    let seed = seed("lost commit reply");
    let let_through = Rng(seed).below(3) as u32;
    let (_, recovered, fired_after) =
        run_with_a_lost_reply("lostreply", lost_reply::Target::BatchCommit, true, let_through, seed);
    eprintln!("torture lost commit reply: fault after {fired_after} batch commits");
    // The batch whose reply was lost is logged as found in the table, not re-inserted.
    assert_eq!(recovered.len(), 1, "one batch found its own commit after the error: {recovered:?}");
}

/// The same fault on the table-property commit `run` makes at start (the tombstone
/// retention): the processor goes on, and every batch is stored once.
#[test]
fn a_lost_reply_to_the_table_property_commit_stops_nothing() {
    let seed = seed("lost property reply");
    let (_, recovered, _) = run_with_a_lost_reply("lostprops", lost_reply::Target::PropertyCommit, true, 0, seed);
    assert!(recovered.is_empty(), "no batch commit failed, so none was recovered: {recovered:?}");
}

/// A batch commit that failed, nothing written: the batch is tried again, and its rows in
/// Delta carry the ingestion time of the processed records its first attempt sent (which
/// the retry does not send again), so ClickHouse and Delta agree on every row.
#[test]
fn a_retried_batch_keeps_one_ingestion_time() {
    use std::collections::HashSet;

    let seed = seed("failed commit");
    let let_through = Rng(seed).below(3) as u32;
    let (p, _, _) = run_with_a_lost_reply("failedcommit", lost_reply::Target::BatchCommit, false, let_through, seed);
    let sent: BTreeMap<String, i64> = read_all(&p.processed_topic())
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            (v["dedup_key"].as_str().unwrap().to_owned(), v["ingested_at_us"].as_i64().unwrap())
        })
        .collect();
    let keys: HashSet<String> = sent.keys().cloned().collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let table = runtime.block_on(idempipe::table::EventTable::open(p.table())).unwrap();
    let rows = runtime.block_on(table.rows_with_keys(&keys)).unwrap();
    assert_eq!(rows.len(), keys.len());
    let differ: Vec<_> =
        rows.iter().filter(|r| sent[&r.dedup_key] != r.ingested_at_us).map(|r| &r.dedup_key).take(5).collect();
    assert!(differ.is_empty(), "rows whose ingestion time differs between Delta and the processed topic: {differ:?}");
}

/// Runs a processor whose store loses the reply of the first `target` commit after
/// `let_through` others (or, unless `written`, fails that commit without writing it), then
/// loads ClickHouse and checks every store. Returns the pipeline, the batch log's records
/// of batches found already committed, and `let_through`.
fn run_with_a_lost_reply(
    name: &str,
    target: lost_reply::Target,
    written: bool,
    let_through: u32,
    seed: u64,
) -> (Harness, Vec<Value>, u32) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use deltalake::logstore::object_store::local::LocalFileSystem;
    use idempipe::config::{FileConfig, Settings};
    use idempipe::pipeline::Pipeline as Processor;
    use idempipe::shutdown::Shutdown;
    use idempipe::table::EventTable;

    let p = Harness::new(name);
    p.setup();
    let (file, expected) = p.generate(5_000, 500, 25, seed);
    p.produce(&file);

    let mut settings = Settings::resolve(FileConfig::load(&p.config).unwrap(), &Default::default()).unwrap();
    settings.batch.max_events = std::num::NonZeroUsize::new(1_000).unwrap();
    let store = Arc::new(lost_reply::LostReply {
        inner: Arc::new(LocalFileSystem::new()),
        target,
        group: settings.group.clone(),
        let_through: AtomicU32::new(let_through),
        fired: AtomicU32::new(0),
        written,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let table = runtime.block_on(EventTable::open_with_store(&settings.delta_path, store.clone())).unwrap();
    let processor = Processor::start_with_table(settings, table, runtime.handle().clone(), Shutdown::new()).unwrap();
    let summary = processor.run(Some(Duration::from_secs(2))).unwrap();
    eprintln!("torture lost reply ({target:?}): {summary:?}");
    assert_eq!(store.fired.load(Ordering::SeqCst), 1, "the injected fault fired ({target:?}, after {let_through})");

    let recovered: Vec<Value> = p.batch_log().into_iter().filter(|b| b["inserted"].is_null()).collect();
    p.ok(&["sink-clickhouse", "--until-idle", "2s"]);
    check_stores(&p, &[&p], count(&expected, "distinct_keys"), count(&expected, "invalid"));
    (p, recovered, let_through)
}

/// The raw topic's partitions, as `setup` creates them.
const RAW_PARTITIONS: i32 = 4;

/// Orders a generated file so that every copy of an event follows its first right away,
/// each copy on the next partition: two instances holding different partitions then see
/// the same key at the same moment. Invalid lines go anywhere.
fn spread_copies(file: &std::path::Path, rng: &mut Rng) -> Vec<(i32, Vec<u8>)> {
    let bytes = std::fs::read(file).unwrap();
    let mut groups: Vec<Vec<&[u8]>> = Vec::new();
    let mut by_key: std::collections::HashMap<idempipe::event::DedupKey, usize> = Default::default();
    // Lines as `produce` reads them: split at \n, a trailing \r dropped.
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    for line in body.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)) {
        match idempipe::event::parse(Some(line), idempipe::event::DEFAULT_MAX_MESSAGE_BYTES) {
            Ok(e) => match by_key.get(&e.key) {
                Some(&g) => groups[g].push(line),
                None => {
                    by_key.insert(e.key, groups.len());
                    groups.push(vec![line]);
                }
            },
            Err(_) => groups.push(vec![line]),
        }
    }
    let mut records = Vec::new();
    for copies in groups {
        let first = rng.below(RAW_PARTITIONS as u64) as i32;
        for (i, line) in copies.into_iter().enumerate() {
            records.push(((first + i as i32) % RAW_PARTITIONS, line.to_vec()));
        }
    }
    records
}

/// Sends `records` (partition, value) to `topic` at an even pace over `over`, from a
/// thread of its own.
fn send_paced(topic: String, records: Vec<(i32, Vec<u8>)>, over: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", common::brokers())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let started = Instant::now();
        let total = records.len().max(1);
        for (i, (partition, value)) in records.iter().enumerate() {
            let due = over.mul_f64(i as f64 / total as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&topic).partition(*partition).payload(value.as_slice());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, r)) => {
                        assert!(
                            matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)),
                            "{e}"
                        );
                        record = r;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    })
}

/// Waits until `name`'s log contains `needle` at least `n` times; fails if the process
/// exits first.
fn wait_for_log(p: &Harness, run: &mut Background, name: &str, needle: &str, n: usize, limit: Duration) {
    common::wait_until(limit, &format!("{n} × `{needle}` in {name}'s log"), || {
        assert!(run.try_wait().unwrap().is_none(), "{name} exited by itself:\n{}", p.tail(name));
        p.log(name).matches(needle).count() >= n
    });
}

/// SIGTERM, then an exit 0 within the trigger interval plus 10 s.
fn terminate(p: &Harness, run: &mut Background, name: &str) {
    assert!(Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap().success());
    let mut exit = None;
    common::wait_until(Duration::from_secs(15), &format!("{name} to stop"), || {
        exit = run.try_wait().unwrap();
        exit.is_some()
    });
    let exit = exit.unwrap();
    assert!(exit.success(), "{name} did not stop cleanly ({exit}):\n{}", p.tail(name));
}

/// Two processors in one consumer group, fed by a producer that sends an event's copies to
/// different partitions at the same moment (so both instances hold the same key at once),
/// through rebalances: a second instance joins, the first is killed with SIGKILL, and joins
/// again. Delta must hold each key once, and nothing may be lost. Each instance runs in a
/// working directory of its own (config, batch log), as on two machines.
#[test]
fn two_instances_in_one_group_store_each_key_once() {
    let p = Harness::with_options("groups", r#"consumer_mode = "group""#);
    two_instances("two instances", &p, env_u64("TORTURE_GROUP_EVENTS", 10_000));
}

/// Two instances sharing nothing but the table on the tests' S3 server and the broker:
/// their commits race through the store's conditional put.
#[test]
fn two_instances_on_s3_store_each_key_once() {
    let p = Harness::on_s3_with_options("s3groups", r#"consumer_mode = "group""#);
    two_instances("two instances on s3", &p, env_u64("TORTURE_S3_GROUP_EVENTS", 6_000));
}

/// One machine of [`two_instances`]: its working directory and the process running there.
struct Machine {
    dir: Harness,
    /// The name of the current process's log (`<name>.log` in `dir`).
    name: String,
    run: Background,
}

fn two_instances(scenario: &str, p: &Harness, unique: u64) {
    let seed = seed(scenario);
    let mut rng = Rng(seed);
    let produce_for = Duration::from_secs(env_u64("TORTURE_GROUP_SECONDS", 40));
    p.setup();
    let (file, expected) = p.generate(unique, unique / 2, unique / 200, seed);
    let distinct = count(&expected, "distinct_keys");
    let invalid = count(&expected, "invalid");
    let records = spread_copies(&file, &mut rng);
    let run = ["run", "--trigger", "200ms", "--max-batch-events", "1000"];
    let join = Duration::from_secs(120);
    let assigned = "partitions assigned";
    let start = |label: &str, name: &str| {
        let dir = p.instance(label);
        let run = dir.spawn(&run, name);
        Machine { dir, name: name.to_owned(), run }
    };

    let mut a = start("machine-a", "instance-a");
    wait_for_log(&a.dir, &mut a.run, &a.name, assigned, 1, join);
    let producer = send_paced(format!("{}_raw", p.name), records, produce_for);
    wait_for_log(&a.dir, &mut a.run, &a.name, "batch committed", 2, join);
    // Delta is read every 3 s from here until both instances are stopped: each key once
    // at every version seen, through the joins, kills and rejoins (the instances may
    // keep up with the producer, so checks after it alone could see only the end state).
    let stop_checks = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let (stop, table) = (stop_checks.clone(), p.table());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut checks = 0_u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(3));
                let c = runtime
                    .block_on(async { idempipe::table::EventTable::open(&table).await?.counts().await })
                    .unwrap();
                assert_eq!(c.rows, c.distinct_keys, "a key stored twice, at Delta version {}", c.version);
                checks += 1;
            }
            checks
        })
    };

    // B joins: a rebalance splits the partitions between A and B.
    let mut b = start("machine-b", "instance-b");
    wait_for_log(&b.dir, &mut b.run, &b.name, "batch committed", 1, join);
    // Rounds: an instance dies in the middle of a batch (the other takes its partitions
    // after the session timeout), then comes back on its machine and joins again.
    let mut machines = [a, b];
    let mut names: Vec<(usize, String)> = vec![(0, "instance-a".into()), (1, "instance-b".into())];
    for round in 0..env_u64("TORTURE_GROUP_KILLS", 1) {
        let victim = rng.below(2) as usize;
        let phase = PHASES[rng.below(2) as usize];
        let m = &mut machines[victim];
        // At the phase, or wherever it is after 30 s (no batch in flight: it holds no
        // partition, or nothing is left to read).
        let seen = m.dir.log(&m.name).matches(phase).count();
        let landed = kill_at_phase(&m.dir, &mut m.run, &m.name, phase, seen + 1, Duration::from_secs(30));
        eprintln!("torture {scenario}: {} killed after `{landed}`", m.name);
        m.name = format!("instance-{}{}", ["a", "b"][victim], round + 2);
        m.run = m.dir.spawn(&run, &m.name);
        wait_for_log(&m.dir, &mut m.run, &m.name, assigned, 1, join);
        names.push((victim, m.name.clone()));
    }
    producer.join().unwrap();

    // Both run until every key is stored (or the limit passes). The table is read here,
    // in process (`verify` would read every topic back from the broker each time).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let limit = common::RUN_TIMEOUT + Duration::from_millis(10 * unique);
    let mut checks = 0;
    common::wait_until(limit, "every key in Delta", || {
        for m in machines.iter_mut() {
            assert!(m.run.try_wait().unwrap().is_none(), "{} exited:\n{}", m.name, m.dir.tail(&m.name));
        }
        std::thread::sleep(Duration::from_secs(3));
        let c =
            runtime.block_on(async { idempipe::table::EventTable::open(&p.table()).await?.counts().await }).unwrap();
        assert_eq!(c.rows, c.distinct_keys, "a key stored twice, at Delta version {}", c.version);
        checks += 1;
        c.distinct_keys >= distinct
    });
    for m in machines.iter_mut() {
        terminate(&m.dir, &mut m.run, &m.name);
    }
    stop_checks.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = checker.join().expect("the table held a key twice while the instances ran");
    eprintln!("torture {scenario}: Delta held each key once at all {} checks while the instances ran", checks + during);

    // What the instances met: rebalances, conflicts with the other writer.
    let logs: String = names.iter().map(|(m, name)| machines[*m].dir.log(name)).collect();
    let tally = |needle: &str| logs.matches(needle).count();
    eprintln!(
        "torture {scenario}: {} assignments, {} revocations, {} rejoins for orphaned partitions, \
         {} batches dropped by a rebalance, \
         {} commit races lost to the other instance and redone, {} failed attempts retried, {} batches with keys inserted by the other instance first, \
         {} with offsets the other instance had stored",
        tally(assigned),
        tally("partitions revoked"),
        tally("rejoining the group"),
        tally("rebalance: dropping"),
        tally("lost a commit race"),
        tally("batch attempt failed"),
        tally("keys inserted concurrently"),
        tally("offsets already stored by another writer"),
    );
    // The scenario's premise: the instances wrote the same keys at once. A batch that lost
    // the commit race and then found keys already stored lost it to the other instance
    // writing those keys (or the merge itself met them: `keys inserted concurrently`).
    let batches: Vec<Value> = machines.iter().flat_map(|m| m.dir.batch_log()).collect();
    let same_keys_raced =
        batches.iter().filter(|b| count(b, "conflicts") > 0 && count(b, "stored_duplicates") > 0).count();
    eprintln!(
        "torture {scenario}: {} batches committed; {same_keys_raced} lost a commit race over keys the other instance stored",
        batches.len()
    );
    assert!(
        same_keys_raced + tally("keys inserted concurrently") > 0,
        "the instances never wrote the same keys at once: the scenario tested no concurrency"
    );
    // The speed layer (and the dead letters of batches that were left), by a newcomer to
    // the group once the killed members' sessions expired. Delta's offsets, not the
    // group's, say where it starts, so it cannot hide a loss: a skipped message would be
    // missing below.
    p.run_until_idle(&["--clickhouse-in-run"]);
    check_stores(p, &[p, &machines[0].dir, &machines[1].dir], distinct, invalid);
    eprintln!("torture {scenario}: {distinct} distinct keys, {invalid} dead letters: exact");
}
