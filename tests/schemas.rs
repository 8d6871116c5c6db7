//! Users' own event shapes, end to end against the real services: an identity of their
//! own fields and time format, and tables made by an earlier release.

mod common;

use std::io::Write;

use common::{Harness, clickhouse_query, count};

/// `verify` holds `rows` distinct events everywhere, with `dead` dead letters.
fn assert_stores(p: &Harness, rows: u64, dead: u64) -> serde_json::Value {
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (rows, rows), "{v}");
    assert_eq!(count(&v, "dlq_records"), dead, "{v}");
    assert_eq!(count(&v, "processed_distinct_keys"), rows, "{v}");
    assert_eq!(count(&v, "clickhouse_final_rows"), rows, "{v}");
    assert_eq!(v["clickhouse_keys_match"], true, "{v}");
    v
}

/// Events keyed by `customerId` and the nested `order.line`, their time `ts` in epoch
/// milliseconds: re-sends that spell the time as a numeric string or carry other fields
/// are the same events; the key fields become columns of Delta and ClickHouse; replays
/// change nothing; a processor configured with another identity is refused at start,
/// naming both, and writes nothing.
#[test]
fn a_custom_identity_with_an_epoch_millisecond_time_keys_the_events_everywhere() {
    let p = Harness::with_options(
        "identity",
        "event_key = \"customerId, order.line\"\nevent_time = \"ts\"\nevent_time_format = \"epoch_ms\"",
    );
    p.setup();
    let file = p.path("orders.jsonl");
    let mut out = std::fs::File::create(&file).unwrap();
    let start_ms: i64 = 1_704_067_200_000;
    for i in 0..400_i64 {
        let (customer, line, ts) = (format!("c{}", i % 37), i, start_ms + i * 60_013);
        writeln!(out, r#"{{"customerId":"{customer}","order":{{"line":{line},"sku":"s{i}"}},"ts":{ts}}}"#).unwrap();
        if i % 10 == 0 {
            // A re-send: the time as a numeric string, another field added, fields moved.
            writeln!(out, r#"{{"ts":"{ts}","retry":true,"order":{{"line":"{line}"}},"customerId":"{customer}"}}"#)
                .unwrap();
        }
    }
    let invalid = [
        r#"{"customerId":"c1","order":{"sku":"x"},"ts":1704067200000}"#,
        r#"{"customerId":"c1","order":{"line":1},"ts":true}"#,
        r#"{"customerId":"c1","order":{"line":1},"ts":"12a"}"#,
        r#"{"customerId":"","order":{"line":1},"ts":1704067200000}"#,
        r#"{"user_id":"u1","event_type":"click","timestamp":"2024-01-01T00:00:00Z"}"#,
    ];
    for line in invalid {
        writeln!(out, "{line}").unwrap();
    }
    drop(out);
    p.produce(&file);
    p.run_until_idle(&["--clickhouse-in-run"]);
    let v = assert_stores(&p, 400, invalid.len() as u64);

    // The key is the contract's MD5 over the configured fields.
    let table = p.delta_path();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let opened = runtime.block_on(idempipe::table::EventTable::open(&table)).unwrap();
    assert_eq!(opened.columns().key(), ["customerId", "order_line"]);
    assert_eq!(opened.identity().to_string(), "md5(customerId, order.line, time) with the time from `ts` (epoch_ms)");
    let time = idempipe::event::EventTime::from_epoch_millis(start_ms + 7 * 60_013).unwrap();
    let key = idempipe::event::DedupKey::compute_parts(&["c7", "7"], time).to_string();
    let url = p.clickhouse_url();
    let found = clickhouse_query(
        &url,
        &format!("SELECT customerId, order_line FROM {} FINAL WHERE dedup_key = '{key}'", p.clickhouse_table()),
    )
    .unwrap();
    assert_eq!(found.trim(), "c7\t7", "ClickHouse holds the key columns");

    for _ in 0..2 {
        p.produce(&file);
    }
    p.run_until_idle(&["--clickhouse-in-run"]);
    let again = assert_stores(&p, 400, 3 * invalid.len() as u64);
    assert_eq!(count(&again, "processed_records"), count(&v, "processed_records"), "a replay sends nothing: {again}");

    // The same table under the default identity: refused at start, naming both.
    let config = std::fs::read_to_string(&p.config).unwrap();
    let default: String = config.lines().filter(|l| !l.starts_with("event_")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&p.config, default).unwrap();
    for command in [&["run", "--until-idle", "1s"][..], &["setup"]] {
        let out = p.output(command);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?} took another identity's table: {err}");
        assert!(
            err.contains("md5(customerId, order.line, time) with the time from `ts` (epoch_ms)")
                && err.contains("md5(user_id, event_type, time) with the time from `timestamp` (auto)"),
            "{err}"
        );
    }
    let after = p.verify();
    assert_eq!(after["delta_version"], again["delta_version"], "nothing was written: {after}");
}

/// Declared columns of every type: the values land typed in Delta and ClickHouse (a key
/// field declared `int` too), the payload keeps the rest of the message; a value of the
/// wrong type, a missing required field and values that do not fit are dead letters of
/// their own class naming the field; replays change nothing.
#[test]
fn declared_columns_are_typed_in_every_store_and_bad_values_are_dead_letters() {
    let p = Harness::with_options(
        "typed",
        r#"event_key = "order_id, line"
event_time = "ts"
event_time_format = "epoch_ms"
payload = "rest"

[columns]
line = "int"
amount = "decimal(12,2)"
paid = "boolean"
tags = "list<string>"
ship = { type = "struct<city:string,at:timestamp>", field = "shipping" }
attrs = "map<string,long>"
placed = { type = "date", required = true }
score = "double"
"#,
    );
    p.setup();
    let file = p.path("typed.jsonl");
    let mut out = std::fs::File::create(&file).unwrap();
    let start_ms: i64 = 1_704_067_200_000;
    let event = |i: i64, ts: String| {
        format!(
            r#"{{"order_id":"o{i}","line":{line},"ts":{ts},"amount":{amount},"paid":{paid},"tags":["t{i}","x"],"shipping":{{"city":"c{i}","at":"2024-01-0{day}T10:00:00+02:00"}},"attrs":{{"a":{i}}},"placed":"2024-01-0{day}","score":{score},"note":"n{i}"}}"#,
            line = i % 3 + 1,
            amount = if i % 2 == 0 { format!("{i}.5") } else { format!("\"{i}.10\"") },
            paid = i % 2 == 0,
            day = 1 + i % 3,
            score = i as f64 * 0.5,
        )
    };
    for i in 0..300_i64 {
        writeln!(out, "{}", event(i, (start_ms + i * 1_000).to_string())).unwrap();
        if i % 10 == 0 {
            // A re-send, the time as a numeric string.
            writeln!(out, "{}", event(i, format!("\"{}\"", start_ms + i * 1_000))).unwrap();
        }
    }
    let invalid = [
        (r#"{"order_id":"b1","line":1,"ts":1,"amount":"abc","placed":"2024-01-01"}"#, "wrong_type", "`amount`"),
        (r#"{"order_id":"b2","line":1,"ts":1,"amount":1}"#, "missing_field", "`placed`"),
        (r#"{"order_id":"b3","line":3000000000,"ts":1,"placed":"2024-01-01"}"#, "value_out_of_range", "`line`"),
        (r#"{"order_id":"b4","line":1,"ts":1,"amount":1.234,"placed":"2024-01-01"}"#, "value_out_of_range", "`amount`"),
        (r#"{"order_id":"b5","line":1,"ts":1,"tags":[1],"placed":"2024-01-01"}"#, "wrong_type", "`tags[0]`"),
        (r#"{"order_id":"b6","line":1,"ts":1,"attrs":{"a":"x"},"placed":"2024-01-01"}"#, "wrong_type", "`attrs.a`"),
        (
            r#"{"order_id":"b7","line":1,"ts":1,"shipping":{"at":"soon"},"placed":"2024-01-01"}"#,
            "wrong_type",
            "`shipping.at`",
        ),
    ];
    for (line, _, _) in invalid {
        writeln!(out, "{line}").unwrap();
    }
    drop(out);
    p.produce(&file);
    p.run_until_idle(&["--clickhouse-in-run"]);
    assert_stores(&p, 300, invalid.len() as u64);
    let mut letters: Vec<(String, String)> = common::read_all(&format!("{}_dlq", p.name))
        .into_iter()
        .map(|d| (d.headers["error.class"].clone(), d.headers["error.message"].clone()))
        .collect();
    letters.sort();
    let mut expected: Vec<(&str, &str)> = invalid.iter().map(|(_, class, field)| (*class, *field)).collect();
    expected.sort();
    for ((class, message), (want_class, field)) in letters.iter().zip(&expected) {
        assert_eq!(class, want_class, "{message}");
        assert!(message.contains(field), "{class}: {message} does not name {field}");
    }

    // Delta: typed columns, the key field `line` an int; the values in their normal form.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let table = runtime.block_on(idempipe::table::EventTable::open(&p.delta_path())).unwrap();
    let declared: Vec<String> = table.columns().declared().iter().map(|(n, k)| format!("{n} {k}")).collect();
    assert_eq!(
        declared,
        [
            "amount decimal(12,2)",
            "attrs map<string,long>",
            "paid boolean",
            "placed date",
            "score double",
            "ship struct<city:string,at:timestamp>",
            "tags list<string>"
        ]
    );
    assert_eq!(table.schema().key_kinds()[1], idempipe::event::KeyKind::Int);
    let time = idempipe::event::EventTime::from_epoch_millis(start_ms + 7_000).unwrap();
    let key = idempipe::event::DedupKey::compute_parts(&["o7", "2"], time).to_string();
    let rows = runtime.block_on(table.rows_with_keys(&[key.clone()].into_iter().collect())).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].parts, ["o7", "2"]);
    assert_eq!(
        serde_json::Value::Array(rows[0].values.clone()),
        serde_json::json!([
            "7.10",
            {"a": 7},
            false,
            "2024-01-02",
            3.5,
            {"city": "c7", "at": "2024-01-02T08:00:00.000000Z"},
            ["t7", "x"]
        ])
    );
    assert_eq!(rows[0].payload, r#"{"note":"n7"}"#, "the payload keeps what no column takes");

    // ClickHouse: the same values, typed.
    let found = clickhouse_query(
        &p.clickhouse_url(),
        &format!(
            "SELECT line, amount, paid, tags, ship.1, placed, score, attrs FROM {} FINAL WHERE dedup_key = '{key}'",
            p.clickhouse_table()
        ),
    )
    .unwrap();
    assert_eq!(found.trim(), "2\t7.10\t0\t['t7','x']\tc7\t2024-01-02\t3.5\t{\"a\":7}");

    p.produce(&file);
    p.run_until_idle(&["--clickhouse-in-run"]);
    let again = assert_stores(&p, 300, 2 * invalid.len() as u64);
    assert_eq!(count(&again, "processed_distinct_keys"), 300, "{again}");
}

/// Schema evolution with two processors running on one table (each reading every
/// partition) and the ClickHouse sink beside them: new fields in the events add nullable
/// columns of their values' types to Delta (one instance adds them, the other follows
/// the table's new columns) and to ClickHouse; every key is stored once; re-sends that
/// carry the new fields change nothing; a later value of another type is a dead letter
/// naming its field.
#[test]
fn a_new_field_adds_a_column_everywhere_while_two_instances_run() {
    let p = Harness::with_options("evolve", "schema_evolution = \"add_columns\"");
    p.setup();
    let q = p.instance("evolve-b");
    let start_ms: i64 = 1_704_067_200_000;
    let event = |i: i64, extra: &str| {
        format!(r#"{{"user_id":"u{}","event_type":"view","timestamp":{}{extra}}}"#, i % 50, start_ms + i * 1_000)
    };
    let write = |name: &str, lines: &[String]| {
        let file = p.path(name);
        std::fs::write(&file, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        file
    };
    let _a = p.spawn(&["run"], "a");
    let _b = q.spawn(&["run"], "b");
    let _sink = p.spawn(&["sink-clickhouse"], "sink");
    let final_rows = || {
        let sql = format!("SELECT count() FROM {} FINAL", p.clickhouse_table());
        clickhouse_query(&p.clickhouse_url(), &sql).ok().and_then(|n| n.trim().parse::<u64>().ok())
    };
    let stored = |rows: u64| {
        common::wait_until(std::time::Duration::from_secs(120), &format!("{rows} rows in every store"), || {
            let v = p.verify();
            count(&v, "delta_distinct_keys") == rows && final_rows() == Some(rows)
        })
    };

    // Before: the seed's fields only.
    p.produce(&write("before.jsonl", &(0..300).map(|i| event(i, "")).collect::<Vec<_>>()));
    stored(300);
    // New fields: a string, an integer and a number; re-sends of earlier events with them.
    let mut with_fields: Vec<String> =
        (300..600).map(|i| event(i, &format!(r#","coupon":"c{i}","qty":{},"price":{}.25"#, i % 7, i))).collect();
    with_fields.extend((0..30).map(|i| event(i, r#","coupon":"late""#)));
    p.produce(&write("with-fields.jsonl", &with_fields));
    stored(600);
    // A value of another type for `qty`: dead letters; beside them, events that fit.
    let mut after: Vec<String> = (600..605).map(|i| event(i, r#","qty":"many""#)).collect();
    after.extend((605..610).map(|i| event(i, &format!(r#","qty":{i},"coupon":null"#))));
    p.produce(&write("after.jsonl", &after));
    stored(605);
    common::wait_until(std::time::Duration::from_secs(60), "the dead letters", || {
        count(&p.verify(), "dlq_records") == 5
    });
    let v = assert_stores(&p, 605, 5);
    assert_eq!(count(&v, "delta_rows"), 605, "{v}");
    for letter in common::read_all(&format!("{}_dlq", p.name)) {
        assert_eq!(letter.headers["error.class"], "wrong_type");
        assert!(letter.headers["error.message"].contains("`qty`"), "{}", letter.headers["error.message"]);
    }

    // Delta: the columns, typed by their values, and the values.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let table = runtime.block_on(idempipe::table::EventTable::open(&p.delta_path())).unwrap();
    let mut declared: Vec<String> = table.columns().declared().iter().map(|(n, k)| format!("{n} {k}")).collect();
    declared.sort();
    assert_eq!(declared, ["coupon string", "price double", "qty long"]);
    let key = |i: i64| {
        let time = idempipe::event::EventTime::from_epoch_millis(start_ms + i * 1_000).unwrap();
        idempipe::event::DedupKey::compute_parts(&[&format!("u{}", i % 50), "view"], time).to_string()
    };
    let value_of = |row: &idempipe::table::StoredRow, column: &str| {
        let i = table.columns().declared().iter().position(|(n, _)| n == column).unwrap();
        row.values[i].clone()
    };
    let keys = [key(3), key(307), key(607)].into_iter().collect();
    let mut rows = runtime.block_on(table.rows_with_keys(&keys)).unwrap();
    rows.sort_by_key(|r| r.event_time_us);
    assert_eq!(rows.len(), 3);
    let values = |row| ["coupon", "qty", "price"].map(|c| value_of(row, c)).to_vec();
    let nulls = vec![serde_json::Value::Null; 3];
    assert_eq!(values(&rows[0]), nulls, "stored before the fields existed; re-sends change nothing");
    assert_eq!(values(&rows[1]), [serde_json::json!("c307"), serde_json::json!(307 % 7), serde_json::json!(307.25)]);
    assert_eq!(values(&rows[2]), [serde_json::Value::Null, serde_json::json!(607), serde_json::Value::Null]);

    // ClickHouse: the sink added the columns and loaded the same values.
    let described = clickhouse_query(&p.clickhouse_url(), &format!("DESCRIBE TABLE {}", p.clickhouse_table())).unwrap();
    for (column, kind) in [("coupon", "Nullable(String)"), ("qty", "Nullable(Int64)"), ("price", "Nullable(Float64)")] {
        assert!(described.lines().any(|l| l.starts_with(&format!("{column}\t{kind}"))), "{column}: {described}");
    }
    let found = clickhouse_query(
        &p.clickhouse_url(),
        &format!(
            "SELECT coupon, qty, price FROM {} FINAL WHERE dedup_key IN ('{}', '{}') ORDER BY event_time",
            p.clickhouse_table(),
            key(3),
            key(307)
        ),
    )
    .unwrap();
    assert_eq!(found.trim(), format!("\\N\t\\N\t\\N\nc307\t{}\t307.25", 307 % 7));

    // Both instances took the new columns: one added them, the other followed (or lost
    // the race to add them, and then followed).
    let (a, b) = (p.log("a"), q.log("b"));
    assert!(a.contains("added columns to the table") || b.contains("added columns to the table"), "{a}\n{b}");
    for log in [&a, &b] {
        assert!(log.contains("the table's columns changed"), "{log}");
    }
}

/// A table made by the release before identities could be configured (a fixture it
/// wrote: 300 events, no identity property) is read and written by this one: replays of
/// its events change nothing, new ones land once.
#[test]
fn a_table_made_by_the_previous_release_is_read_and_written_unchanged() {
    let p = Harness::new("previous");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/previous-release-table");
    copy_dir(&fixture.join("events"), &p.delta_path());
    p.setup();
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (300, 300), "{v}");
    // Its events again, and 50 new ones.
    p.produce(&fixture.join("events.jsonl"));
    let (fresh, _) = p.generate_as("fresh.jsonl", 50, 0, 0, 9_301);
    p.produce(&fresh);
    p.run_until_idle(&["--clickhouse-in-run"]);
    let v = p.verify();
    assert_eq!((count(&v, "delta_rows"), count(&v, "delta_distinct_keys")), (350, 350), "{v}");
    assert_eq!(count(&v, "processed_distinct_keys"), 50, "only the new events are sent: {v}");
    // ClickHouse gets the older rows from Delta, read in the table's columns.
    p.ok(&["reconcile"]);
    let v = p.verify();
    assert_eq!(count(&v, "clickhouse_final_rows"), 350, "{v}");
    assert_eq!(v["clickhouse_keys_match"], true, "{v}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
