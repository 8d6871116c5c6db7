//! Operating the pipeline: the metrics endpoint, status, analyze (with its page rendered
//! in a real browser), JSON logs, maintenance while the processor writes, and the
//! configuration report. Against the real broker, ClickHouse and the built binary.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::{Harness, browser, count, free_port, http_get, wait_until};

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format (0.0.4) strictly enough for a test:
/// every non-comment line must be `name{labels} value`, every `# TYPE` a known type.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if words.first() == Some(&"TYPE") {
                assert!(
                    matches!(words.get(2), Some(&("counter" | "gauge" | "histogram" | "summary" | "untyped"))),
                    "bad TYPE line: {line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = inner
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).expect("quoted label value");
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad metric name: {line}");
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    samples
}

/// The value of the sample `name` whose labels include `labels`; panics if absent.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {samples:#?}"))
        .value
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The seed scenario with the processor (and the ClickHouse sink) running as a service:
/// its metrics agree with `verify`, `status` shows it caught up, its JSON log has one
/// line per batch, and `analyze` reports the batches and draws charts a browser renders.
#[test]
fn a_running_pipeline_is_observable_and_its_figures_agree_with_verify() {
    let p = Harness::new("observe");
    p.setup();
    let file = p.path("seed.jsonl");
    let out = p.ok(&[
        "generate",
        "--unique",
        "6000",
        "--duplicates",
        "900",
        "--invalid",
        "60",
        "--seed",
        "21",
        "--out",
        file.to_str().unwrap(),
        "--json",
    ]);
    let expected: serde_json::Value = serde_json::from_str(&out).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Batches of at most 1,000 events: each copy of the file spans several batches back to
    // back, so every chart has lines (not lone points) between the idle gaps.
    let _run = p.spawn(
        &["run", "--clickhouse-in-run", "--metrics-addr", &addr, "--log-format", "json", "--max-batch-events", "1000"],
        "run",
    );
    wait_until(Duration::from_secs(60), "/healthz to answer", || http_get(port, "/healthz").is_some());
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    wait_until(Duration::from_secs(60), "/readyz to say ready", || http_get(port, "/readyz").unwrap().0 == 200);
    assert_eq!(http_get(port, "/nope").unwrap().0, 404);

    // Sent twice, the second time once the first is stored: its events are then all
    // duplicates, stored ones or (repeats within the file) in-batch ones.
    let lines = count(&expected, "lines");
    let scrape = || parse_prometheus(&http_get(port, "/metrics").unwrap().1);
    p.produce(&file);
    wait_until(Duration::from_secs(120), "the first copy processed", || {
        scrape().iter().any(|x| x.name == "idempipe_events_in_total" && x.value == lines as f64)
    });
    p.produce(&file);
    wait_until(Duration::from_secs(120), "both copies processed", || {
        let s = scrape();
        s.iter().any(|x| x.name == "idempipe_events_in_total" && x.value == (2 * lines) as f64)
    });
    let v = p.verify();
    wait_until(Duration::from_secs(60), "ClickHouse loaded", || p.verify()["clickhouse_keys_match"] == true);
    let s = scrape();
    let distinct = count(&expected, "distinct_keys");
    assert_eq!(count(&v, "delta_rows"), distinct, "{v}");
    assert_eq!(value(&s, "idempipe_events_in_total", &[]), count(&v, "raw_records") as f64);
    assert_eq!(value(&s, "idempipe_events_invalid_total", &[]), count(&v, "dlq_records") as f64);
    assert_eq!(count(&v, "dlq_records"), 2 * count(&expected, "invalid"), "{v}");
    assert_eq!(value(&s, "idempipe_events_inserted_total", &[]), count(&v, "delta_rows") as f64);
    assert_eq!(
        value(&s, "idempipe_records_produced_total", &[("topic", "processed")]),
        count(&v, "processed_records") as f64
    );
    assert_eq!(value(&s, "idempipe_records_produced_total", &[("topic", "dlq")]), count(&v, "dlq_messages") as f64);
    let in_batch = value(&s, "idempipe_duplicates_total", &[("kind", "in_batch")]);
    let stored = value(&s, "idempipe_duplicates_total", &[("kind", "stored")]);
    let valid = 2 * count(&expected, "valid_lines");
    assert_eq!(in_batch + stored, (valid - distinct) as f64, "every valid event is inserted or a duplicate");
    assert!(stored >= (valid / 2 - distinct) as f64, "{in_batch} in batch, {stored} stored");
    assert!(in_batch > 0.0, "{in_batch} in batch, {stored} stored");
    assert_eq!(value(&s, "idempipe_delta_version", &[]), count(&v, "delta_version") as f64);
    assert_eq!(value(&s, "idempipe_delta_live_files", &[]), count(&v, "delta_files") as f64);
    // The default key check is the cache: it holds the keys of the files it wrote or
    // read, all of them stored keys, within its budget.
    let cached = value(&s, "idempipe_key_cache_keys", &[]);
    assert!(cached >= 1.0 && cached <= distinct as f64, "{cached} keys cached of {distinct}");
    let bytes = value(&s, "idempipe_key_cache_bytes", &[]);
    // The budget the processor runs with (the default), as `config show` resolves it.
    let shown: serde_json::Value = serde_json::from_str(&p.ok(&["config", "show", "--json"])).unwrap();
    let budget: f64 = shown["key_cache_bytes"]["value"].as_str().and_then(|v| v.parse().ok()).expect("key_cache_bytes");
    assert!(bytes >= 16.0 * cached && bytes <= budget, "{bytes} bytes cached, budget {budget}");
    // jemalloc's count of the heap: it holds at least the cached keys, and its pages in
    // memory hold at least what is allocated.
    let allocated = value(&s, "idempipe_heap_allocated_bytes", &[]);
    let resident = value(&s, "idempipe_heap_resident_bytes", &[]);
    assert!(allocated >= bytes && allocated <= resident, "{allocated} bytes allocated, {resident} resident");
    // Of the allocated bytes, those in the threads' caches: freed, not the program's.
    let thread_cached = value(&s, "idempipe_heap_thread_cached_bytes", &[]);
    assert!(thread_cached < allocated, "{thread_cached} of {allocated} allocated bytes in the threads' caches");
    let batches = value(&s, "idempipe_batches_total", &[]);
    assert_eq!(value(&s, "idempipe_batch_duration_seconds_count", &[]), batches);
    assert_eq!(batches as usize, p.batch_log_lines());
    wait_until(Duration::from_secs(30), "the lag gauges to reach zero", || {
        let s = scrape();
        (0..4).all(|p| {
            s.iter().any(|x| {
                x.name == "idempipe_consumer_lag" && x.labels.get("partition") == Some(&p.to_string()) && x.value == 0.0
            })
        }) && (0..4).all(|p| {
            s.iter().any(|x| {
                x.name == "idempipe_clickhouse_sink_lag"
                    && x.labels.get("partition") == Some(&p.to_string())
                    && x.value == 0.0
            })
        })
    });
    assert_eq!(value(&s, "idempipe_clickhouse_rows_inserted_total", &[]), count(&v, "processed_records") as f64);

    // status: from the stores alone.
    let status: serde_json::Value = serde_json::from_str(&p.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["processor_lag"], 0, "{status}");
    assert_eq!(status["clickhouse_sink_lag"], 0, "{status}");
    assert_eq!(status["delta_version"], v["delta_version"], "{status}");
    let stored_offsets: i64 =
        status["processor"].as_array().unwrap().iter().map(|p| p["stored"].as_i64().unwrap() + 1).sum();
    assert_eq!(stored_offsets as u64, 2 * lines, "Delta records every offset: {status}");
    let ends: i64 = status["processor"].as_array().unwrap().iter().map(|p| p["end"].as_i64().unwrap()).sum();
    assert_eq!(ends as u64, 2 * lines, "{status}");
    let table = p.ok(&["status"]);
    assert!(table.contains("processor on") && table.contains("lag 0"), "{table}");

    // Compaction of both stores, on the server in use (OPTIMIZE … FINAL on 18.16 here;
    // tests/speed_layer.rs checks the statement on a current server).
    let compacted: serde_json::Value = serde_json::from_str(&p.ok(&["compact", "--clickhouse", "--json"])).unwrap();
    assert_eq!(compacted["clickhouse_optimized"], true, "{compacted}");
    assert!(count(&compacted, "live_files_after") <= count(&compacted, "live_files_before"), "{compacted}");
    let after = p.verify();
    assert_eq!(count(&after, "delta_rows"), distinct, "{after}");
    assert_eq!(after["clickhouse_keys_match"], true, "{after}");
    assert_eq!(count(&after, "clickhouse_rows"), count(&after, "clickhouse_final_rows"), "merged: {after}");

    // One JSON log line per batch, with its counts.
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    let batch_lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l| l["message"] == "batch committed")
        .collect();
    assert_eq!(batch_lines.len(), p.batch_log_lines(), "one line per batch");
    let logged_in: u64 = batch_lines.iter().map(|l| count(l, "events_in")).sum();
    assert_eq!(logged_in, 2 * lines);

    // analyze: the table, the JSON and the page.
    let text = p.ok(&["analyze"]);
    assert!(text.contains("batch duration ms") && text.contains("skewness") && text.contains("idle gaps"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count(),
        p.batch_log_lines(),
        "{text}"
    );
    let report: serde_json::Value = serde_json::from_str(&p.ok(&["analyze", "--json"])).unwrap();
    assert_eq!(report["batches"].as_array().unwrap().len(), p.batch_log_lines());
    let summary = &report["summary"];
    let total = |field: &str| -> u64 {
        report["batches"].as_array().unwrap().iter().map(|b| b[field].as_u64().unwrap_or(0)).sum()
    };
    assert_eq!(total("events_in"), 2 * lines, "{summary}");
    assert_eq!(total("inserted"), distinct, "{summary}");
    let html = artifacts().join("analyze-report.html");
    let _ = std::fs::remove_file(&html);
    p.ok(&["analyze", "--html", html.to_str().unwrap()]);
    let page = std::fs::read_to_string(&html).unwrap();
    for id in ["throughput", "duplicates", "partitions", "batch-size", "phases"] {
        assert!(page.contains(&format!("id=\"{id}\"")), "chart {id} missing");
    }
    match browser::chromium() {
        None => panic!("chromium is not installed (scripts/test.sh installs it)"),
        Some(_) => {
            let png = artifacts().join("analyze-report.png");
            let rendered = browser::render(&html, &png).unwrap();
            assert_eq!((rendered.png_width, rendered.png_height), (1280, 2400));
            assert_eq!(rendered.render_check.len(), 5, "{:?}", rendered.render_check);
            for (id, polylines, width) in &rendered.render_check {
                assert!(*polylines > 0 && *width > 100.0, "chart {id} did not lay out: {polylines} lines, {width} px");
            }
        }
    }
}

/// Compaction, checkpoints and vacuum while the processor writes, from inside `run`
/// (on a schedule) and from outside (the `compact` command): exactly once holds, the
/// live files shrink and checkpoints appear.
#[test]
fn maintenance_while_the_processor_writes_keeps_exactly_once() {
    maintenance_while_writing(&Harness::new("maintain"), None);
}

/// The same on the tests' S3 server, for long enough that vacuum deletes files (those
/// compaction removed over a minute before) while batches commit; the Python `deltalake`
/// then reads every row, so no file the table still uses was deleted.
#[test]
fn maintenance_on_s3_while_the_processor_writes_keeps_exactly_once() {
    maintenance_while_writing(&Harness::on_s3_with_options("s3maintain", ""), Some(Duration::from_secs(60)));
}

/// Generates 4,000 events and trickles them to `run` on a maintenance schedule while the
/// `compact` command runs from outside. With `vacuum_retention`, `run` vacuums with it
/// and goes on (a second trickle) until a vacuum has deleted files.
fn maintenance_while_writing(p: &Harness, vacuum_retention: Option<Duration>) {
    p.setup();
    let (file, expected) = p.generate(4000, 400, 20, 31);
    let (second, expected_second) = p.generate_as("more.jsonl", 1500, 0, 0, 32);
    let retention = vacuum_retention.map(|r| format!("{}s", r.as_secs()));
    let mut args =
        vec!["run", "--trigger", "200ms", "--compact-every", "3s", "--checkpoint-every", "5", "--vacuum-every", "4s"];
    if let Some(retention) = &retention {
        args.extend(["--vacuum-retention", retention]);
    }
    let mut run = p.spawn(&args, "run");
    // A trickle, so that many small commits land while compactions run.
    let mut producer = p.spawn(&["produce", "--input", file.to_str().unwrap(), "--rate", "300"], "produce");
    // The processor's own compaction first (it runs every 3 s while files pile up): an
    // outside compaction every 2 s from the start could take every file before it, on a
    // busy machine.
    let compacted = || std::fs::read_to_string(p.path("run.log")).unwrap().contains("compacted the Delta table");
    wait_until(Duration::from_secs(120), "the processor's own compaction", || {
        assert!(run.try_wait().unwrap().is_none(), "run exited:\n{}", p.tail("run"));
        compacted()
    });
    let mut outside = 0;
    let mut compact_outside = |producer: &mut common::Background| {
        // While the trickle lasts, and until one has succeeded.
        while outside == 0 || producer.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_secs(2));
            let out = p.output(&["compact", "--json"]);
            if out.status.success() {
                outside += 1;
            } else {
                // Losing a race to the processor's own compaction is allowed; anything else is not.
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("onflict") || err.contains("ransaction"), "compact failed: {err}");
            }
        }
        assert!(producer.wait().unwrap().success(), "{}", p.tail("produce"));
    };
    compact_outside(&mut producer);
    let mut distinct = count(&expected, "distinct_keys");
    let vacuumed = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("vacuumed the Delta table"))
            .filter_map(|l| l.split("files_deleted=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    if vacuum_retention.is_some() {
        // Batches go on committing (a slower trickle) until a vacuum has deleted files
        // that compactions removed more than the retention before.
        let deleted = || vacuumed(&std::fs::read_to_string(p.path("run.log")).unwrap());
        let mut more = p.spawn(&["produce", "--input", second.to_str().unwrap(), "--rate", "20"], "produce-more");
        wait_until(Duration::from_secs(180), "a vacuum that deletes files", || {
            assert!(run.try_wait().unwrap().is_none(), "run exited:\n{}", p.tail("run"));
            deleted() > 0
        });
        compact_outside(&mut more);
        distinct += count(&expected_second, "distinct_keys");
    }
    wait_until(Duration::from_secs(120), "every event stored", || count(&p.verify(), "delta_rows") >= distinct);
    std::thread::sleep(Duration::from_secs(4));
    let v = p.verify();
    assert_eq!(count(&v, "delta_rows"), distinct, "{v}");
    assert_eq!(count(&v, "delta_distinct_keys"), distinct, "{v}");
    assert_eq!(count(&v, "dlq_records"), count(&expected, "invalid"), "{v}");
    assert!(outside > 0, "the compact command never ran");
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(log.contains("compacted the Delta table"), "run never compacted:\n{}", p.tail("run"));
    assert!(p.log_files().iter().any(|f| f.contains(".checkpoint.")), "no checkpoint written");
    let batches = p.batch_log_lines();
    let files = count(&v, "delta_files");
    assert!((files as usize) < batches, "{files} live files after {batches} batches: compaction did not keep up");
    if vacuum_retention.is_some() {
        eprintln!("maintenance on s3: vacuum deleted {} files beside {batches} batch commits", vacuumed(&log));
        // Every file the table uses is still there: an independent reader reads each row.
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check_delta.py");
        let table = p.table().to_string();
        let out = std::process::Command::new(common::python())
            .arg(script)
            .arg(&table)
            .envs(common::s3_env())
            .output()
            .unwrap();
        assert!(out.status.success(), "Python deltalake read failed: {}", String::from_utf8_lossy(&out.stderr));
        let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((count(&py, "rows"), count(&py, "distinct_keys")), (distinct, distinct), "{py}");
    }
    // A dry-run vacuum lists what a real one would delete, and deletes nothing.
    let dry: serde_json::Value =
        serde_json::from_str(&p.ok(&["vacuum", "--retention", "1m", "--dry-run", "--json"])).unwrap();
    assert_eq!(dry["dry_run"], true);
    let err = String::from_utf8_lossy(&p.output(&["vacuum", "--full", "--retention", "10m"]).stderr).into_owned();
    assert!(err.contains("`--retention`"), "{err}");
    assert_eq!(count(&p.verify(), "delta_rows"), distinct);
}

/// `config show` says where each value came from and never prints a secret; a bad
/// value, including a librdkafka one, fails naming its key.
#[test]
fn config_show_reports_origins_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "group = \"from-file\"\ntrigger = \"2s\"\n[kafka]\n\"sasl.password\" = \"hunter2\"\n\"client.id\" = \"ops\"\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_idempipe");
    let out = std::process::Command::new(bin)
        .args(["--config", config.to_str().unwrap(), "--trigger", "3s", "config", "show", "--json"])
        .env("IDEMPIPE_CLICKHOUSE_PASSWORD", "s3cret")
        .env("IDEMPIPE_RAW_TOPIC", "from_env")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("hunter2") && !text.contains("s3cret"), "a secret leaked: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let is = |key: &str, value: &str, origin: &str| {
        assert_eq!(v[key]["value"], value, "{key}: {}", v[key]);
        assert_eq!(v[key]["origin"], origin, "{key}: {}", v[key]);
    };
    is("group", "from-file", "file");
    is("trigger", "3s", "flag");
    is("raw_topic", "from_env", "env");
    is("brokers", "127.0.0.1:9092", "default");
    is("clickhouse_password", "<redacted>", "env");
    is("kafka.sasl.password", "<redacted>", "file");
    is("kafka.client.id", "ops", "file");
    is("clickhouse_group", "from-file-clickhouse", "default");

    for (args, key) in [
        (vec!["--kafka", "no.such.setting=1"], "kafka.no.such.setting"),
        (vec!["--kafka", "linger.ms=soon"], "kafka.linger.ms"),
        (vec!["--metrics-addr", "localhost"], "metrics_addr"),
        (vec!["--compact-every", "often"], "compact_every"),
        (vec!["--checkpoint-every", "0"], "checkpoint_every"),
        (vec!["--vacuum-retention", "1s"], "vacuum_retention"),
    ] {
        let out = std::process::Command::new(bin)
            .args(["--config", config.to_str().unwrap()])
            .args(&args)
            .args(["config", "show"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(&format!("`{key}`")), "{args:?}: {err}");
    }
}

/// Secrets in every place a user puts them (a password in `clickhouse_url`, Kafka's SASL
/// password and OAuth configuration, an object store's secret key) appear in no output
/// of any command, errors included: `config show`, `setup` and `run` failing on the
/// password ClickHouse refuses, `status`, `verify`, with debug logs on.
#[test]
fn no_secret_appears_in_any_output() {
    let secrets = ["url-secret-7f3", "sasl-secret-9b2", "oauth-secret-8a1", "aws-secret-0c3"];
    let p = Harness::with_options("secrets", "clickhouse_url = \"http://default:url-secret-7f3@127.0.0.1:8123\"")
        .with_kafka_settings(&[
            ("sasl.password".into(), "sasl-secret-9b2".into()),
            ("sasl.oauthbearer.config".into(), "clientId=idempipe clientSecret=oauth-secret-8a1".into()),
        ]);
    let (file, _) = p.generate(200, 20, 5, 4601);
    let mut outputs = String::new();
    let storage = ["--storage", "aws_secret_access_key=aws-secret-0c3"];
    let commands: [&[&str]; 8] = [
        &["config", "show"],
        &["config", "show", "--json"],
        &["setup"],
        &["produce", "--input", file.to_str().unwrap()],
        &["run", "--until-idle", "2s", "--clickhouse-in-run"],
        &["status"],
        &["verify"],
        &["sink-clickhouse", "--until-idle", "1s"],
    ];
    for args in commands {
        let out = p.command(&[&storage[..], args].concat()).env("IDEMPIPE_LOG", "debug").output().unwrap();
        outputs += &format!(
            "$ {args:?} ({})\n{}{}\n",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // ClickHouse refused the password (code 193), so the error paths ran.
    assert!(outputs.contains("193"), "{outputs}");
    for secret in secrets {
        assert!(!outputs.contains(secret), "{secret} appears in:\n{outputs}");
    }
}

/// A client that trickles its request is cut off within the endpoint's request time, and
/// clients beyond the endpoint's connection limit get 503 at once, so slow or stuck
/// clients cannot hold the endpoint (or the process's descriptors) for good.
#[test]
fn the_metrics_endpoint_bounds_slow_clients() {
    use std::io::{Read, Write};
    let p = Harness::new("slow_clients");
    p.setup();
    let port = free_port();
    let _run = p.spawn(&["run", "--metrics-addr", &format!("127.0.0.1:{port}")], "run");
    wait_until(Duration::from_secs(60), "/healthz to answer", || http_get(port, "/healthz").is_some());

    // One byte every 200 ms of a request head that never ends: the server closes it.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").unwrap();
    let started = std::time::Instant::now();
    let closed = loop {
        assert!(started.elapsed() < Duration::from_secs(120), "the trickling client is never cut off");
        if slow.write_all(b"a").is_err() {
            break true;
        }
        let mut byte = [0_u8; 256];
        match slow.read(&mut byte) {
            Ok(_) => break true,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    assert!(closed);

    // Connections that hold every slot: the next client hears 503 "busy" at once. (Held
    // connections are cut off after the request time; if the machine was too slow to
    // open them all within it, try again.)
    let busy = (0..5).any(|_| {
        let held: Vec<std::net::TcpStream> =
            (0..40).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        let answer = http_get(port, "/healthz");
        drop(held);
        answer.is_some_and(|(status, body)| status == 503 && body == "busy\n")
    });
    assert!(busy, "more clients than the limit are turned away");
    wait_until(Duration::from_secs(60), "/healthz to answer again", || {
        http_get(port, "/healthz").is_some_and(|(status, _)| status == 200)
    });
}

/// The example configuration as a new user starts from it: `setup`, `run` and
/// `sink-clickhouse` start with it and load a generated file exactly. Only what a test
/// must own (names, paths, the broker, the metrics port) and the trigger are set, through
/// the environment. Its `[kafka]` settings once made every consumer refuse to start.
#[test]
fn the_example_configuration_starts_run_and_the_clickhouse_sink() {
    let p = Harness::new("example");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("idempipe.example.toml");
    let env = [
        ("IDEMPIPE_BROKERS", common::brokers()),
        ("IDEMPIPE_CLICKHOUSE_KAFKA_BROKERS", common::brokers()),
        ("IDEMPIPE_RAW_TOPIC", p.raw_topic()),
        ("IDEMPIPE_PROCESSED_TOPIC", p.processed_topic()),
        ("IDEMPIPE_DLQ_TOPIC", format!("{}_dlq", p.name)),
        ("IDEMPIPE_GROUP", p.name.clone()),
        ("IDEMPIPE_CLICKHOUSE_GROUP", format!("{}-clickhouse", p.name)),
        ("IDEMPIPE_DELTA_PATH", p.delta_path().display().to_string()),
        ("IDEMPIPE_CLICKHOUSE_TABLE", p.name.clone()),
        ("IDEMPIPE_METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("IDEMPIPE_TRIGGER", "1s".to_owned()),
    ];
    let idempipe = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_idempipe"))
            .arg("--config")
            .arg(&example)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "idempipe --config idempipe.example.toml {args:?} failed:\n{stderr}");
    };
    idempipe(&["setup"]);
    let (file, expected) = p.generate(400, 40, 4, 2_929);
    p.produce(&file);
    idempipe(&["run", "--until-idle", "2s"]);
    idempipe(&["sink-clickhouse", "--until-idle", "2s"]);
    common::assert_exact(&p.verify(), &expected);
}
