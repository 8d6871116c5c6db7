//! Events in the Confluent wire format through a real schema registry (Apicurio Registry,
//! Confluent's API): the seed scenario in Avro, Protobuf and JSON Schema; unknown schema
//! ids and undecodable bodies as dead letters; a registry that stops answering under load.

mod common;

use std::time::{Duration, Instant};

use common::{
    Harness, PrivateRegistry, assert_exact, count, free_port, http_get, read_all, registry_options, registry_url,
    wait_until,
};

/// `generate --format`, with the seed's counts of invalid lines too.
fn generate(p: &Harness, name: &str, format: &str, args: &[&str]) -> (std::path::PathBuf, serde_json::Value) {
    let file = p.path(name);
    let mut all = vec!["generate", "--format", format, "--out", file.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let out = p.ok(&all);
    (file, serde_json::from_str(&out).unwrap())
}

/// `produce --format`; returns its summary.
fn produce(p: &Harness, file: &std::path::Path, format: &str, extra: &[&str]) -> serde_json::Value {
    let mut all = vec!["produce", "--input", file.to_str().unwrap(), "--format", format, "--json"];
    all.extend_from_slice(extra);
    serde_json::from_str(&p.ok(&all)).unwrap()
}

/// The seed scenario (10,000 events, 1,000 re-sends, 100 invalid; 10 replays; 15 new) in
/// `format`, with the events' `session_id` and `value` as typed columns: every store
/// exact at each step, ClickHouse matching Delta; the invalid lines are dead letters
/// whether the schema could not hold them (sent as they are) or their decoded event
/// breaks the contract.
fn seed_scenario_in(format: &str) {
    // The generator's other fields as typed columns; the payload keeps what is left.
    let mut options = String::new();
    if format != "json" {
        options = registry_options(&registry_url());
    }
    options.push_str("\npayload = \"rest\"\n[columns]\nsession_id = \"string\"\nvalue = \"long\"\n");
    let p = Harness::with_options(&format!("seed_{}", format.replace('-', "_")), &options);
    p.setup();
    let seed = ["--unique", "10000", "--duplicates", "1000", "--invalid", "100", "--seed", "11"];
    let (file, expected) = generate(&p, "seed.jsonl", format, &seed);
    let sent = produce(&p, &file, format, &[]);
    assert_eq!(count(&sent, "messages"), 11_100, "{sent}");
    assert!(count(&sent, "unencodable") <= 100, "only invalid lines may go unframed: {sent}");
    if format != "json" {
        assert_eq!(sent["subject"], format!("{}-value", p.raw_topic()), "{sent}");
    }
    p.run_until_idle(&["--clickhouse-in-run"]);
    let v = p.verify();
    assert_exact(&v, &expected);
    let mut classes: Vec<String> =
        read_all(&format!("{}_dlq", p.name)).into_iter().map(|d| d.headers["error.class"].clone()).collect();
    classes.sort();
    classes.dedup();
    let framed_only = if format == "json" { "invalid_json" } else { "not_wire_format" };
    for class in [framed_only, "invalid_timestamp"] {
        assert!(classes.iter().any(|c| c == class), "{format}: no {class} among {classes:?}");
    }
    // The typed columns hold the generator's values.
    let sample = common::clickhouse_query(
        &p.clickhouse_url(),
        &format!("SELECT count() FROM {} FINAL WHERE startsWith(session_id, 's') AND value >= 0", p.clickhouse_table()),
    )
    .unwrap();
    assert_eq!(sample.trim(), "10000", "every event's session_id and value in their columns");

    for _ in 0..10 {
        let again = produce(&p, &file, format, &[]);
        assert_eq!(again.get("schema_id"), sent.get("schema_id"), "the same schema, the same id");
    }
    p.run_until_idle(&["--clickhouse-in-run"]);
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (10_000, 10_000), "{v}");
    assert_eq!(count(&v, "processed_records"), 10_000, "a replay sends nothing new: {v}");
    assert_eq!(count(&v, "dlq_records"), 11 * 100, "{v}");
    assert_eq!((count(&v, "clickhouse_final_rows"), v["clickhouse_keys_match"].clone()), (10_000, true.into()), "{v}");

    let (fresh, _) = generate(&p, "fresh.jsonl", format, &["--unique", "15", "--seed", "12", "--days", "1"]);
    produce(&p, &fresh, format, &[]);
    p.run_until_idle(&["--clickhouse-in-run"]);
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (10_015, 10_015), "{v}");
    assert_eq!((count(&v, "clickhouse_final_rows"), v["clickhouse_keys_match"].clone()), (10_015, true.into()), "{v}");
}

#[test]
fn the_seed_scenario_is_exact_in_json_with_typed_columns() {
    seed_scenario_in("json");
}

#[test]
fn the_seed_scenario_is_exact_in_avro() {
    seed_scenario_in("avro");
}

#[test]
fn the_seed_scenario_is_exact_in_protobuf() {
    seed_scenario_in("protobuf");
}

#[test]
fn the_seed_scenario_is_exact_in_json_schema() {
    seed_scenario_in("json-schema");
}

/// A schema id the registry does not know, a body its schema does not decode and a
/// message without the wire format are dead letters of their own classes, naming what
/// is wrong; the events around them flow.
#[test]
fn an_unknown_schema_id_and_undecodable_bodies_are_dead_letters() {
    let p = Harness::with_options("registry_bad", &registry_options(&registry_url()));
    p.setup();
    let (file, _) = generate(&p, "good.jsonl", "avro", &["--unique", "300", "--seed", "5"]);
    let sent = produce(&p, &file, "avro", &["--subject-strategy", "topic-record"]);
    assert_eq!(sent["subject"], format!("{}-idempipe.Event", p.raw_topic()), "{sent}");
    let id = u32::try_from(count(&sent, "schema_id")).unwrap();
    // Framed by hand (no byte of the headers is a newline): an id nobody registered, a
    // union branch past the schema's, and a plain JSON line.
    let unknown = 0x0001_869f_u32;
    let mut bad = Vec::new();
    for (id, body) in [(unknown, &br#"{"user_id":"u1"}"#[..]), (id, &[0x0e, 0x02][..])] {
        bad.push(0);
        bad.extend_from_slice(&id.to_be_bytes());
        bad.extend_from_slice(body);
        bad.push(b'\n');
    }
    bad.extend_from_slice(b"{\"user_id\":\"u1\",\"event_type\":\"click\",\"timestamp\":\"2024-01-01T00:00:00Z\"}\n");
    let raw = p.path("bad.bin");
    std::fs::write(&raw, bad).unwrap();
    p.produce(&raw);
    let (more, _) = generate(&p, "more.jsonl", "avro", &["--unique", "100", "--seed", "6"]);
    produce(&p, &more, "avro", &["--subject-strategy", "topic-record"]);
    p.run_until_idle(&["--clickhouse-in-run"]);

    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (400, 400), "{v}");
    let mut letters: Vec<(String, String)> = read_all(&format!("{}_dlq", p.name))
        .into_iter()
        .map(|d| (d.headers["error.class"].clone(), d.headers["error.message"].clone()))
        .collect();
    letters.sort();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert_eq!(letters[0].0, "not_wire_format", "{letters:?}");
    assert_eq!(letters[1].0, "undecodable", "{letters:?}");
    assert_eq!(letters[2].0, "unknown_schema", "{letters:?}");
    assert!(letters[2].1.contains(&unknown.to_string()), "{letters:?}");
}

/// A registry that stops answering (its process paused: connections hang) while a
/// backlog of events of a schema id not yet fetched waits: nothing is committed while it
/// is away, `/readyz` names it, and once it answers again every event lands once.
#[test]
fn a_registry_that_stops_answering_under_load_holds_the_batch_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let registry = PrivateRegistry::start(dir.path());
    let p = Harness::with_options("registry_outage", &registry_options(&registry.url()));
    p.setup();
    let (first, _) = generate(&p, "first.jsonl", "avro", &["--unique", "2000", "--seed", "21"]);
    produce(&p, &first, "avro", &[]);
    let port = free_port();
    let mut run = p.spawn(&["run", "--metrics-addr", &format!("127.0.0.1:{port}")], "run");
    let delta_keys = || count(&p.verify(), "delta_distinct_keys");
    wait_until(Duration::from_secs(120), "the first events", || delta_keys() == 2_000);

    // Held while a second schema is registered and its events are sent, so that it
    // meets them only once the registry is away.
    let pid = run.id().to_string();
    let signal = |s: &str| assert!(std::process::Command::new("kill").args([s, &pid]).status().unwrap().success());
    signal("-STOP");
    let schema = p.path("event-with-plan.avsc");
    let text = idempipe::registry::encode::AVRO_EVENT
        .replace(r#""fields": ["#, r#""fields": [{"name": "plan", "type": "string", "default": "free"},"#);
    std::fs::write(&schema, text).unwrap();
    let spec = ["--unique", "20000", "--duplicates", "2000", "--invalid", "50", "--seed", "22"];
    let (second, expected) = generate(&p, "second.jsonl", "avro", &spec);
    let sent = produce(&p, &second, "avro", &["--schema", schema.to_str().unwrap()]);
    assert_ne!(sent["schema_id"], serde_json::Value::Null);
    let batches = p.batch_log_lines();
    registry.pause();
    let paused = Instant::now();
    signal("-CONT");

    wait_until(Duration::from_secs(90), "/readyz to name the registry", || {
        http_get(port, "/readyz").is_some_and(|(status, body)| status == 503 && body.contains("schema_registry"))
    });
    // The outage lasts 30 s; all along, no batch is committed.
    while paused.elapsed() < Duration::from_secs(30) {
        assert_eq!(p.batch_log_lines(), batches, "a batch was committed while the registry was away");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(delta_keys(), 2_000);
    assert!(run.try_wait().unwrap().is_none(), "the processor waits, it does not stop");
    registry.resume();

    let total = 2_000 + count(&expected, "distinct_keys");
    wait_until(Duration::from_secs(180), "every event after the outage", || delta_keys() == total);
    wait_until(Duration::from_secs(60), "/readyz ready again", || {
        http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (total, total), "{v}");
    assert_eq!(count(&v, "processed_distinct_keys"), total, "{v}");
    assert_eq!(count(&v, "dlq_records"), count(&expected, "invalid"), "{v}");
    let log = p.log("run");
    assert!(log.contains("the batch waits for the registry"), "{log}");
}

/// A registry that serves HTTPS only, its certificate signed by a private CA: `produce`
/// and `run` reach it with `schema_registry_ca_file`, and without it `produce` fails
/// naming the certificate problem.
#[test]
fn a_registry_over_tls_is_reached_with_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::make_certificates(&dir.path().join("tls"));
    let registry = PrivateRegistry::start_tls(dir.path(), &cert, &key);
    assert!(registry.url().starts_with("https://"));
    let untrusted = Harness::with_options("registry_untrusted", &registry_options(&registry.url()));
    untrusted.setup();
    let (file, _) = generate(&untrusted, "events.jsonl", "avro", &["--unique", "500", "--seed", "31"]);
    let out = untrusted.output(&["produce", "--input", file.to_str().unwrap(), "--format", "avro"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a certificate nobody trusts was accepted");
    assert!(err.contains("certificate") || err.contains("UnknownIssuer"), "{err}");

    let options = format!("{}\nschema_registry_ca_file = \"{}\"", registry_options(&registry.url()), ca.display());
    let p = Harness::with_options("registry_tls", &options);
    p.setup();
    let sent = produce(&p, &file, "avro", &[]);
    assert_eq!(count(&sent, "messages"), 500, "{sent}");
    p.run_until_idle(&[]);
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (500, 500), "{v}");
}
