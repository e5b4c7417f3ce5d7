//! Unique names, throwaway secrets and quoting.
//!
//! Tests share one cluster per test binary, and roles are cluster-wide, so every role and database
//! a test creates needs a name no other test in the run can pick. Names and secrets are built from
//! the process id, a counter and std's per-process random hash keys: good enough for throwaway
//! test credentials, and no extra dependency.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A lowercase SQL identifier that is unique within this process and, thanks to the pid, across
/// test processes sharing a machine: `<prefix>_<pid>_<n>`. Safe to use unquoted if `prefix` is
/// made of lowercase letters, digits and `_`. Truncated to Postgres' 63-byte identifier limit
/// from the prefix side, so the unique tail is kept.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tail = format!("_{}_{n}", std::process::id());
    let keep = 63usize.saturating_sub(tail.len());
    let prefix: String = prefix.chars().take(keep).collect();
    format!("{prefix}{tail}")
}

/// `len` random characters from `[a-zA-Z0-9]`: no quoting needed anywhere (DSNs, TOML, shell).
pub fn random_secret(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        // A fresh RandomState has fresh random keys; mixing in the counter keeps successive
        // values distinct even if the keys were ever cached.
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut bits = h.finish();
        for _ in 0..8 {
            if out.len() == len {
                break;
            }
            let i = (bits % ALPHABET.len() as u64) as usize;
            out.push(char::from(ALPHABET[i]));
            bits /= ALPHABET.len() as u64;
        }
    }
    out
}

/// Quotes an SQL identifier: `"na""me"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal: `'it''s'`. Assumes `standard_conforming_strings = on` (the
/// default since Postgres 9.1).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Quotes a value for a libpq-style `key=value` connection string (also understood by
/// tokio-postgres): `'a b\'c'`.
pub fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_bounded() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(unique_name(&"x".repeat(100)).len() <= 63);
    }

    #[test]
    fn secrets_are_alphanumeric_and_differ() {
        let a = random_secret(24);
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, random_secret(24));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(conninfo_quote("a b'\\"), "'a b\\'\\\\'");
    }
}
