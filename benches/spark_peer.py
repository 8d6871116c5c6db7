"""The seed's own design in PySpark, the peer idempipe is measured against
(scripts/bench_spark.sh): Structured Streaming from the raw topic; each micro-batch
parsed, given the MD5 key of idempipe's contract, de-duplicated (`dropDuplicates`),
merged into the Delta table (`MERGE ... WHEN NOT MATCHED THEN INSERT *`, matched on the
key and the date partition), and the rows new to the table written to the processed
topic from the same batch; events without a user, type or readable time go to the
dead-letter topic.

Usage: spark_peer.py --brokers B --raw-topic T --processed-topic P --dlq-topic D
                     --table PATH --checkpoint DIR [--trigger 1s] [--until-idle 5]
                     [--max-offsets N] [--batches FILE]
--until-idle N stops the query once N seconds pass with no new input after the first
batch that had some. --batches FILE gets one JSON line per micro-batch (its events, new rows, start,
commit and end); --latencies FILE one line per event: milliseconds from its Kafka
timestamp (set when produced) to its batch's commit.
"""

import argparse
import json
import os
import sys
import time


def main():
    args = parse_args()
    # The answer lines are ours; Spark's chatter goes to stderr.
    import delta
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    builder = (
        SparkSession.builder.master(os.environ.get("SPARK_MASTER", "local[2]"))
        .appName("idempipe-spark-peer")
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "2g"))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", os.environ.get("SPARK_SHUFFLE_PARTITIONS", "4"))
    )
    spark_version = __import__("pyspark").__version__
    scala = "2.13"
    kafka_package = f"org.apache.spark:spark-sql-kafka-0-10_{scala}:{spark_version}"
    spark = delta.configure_spark_with_delta_pip(builder, extra_packages=[kafka_package]).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    from delta.tables import DeltaTable

    schema = T.StructType(
        [
            T.StructField("user_id", T.StringType()),
            T.StructField("event_type", T.StringType()),
            T.StructField("timestamp", T.StringType()),
        ]
    )
    columns = T.StructType(
        [
            T.StructField("dedup_key", T.StringType(), False),
            T.StructField("user_id", T.StringType()),
            T.StructField("event_type", T.StringType()),
            T.StructField("event_time", T.TimestampType()),
            T.StructField("event_date", T.DateType()),
            T.StructField("payload", T.StringType()),
            T.StructField("source_partition", T.IntegerType()),
            T.StructField("source_offset", T.LongType()),
            T.StructField("batch_id", T.LongType()),
            T.StructField("ingested_at", T.TimestampType()),
        ]
    )
    if not DeltaTable.isDeltaTable(spark, args.table):
        (
            DeltaTable.createIfNotExists(spark)
            .location(args.table)
            .addColumns(columns)
            .partitionedBy("event_date")
            .execute()
        )

    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.brokers)
        .option("subscribe", args.raw_topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "false")
    )
    if args.max_offsets:
        raw = raw.option("maxOffsetsPerTrigger", str(args.max_offsets))
    events = raw.load().select(
        F.col("value").cast("string").alias("payload"),
        F.col("partition").alias("source_partition"),
        F.col("offset").alias("source_offset"),
        F.col("timestamp").alias("kafka_time"),
    )
    log = open(args.batches, "a") if args.batches else None
    latencies = open(args.latencies, "a") if args.latencies else None
    # When the last batch with input ended (None: none yet; the idle clock starts there).
    last_input = [None]
    target = DeltaTable.forPath(spark, args.table)

    def write_batch(batch, batch_id):
        started = time.time()
        ts = F.col("e.timestamp")
        batch = batch.withColumn("e", F.from_json("payload", schema)).withColumn(
            # The time as the contract reads it: epoch milliseconds, or text with an
            # offset or none (UTC: the session's zone).
            "event_time",
            F.when(ts.rlike("^[0-9]{1,15}$"), F.timestamp_millis(ts.cast("long"))).otherwise(ts.try_cast("timestamp")),
        )
        batch.persist()
        n = batch.count()
        if n == 0:
            batch.unpersist()
            return
        valid = (
            (F.length("e.user_id") > 0) & (F.length("e.event_type") > 0) & F.col("event_time").isNotNull()
        )
        invalid = batch.filter(~valid)
        rows = (
            batch.filter(valid)
            .withColumn(
                "dedup_key",
                F.md5(
                    F.concat_ws(
                        "\u001f",
                        F.col("e.user_id"),
                        F.col("e.event_type"),
                        F.date_format("event_time", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'"),
                    )
                ),
            )
            .dropDuplicates(["dedup_key"])
            .select(
                "dedup_key",
                F.col("e.user_id").alias("user_id"),
                F.col("e.event_type").alias("event_type"),
                "event_time",
                F.to_date("event_time").alias("event_date"),
                "payload",
                "source_partition",
                "source_offset",
                F.lit(batch_id).cast("long").alias("batch_id"),
                F.current_timestamp().alias("ingested_at"),
                "kafka_time",
            )
        )
        # The rows the table does not hold yet (on the batch's dates): the processed
        # topic's; then the seed's MERGE of the de-duplicated batch.
        dates = [r[0] for r in rows.select("event_date").distinct().collect()]
        stored = spark.read.format("delta").load(args.table).filter(F.col("event_date").isin(dates)).select("dedup_key")
        new = rows.join(stored, "dedup_key", "left_anti").persist()
        inserted = new.count()
        (
            target.alias("t")
            .merge(rows.drop("kafka_time").alias("s"), "t.event_date = s.event_date AND t.dedup_key = s.dedup_key")
            .whenNotMatchedInsertAll()
            .execute()
        )
        committed = time.time()
        (
            new.select(F.col("dedup_key").alias("key"), F.to_json(F.struct(*[c for c in new.columns if c != "kafka_time"])).alias("value"))
            .write.format("kafka")
            .option("kafka.bootstrap.servers", args.brokers)
            .option("topic", args.processed_topic)
            .save()
        )
        (
            invalid.select(F.col("payload").alias("value"))
            .write.format("kafka")
            .option("kafka.bootstrap.servers", args.brokers)
            .option("topic", args.dlq_topic)
            .save()
        )
        if log:
            log.write(
                json.dumps(
                    {
                        "batch_id": batch_id,
                        "events_in": n,
                        "inserted": inserted,
                        "started_at": started,
                        "committed_at": committed,
                        "ended_at": time.time(),
                    }
                )
                + "\n"
            )
            log.flush()
        if latencies:
            # Produce (the record's Kafka timestamp) to Delta commit, per event.
            for row in batch.select(F.col("kafka_time").cast("double")).collect():
                latencies.write(f"{(committed - row[0]) * 1000:.1f}\n")
            latencies.flush()
        new.unpersist()
        batch.unpersist()
        last_input[0] = time.time()

    query = (
        events.writeStream.foreachBatch(write_batch)
        .option("checkpointLocation", args.checkpoint)
        .trigger(processingTime=args.trigger)
        .start()
    )
    print(json.dumps({"started": True}), flush=True)
    while query.isActive:
        time.sleep(0.5)
        idle_since, status = last_input[0], query.status
        busy = status["isTriggerActive"] or status["isDataAvailable"]
        if args.until_idle and idle_since is not None and not busy and time.time() - idle_since > args.until_idle:
            query.stop()
    query.awaitTermination()
    spark.stop()


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", required=True)
    p.add_argument("--raw-topic", required=True)
    p.add_argument("--processed-topic", required=True)
    p.add_argument("--dlq-topic", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--trigger", default="1 second")
    p.add_argument("--until-idle", type=float, default=0)
    p.add_argument("--max-offsets", type=int, default=0)
    p.add_argument("--batches")
    p.add_argument("--latencies")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
