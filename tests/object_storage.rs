//! The table on object storage: the tests' S3 server (moto, started by
//! scripts/services.sh), reached over plain HTTP as an S3-compatible store. The torture
//! crash loop and the two-instance scenario on S3 are in tests/torture.rs, compaction and
//! vacuum while writing on S3 in tests/operations.rs.

mod common;

use common::{Harness, HeaderStrippingProxy, S3_BUCKET, count, s3_endpoint, s3_env, s3_objects as objects};
use serde_json::Value;

/// The table's URL.
fn table_url(p: &Harness) -> String {
    format!("s3://{S3_BUCKET}/{}/events", p.name)
}

#[test]
fn the_seed_scenario_on_s3_is_exact_and_an_independent_reader_agrees() {
    let p = Harness::on_s3("s3seed", &s3_endpoint());
    let (file, expected, v) = p.ingest_generated(10_000, 1_000, 50, 11);
    let distinct = count(&expected, "distinct_keys");
    let keys = objects(&format!("{}/events/_delta_log/", p.name));
    assert!(keys.iter().any(|k| k.ends_with("00000000000000000000.json")), "the log is in the bucket: {keys:?}");
    assert!(objects(&format!("{}/events/_idempipe/", p.name)).is_empty(), "the probe leaves nothing behind");

    // A replay changes nothing.
    p.produce(&file);
    p.run_until_idle(&[]);
    let again = p.verify();
    assert_eq!(count(&again, "delta_rows"), distinct, "{again}");
    assert_eq!(count(&again, "processed_records"), count(&v, "processed_records"), "nothing new sent: {again}");

    // The Python `deltalake`, reading the same s3:// table with the store's environment
    // variables, counts what `verify` counts.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check_delta.py");
    let out =
        std::process::Command::new(common::python()).arg(script).arg(table_url(&p)).envs(s3_env()).output().unwrap();
    assert!(out.status.success(), "Python deltalake check failed: {}", String::from_utf8_lossy(&out.stderr));
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(count(&py, "rows"), count(&again, "delta_rows"), "{py} vs {again}");
    assert_eq!(count(&py, "distinct_keys"), count(&again, "delta_distinct_keys"), "{py} vs {again}");

    // `config show` lists the storage options, the secret redacted.
    let shown: Value = serde_json::from_str(&p.ok(&["config", "show", "--json"])).unwrap();
    assert_eq!(shown["storage.aws_endpoint_url"]["value"], s3_endpoint(), "{shown}");
    assert_eq!(shown["storage.aws_endpoint_url"]["origin"], "file", "{shown}");
    assert_eq!(shown["storage.aws_secret_access_key"]["value"], "<redacted>", "{shown}");
}

/// A store that ignores `If-None-Match` would let two writers' commits overwrite each
/// other: every command that writes refuses it before writing anything.
#[test]
fn a_store_that_ignores_put_if_absent_is_refused_before_anything_is_written() {
    let upstream = s3_endpoint().trim_start_matches("http://").to_owned();
    let proxy = HeaderStrippingProxy::start(&upstream, "if-none-match");
    let through_proxy = Harness::on_s3("s3unsafe", &proxy.endpoint());
    let out = through_proxy.output(&["setup", "--skip-clickhouse"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "setup on a store without put-if-absent must fail");
    assert!(err.contains("does not honour put-if-absent") && err.contains(&table_url(&through_proxy)), "{err}");
    assert!(objects(&format!("{}/", through_proxy.name)).is_empty(), "nothing written to the store");

    // The same table set up on the real server: `run` through the proxy still refuses.
    let direct = Harness::on_s3("s3unsafe", &s3_endpoint());
    direct.ok(&["setup", "--skip-clickhouse"]);
    let config = std::fs::read_to_string(&direct.config).unwrap().replace(&s3_endpoint(), &proxy.endpoint());
    std::fs::write(&direct.config, config).unwrap();
    let before = objects(&format!("{}/events/_delta_log/", direct.name));
    let out = direct.output(&["run", "--until-idle", "1s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not honour put-if-absent"), "{err}");
    assert_eq!(objects(&format!("{}/events/_delta_log/", direct.name)), before, "no commit through the proxy");
}
