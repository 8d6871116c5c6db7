//! # idempipe
//!
//! A Kafka to Delta Lake pipeline that makes replays harmless.
//!
//! ## The data path and its guarantees
//! Events arrive on the raw topic. The processor reads them in micro-batches, validates
//! each against the contract ([`event`]): an invalid message goes to the dead-letter topic
//! with its reason, a valid one gets its dedup key (MD5 of user, event type and canonical
//! time). Each batch keeps the first copy of a key ([`dedup`]), and inserts into Delta
//! only the keys the table lacks (looked up in an in-memory index of the table's keys,
//! [`table::key_index`]), in one commit that conflicts with any concurrent insert into the
//! same dates and also records each Kafka partition's last offset ([`table`]). Delta is the truth: a restarted or
//! rebalanced consumer resumes after the offsets it records ([`source`]). New events also
//! go to the processed topic before that commit, so everything in Delta is there too.
//! [`pipeline`] holds the order of the steps and why.
//!
//! ## Layout
//! - [`cli`], [`config`]: flags, file, environment; validated settings.
//! - [`event`]: the contract; [`dedup`]: in-batch dedup; [`batch`]: a batch being collected.
//! - [`source`]: the consumer and its Delta-driven starts; [`kafka`]: client helpers.
//! - [`sink`]: Delta, the processed and dead-letter topics, ClickHouse.
//! - [`pipeline`]: the batch loop; [`batch_log`]: per-batch records.
//! - [`commands`]: one module per command.

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
pub mod retry;
pub mod source;
pub mod table;
