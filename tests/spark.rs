//! idempipe beside Apache Spark on the same Delta table (pyspark 4.2 and delta-spark 4.4, one
//! Spark session for the binary): Spark's compactions racing idempipe's, rows Spark
//! deletes with deletion vectors and then sent again, and tables Spark creates, each
//! either refused at start-up or adopted and exact. Counted by idempipe's `verify` and
//! by Spark itself.

mod common;

use std::path::Path;
use std::time::Duration;

use common::spark::spark;
use common::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The table's (rows, distinct keys) by idempipe's `verify`.
fn idempipe_counts(p: &Harness) -> (u64, u64) {
    let v = p.verify();
    (count(&v, "delta_rows"), count(&v, "delta_distinct_keys"))
}

/// The number of commits in the table's log.
fn log_versions(table: &Path) -> usize {
    std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json"))
        .count()
}

/// Data files of the table on disk (live or not).
fn parquet_files(table: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("_delta_log") {
                    walk(&path, n);
                }
            } else if path.extension().is_some_and(|e| e == "parquet") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(table, &mut n);
    n
}

/// Whether any commit of the table adds a file with a deletion vector.
fn has_deletion_vector(table: &Path) -> bool {
    std::fs::read_dir(table.join("_delta_log")).unwrap().any(|e| {
        let path = e.unwrap().path();
        path.extension().is_some_and(|x| x == "json")
            && std::fs::read_to_string(&path).unwrap().lines().any(|line| {
                let action: serde_json::Value = serde_json::from_str(line).unwrap();
                action["add"]["deletionVector"].is_object()
            })
    })
}

/// A table of many small files: `events` unique events stored in batches of 200.
fn small_files_table(p: &Harness, events: u64, seed: u64) -> u64 {
    p.setup();
    let (file, expected) = p.generate(events, events / 10, 0, seed);
    p.produce(&file);
    p.run_until_idle(&["--max-batch-events", "200"]);
    count(&expected, "distinct_keys")
}

/// Spark's OPTIMIZE commits between the moment idempipe's compaction reads the table and
/// the moment it commits (the race of two compactions, made certain: idempipe's reads an
/// older version). delta-rs's conflict checker ignores removes saying `dataChange =
/// false`, so both used to commit and every row lived twice; idempipe's compaction now
/// sees its files gone and commits nothing.
#[test]
fn a_spark_optimize_committed_while_idempipe_compacts_leaves_every_row_once() {
    let p = Harness::new("spark_race");
    let distinct = small_files_table(&p, 3000, 71);
    let table = p.delta_path();
    let mut s = spark();
    let err = runtime().block_on(async {
        // idempipe's compaction reads the table now ...
        let mut compaction = idempipe::table::EventTable::open(&table).await.unwrap();
        // ... Spark compacts the same files and commits first ...
        s.sql(&format!("OPTIMIZE delta.`{}`", table.display()));
        // ... then idempipe's commits.
        compaction.compact().await.map(|o| format!("{o:?}"))
    });
    let err = err.expect_err("idempipe's compaction must not commit over Spark's");
    assert!(err.to_string().contains("another writer"), "{err}");
    assert_eq!(s.counts(&table), (distinct, distinct), "Spark's count");
    assert_eq!(idempipe_counts(&p), (distinct, distinct), "idempipe's count");
    // Z-ordered by Spark, then compacted by idempipe: still each row once.
    s.sql(&format!("OPTIMIZE delta.`{}` ZORDER BY (user_id)", table.display()));
    p.ok(&["compact"]);
    assert_eq!(s.counts(&table), (distinct, distinct));
}

/// Spark's OPTIMIZE (plain and Z-ordered) and idempipe's own compaction (every second),
/// both running while `run` writes small batches: never a row twice, never one lost.
#[test]
fn spark_compactions_beside_a_running_processor_and_its_compactions_keep_the_table_exact() {
    let p = Harness::new("spark_busy");
    p.setup();
    let (file, expected) = p.generate(6000, 600, 0, 72);
    let distinct = count(&expected, "distinct_keys");
    let table = p.delta_path();
    let mut run = p.spawn(&["run", "--trigger", "200ms", "--max-batch-events", "150", "--compact-every", "1s"], "run");
    p.produce(&file);
    let mut s = spark();
    let mut rounds = 0;
    // Until every event is stored, and at least 6 Spark compactions.
    loop {
        let zorder = if rounds % 2 == 1 { " ZORDER BY (user_id)" } else { "" };
        // Spark loses some races to idempipe's compactions: refused, never wrong.
        let _ = s.try_sql(&format!("OPTIMIZE delta.`{}`{zorder}", table.display()));
        rounds += 1;
        let (rows, keys) = s.counts(&table);
        assert_eq!(rows, keys, "a row twice after {rounds} Spark compactions");
        assert!(run.try_wait().unwrap().is_none(), "run ended: {}", p.tail("run"));
        if keys == distinct && rounds >= 6 {
            break;
        }
        assert!(rounds < 200, "only {keys} of {distinct} keys stored after {rounds} rounds: {}", p.tail("run"));
    }
    stop(&mut run);
    assert_eq!(s.counts(&table), (distinct, distinct));
    assert_eq!(idempipe_counts(&p), (distinct, distinct));
    let log = p.log("run");
    assert!(log.contains("compaction"), "idempipe's compaction ran: {}", p.tail("run"));
}

/// SIGTERM: the processor finishes its batch and stops.
fn stop(run: &mut Background) {
    std::process::Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap();
    let status = run.wait().unwrap();
    assert!(status.success(), "run ended with {status}");
}

/// Spark deletes events with deletion vectors; the same events sent again are stored
/// again (the table no longer holds their keys), once, under each key check; sent a
/// third time, nothing changes.
#[test]
fn events_spark_deleted_with_deletion_vectors_are_stored_again_once_under_every_key_check() {
    let mut s = spark();
    for check in ["scan", "cache", "index"] {
        let p = Harness::new(&format!("spark_dv_{check}"));
        p.setup();
        let (file, expected) = p.generate(2000, 200, 0, 81);
        let distinct = count(&expected, "distinct_keys");
        let table = p.delta_path();
        p.produce(&file);
        p.run_until_idle(&["--key-check", check]);
        let t = table.display();
        s.sql(&format!("ALTER TABLE delta.`{t}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')"));
        s.sql(&format!("DELETE FROM delta.`{t}` WHERE dedup_key < '2'"));
        assert!(has_deletion_vector(&table), "Spark's DELETE wrote no deletion vector");
        let (left, _) = s.counts(&table);
        assert!(left < distinct && left > distinct / 2, "{left} of {distinct} left");
        assert_eq!(idempipe_counts(&p), (left, left), "{check}: idempipe reads the deletion vectors");
        // Sent again: the deleted ones come back, once.
        p.produce(&file);
        p.run_until_idle(&["--key-check", check]);
        assert_eq!(s.counts(&table), (distinct, distinct), "{check}: after the re-send");
        // And a replay changes nothing.
        p.produce(&file);
        p.run_until_idle(&["--key-check", check]);
        assert_eq!(s.counts(&table), (distinct, distinct), "{check}: after a replay");
        assert_eq!(idempipe_counts(&p), (distinct, distinct), "{check}");
        // idempipe's compaction leaves files with deletion vectors alone; Spark's
        // compaction purges them; the table stays exact.
        p.ok(&["compact"]);
        s.sql(&format!("OPTIMIZE delta.`{t}`"));
        assert_eq!(s.counts(&table), (distinct, distinct), "{check}: after compactions");
    }
}

/// The key index of a running processor follows a deletion Spark makes meanwhile: the
/// deleted events, sent again, are stored again.
#[test]
fn a_running_key_index_forgets_keys_spark_deletes_with_deletion_vectors() {
    let p = Harness::new("spark_dv_live");
    p.setup();
    let (file, expected) = p.generate(2000, 0, 0, 82);
    let distinct = count(&expected, "distinct_keys");
    let table = p.delta_path();
    let t = table.display();
    let mut s = spark();
    let mut run = p.spawn(&["run", "--trigger", "200ms", "--key-check", "index"], "run");
    p.produce(&file);
    wait_until(Duration::from_secs(120), "every event stored", || s.counts(&table).1 == distinct);
    s.sql(&format!("ALTER TABLE delta.`{t}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')"));
    s.sql(&format!("DELETE FROM delta.`{t}` WHERE dedup_key < '4'"));
    assert!(has_deletion_vector(&table));
    let (left, _) = s.counts(&table);
    assert!(left < distinct);
    p.produce(&file);
    wait_until(Duration::from_secs(120), "the deleted events stored again", || s.counts(&table).1 == distinct);
    // Sent a third time: once the processor has read it all, nothing was stored twice.
    p.produce(&file);
    wait_until(Duration::from_secs(120), "the processor caught up", || p.status()["processor_lag"] == 0);
    stop(&mut run);
    assert_eq!(s.counts(&table), (distinct, distinct));
    assert!(p.log("run").contains("rebuilding from the table"), "the index rebuilt: {}", p.tail("run"));
}

const COLUMNS: &str = "dedup_key STRING NOT NULL, user_id STRING, event_type STRING, event_time TIMESTAMP, \
                       event_date DATE, payload STRING, source_partition INT, source_offset BIGINT, batch_id BIGINT, \
                       ingested_at TIMESTAMP";

/// Tables Spark creates at idempipe's path before `setup`: each is refused at start-up
/// with a message that names what is wrong, and nothing is written to it; or adopted,
/// and the seed's replay scenario is exact on it.
#[test]
fn tables_spark_creates_are_refused_at_start_or_adopted_and_exact() {
    let with_date = COLUMNS;
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("unpartitioned", format!("({with_date}) USING DELTA"), Some("partitioned by []")),
        (
            "by_event_type",
            format!("({with_date}) USING DELTA PARTITIONED BY (event_type)"),
            Some("partitioned by [\"event_type\"]"),
        ),
        ("liquid", format!("({with_date}) USING DELTA CLUSTER BY (event_date)"), Some("cannot write")),
        (
            "column_mapping",
            format!(
                "({with_date}) USING DELTA PARTITIONED BY (event_date) TBLPROPERTIES ('delta.columnMapping.mode' = 'name')"
            ),
            Some("column mapping"),
        ),
        (
            "timestamp_ntz",
            format!(
                "({}) USING DELTA PARTITIONED BY (event_date)",
                with_date.replacen("event_time TIMESTAMP", "event_time TIMESTAMP_NTZ", 1)
            ),
            Some("column event_time is timestamp_ntz"),
        ),
        (
            "extra_column_of_another_type",
            format!("({with_date}, weight FLOAT) USING DELTA PARTITIONED BY (event_date)"),
            Some("[\"weight\"] are not idempipe's"),
        ),
        (
            "generated_other",
            format!(
                "({}) USING DELTA PARTITIONED BY (event_date)",
                with_date.replacen("batch_id BIGINT", "batch_id BIGINT GENERATED ALWAYS AS (source_offset * 2)", 1)
            ),
            Some("column batch_id is generated"),
        ),
        (
            "identity",
            format!(
                "({}) USING DELTA PARTITIONED BY (event_date)",
                with_date.replacen("batch_id BIGINT", "batch_id BIGINT GENERATED ALWAYS AS IDENTITY", 1)
            ),
            Some("cannot write"),
        ),
        (
            "row_tracking",
            format!(
                "({with_date}) USING DELTA PARTITIONED BY (event_date) TBLPROPERTIES ('delta.enableRowTracking' = 'true')"
            ),
            Some("cannot write"),
        ),
        (
            "check_constraint",
            format!("({with_date}) USING DELTA PARTITIONED BY (event_date)"),
            Some("CHECK constraints"),
        ),
        // Adopted:
        ("plain", format!("({with_date}) USING DELTA PARTITIONED BY (event_date)"), None),
        // A column beside idempipe's, of a type a declared column may have: taken as one,
        // holding the field of its name (null in these events).
        ("extra_column", format!("({with_date}, country STRING) USING DELTA PARTITIONED BY (event_date)"), None),
        (
            "generated_date",
            format!(
                "({}) USING DELTA PARTITIONED BY (event_date)",
                with_date.replacen(
                    "event_date DATE",
                    "event_date DATE GENERATED ALWAYS AS (CAST(event_time AS DATE))",
                    1
                )
            ),
            None,
        ),
        (
            "deletion_vectors_append_only",
            format!(
                "({with_date}) USING DELTA PARTITIONED BY (event_date) TBLPROPERTIES \
                 ('delta.enableDeletionVectors' = 'true', 'delta.appendOnly' = 'true', \
                 'delta.autoOptimize.autoCompact' = 'true')"
            ),
            None,
        ),
    ];
    let mut s = spark();
    let mut table_of_outcomes = Vec::new();
    for (name, definition, refusal) in cases {
        let p = Harness::new(&format!("spark_layout_{name}"));
        let table = p.delta_path();
        let t = table.display();
        s.sql(&format!("CREATE TABLE delta.`{t}` {definition}"));
        if name == "check_constraint" {
            s.sql(&format!("ALTER TABLE delta.`{t}` ADD CONSTRAINT known_partition CHECK (source_partition < 4)"));
        }
        let (versions, files) = (log_versions(&table), parquet_files(&table));
        match refusal {
            Some(reason) => {
                for command in [&["setup"][..], &["run", "--until-idle", "1s"][..]] {
                    let out = p.output(command);
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    assert!(!out.status.success(), "{name}: `{command:?}` accepted the table");
                    assert!(stderr.contains("cannot take idempipe's events"), "{name}: {stderr}");
                    assert!(stderr.contains(reason), "{name}: wanted {reason:?} in: {stderr}");
                }
                assert_eq!((log_versions(&table), parquet_files(&table)), (versions, files), "{name}: written to");
                table_of_outcomes.push(format!("{name}: refused"));
            }
            None => {
                p.setup();
                let (file, expected) = p.generate(1000, 100, 10, 90);
                let distinct = count(&expected, "distinct_keys");
                for _ in 0..3 {
                    p.produce(&file);
                    p.run_until_idle(&[]);
                    assert_eq!(s.counts(&table), (distinct, distinct), "{name}");
                }
                assert_eq!(idempipe_counts(&p), (distinct, distinct), "{name}");
                p.ok(&["compact"]);
                assert_eq!(s.counts(&table), (distinct, distinct), "{name}: after compaction");
                table_of_outcomes.push(format!("{name}: adopted, exact"));
            }
        }
    }
    eprintln!("layouts: {}", table_of_outcomes.join("; "));
}

/// Spark reads idempipe's table after rounds of new events and replays, each followed
/// by idempipe's compaction, with checkpoints every 3 commits and a vacuum at the end:
/// every row once, with idempipe's types and partition values; and a Spark stream with
/// the table as its source, caught up after each round, sees each event once (a
/// compaction's files say `dataChange = false`, so a stream skips them).
#[test]
fn spark_reads_idempipes_table_and_streams_each_event_once_across_compactions_and_vacuum() {
    let p = Harness::new("spark_reads");
    p.setup();
    let table = p.delta_path();
    let t = table.display().to_string();
    let sink = p.path("stream-sink");
    let checkpoint = p.path("stream-checkpoint");
    let mut s = spark();
    let catch_up = format!(
        "q = (spark.readStream.format('delta').load('{t}').writeStream.format('delta')\n\
         .option('checkpointLocation', '{}').trigger(availableNow=True).start('{}'))\n\
         q.awaitTermination()",
        checkpoint.display(),
        sink.display()
    );
    let mut distinct = 0;
    let mut first_compaction = None;
    for round in 0..3_u64 {
        let (file, expected) = p.generate_as(&format!("round-{round}.jsonl"), 1500, 150, 20, 100 + round);
        distinct += count(&expected, "distinct_keys");
        p.produce(&file);
        p.run_until_idle(&["--checkpoint-every", "3", "--max-batch-events", "400"]);
        // A replay of every round so far: nothing new.
        for earlier in 0..=round {
            p.produce(&p.path(&format!("round-{earlier}.jsonl")));
        }
        p.run_until_idle(&["--checkpoint-every", "3", "--max-batch-events", "400"]);
        p.ok(&["compact"]);
        first_compaction.get_or_insert_with(std::time::Instant::now);
        s.py(&catch_up);
        let streamed = s.sql(&format!("SELECT count(*), count(DISTINCT dedup_key) FROM delta.`{}`", sink.display()));
        assert_eq!(
            (streamed[0][0].as_u64().unwrap(), streamed[0][1].as_u64().unwrap()),
            (distinct, distinct),
            "round {round}: the stream saw an event twice or missed one"
        );
    }
    // The shortest retention `vacuum` takes is a minute: the first compaction's files
    // are past it then.
    let since = first_compaction.unwrap().elapsed();
    std::thread::sleep(Duration::from_secs(61).saturating_sub(since));
    let vacuumed: serde_json::Value = serde_json::from_str(&p.ok(&["vacuum", "--retention", "1m", "--json"])).unwrap();
    assert!(!vacuumed["files"].as_array().unwrap().is_empty(), "{vacuumed}");
    assert!(table.join("_delta_log/_last_checkpoint").exists(), "checkpoints were written");
    assert_eq!(s.counts(&table), (distinct, distinct));
    let types = s.sql(&format!("DESCRIBE delta.`{t}`"));
    let type_of = |c: &str| types.iter().find(|r| r[0] == c).map(|r| r[1].as_str().unwrap().to_owned()).unwrap();
    for (column, expected) in [
        ("dedup_key", "string"),
        ("event_time", "timestamp"),
        ("event_date", "date"),
        ("source_partition", "int"),
        ("source_offset", "bigint"),
        ("batch_id", "bigint"),
        ("ingested_at", "timestamp"),
    ] {
        assert_eq!(type_of(column), expected, "{column}");
    }
    let misdated = s.sql(&format!(
        "SELECT count(*) FROM delta.`{t}` WHERE event_date <> CAST(event_time AS DATE) OR event_date IS NULL \
         OR md5(concat_ws('\\u001f', user_id, event_type, date_format(event_time, \"yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'\"))) <> dedup_key"
    ));
    assert_eq!(misdated[0][0], 0, "every row's date and key follow from its time, as Spark derives them");
    let v = p.verify();
    assert_eq!(count(&v, "delta_misdated_rows"), 0, "{v}");
}

/// Python for the Spark session: MERGEs the events of the JSON-lines file `file` into the
/// table at `table` as a backfill would, each row derived as idempipe derives it (the
/// contract's key; the time as the contract reads it: epoch milliseconds, or text with
/// an offset or none, UTC), but its `event_date` the date of `event_time` in time zone
/// `date_zone`; only keys not already there are inserted; a commit that loses a race
/// with idempipe's is retried.
fn merge_backfill(file: &Path, table: &Path, date_zone: &str) -> String {
    format!(
        r#"
from pyspark.sql import functions as F
from delta.tables import DeltaTable
ts = F.col("timestamp")
src = (spark.read.schema("user_id STRING, event_type STRING, timestamp STRING").json("{file}")
    .withColumn("event_time", F.when(ts.rlike("^[0-9]{{1,15}}$"), F.timestamp_millis(ts.cast("long")))
                               .otherwise(ts.try_cast("timestamp")))
    .withColumn("dedup_key", F.md5(F.concat_ws("\u001f", "user_id", "event_type",
        F.date_format("event_time", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'"))))
    .dropDuplicates(["dedup_key"])
    .select("dedup_key", "user_id", "event_type", "event_time",
            F.to_date(F.from_utc_timestamp("event_time", "{date_zone}")).alias("event_date"),
            F.col("timestamp").alias("payload"),
            F.lit(-1).alias("source_partition"), F.lit(-1).cast("long").alias("source_offset"),
            F.lit(0).cast("long").alias("batch_id"), F.current_timestamp().alias("ingested_at")))
attempts = 0
while True:
    attempts += 1
    try:
        (DeltaTable.forPath(spark, "{table}").alias("t")
            .merge(src.alias("s"), "t.event_date = s.event_date AND t.dedup_key = s.dedup_key")
            .whenNotMatchedInsertAll().execute())
        break
    except Exception as e:
        if "Concurrent" not in type(e).__name__ + str(e) or attempts > 30:
            raise
result = attempts
"#,
        file = file.display(),
        table = table.display()
    )
}

/// A Spark backfill (a MERGE on `dedup_key` and `event_date`) of the same events the
/// running processor is inserting and compacting: each key once, whoever wins each race.
/// Then, `run` paused, a backfill of events it has not seen yet, auto-compacted by Spark;
/// resumed (compacting every second), the same events sent to it store nothing.
/// Then the rule it all relies on, shown broken: a backfill that dates its rows by New
/// York's time (a Spark session in that time zone casting `event_time` to a date);
/// `verify` counts the rows whose date is not their UTC date, and their events, sent to
/// idempipe, are stored again under it.
#[test]
fn a_spark_merge_backfill_racing_the_processor_stores_each_key_once() {
    let p = Harness::new("spark_backfill");
    p.setup();
    let table = p.delta_path();
    let t = table.display();
    let (file, expected) = p.generate(4000, 0, 0, 111);
    let distinct = count(&expected, "distinct_keys");
    let mut s = spark();
    let mut run = p.spawn(&["run", "--trigger", "200ms", "--max-batch-events", "300", "--compact-every", "1s"], "run");
    // The events arrive over 20 s while Spark backfills them all.
    let mut produce = p.spawn(&["produce", "--input", file.to_str().unwrap(), "--rate", "200"], "produce");
    let attempts = s.py(&merge_backfill(&file, &table, "UTC"));
    assert!(produce.wait().unwrap().success(), "{}", p.tail("produce"));
    wait_until(Duration::from_secs(120), "the processor caught up", || p.status()["processor_lag"] == 0);
    assert_eq!(s.counts(&table), (distinct, distinct));
    let spark_rows = |s: &mut common::spark::Spark| {
        s.sql(&format!("SELECT count(*) FROM delta.`{t}` WHERE source_partition = -1"))[0][0].as_u64().unwrap()
    };
    eprintln!("the backfill: {attempts} attempt(s), {} of {distinct} keys stored by it", spark_rows(&mut s));

    // Events idempipe has not seen, backfilled by Spark, which then compacts (auto-
    // compaction, from two small files on). The processor is paused meanwhile: running,
    // its compaction (every second) could take the backfill's files first, and Spark's
    // would find nothing to do; the race itself is the first test's.
    s.sql(&format!("ALTER TABLE delta.`{t}` SET TBLPROPERTIES ('delta.autoOptimize.autoCompact' = 'true')"));
    s.sql("SET spark.databricks.delta.autoCompact.minNumFiles = 2");
    let before = spark_rows(&mut s);
    let (ahead, expected) = p.generate_as("ahead.jsonl", 1000, 0, 0, 113);
    let ahead_keys = count(&expected, "distinct_keys");
    let signal = |name: &str| {
        let status = std::process::Command::new("kill").args([name, &run.id().to_string()]).status().unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    s.py(&merge_backfill(&ahead, &table, "UTC"));
    signal("-CONT");
    let history = s.py(&format!(
        "from delta.tables import DeltaTable\n\
         result = [[h.operation, dict(h.operationParameters or {{}})] \
                   for h in DeltaTable.forPath(spark, '{t}').history().collect()]"
    ));
    let auto = history.as_array().unwrap().iter().filter(|r| r[0] == "OPTIMIZE" && r[1]["auto"] == "true").count();
    assert!(auto >= 1, "Spark's auto-compaction never ran: {history}");
    assert_eq!(spark_rows(&mut s), before + ahead_keys, "the backfill stored every new key");
    p.produce(&ahead);
    wait_until(Duration::from_secs(120), "the processor caught up", || p.status()["processor_lag"] == 0);
    stop(&mut run);
    let distinct = distinct + ahead_keys;
    assert_eq!(s.counts(&table), (distinct, distinct));
    assert_eq!(spark_rows(&mut s), before + ahead_keys, "idempipe stored none of them again");
    assert_eq!(count(&p.verify(), "delta_misdated_rows"), 0);

    // Rows dated in another time zone: found by verify, not by the key check.
    let (late, expected) = p.generate_as("late.jsonl", 1000, 0, 0, 112);
    let late_keys = count(&expected, "distinct_keys");
    s.py(&merge_backfill(&late, &table, "America/New_York"));
    let misdated = count(&p.verify(), "delta_misdated_rows");
    assert!(misdated > 0 && misdated < late_keys, "{misdated} of {late_keys}");
    p.produce(&late);
    p.run_until_idle(&[]);
    let (rows, keys) = s.counts(&table);
    assert_eq!((rows, keys), (distinct + late_keys + misdated, distinct + late_keys), "each misdated key stored again");
}
