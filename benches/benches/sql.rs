//! The SQL classifier: `classify` on a cache miss (parse, fingerprint, walk) for a typical
//! three-table join, and `VerdictCache::verdict` on a hit for the same statement carrying a
//! sqlcommenter tag (strip the comment, hash, look up) — the cost every query pays in the
//! steady state — and for texts that differ only in inlined literal values (masked key).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sentinel_policy::sql::{Rules, VerdictCache, VerdictKind, classify};

/// A three-table join with a parameter and a string literal.
const JOIN: &str = "SELECT o.id, o.total, c.name, i.sku FROM orders o \
                    JOIN customers c ON c.id = o.customer_id \
                    JOIN order_items i ON i.order_id = o.id \
                    WHERE o.status = 'open' AND o.created_at > $1 ORDER BY o.id LIMIT 50";

/// The same statement as a sqlcommenter library sends it.
const TAGGED: &str = "SELECT o.id, o.total, c.name, i.sku FROM orders o \
                      JOIN customers c ON c.id = o.customer_id \
                      JOIN order_items i ON i.order_id = o.id \
                      WHERE o.status = 'open' AND o.created_at > $1 ORDER BY o.id LIMIT 50 \
                      /*route='%2Forders',tenant='t17',traceparent='00-5bd66ef5-c532cb4-01'*/";

fn sql(c: &mut Criterion) {
    let rules = Rules::default();
    let verdict = classify(JOIN, &rules);
    assert_eq!(
        verdict.kind,
        VerdictKind::NeedsTenant,
        "the join needs a tenant"
    );
    assert_eq!(verdict.relations, ["customers", "order_items", "orders"]);

    let cache = VerdictCache::new(10_000, Arc::new(rules.clone()));
    cache.verdict(TAGGED);
    assert_eq!(
        cache.stats().entries,
        2,
        "the tagged statement is cached, under its text and its constant-masked text"
    );

    let mut group = c.benchmark_group("sql");
    group.bench_function("classify 3-table join (uncached)", |b| {
        b.iter(|| classify(black_box(JOIN), &rules));
    });
    group.bench_function("VerdictCache hit, sqlcommenter tag", |b| {
        b.iter(|| cache.verdict(black_box(TAGGED)));
    });
    group.bench_function("VerdictCache hit, no comment", |b| {
        cache.verdict(JOIN);
        b.iter(|| cache.verdict(black_box(JOIN)));
    });
    // A client that inlines its literals: every text is new, the masked form is not.
    let inlined: Vec<String> = (0..1000)
        .map(|i| JOIN.replace("'open'", &format!("'status-{i}'")))
        .collect();
    let mut next = inlined.iter().cycle();
    group.bench_function("VerdictCache hit, other literal values", |b| {
        b.iter(|| cache.verdict(black_box(next.next().map_or(JOIN, String::as_str))));
    });
    group.finish();
    assert!(cache.stats().hit_rate() > 0.99);
}

criterion_group! {
    name = benches;
    config = sentinel_benches::short_run();
    targets = sql
}
criterion_main!(benches);
