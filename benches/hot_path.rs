//! The hot in-process stages of a batch, on generated events (`generate`'s default mix:
//! three days of event time, string user ids, a few extra fields):
//! - `parse`: parse + validate + key of one message (`event::parse`), the contract's cost;
//! - `collect`: the same plus the owned row the batch keeps (`Batch::add`);
//! - `dedup`: in-batch dedup of a 200,000-row batch with 10% re-sends;
//! - `stored_check`: the already-stored check of 200,000 keys against a key index of
//!   1,000,000 and 10,000,000 keys (half of the probes stored).
//!
//! Run with `cargo bench --bench hot_path`; throughput is in events (elements) per second.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use idempipe::batch::Batch;
use idempipe::commands::generate::{Spec, generate};
use idempipe::dedup;
use idempipe::event::{self, DedupKey};
use idempipe::table::key_index::KeyIndex;

const BATCH: u64 = 200_000;

fn messages(unique: u64, duplicates: u64) -> Vec<Vec<u8>> {
    generate(&Spec { unique, duplicates, invalid: 0, seed: 7, days: 3, time_order: false, text_fields: false }).0
}

fn parse(c: &mut Criterion) {
    let lines = messages(100_000, 0);
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function(format!("parse_validate_key/{} events, {} B avg", lines.len(), bytes / lines.len()), |b| {
        b.iter(|| {
            for line in &lines {
                black_box(event::parse(Some(black_box(line)), event::DEFAULT_MAX_MESSAGE_BYTES).is_ok());
            }
        })
    });
    let limits = idempipe::batch::Limits {
        schema: event::EventSchema::default(),
        fields: idempipe::output::processed::RecordFields::of_default(),
        message_bytes: event::DEFAULT_MAX_MESSAGE_BYTES,
        record_bytes: 1_000_000 - 1024,
        max_age: None,
        max_future: None,
        registry: None,
    };
    group.bench_function("collect_into_batch", |b| {
        b.iter_batched(
            Batch::default,
            |mut batch| {
                for (offset, line) in lines.iter().enumerate() {
                    batch.add(0, offset as i64, None, Some(line), &limits);
                }
                batch
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn keys_of(lines: &[Vec<u8>]) -> Vec<DedupKey> {
    lines.iter().filter_map(|l| event::parse(Some(l), usize::MAX).ok().map(|e| e.key)).collect()
}

fn dedup(c: &mut Criterion) {
    let keys = keys_of(&messages(BATCH * 10 / 11, BATCH / 11));
    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function(format!("first_of_each_key/{} keys, 10% re-sends", keys.len()), |b| {
        b.iter_batched(|| keys.clone(), |k| dedup::first_of_each_key(k, |k| *k), BatchSize::LargeInput)
    });
    group.finish();
}

fn stored_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("stored_check");
    group.sample_size(20);
    for stored in [1_000_000_u64, 10_000_000] {
        // Keys as the table holds them: md5 outputs, here of their ordinal. Built on first
        // use, so that a filtered run (or a profile of another bench) does not pay for it.
        let setup = std::sync::OnceLock::new();
        let build = move || {
            let key = |n: u64| {
                use md5::{Digest, Md5};
                DedupKey(Md5::digest(n.to_le_bytes()).into())
            };
            let index: KeyIndex = (0..stored).map(key).collect();
            // Half the probes are stored, half are new.
            let probes: Vec<DedupKey> = (0..BATCH).map(|i| key(if i % 2 == 0 { i * 7 } else { stored + i })).collect();
            eprintln!(
                "stored_check: {stored} keys, index {} MiB, {:.1} bytes per key",
                index.heap_bytes() >> 20,
                index.heap_bytes() as f64 / stored as f64
            );
            (index, probes)
        };
        group.throughput(Throughput::Elements(BATCH));
        group.bench_function(format!("key_index/{stored} stored"), |b| {
            let (index, probes) = setup.get_or_init(build);
            b.iter(|| probes.iter().filter(|k| index.contains(k)).count())
        });
    }
    group.finish();
}

criterion_group!(benches, parse, dedup, stored_check);
criterion_main!(benches);
