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
