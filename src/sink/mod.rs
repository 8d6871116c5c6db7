//! Where a batch goes: the Delta table (the truth), then for the speed layer the
//! processed topic, and refused messages to the dead-letter topic.

pub mod clickhouse;
pub mod delta;
pub mod dlq;
pub mod key_index;
pub mod processed;
pub mod producer;
