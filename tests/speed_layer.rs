//! The ClickHouse speed layer against the real ClickHouse server and Kafka cluster: outages,
//! a dropped table, and the DDL current ClickHouse must accept.

mod common;

use std::time::Duration;

use common::{Harness, PrivateClickHouse, clickhouse_query, count, make_certificates, wait_until};
use idempipe::clickhouse::{self, ServerVersion, schema};

#[test]
fn the_sink_survives_a_clickhouse_outage_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = PrivateClickHouse::start(dir.path().join("clickhouse"));
    let p = Harness::with_options("outage", &format!("clickhouse_url = \"{}\"", clickhouse.url()));
    p.setup();
    let file = p.generate(6_000, 0, 0, 31).0;

    let mut run = p.spawn(&["run", "--clickhouse-in-run"], "run");
    // Events flow for about 60 s while ClickHouse goes away for 30 of them.
    let mut producer = p.spawn(&["produce", "--input", file.to_str().unwrap(), "--rate", "100"], "produce");
    let rows = || clickhouse_query(&clickhouse.url(), &format!("SELECT count() FROM {}", p.clickhouse_table()));
    wait_until(Duration::from_secs(120), "the first rows in ClickHouse", || {
        rows().is_ok_and(|n| n.trim().parse::<u64>().unwrap_or(0) > 0)
    });
    clickhouse.down();
    let down_at = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    assert!(rows().is_err(), "ClickHouse should be down");
    assert!(producer.try_wait().unwrap().is_none(), "events should still be flowing after {:?}", down_at.elapsed());
    clickhouse.up();

    assert!(producer.wait().unwrap().success(), "{}", p.tail("produce"));
    wait_until(Duration::from_secs(180), "ClickHouse to converge on Delta", || {
        let v = p.verify();
        v["delta_rows"].as_u64() == Some(6_000) && v["clickhouse_keys_match"] == true
    });
    assert!(run.try_wait().unwrap().is_none(), "the processor and sink kept running: {}", p.tail("run"));
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(
        log.contains("ClickHouse insert failed; retrying"),
        "the outage was noticed and retried:\n{}",
        p.tail("run")
    );
    run.kill().unwrap();
    run.wait().unwrap();

    let v = p.verify();
    assert_eq!(count(&v, "clickhouse_final_rows"), 6_000, "{v}");
    assert_eq!(count(&v, "clickhouse_missing_keys"), 0, "{v}");
}

#[test]
fn a_dropped_table_is_rebuilt_by_setup_and_reconcile() {
    let p = Harness::new("reconcile");
    p.setup();
    let file = p.generate(3_000, 0, 0, 41).0;
    p.produce(&file);
    p.run_until_idle(&["--clickhouse-in-run"]);
    let v = p.verify();
    assert_eq!(v["clickhouse_keys_match"], true, "{v}");

    clickhouse_query(&p.clickhouse_url(), &format!("DROP TABLE {}", p.clickhouse_table())).unwrap();
    let v = p.verify();
    assert!(v["clickhouse_keys_match"].is_null(), "no table, no comparison: {v}");

    p.setup();
    let v = p.verify();
    assert_eq!(v["clickhouse_keys_match"], false, "{v}");
    assert_eq!(count(&v, "clickhouse_missing_keys"), 3_000, "{v}");

    let summary: serde_json::Value = serde_json::from_str(&p.ok(&["reconcile", "--json"])).unwrap();
    assert_eq!(count(&summary, "missing"), 3_000, "{summary}");
    assert_eq!(count(&summary, "inserted"), 3_000, "{summary}");
    let v = p.verify();
    assert_eq!(v["clickhouse_keys_match"], true, "{v}");
    assert_eq!(count(&v, "clickhouse_final_rows"), 3_000, "{v}");

    // A second reconcile finds nothing to do.
    let again: serde_json::Value = serde_json::from_str(&p.ok(&["reconcile", "--json"])).unwrap();
    assert_eq!(count(&again, "missing"), 0, "{again}");
}

#[test]
fn setup_twice_leaves_the_clickhouse_table_alone() {
    let p = Harness::new("chsetup");
    let first = p.ok(&["setup"]);
    assert!(first.contains(&format!("clickhouse table {}: created", p.clickhouse_table())), "{first}");
    clickhouse_query(
        &p.clickhouse_url(),
        &format!(
            "INSERT INTO {} (dedup_key, version) VALUES ('00000000000000000000000000000001', 1)",
            p.clickhouse_table()
        ),
    )
    .unwrap();
    let second = p.ok(&["setup"]);
    assert!(second.contains(&format!("clickhouse table {}: exists", p.clickhouse_table())), "{second}");
    let rows = clickhouse_query(&p.clickhouse_url(), &format!("SELECT count() FROM {}", p.clickhouse_table())).unwrap();
    assert_eq!(rows.trim(), "1");
}

#[test]
fn a_foreign_table_is_refused_naming_the_column() {
    let p = Harness::new("foreign");
    clickhouse_query(&p.clickhouse_url(), "CREATE DATABASE IF NOT EXISTS idempipe").unwrap();
    clickhouse_query(
        &p.clickhouse_url(),
        &format!(
            "CREATE TABLE {} (dedup_key String, event_time DateTime, event_time_us Int64, event_date Date, \
             version UInt32) ENGINE = ReplacingMergeTree(version) ORDER BY dedup_key",
            p.clickhouse_table()
        ),
    )
    .unwrap();
    let out = p.output(&["setup"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an idempipe events table") && err.contains("user_id"), "{err}");
}

#[test]
fn the_sink_dead_letters_records_that_are_not_ours() {
    let p = Harness::new("foreignrecord");
    p.setup();
    let file = p.path("garbage.jsonl");
    std::fs::write(&file, "not a processed record\n{\"dedup_key\":1}\n").unwrap();
    // Written straight to the processed topic, as a stranger would.
    let processed = format!("{}_processed", p.name);
    let elsewhere = format!("{}_elsewhere", p.name);
    p.ok(&["--raw-topic", &processed, "--processed-topic", &elsewhere, "produce", "--input", file.to_str().unwrap()]);
    let out = p.ok(&["sink-clickhouse", "--until-idle", "2s"]);
    assert!(out.contains("2 unreadable"), "{out}");
    let v = p.verify();
    assert_eq!(count(&v, "dlq_records"), 2, "{v}");
    assert_eq!(count(&v, "clickhouse_rows"), 0, "{v}");
}

/// The current ClickHouse the DDL is made for (the release chdb embeds).
fn current() -> ServerVersion {
    ServerVersion::parse("26.9.2.1").unwrap()
}

/// Runs chdb's check `mode` on the table `idempipe.<table>`, made for `schema` by the DDL
/// sent to current servers, with the check's own entries in `spec`.
fn chdb(mode: &str, table: &str, schema: &idempipe::event::EventSchema, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    let entries = spec.as_object_mut().unwrap();
    entries.insert("database".into(), "idempipe".into());
    entries.insert("table".into(), table.into());
    entries.insert("database_ddl".into(), schema::create_database("idempipe").into());
    entries.insert("table_ddl".into(), schema::create_events(&current(), "idempipe", table, schema).into());
    common::chdb(&[mode], Some(&spec))
}

/// The DDL and queries we send to current ClickHouse servers, run on the embedded current
/// ClickHouse (chdb): the table (twice), FINAL, the checksum query and the deduplication
/// token. (Rows go in through SQL here; the sink's RowBinary of the current layout is
/// `current_clickhouse_reads_the_sinks_rowbinary_of_declared_columns`'s.)
#[test]
fn current_clickhouse_accepts_our_ddl_and_queries() {
    let seen = chdb(
        "ddl",
        "events",
        &idempipe::event::EventSchema::default(),
        serde_json::json!({
            "count_final": schema::key_summary("idempipe", "events", true),
            "optimize_final": schema::optimize_final("idempipe", "events"),
        }),
    );
    // Four inserts: two copies of one key, one other key, and a retry of the last insert
    // with its token, which the server drops.
    assert_eq!(seen["raw_rows"], 3, "{seen}");
    assert_eq!(seen["raw_rows_after_optimize_final"], 2, "`compact --clickhouse` folds the copies: {seen}");
    assert_eq!(seen["final_rows"], 2, "{seen}");
    assert_eq!(seen["checksum_matches"], true, "{seen}");
    assert_eq!(seen["final_keeps_highest_version"], true, "{seen}");
    assert_eq!(seen["event_time_micros_exact"], true, "{seen}");
}

/// Schema evolution on current ClickHouse (chdb): a table made for the default schema
/// takes the `ALTER TABLE … ADD COLUMN` the sink sends for columns evolution added, then
/// the sink's RowBinary rows of the grown schema, values and nulls in the new columns.
#[test]
fn current_clickhouse_takes_the_columns_evolution_adds_and_rows_in_them() {
    use idempipe::event::{ColumnSpec, ColumnType, EventSchema, FieldPath, Identity, PayloadMode};
    let added = |name: &str, kind: ColumnType| ColumnSpec {
        name: name.into(),
        field: FieldPath::parse(name).unwrap(),
        kind,
        required: false,
    };
    let grown = EventSchema::new(
        Identity::default(),
        vec![added("coupon", ColumnType::String), added("qty", ColumnType::Long), added("price", ColumnType::Double)],
        PayloadMode::Message,
    )
    .unwrap();
    let layout = clickhouse::Layout::Current;
    let alter: Vec<String> = schema::columns(layout, &grown)
        .into_iter()
        .filter(|(name, _)| ["coupon", "qty", "price"].contains(&name.as_str()))
        .map(|(name, kind)| schema::add_column("idempipe", "evolved", &name, &kind))
        .collect();
    assert_eq!(alter.len(), 3);
    let row = |key: &str, values: serde_json::Value| idempipe::table::StoredRow {
        dedup_key: key.into(),
        parts: vec!["u1".into(), "click".into()],
        values: values.as_array().unwrap().clone(),
        event_time_us: 1_704_067_200_000_000,
        payload: "{}".into(),
        source_partition: 0,
        source_offset: 1,
        batch_id: 2,
        ingested_at_us: 1_704_067_201_000_000,
        unknown: Vec::new(),
    };
    let rows = [row("a", serde_json::json!(["c1", 3, 2.25])), row("b", serde_json::json!([null, null, null]))];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.bin");
    std::fs::write(&file, clickhouse::encode_rows(layout, &grown, &rows)).unwrap();
    let seen = chdb(
        "rowbinary",
        "evolved",
        &EventSchema::default(),
        serde_json::json!({
            "alter_ddl": alter,
            "columns": schema::columns(layout, &grown),
            "file": file,
        }),
    );
    let (a, b) = (&seen["rows"][0], &seen["rows"][1]);
    assert_eq!(
        (&a["coupon"], &a["qty"], &a["price"]),
        (&serde_json::json!("c1"), &serde_json::json!(3), &serde_json::json!(2.25)),
        "{seen}"
    );
    assert_eq!(
        (&b["coupon"], &b["qty"], &b["price"]),
        (&serde_json::Value::Null, &serde_json::Value::Null, &serde_json::Value::Null),
        "{seen}"
    );
    assert_eq!(a["user_id"], serde_json::json!("u1"), "{seen}");
}

/// The sink's RowBinary, current layout, on current ClickHouse (chdb): a table of declared
/// columns of every type (a key field declared `long`) takes two encoded rows (one with
/// every value, one with nulls and empty nested values) and gives the values back.
#[test]
fn current_clickhouse_reads_the_sinks_rowbinary_of_declared_columns() {
    use idempipe::event::{ColumnSpec, ColumnType, EventSchema, FieldPath, Identity, PayloadMode, TimeFormat};
    let spec = |name: &str, kind: &str| ColumnSpec {
        name: name.into(),
        field: FieldPath::parse(name).unwrap(),
        kind: ColumnType::parse(kind).unwrap(),
        required: false,
    };
    let identity = Identity::new(&["order_id", "line"], "ts", TimeFormat::EpochMillis).unwrap();
    let schema = EventSchema::new(
        identity,
        vec![
            spec("line", "long"),
            spec("amount", "decimal(12,2)"),
            spec("big", "decimal(30,3)"),
            spec("paid", "boolean"),
            spec("placed", "date"),
            spec("at", "timestamp"),
            spec("score", "double"),
            spec("tags", "list<string>"),
            spec("ship", "struct<city:string,n:int>"),
            spec("attrs", "map<string,long>"),
        ],
        PayloadMode::Message,
    )
    .unwrap();
    let row = |key: &str, values: serde_json::Value| idempipe::table::StoredRow {
        dedup_key: key.into(),
        parts: vec![format!("o-{key}"), "7".into()],
        values: values.as_array().unwrap().clone(),
        event_time_us: 1_704_067_200_123_456,
        payload: "{}".into(),
        source_partition: 1,
        source_offset: 2,
        batch_id: 3,
        ingested_at_us: 1_704_067_201_000_000,
        unknown: Vec::new(),
    };
    let rows = [
        row(
            "a",
            serde_json::json!([
                "-12.30",
                "123456789012345678901234567.891",
                true,
                "2024-02-29",
                "2024-01-01T00:00:00.000001Z",
                0.5,
                ["x", null],
                {"city": "c", "n": 5},
                {"k": 1}
            ]),
        ),
        row("b", serde_json::json!([null, null, null, null, null, null, null, null, null])),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.bin");
    std::fs::write(&file, clickhouse::encode_rows(clickhouse::Layout::Current, &schema, &rows)).unwrap();
    let columns = schema::columns(clickhouse::Layout::Current, &schema);
    let seen = chdb(
        "rowbinary",
        "typed",
        &schema,
        serde_json::json!({
            "columns": columns,
            "file": file,
        }),
    );
    let a = &seen["rows"][0];
    assert_eq!((&a["order_id"], &a["line"]), (&serde_json::json!("o-a"), &serde_json::json!(7)), "{seen}");
    // Current servers print a decimal without trailing zeros.
    assert_eq!(a["amount"], serde_json::json!("-12.3"), "{seen}");
    assert_eq!(a["big"], serde_json::json!("123456789012345678901234567.891"), "{seen}");
    assert_eq!(a["ship"], serde_json::json!(["c", 5]), "{seen}");
    assert_eq!((&a["paid"], &a["placed"]), (&serde_json::json!(1), &serde_json::json!("2024-02-29")), "{seen}");
    assert_eq!(a["at"], serde_json::json!("2024-01-01 00:00:00.000001"), "{seen}");
    assert_eq!(a["tags"], serde_json::json!(["x", null]), "{seen}");
    assert_eq!(a["attrs"], serde_json::json!("{\"k\":1}"), "{seen}");
    assert_eq!(a["event_time"], serde_json::json!("2024-01-01 00:00:00.123456"), "{seen}");
    assert_eq!(a["source_offset"], serde_json::json!(2), "{seen}");
    let b = &seen["rows"][1];
    assert_eq!(
        (&b["amount"], &b["tags"], &b["attrs"]),
        (&serde_json::Value::Null, &serde_json::json!([]), &serde_json::Value::Null),
        "{seen}"
    );
}

/// The Kafka-engine route: `setup --clickhouse-ingest kafka-engine` creates the Kafka
/// table and view on the 18.16 server; current ClickHouse (chdb) with the same DDL
/// consumes the processed topic from the tests' broker and ends up with exactly Delta's
/// keys. (The 18.16 server's own Kafka engine is not run here: ARCHITECTURE.md, "The
/// speed layer".)
#[test]
fn the_kafka_engine_route_loads_exactly_the_delta_keys() {
    let p = Harness::with_options("kafkaengine", "clickhouse_ingest = \"kafka-engine\"");
    let out = p.ok(&["setup"]);
    assert!(out.contains("clickhouse kafka engine:"), "{out}");
    let tables = clickhouse_query(
        &p.clickhouse_url(),
        &format!(
            "SELECT name FROM system.tables WHERE database = 'idempipe' AND name LIKE '{}%' ORDER BY name",
            p.name
        ),
    )
    .unwrap();
    assert!(tables.contains(&format!("{}_kafka_queue", p.name)), "{tables}");
    assert!(tables.contains(&format!("{}_kafka_mv", p.name)), "{tables}");
    // Stop 18.16 from retrying a broker it cannot talk to, for the rest of the run.
    for object in ["kafka_mv", "kafka_queue"] {
        clickhouse_query(&p.clickhouse_url(), &format!("DROP TABLE `idempipe`.`{}_{object}`", p.name)).unwrap();
    }

    let file = p.generate(2_000, 0, 0, 51).0;
    p.produce(&file);
    p.produce(&file); // a replay: nothing new reaches the processed topic
    p.run_until_idle(&[]);
    let v = p.verify();
    assert_eq!(count(&v, "delta_rows"), 2_000, "{v}");

    let group = format!("{}-chdb", p.name);
    let seen = chdb(
        "kafka-engine",
        "events",
        &idempipe::event::EventSchema::default(),
        serde_json::json!({
            "kafka_engine": schema::create_kafka_engine(
                &current(), "idempipe", "events", &default_key(), &common::brokers(), &format!("{}_processed", p.name), &group),
            "expected_rows": 2_000,
            "timeout_s": 120,
        }),
    );
    assert_eq!(seen["final_rows"], 2_000, "{seen}");
    assert_eq!(seen["key_checksum"], v["delta_key_checksum"], "{seen} vs {v}");
}

/// ClickHouse over `https://` with a private CA: trusted through `clickhouse_ca_file`,
/// refused without it (the certificate is verified, never skipped).
#[test]
fn clickhouse_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(&dir.path().join("tls"));
    let clickhouse = PrivateClickHouse::start_tls(dir.path().join("clickhouse"), cert, key);
    let https = clickhouse.https_url().unwrap();

    let untrusted = Harness::with_options("https_untrusted", &format!("clickhouse_url = \"{https}\""));
    let out = untrusted.output(&["setup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a certificate of an unknown CA must be refused");
    assert!(err.contains(&https) && err.to_lowercase().contains("certificate"), "{err}");

    let p = Harness::with_options(
        "https",
        &format!("clickhouse_url = \"{https}\"\nclickhouse_ca_file = \"{}\"", ca.display()),
    );
    p.ingest_generated(2_000, 200, 0, 61);
}

/// ClickHouse refusing some stored events on its own (here a server-side check on the
/// table, `throwIf`, code 395): the sink splits the refused inserts until those rows are
/// alone, sends them to the dead-letter topic with the server's message, and loads the
/// rest; `run --until-idle` ends. (Before, any such error was retried for ever.)
#[test]
fn rows_clickhouse_refuses_are_dead_letters_and_the_rest_load() {
    let p = Harness::new("refused_rows");
    p.setup();
    clickhouse_query(
        &p.clickhouse_url(),
        &format!(
            "ALTER TABLE {} ADD COLUMN refuse UInt8 MATERIALIZED throwIf(user_id = 'poison')",
            p.clickhouse_table()
        ),
    )
    .unwrap();
    let (file, _) = p.generate(1_000, 0, 0, 4701);
    let mut lines = std::fs::read_to_string(&file).unwrap();
    for n in 0..3 {
        lines += &format!(
            "{{\"user_id\":\"poison\",\"event_type\":\"view\",\"timestamp\":\"2026-01-0{}T00:00:00Z\"}}\n",
            n + 1
        );
    }
    std::fs::write(&file, lines).unwrap();
    p.produce(&file);
    p.run_until_idle(&["--clickhouse-in-run"]);
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "processed_distinct_keys")), (1_003, 1_003), "{v}");
    assert_eq!(count(&v, "clickhouse_final_rows"), 1_000, "{v}");
    let dead = common::read_all(&format!("{}_dlq", p.name));
    assert_eq!(dead.len(), 3, "the three refused events are dead letters");
    for letter in &dead {
        assert_eq!(letter.headers["error.class"], "clickhouse_refused");
        assert!(letter.headers["error.message"].contains("395"), "{:?}", letter.headers);
        assert_eq!(letter.headers["source.topic"], format!("{}_processed", p.name));
        let value = String::from_utf8(letter.value.clone().unwrap()).unwrap();
        assert!(value.contains("\"poison\""), "the processed record: {value}");
    }
}

/// The ClickHouse table dropped under `run --clickhouse-in-run`: the processor goes on
/// storing into Delta, the process reports itself unready naming ClickHouse, and once
/// `setup` recreates the table the sink carries on from its offsets. (Before, the sink's
/// error stopped the processor too.)
#[test]
fn a_dropped_clickhouse_table_stops_nothing_and_loading_resumes_after_setup() {
    let p = Harness::new("dropped_table");
    p.setup();
    let port = common::free_port();
    let _run = p.spawn(&["run", "--clickhouse-in-run", "--metrics-addr", &format!("127.0.0.1:{port}")], "run");
    let (file, _) = p.generate(500, 0, 0, 4801);
    p.produce(&file);
    let clickhouse_rows = || p.verify()["clickhouse_final_rows"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(120), "the first events loaded", || clickhouse_rows() == 500);

    clickhouse_query(&p.clickhouse_url(), &format!("DROP TABLE {}", p.clickhouse_table())).unwrap();
    let (file, _) = p.generate_as("more", 400, 0, 0, 4802);
    p.produce(&file);
    wait_until(Duration::from_secs(120), "the processor storing on", || p.verify()["delta_rows"].as_u64() == Some(900));
    wait_until(Duration::from_secs(120), "/readyz to name ClickHouse", || {
        common::http_get(port, "/readyz").is_some_and(|(status, body)| status == 503 && body.contains("clickhouse"))
    });
    let status = p.ok(&["status"]);
    assert!(status.contains("does not exist: run `idempipe setup`"), "{status}");

    p.setup();
    wait_until(Duration::from_secs(120), "the sink to resume", || clickhouse_rows() == 400);
    wait_until(Duration::from_secs(120), "/readyz to recover", || {
        common::http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    // What the drop took, `reconcile` restores from Delta.
    p.ok(&["reconcile"]);
    assert_eq!(clickhouse_rows(), 900);
}

/// Events in 200 different months, as one batch of hostile event times makes: current
/// ClickHouse (chdb) refuses them in one insert (more than 100 partitions), and accepts
/// them in the inserts the sink makes of them ([`clickhouse::insert_runs`]). 18.16 has no
/// such limit.
#[test]
fn current_clickhouse_accepts_a_200_month_batch_in_the_sinks_inserts() {
    // The first of each month from January 2000, in order (as the sink sorts them).
    let times: Vec<i64> = (0..200)
        .map(|m| {
            let text = format!("{:04}-{:02}-01T12:00:00Z", 2000 + m / 12, m % 12 + 1);
            idempipe::event::EventTime::parse(&text).unwrap().micros()
        })
        .collect();
    let runs = clickhouse::insert_runs(clickhouse::Layout::Current, times.iter().copied());
    assert_eq!(runs, vec![0..100, 100..200]);
    let seen = chdb(
        "partitions",
        "events",
        &idempipe::event::EventSchema::default(),
        serde_json::json!({
            "times": times,
            "runs": runs.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
        }),
    );
    let refused = seen["whole_insert_error"].as_str().unwrap_or_default();
    assert!(refused.contains("Too many partitions for single INSERT block"), "{seen}");
    assert_eq!((seen["rows"].as_u64(), seen["months"].as_u64()), (Some(200), Some(200)), "{seen}");
}

/// ClickHouse refusing every insert, whatever its rows (here a check on the table that
/// fails for every row, code 395, as a full disk or a spent quota would under a code the
/// sink does not know): no row is dead-lettered and nothing is committed;
/// `sink-clickhouse --until-idle` stops with an error that says so, and once the server
/// takes inserts again every row loads. (Before, each row was split out, refused three
/// times, dead-lettered and committed: ClickHouse lacked them all.)
#[test]
fn a_server_that_refuses_every_row_dead_letters_none_and_loading_resumes() {
    let p = Harness::new("refuse_every_row");
    let (file, expected) = p.generate(300, 30, 0, 4_702);
    p.setup();
    let table = p.clickhouse_table();
    clickhouse_query(
        &p.clickhouse_url(),
        &format!("ALTER TABLE {table} ADD COLUMN refuse UInt8 MATERIALIZED throwIf(length(user_id) > 0)"),
    )
    .unwrap();
    p.produce(&file);
    p.run_until_idle(&[]);

    let out = p.output(&["sink-clickhouse", "--until-idle", "2s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the sink reported success while ClickHouse refused every row:\n{stderr}");
    assert!(stderr.contains("took no other insert") && stderr.contains("395"), "{stderr}");
    assert!(common::read_all(&format!("{}_dlq", p.name)).is_empty(), "no valid row is a dead letter");

    clickhouse_query(&p.clickhouse_url(), &format!("ALTER TABLE {table} DROP COLUMN refuse")).unwrap();
    p.ok(&["sink-clickhouse", "--until-idle", "2s"]);
    common::assert_exact(&p.verify(), &expected);
}

/// The default identity's key columns (`user_id`, `event_type`).
fn default_key() -> Vec<String> {
    idempipe::event::Identity::default().key_columns()
}
