//! `event::parse` on arbitrary bytes; the properties are in `properties.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/event/mod.rs"]
#[allow(dead_code, unreachable_pub)]
mod event;
#[allow(dead_code)]
mod properties;

fuzz_target!(|data: &[u8]| properties::check_message(data));
