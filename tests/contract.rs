//! The shared contract vectors: every line must hold.

use idempipe::event::{self, DEFAULT_MAX_MESSAGE_BYTES};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    message: String,
    valid: bool,
    canonical_timestamp: Option<String>,
    dedup_key: Option<String>,
}

fn check(path: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut n = 0;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Vector = serde_json::from_str(line).unwrap();
        let got = event::parse(Some(v.message.as_bytes()), DEFAULT_MAX_MESSAGE_BYTES);
        match (v.valid, got) {
            (true, Ok(e)) => {
                assert_eq!(Some(e.time.to_string()), v.canonical_timestamp, "line {}: {}", i + 1, v.message);
                assert_eq!(Some(e.key.to_string()), v.dedup_key, "line {}: {}", i + 1, v.message);
            }
            (false, Err(_)) => {}
            (true, Err(r)) => panic!("line {}: {} was refused: {r}", i + 1, v.message),
            (false, Ok(e)) => panic!("line {}: {} was accepted as {}", i + 1, v.message, e.key),
        }
        n += 1;
    }
    n
}

#[test]
fn every_contract_vector_holds() {
    let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/key_vectors.jsonl");
    assert!(check(&bundled) >= 42);
}

/// The project's shared copy, beside the checkout, is the one that counts when present
/// (CI always has it).
#[test]
fn every_shared_contract_vector_holds() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/contract/key_vectors.jsonl");
    if shared.exists() {
        assert!(check(&shared) > 0);
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI must have ../shared/contract/key_vectors.jsonl");
        eprintln!("no {}: checked the bundled copy only", shared.display());
    }
}

#[path = "../fuzz/fuzz_targets/properties.rs"]
mod properties;

/// Every input of a committed fuzz corpus, through the fuzz targets' properties.
fn replay_corpus(target: &str, check: impl Fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        assert!(outcome.is_ok(), "{} breaks a property (input {:?})", path.display(), String::from_utf8_lossy(&data));
        n += 1;
    }
    n
}

/// The fuzz corpus (`fuzz/corpus/`, grown by `cargo fuzz run`) replayed on stable Rust,
/// so that every input the fuzzer kept stays a regression test.
#[test]
fn the_fuzz_corpus_holds_the_contract_properties() {
    let messages = replay_corpus("parse", properties::check_message);
    let timestamps = replay_corpus("timestamp", |data| {
        if let Ok(text) = std::str::from_utf8(data) {
            properties::check_timestamp(text);
        }
    });
    assert!(messages >= 100 && timestamps >= 50, "{messages} messages, {timestamps} timestamps");
}
