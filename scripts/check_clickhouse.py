#!/usr/bin/env python3
"""Checks against current ClickHouse, embedded in-process by the `chdb` package.

Only ClickHouse 18.16 runs as a server here; this script is how the tests make sure that
what idempipe sends to *current* servers is valid there, and it doubles as an independent
reader of the Delta table. Modes (JSON in on stdin where noted, one JSON object out):

  delta PATH       rows and key checksum of the Delta table at PATH, read by chdb's
                   deltaLakeLocal()
  ddl              stdin {database, table, count_final}: creates the table, inserts three
                   rows (two copies of one key), checks FINAL, the checksum query and the
                   insert deduplication token
  partitions       stdin {database_ddl, table_ddl, database, table, times: [micros...],
                   runs: [[start, end]...]}: inserts one row per event time in one insert
                   (current servers refuse more than 100 partitions), then in the runs the
                   sink would make; reports the first insert's error and the rows loaded
  rowbinary        stdin {database_ddl, table_ddl, database, table, columns: [[name, type]...],
                   file}: creates the table, inserts the RowBinary rows of FILE (in that
                   column order) and returns the rows as JSON objects (decimals as
                   strings)
  kafka-engine     stdin {database, table, kafka_engine: [queue, view], expected_rows,
                   timeout_s}: creates the table and the Kafka-engine objects, waits until
                   FINAL holds expected_rows (ClickHouse consumes the topic itself), and
                   reports counts and the key checksum
"""
import json
import os
import sys
import tempfile
import time

import chdb
from chdb import session

CHECKSUM = "sumWithOverflow(reinterpretAsUInt64(reverse(unhex(substring(dedup_key, 1, 16)))))"


def py_checksum(keys):
    return sum(int(k[:16], 16) for k in keys) % 2**64


def scalar_row(s, sql):
    out = str(s.query(sql, "CSV")).strip()
    return [int(x) if x.lstrip("-").isdigit() else x.strip('"') for x in out.split(",")]


def delta(path):
    # chdb only reads files under its user_files path, which is the working directory.
    os.chdir("/")
    out = str(chdb.query(f"SELECT count(), {CHECKSUM} FROM deltaLakeLocal('{path}')", "CSV")).strip()
    rows, checksum = (int(x) for x in out.split(","))
    print(json.dumps({"rows": rows, "key_checksum": checksum}))


def ddl(spec):
    with tempfile.TemporaryDirectory() as d:
        s = session.Session(d)
        db, t = spec["database"], spec["table"]
        s.query(spec["database_ddl"])
        s.query(spec["table_ddl"])
        s.query(spec["table_ddl"])  # IF NOT EXISTS: a second run is fine
        name = f"`{db}`.`{t}`"
        keys = ["0d268ed825d0878a0000000000000001", "ffffffffffffffff0000000000000002"]

        def insert(key, version, batch, token=None):
            settings = f" SETTINGS insert_deduplication_token = '{token}'" if token else ""
            s.query(
                f"INSERT INTO {name} (dedup_key, user_id, event_type, event_time, event_date, payload, "
                f"source_partition, source_offset, batch_id, ingested_at, version){settings} VALUES "
                f"('{key}', 'u', 'click', fromUnixTimestamp64Micro(1767323045123456, 'UTC'), '2026-01-02', "
                f"'{{}}', 0, 1, {batch}, fromUnixTimestamp64Micro({version}, 'UTC'), {version})"
            )

        insert(keys[0], 5, 100, "processed/0:0-0")
        insert(keys[0], 7, 200, "processed/0:1-1")
        insert(keys[1], 6, 300, "processed/1:0-0")
        # A retry of the last insert with its token: dropped by the server.
        insert(keys[1], 6, 300, "processed/1:0-0")
        raw = scalar_row(s, f"SELECT count() FROM {name}")[0]
        final_rows, checksum = scalar_row(s, spec["count_final"])
        kept = scalar_row(s, f"SELECT version, batch_id FROM {name} FINAL WHERE dedup_key = '{keys[0]}'")
        micros = scalar_row(s, f"SELECT toUnixTimestamp64Micro(event_time) FROM {name} FINAL LIMIT 1")[0]
        s.query(spec["optimize_final"])
        optimized = scalar_row(s, f"SELECT count() FROM {name}")[0]
        print(json.dumps({
            "raw_rows": raw,
            "raw_rows_after_optimize_final": optimized,
            "final_rows": final_rows,
            "checksum_matches": checksum == py_checksum(keys),
            "final_keeps_highest_version": kept == [7, 200],
            "event_time_micros_exact": micros == 1767323045123456,
        }))


def kafka_engine(spec):
    with tempfile.TemporaryDirectory() as d:
        s = session.Session(d)
        s.query(spec["database_ddl"])
        s.query(spec["table_ddl"])
        for sql in spec["kafka_engine"]:
            try:
                s.query(sql)
            except Exception as e:  # chdb's first Kafka CREATE reports a spurious Code 49
                if "Code: 49" not in str(e):
                    raise
                s.query(sql)
        name = f"`{spec['database']}`.`{spec['table']}`"
        deadline = time.time() + spec.get("timeout_s", 120)
        final_rows = raw = checksum = 0
        while time.time() < deadline:
            raw = scalar_row(s, f"SELECT count() FROM {name}")[0]
            final_rows, checksum = scalar_row(s, f"SELECT count(), {CHECKSUM} FROM {name} FINAL")
            if final_rows >= spec["expected_rows"]:
                break
            time.sleep(1)
        s.query(f"DROP TABLE IF EXISTS `{spec['database']}`.`{spec['table']}_kafka_mv`")
        s.query(f"DROP TABLE IF EXISTS `{spec['database']}`.`{spec['table']}_kafka_queue`")
        print(json.dumps({"raw_rows": raw, "final_rows": final_rows, "key_checksum": checksum}))


def partitions(spec):
    with tempfile.TemporaryDirectory() as d:
        s = session.Session(d)
        s.query(spec["database_ddl"])
        s.query(spec["table_ddl"])
        name = f"`{spec['database']}`.`{spec['table']}`"
        times = spec["times"]

        def insert(rows):
            values = ", ".join(
                f"('{i:032x}', 'u', 'click', fromUnixTimestamp64Micro({t}, 'UTC'), toDate(fromUnixTimestamp64Micro({t}, 'UTC')), "
                f"'{{}}', 0, {i}, 1, fromUnixTimestamp64Micro({t}, 'UTC'), 1)"
                for i, t in rows
            )
            s.query(
                f"INSERT INTO {name} (dedup_key, user_id, event_type, event_time, event_date, payload, "
                f"source_partition, source_offset, batch_id, ingested_at, version) VALUES {values}"
            )

        whole_error = None
        try:
            insert(list(enumerate(times)))
        except Exception as e:  # the server's refusal
            whole_error = str(e)
        for start, end in spec["runs"]:
            insert([(i, times[i]) for i in range(start, end)])
        rows = scalar_row(s, f"SELECT count() FROM {name}")[0]
        months = scalar_row(s, f"SELECT uniqExact(toYYYYMM(event_time)) FROM {name}")[0]
        print(json.dumps({"whole_insert_error": whole_error, "rows": rows, "months": months}))


def rowbinary(spec):
    with tempfile.TemporaryDirectory() as d:
        s = session.Session(d)
        s.query(spec["database_ddl"])
        s.query(spec["table_ddl"])
        # Columns added since the table was made (schema evolution).
        for sql in spec.get("alter_ddl", []):
            s.query(sql)
        name = f"`{spec['database']}`.`{spec['table']}`"
        names = ", ".join(f"`{n}`" for n, _ in spec["columns"])
        structure = ", ".join(f"`{n}` {t}" for n, t in spec["columns"])
        # The file table function reads under the working directory.
        os.chdir(os.path.dirname(spec["file"]))
        s.query(
            f"INSERT INTO {name} ({names}) SELECT * FROM file('{os.path.basename(spec['file'])}', "
            f"'RowBinary', '{structure.replace(chr(39), chr(92) + chr(39))}')"
        )
        settings = "SETTINGS output_format_json_quote_decimals = 1, output_format_json_quote_64bit_integers = 0"
        out = str(s.query(f"SELECT * FROM {name} ORDER BY dedup_key {settings}", "JSONEachRow")).strip()
        print(json.dumps({"rows": [json.loads(line) for line in out.splitlines()]}))


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "delta" and len(sys.argv) == 3:
        delta(sys.argv[2])
    elif mode == "ddl":
        ddl(json.load(sys.stdin))
    elif mode == "partitions":
        partitions(json.load(sys.stdin))
    elif mode == "rowbinary":
        rowbinary(json.load(sys.stdin))
    elif mode == "kafka-engine":
        kafka_engine(json.load(sys.stdin))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
