//! The documentation against the code and the scripts, where it can be checked without
//! services: the README's length, no issue numbers, the compatibility table's versions
//! (docs/OPERATIONS.md) against what the scripts and the lock file pin, and every
//! relative link. (The option table is checked in `config::options`, the processed
//! record's in `output::processed`.)

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The documents: the top-level Markdown files, docs/ and benches/results/.
fn documents() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [root().to_owned(), root().join("docs"), root().join("benches/results")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn the_readme_is_at_most_250_lines() {
    let lines = read("README.md").lines().count();
    assert!(lines <= 250, "README.md has {lines} lines");
}

#[test]
fn no_document_script_or_source_names_an_issue_number() {
    fn visit(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | "data" | ".git" | "corpus" | "artifacts") {
                    visit(&path, found);
                }
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let lower = text.to_ascii_lowercase();
            for (at, _) in lower.match_indices("issue ") {
                if lower[at + 6..].starts_with(|c: char| c.is_ascii_digit()) {
                    found.push(format!("{}: {}", path.display(), &text[at..(at + 12).min(text.len())]));
                }
            }
        }
    }
    let mut found = Vec::new();
    visit(root(), &mut found);
    assert!(found.is_empty(), "{found:#?}");
}

/// The `| component | versions tested | notes |` row of `component`.
fn compatibility_row(component: &str) -> String {
    let operations = read("docs/OPERATIONS.md");
    let table = operations.split("## Compatibility").nth(1).expect("docs/OPERATIONS.md has a Compatibility section");
    table
        .lines()
        .find(|l| l.starts_with(&format!("| {component} |")))
        .unwrap_or_else(|| panic!("no compatibility row for {component}"))
        .to_owned()
}

/// The text between `before` and the next `after` in `text`.
fn between<'a>(text: &'a str, before: &str, after: &str) -> &'a str {
    let start = text.find(before).unwrap_or_else(|| panic!("no {before:?}")) + before.len();
    let end = text[start..].find(after).unwrap_or_else(|| panic!("no {after:?} after {before:?}"));
    &text[start..start + end]
}

#[test]
fn the_compatibility_table_names_the_versions_the_scripts_pin() {
    let check = |component: &str, version: &str, source: &str| {
        let row = compatibility_row(component);
        assert!(row.contains(&format!("`{version}`")), "{component}: {source} pins {version}, the table says: {row}");
    };
    check("Apache Kafka", between(&read("scripts/kafka/pom.xml"), "<kafka.version>", "<"), "scripts/kafka/pom.xml");
    let lock = read("Cargo.lock");
    let rdkafka_sys = between(&lock, "name = \"rdkafka-sys\"\nversion = \"", "\"");
    check("Apache Kafka", rdkafka_sys, "Cargo.lock");
    check("Apache Kafka", rdkafka_sys.split('+').nth(1).expect("rdkafka-sys names its librdkafka"), "Cargo.lock");
    check(
        "tansu",
        between(&read("scripts/services.sh"), "cargo install tansu --locked --version ", " "),
        "services.sh",
    );
    let test_sh = read("scripts/test.sh");
    check("Spark / Delta", between(&test_sh, "pyspark==", "'"), "scripts/test.sh");
    check("Spark / Delta", between(&test_sh, "delta-spark==", "'"), "scripts/test.sh");
    check("ClickHouse (current)", &format!(">={}", between(&test_sh, "chdb>=", "'")), "scripts/test.sh");
    check(
        "Object stores (put-if-absent)",
        &format!(">={}", between(&read("scripts/services.sh"), "moto[server]>=", "'")),
        "scripts/services.sh",
    );
    check("Schema registry", between(&read("scripts/registry.sh"), "\nversion=", "\n"), "scripts/registry.sh");
    check("Delta Lake protocol", between(&read("Cargo.toml"), "deltalake = { version = \"", "\""), "Cargo.toml");
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .expect("rustc runs");
    let rustc = String::from_utf8_lossy(&rustc.stdout);
    check("Rust", rustc.split_whitespace().nth(1).expect("rustc prints its version"), "rustc --version");
}

#[test]
fn relative_links_in_the_documents_resolve() {
    let mut broken = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let dir = doc.parent().unwrap();
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.is_empty() || target.starts_with('#') || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap_or(target);
            if !dir.join(file).exists() {
                broken.push(format!("{}: {target}", doc.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}
