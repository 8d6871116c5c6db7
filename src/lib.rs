//! # idempipe
//!
//! A Kafka to Delta Lake pipeline that makes replays harmless.
//!
//! ## The data path and its guarantees
//! Events arrive on the raw topic. The processor reads them in micro-batches
//! ([`source`]), validates each against the contract ([`event`]): an invalid message goes
//! to the dead-letter topic with its reason, a valid one gets its dedup key (MD5 of user,
//! event type and canonical time). Each batch keeps the first copy of a key ([`dedup`]),
//! and inserts into the Delta table ([`table`]) only the keys it lacks (looked up in an
//! in-memory index of the table's keys, [`table::key_index`]), in one commit that
//! conflicts with any concurrent insert into the same dates and also records each Kafka
//! partition's last offset ([`table::offsets`]). Delta is the truth: a restarted or
//! rebalanced consumer resumes after the offsets it records. New events also go to the
//! processed topic ([`output`]) before that commit, so everything in Delta is there too;
//! the ClickHouse sink ([`clickhouse::sink`]) loads them into ClickHouse.
//! [`pipeline`] holds the order of the steps and why.
//!
//! ## Layout
//! - [`cli`], [`config`]: flags, file, environment; each option declared once
//!   ([`config::options`]); validated settings.
//! - [`event`]: the contract: parsing, canonical time, dedup key, rejection classes.
//! - [`kafka`]: client settings and error state, topic administration, the positioned
//!   consumer the processor and the sink share (positions, the one collect loop, the
//!   broker's ranges and resets) and reading topics back; [`source`]: what is particular
//!   to the raw topic (Delta-driven starts, the rebalance hook, the orphan watch).
//! - [`registry`]: messages in the Confluent wire format (Avro, Protobuf, JSON Schema)
//!   and the schema registry they name.
//! - [`batch`]: a micro-batch being collected; [`dedup`]: in-batch dedup.
//! - [`table`]: the Delta table: schema and rows, writing (check, stage, commit, MERGE),
//!   Kafka offsets as txn actions, reading back, maintenance, the key index.
//! - [`output`]: the processed and dead-letter topics and their producer.
//! - [`clickhouse`]: the speed layer: client, DDL, and the ClickHouse sink.
//! - [`pipeline`]: the batch loop; [`retry`]: the one retry driver and its policies;
//!   [`shutdown`]: the one shutdown request, from signals or a caller.
//! - [`batch_log`]: per-batch records; [`analyze`]: their statistics, text table and
//!   HTML page; [`metrics`]: Prometheus metrics and health endpoints.
//! - [`commands`]: one module per command, each returning a report.

/// The log filter when `IDEMPIPE_LOG` is unset. delta-rs logs a lost commit race as an
/// error and a warning on every MERGE; the pipeline logs each failed attempt itself.
pub const DEFAULT_LOG_FILTER: &str = "info,deltalake=warn,deltalake_core=error,deltalake_core::kernel::transaction=off,datafusion=warn,buoyant_kernel=off";

pub mod analyze;
pub mod batch;
pub mod batch_log;
pub mod cli;
pub mod clickhouse;
pub mod commands;
pub mod config;
pub mod dedup;
pub mod event;
pub mod kafka;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod registry;
pub mod retry;
pub mod shutdown;
pub mod source;
pub mod table;
