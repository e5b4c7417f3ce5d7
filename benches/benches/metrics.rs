//! What the admin port's counting costs: one histogram observation per statement on the
//! Postgres hot path (three of them per statement, with the query and added-latency timings),
//! a per-tenant counter per LLM call, and encoding a typical scrape.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sentinel::metrics::{CappedCounters, Families, Histogram};

fn metrics(c: &mut Criterion) {
    let histogram = Histogram::latency();
    let tenants = CappedCounters::new(20);
    for t in 0..50 {
        tenants.add(&format!("tenant-{t}"), 1, 100);
    }
    let mut group = c.benchmark_group("metrics");
    group.bench_function("histogram observe", |b| {
        b.iter(|| histogram.observe(black_box(Duration::from_micros(180))));
    });
    group.bench_function("tenant counter add (past the cap)", |b| {
        b.iter(|| tenants.add(black_box("tenant-42"), 1, 250));
    });
    group.bench_function("encode 40 families", |b| {
        b.iter(|| {
            let mut f = Families::default();
            for _ in 0..8 {
                f.counter("sentinel_pg_queries", "Statements forwarded.", 12_345);
                f.histogram(
                    "sentinel_pg_query_duration",
                    "From forwarding to ReadyForQuery.",
                    &histogram,
                );
                f.counters(
                    "sentinel_llm_tenant_cost",
                    "Cost charged per tenant.",
                    None,
                    tenants
                        .snapshot()
                        .into_iter()
                        .map(|(t, _, cost)| (vec![("tenant", t)], cost))
                        .collect(),
                );
                f.gauge("sentinel_llm_in_flight", "Calls being served.", 3);
                f.gauge("sentinel_ledger_leases", "Leases held.", 2);
            }
            black_box(f.encode())
        });
    });
    group.finish();
}

criterion_group!(benches, metrics);
criterion_main!(benches);
