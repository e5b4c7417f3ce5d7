//! Hot paths of the key module: verifying a tenant token (once per Postgres connection that
//! authenticates with one), verifying a virtual LLM key (once per egress request), and opening a
//! sealed 40-byte secret (at start and on reload). Goal from the keys issue: a token verify well
//! under 5 µs.
//!
//! The key material is fixed test material (the same as `policy/tests/keys.rs`), so the sealed
//! value below doubles as a check that the v1 format still opens.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sentinel_policy::keys::{
    EnvSalt, Keyring, issue_tenant_token, issue_virtual_key, open, verify_tenant_token,
    verify_virtual_key,
};

const KEYRING: &str = "k2:CcH4EnslgC4HmwNGurJJQdOw1fzQfNirEtm99UmWwa4=,\
                       k1:Hfm91yZTxf5CizUk/vnfYVcgLQtkLKMouKXvVEmyTss=";
const SALT: &str = "ynmfQLrnC5xjXgU0S6P0aR3vqEFYnhnjJ/IFkT8/6yY=";
const NOW: u64 = 1_750_000_000;
const CONTEXT: &str = "providers.openai.api_key";
const SECRET: &[u8] = b"sk-proj-0123456789abcdefghijklmnopqrstuv";
/// The 40-byte `SECRET`, sealed with `k1` for `CONTEXT` (made outside this crate, by an independent
/// XChaCha20-Poly1305 and HKDF implementation).
const SEALED_40: &str = "sealed:v1:k1:fqeVTA0E8Xf99v7sRlRnzkQfm-puWdX3aPrYu5RBoaeSwFOkGzZ88bb8\
                         lNvZeVar-mWzxIxnZA9HuCdmSWg33owEs1eoUMdcLGClsW9-YV8";

fn keys(c: &mut Criterion) {
    let (Ok(ring), Ok(salt)) = (Keyring::parse(KEYRING), EnvSalt::from_base64(SALT)) else {
        panic!("the fixed keyring and salt parse");
    };
    let Ok(token) = issue_tenant_token(&ring, &salt, "acme", Some(NOW + 3600)) else {
        panic!("a tenant token issues");
    };
    let Ok(vkey) = issue_virtual_key(&ring, &salt, "acme", "Zq3xv0l9Rk2m8Wc1TnY4aB") else {
        panic!("a virtual key issues");
    };
    assert!(
        verify_tenant_token(&ring, &salt, &token, NOW).is_ok(),
        "the token verifies"
    );
    assert!(
        verify_virtual_key(&ring, &salt, &vkey).is_ok(),
        "the virtual key verifies"
    );
    assert!(
        open(&ring, &salt, SEALED_40, CONTEXT).is_ok_and(|p| p.as_slice() == SECRET),
        "the sealed secret opens"
    );

    let mut group = c.benchmark_group("keys");
    group.bench_function("verify_tenant_token", |b| {
        b.iter(|| verify_tenant_token(&ring, &salt, black_box(&token), black_box(NOW)).is_ok());
    });
    group.bench_function("verify_virtual_key", |b| {
        b.iter(|| verify_virtual_key(&ring, &salt, black_box(&vkey)).is_ok());
    });
    group.bench_function("open 40-byte secret", |b| {
        b.iter(|| open(&ring, &salt, black_box(SEALED_40), CONTEXT).map(|p| p.len()));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = sentinel_benches::short_run();
    targets = keys
}
criterion_main!(benches);
