#!/usr/bin/env python3
"""Reads an idempipe Delta table with the Python `deltalake` package, an independent
reader, checks its schema and prints its counts as JSON.

Usage: scripts/check_delta.py PATH
Exit status 1 (with the reason on stderr) if the schema is not the contract's.
"""
import json
import sys

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

EXPECTED = {
    "dedup_key": "string",
    "user_id": "string",
    "event_type": "string",
    "event_time": "timestamp",
    "event_date": "date",
    "payload": "string",
    "source_partition": "integer",
    "source_offset": "long",
    "batch_id": "long",
    "ingested_at": "timestamp",
}


def main(path: str) -> int:
    table = DeltaTable(path)
    fields = {f.name: f for f in table.schema().fields}
    problems = []
    for name, kind in EXPECTED.items():
        field = fields.get(name)
        if field is None:
            problems.append(f"missing column {name}")
        elif str(field.type.type) != kind:
            problems.append(f"column {name} is {field.type.type}, expected {kind}")
    if fields.get("dedup_key") is not None and fields["dedup_key"].nullable:
        problems.append("dedup_key is nullable")
    if table.metadata().partition_columns != ["event_date"]:
        problems.append(f"partition columns are {table.metadata().partition_columns}")
    data = table.to_pyarrow_table()
    keys = data.column("dedup_key")
    times = data.column("event_time")
    dates = data.column("event_date")
    # event_date must be the UTC date of event_time on every row.
    mismatched = pc.sum(pc.not_equal(pc.cast(times, pa.date32()), dates)).as_py() or 0
    if mismatched:
        problems.append(f"{mismatched} rows have an event_date that is not the date of event_time")
    if problems:
        print("; ".join(problems), file=sys.stderr)
        return 1
    print(json.dumps({
        "rows": data.num_rows,
        "distinct_keys": len(pc.unique(keys)),
        "version": table.version(),
        "partitions": len(pc.unique(dates)),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
