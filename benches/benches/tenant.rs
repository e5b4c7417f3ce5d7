//! Hot paths of the tenant module, run on every query that carries a comment: finding the tenant
//! tag (`tenant_tag`) and the comment-free text the verdict cache is keyed by (`strip_comments`),
//! on a typical 200-byte statement with a sqlcommenter comment at the end.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sentinel_policy::tenant::{DEFAULT_TENANT_KEY, comments, strip_comments, tenant_tag};

/// 200 bytes: a join with a string literal, then the comment a sqlcommenter library appends.
const QUERY: &str = "SELECT o.id, o.total,c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
                     WHERE o.status = 'open' AND o.created_at > $1 \
                     /*route='%2Forders',tenant='t17',traceparent='00-5bd66ef5-c532cb4-01'*/";

fn tenant(c: &mut Criterion) {
    assert_eq!(QUERY.len(), 200, "the bench query is 200 bytes");
    assert!(
        tenant_tag(QUERY, DEFAULT_TENANT_KEY).is_ok_and(|t| t.as_deref() == Some("t17")),
        "the tag is found"
    );
    assert!(
        !strip_comments(QUERY).contains("/*"),
        "the comment is stripped"
    );

    let mut group = c.benchmark_group("tenant");
    group.bench_function("tenant_tag 200B", |b| {
        b.iter(|| tenant_tag(black_box(QUERY), DEFAULT_TENANT_KEY));
    });
    group.bench_function("lex comments 200B", |b| {
        b.iter(|| comments(black_box(QUERY)).count());
    });
    group.bench_function("strip_comments 200B", |b| {
        b.iter(|| strip_comments(black_box(QUERY)).len());
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = sentinel_benches::short_run();
    targets = tenant
}
criterion_main!(benches);
