//! Hot paths of the Postgres codec: framing a result set as it streams back to a client, viewing a
//! client's Bind, and encoding an extended-query round.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sentinel_wire::{BindParams, Frame, FrontendMessage, decode_frame, encode};

const MAX_FRAME: usize = 1 << 20;
const ROWS: usize = 100;

/// `ROWS` DataRow messages of about 100 bytes each: an id, a name, an email, a timestamp, a NULL.
fn data_rows() -> Bytes {
    let mut buf = BytesMut::new();
    for i in 0..ROWS {
        let id = format!("{}", 1_000_000 + i);
        let name = format!("customer {i:04} acme");
        let email = format!("customer{i:04}@acme.example");
        let at = "2025-06-01 12:34:56.789+00";
        encode::data_row(
            &mut buf,
            &[
                Some(id.as_bytes()),
                Some(name.as_bytes()),
                Some(email.as_bytes()),
                Some(at.as_bytes()),
                None,
            ],
        );
    }
    buf.freeze()
}

/// Frames every message in `buf`; returns how many.
fn frame_all(mut buf: BytesMut) -> usize {
    let mut n = 0;
    while let Ok(Some(frame)) = decode_frame(&mut buf, MAX_FRAME) {
        black_box(&frame);
        n += 1;
    }
    n
}

/// A Bind of a named statement with three text parameters and binary results.
fn bind_frame() -> Option<Frame> {
    let mut buf = BytesMut::new();
    encode::bind(
        &mut buf,
        "",
        "s_tenant_orders",
        &[0],
        &[
            Some(b"42"),
            Some(b"0d5a6c2e-8f3b-4c1a-9e7d-2b6f4a1c3e5d"),
            None,
        ],
        &[1],
    );
    decode_frame(&mut buf, MAX_FRAME).ok().flatten()
}

fn decode(c: &mut Criterion) {
    let rows = data_rows();
    assert_eq!(
        frame_all(BytesMut::from(&rows[..])),
        ROWS,
        "every row frames"
    );
    let mut group = c.benchmark_group("wire/decode_frame");
    group.throughput(Throughput::Bytes(rows.len() as u64));
    group.bench_function(
        format!("{ROWS} DataRows of ~{} bytes", rows.len() / ROWS),
        |b| {
            b.iter_batched(
                || BytesMut::from(&rows[..]),
                frame_all,
                BatchSize::SmallInput,
            );
        },
    );
    group.finish();
}

fn parse(c: &mut Criterion) {
    let Some(bind) = bind_frame() else {
        panic!("the Bind frames");
    };
    let Ok(FrontendMessage::Bind { rest, .. }) = FrontendMessage::parse(&bind) else {
        panic!("the Bind parses");
    };
    let mut group = c.benchmark_group("wire/parse");
    group.bench_function("FrontendMessage::parse(Bind)", |b| {
        b.iter(|| FrontendMessage::parse(black_box(&bind)).is_ok());
    });
    group.bench_function("BindParams::parse", |b| {
        b.iter(|| BindParams::parse(black_box(rest)).map(|p| p.values.len()));
    });
    group.finish();
}

fn encode_round(c: &mut Criterion) {
    let mut buf = BytesMut::with_capacity(512);
    c.bench_function("wire/encode Parse+Bind+Execute+Sync", |b| {
        b.iter(|| {
            buf.clear();
            encode::parse(
                &mut buf,
                "s_tenant_orders",
                black_box("select id, total from orders where tenant_id = $1 and id = $2"),
                &[23, 2950],
            );
            encode::bind(
                &mut buf,
                "",
                "s_tenant_orders",
                &[0],
                &[
                    Some(black_box(b"42")),
                    Some(b"0d5a6c2e-8f3b-4c1a-9e7d-2b6f4a1c3e5d"),
                ],
                &[1],
            );
            encode::execute(&mut buf, "", 0);
            encode::sync(&mut buf);
            black_box(buf.len())
        });
    });
}

criterion_group! {
    name = wire;
    config = sentinel_benches::short_run();
    targets = decode, parse, encode_round
}
criterion_main!(wire);
