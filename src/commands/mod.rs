//! One module per command: each parses nothing and decides nothing about the data path;
//! it calls the library and returns a report that is `Serialize` (for `--json`) and
//! `Display` (text); `main` prints it to stdout (diagnostics go to stderr).

pub mod analyze;
pub mod bench;
pub mod compact;
pub mod config;
pub mod drain;
pub mod generate;
pub mod produce;
pub mod reconcile;
pub mod run;
pub mod setup;
pub mod sink_clickhouse;
pub mod status;
pub mod vacuum;
pub mod verify;
