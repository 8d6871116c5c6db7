//! The shared contract vectors: every line must hold.

use std::collections::HashMap;
use std::path::Path;

use idempipe::event::{self, DEFAULT_MAX_MESSAGE_BYTES};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    message: String,
    valid: bool,
    canonical_timestamp: Option<String>,
    dedup_key: Option<String>,
    /// The `error.class` an invalid vector must be refused with. The bundled copy names it
    /// for each; the shared copy names none, so its lines are looked up in the bundled one.
    #[serde(default)]
    reject_class: Option<String>,
}

fn vectors(path: &Path) -> Vec<Vector> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

fn bundled() -> Vec<Vector> {
    vectors(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/key_vectors.jsonl"))
}

/// Checks every vector: a valid one gives its canonical time and key, an invalid one is
/// refused with its class (`classes`: the class of each invalid message).
fn check(vectors: &[Vector], classes: &HashMap<&str, &str>) -> usize {
    for (i, v) in vectors.iter().enumerate() {
        let got = event::parse(Some(v.message.as_bytes()), DEFAULT_MAX_MESSAGE_BYTES);
        match (v.valid, got) {
            (true, Ok(e)) => {
                assert_eq!(Some(e.time.to_string()), v.canonical_timestamp, "line {}: {}", i + 1, v.message);
                assert_eq!(Some(e.key.to_string()), v.dedup_key, "line {}: {}", i + 1, v.message);
            }
            (false, Err(r)) => {
                let Some(class) = classes.get(v.message.as_str()) else {
                    panic!("line {}: {:?} is invalid, and no bundled vector names its class", i + 1, v.message)
                };
                assert_eq!(r.class.as_str(), *class, "line {}: {:?} refused as {r}", i + 1, v.message);
            }
            (true, Err(r)) => panic!("line {}: {} was refused: {r}", i + 1, v.message),
            (false, Ok(e)) => panic!("line {}: {} was accepted as {}", i + 1, v.message, e.key),
        }
    }
    vectors.len()
}

/// The class of each invalid message of the bundled copy.
fn classes(bundled: &[Vector]) -> HashMap<&str, &str> {
    bundled
        .iter()
        .filter(|v| !v.valid)
        .map(|v| {
            let class = v.reject_class.as_deref().unwrap_or_else(|| panic!("{:?} names no reject_class", v.message));
            (v.message.as_str(), class)
        })
        .collect()
}

#[test]
fn every_contract_vector_holds() {
    let bundled = bundled();
    assert!(check(&bundled, &classes(&bundled)) >= 42);
}

/// A refusal for the wrong reason fails the check: the class is compared, not only the
/// refusal.
#[test]
fn an_invalid_vector_refused_for_another_reason_fails() {
    let bundled = bundled();
    let mut wrong = classes(&bundled);
    let (message, _) = wrong.iter().next().map(|(m, c)| (*m, *c)).unwrap();
    wrong.insert(message, "not_utf8");
    let outcome = std::panic::catch_unwind(|| check(&bundled, &wrong));
    assert!(outcome.is_err(), "{message:?} passed with the wrong class");
}

/// The project's shared copy, beside the checkout, is the one that counts when present
/// (CI always has it). Its invalid lines take their class from the bundled copy.
#[test]
fn every_shared_contract_vector_holds() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/contract/key_vectors.jsonl");
    if shared.exists() {
        let bundled = bundled();
        assert!(check(&vectors(&shared), &classes(&bundled)) > 0);
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI must have ../shared/contract/key_vectors.jsonl");
        eprintln!("no {}: checked the bundled copy only", shared.display());
    }
}

#[path = "../fuzz/fuzz_targets/properties.rs"]
mod properties;

/// Every input of a committed fuzz corpus, through the fuzz targets' properties.
fn replay_corpus(target: &str, check: impl Fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
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
