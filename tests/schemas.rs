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
