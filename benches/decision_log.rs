//! The decision-log writer alone, on one core: formatting records into
//! lines, and formatting plus writing them to a file in batches as the
//! writer thread does (one write per batch of 1024).
//!
//! Run: `cargo bench --bench decision_log -- --warm-up-time 1 --measurement-time 3`.
//! Criterion reports records/s (`thrpt`).

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orgwarden::decision_log::{DecisionRecord, Entry, write_line};
use orgwarden::engine::{Decision, Outcome};
use uuid::Uuid;

const BATCH: usize = 1024;

/// Records of the shipped model's shape: one determining policy, no errors.
fn records() -> Vec<DecisionRecord> {
    let entries: Vec<Arc<Entry>> = (0..16)
        .map(|i| {
            Arc::new(Entry {
                outcome: Outcome {
                    decision: if i % 4 == 0 {
                        Decision::Deny
                    } else {
                        Decision::Allow
                    },
                    reasons: vec!["union-of-default-and-explicit/see_flows".to_string()],
                    errors: Vec::new(),
                },
                principal: format!("Prefect::User::\"user-{i}\""),
                action: "Prefect::Action::\"see_flows\"".to_string(),
                resource: format!("Prefect::Workspace::\"ws-{}\"", i % 5),
                request_facts: Vec::new(),
            })
        })
        .collect();
    (0..BATCH)
        .map(|i| DecisionRecord {
            decision_id: Uuid::now_v7(),
            timestamp: SystemTime::now(),
            entry: entries[i % entries.len()].clone(),
            generation: 3,
            latency_us: (i % 40) as u64,
            api: "cedar",
            cached: i % 2 == 0,
            issuer: None,
        })
        .collect()
}

fn writer(c: &mut Criterion) {
    let records = records();
    let mut group = c.benchmark_group("decision_log");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut buf = Vec::with_capacity(256 * BATCH);
    group.bench_function("format", |b| {
        b.iter(|| {
            buf.clear();
            for r in &records {
                write_line(&mut buf, r);
            }
            black_box(buf.len())
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let mut written = 0usize;
    group.bench_function("format_and_write_file", |b| {
        b.iter(|| {
            buf.clear();
            for r in &records {
                write_line(&mut buf, r);
            }
            file.write_all(&buf).unwrap();
            written += buf.len();
            // Keep the file from filling the disk.
            if written > 256 << 20 {
                file.set_len(0).unwrap();
                written = 0;
            }
        })
    });
    group.finish();
}

criterion_group!(benches, writer);
criterion_main!(benches);
