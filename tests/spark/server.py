"""A Spark session with Delta Lake that the tests drive: one JSON request per line on
stdin, one JSON answer per line on stdout (Spark's own logging goes to stderr).

Requests:
  {"sql": "..."}    runs a statement; answers {"rows": [[...], ...]} (values as JSON:
                    times and dates as ISO strings, decimals as strings)
  {"py": "..."}     runs Python with `spark` (the session) and `delta` (the delta-spark
                    module) in scope; answers {"result": <the variable `result`, if set>}
A failure answers {"error": "..."}; the session stays up. End of input ends it.

Started once per test binary (a Spark JVM takes tens of seconds to come up): the first
line it prints is {"ready": true, "spark": VERSION, "delta": VERSION}.
Environment: SPARK_LOCAL_DIR, a scratch folder (warehouse, metastore, shuffle files).
"""

import datetime
import decimal
import json
import os
import sys
import traceback


def plain(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "asDict"):
        return plain(value.asDict())
    if isinstance(value, bytes):
        return value.hex()
    return value


def main():
    # The answers are ours alone: anything else printed goes to stderr.
    answers = sys.stdout
    sys.stdout = sys.stderr

    import delta
    import pyspark
    from pyspark.sql import SparkSession

    scratch = os.environ.get("SPARK_LOCAL_DIR") or os.path.join(os.getcwd(), "spark-scratch")
    os.makedirs(scratch, exist_ok=True)
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("idempipe-tests")
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "1g"))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        # Small tables: a Delta snapshot's state in 2 tasks, not Delta's default 50.
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", os.path.join(scratch, "local"))
        .config("spark.sql.warehouse.dir", os.path.join(scratch, "warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={os.path.join(scratch, 'derby')}")
        # VACUUM with a retention below a week, on test tables.
        .config("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    )
    spark = delta.configure_spark_with_delta_pip(builder).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    versions = {"ready": True, "spark": pyspark.__version__, "delta": delta_version()}
    print(json.dumps(versions), file=answers, flush=True)

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
            if "sql" in request:
                rows = spark.sql(request["sql"]).collect()
                answer = {"rows": [plain(list(r)) for r in rows]}
            else:
                scope = {"spark": spark, "delta": delta, "result": None}
                exec(request["py"], scope)
                answer = {"result": plain(scope["result"])}
        except Exception as e:  # noqa: BLE001: every failure is the caller's to judge
            traceback.print_exc()
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), file=answers, flush=True)
    spark.stop()


def delta_version():
    from importlib.metadata import version

    return version("delta-spark")


if __name__ == "__main__":
    main()
