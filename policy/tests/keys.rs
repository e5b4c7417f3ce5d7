//! Black-box tests of `sentinel_policy::keys`: sealing round trips and refusals, rotation end to
//! end, tokens of every kind and their refusals, redaction.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sentinel_policy::keys::*;

/// Fixed material for the known-answer tests. Made once with a CSPRNG; test-only.
const K1: &str = "Hfm91yZTxf5CizUk/vnfYVcgLQtkLKMouKXvVEmyTss=";
const K2: &str = "CcH4EnslgC4HmwNGurJJQdOw1fzQfNirEtm99UmWwa4=";
const SALT: &str = "ynmfQLrnC5xjXgU0S6P0aR3vqEFYnhnjJ/IFkT8/6yY=";

const CONTEXT: &str = "upstream.main.password";
const NOW: u64 = 1_750_000_000;

fn id(id: &str) -> KeyId {
    KeyId::new(id).unwrap()
}

fn ring(text: &str) -> Keyring {
    Keyring::parse(text).unwrap()
}

fn k1_ring() -> Keyring {
    ring(&format!("k1:{K1}"))
}

fn salt() -> EnvSalt {
    EnvSalt::from_base64(SALT).unwrap()
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Every single-character replacement of `text` that differs from it.
fn single_char_edits(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    for i in 0..bytes.len() {
        for replacement in [bytes[i] ^ 0x01, b'A', b'z', b'0', b'_', b'-', b'.', b':'] {
            if replacement == bytes[i] || !replacement.is_ascii() {
                continue;
            }
            let mut edited = bytes.to_vec();
            edited[i] = replacement;
            out.push(String::from_utf8(edited).unwrap());
        }
    }
    out
}

// === sealing ===

proptest! {
    #[test]
    fn seal_open_round_trip(
        plaintext in proptest::collection::vec(any::<u8>(), 0..512),
        context in ".{0,64}",
        seed in any::<u64>(),
    ) {
        let (ring, salt) = (k1_ring(), salt());
        let sealed = seal(&ring, &salt, &plaintext, &context, &mut rng(seed)).unwrap();
        prop_assert!(sealed.starts_with("sealed:v1:k1:"));
        prop_assert!(is_sealed(&sealed));
        let opened = open(&ring, &salt, &sealed, &context).unwrap();
        prop_assert_eq!(opened.as_slice(), plaintext.as_slice());
        let other = format!("{context}x");
        prop_assert_eq!(open(&ring, &salt, &sealed, &other).unwrap_err(), KeyError::OpenFailed);
    }
}

#[test]
fn sealing_twice_gives_different_values() {
    let (ring, salt) = (k1_ring(), salt());
    let mut rng = rng(1);
    let a = seal(&ring, &salt, b"hunter2", CONTEXT, &mut rng).unwrap();
    let b = seal(&ring, &salt, b"hunter2", CONTEXT, &mut rng).unwrap();
    assert_ne!(a, b, "a fresh nonce each time");
    let body = a.strip_prefix("sealed:v1:k1:").unwrap();
    assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 24 + 7 + 16);
}

#[test]
fn every_tampered_character_is_refused() {
    let (ring, salt) = (ring(&format!("k1:{K1},k2:{K2}")), salt());
    let sealed = seal(
        &ring,
        &salt,
        b"sk-live-provider-key-0123456789",
        CONTEXT,
        &mut rng(2),
    )
    .unwrap();
    let edits = single_char_edits(&sealed);
    assert!(edits.len() > 7 * sealed.len() - sealed.len());
    for edited in edits {
        let err = open(&ring, &salt, &edited, CONTEXT).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::OpenFailed
                    | KeyError::SealedMalformed
                    | KeyError::SealedUnsupportedVersion
                    | KeyError::UnknownKeyId { .. }
            ),
            "{edited}: {err:?}"
        );
    }
}

#[test]
fn every_tampered_byte_of_nonce_ciphertext_and_tag_is_refused() {
    let (ring, salt) = (k1_ring(), salt());
    let sealed = seal(
        &ring,
        &salt,
        b"0123456789012345678901234567890123456789",
        CONTEXT,
        &mut rng(3),
    )
    .unwrap();
    let body = URL_SAFE_NO_PAD
        .decode(sealed.strip_prefix("sealed:v1:k1:").unwrap())
        .unwrap();
    assert_eq!(body.len(), 24 + 40 + 16);
    for i in 0..body.len() {
        for bit in [0x01, 0x80] {
            let mut tampered = body.clone();
            tampered[i] ^= bit;
            let text = format!("sealed:v1:k1:{}", URL_SAFE_NO_PAD.encode(&tampered));
            assert_eq!(
                open(&ring, &salt, &text, CONTEXT).unwrap_err(),
                KeyError::OpenFailed,
                "byte {i}"
            );
        }
    }
}

#[test]
fn truncated_and_extended_values_are_refused() {
    let (ring, salt) = (k1_ring(), salt());
    let sealed = seal(&ring, &salt, b"hunter2", CONTEXT, &mut rng(4)).unwrap();
    for len in 0..sealed.len() {
        let err = open(&ring, &salt, &sealed[..len], CONTEXT).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::SealedMalformed
                    | KeyError::SealedTruncated
                    | KeyError::OpenFailed
                    | KeyError::UnknownKeyId { .. }
            ),
            "{len}: {err:?}"
        );
    }
    // Cut whole bytes off the decoded data: short ones are truncated, the rest fail the tag.
    let body = URL_SAFE_NO_PAD
        .decode(sealed.strip_prefix("sealed:v1:k1:").unwrap())
        .unwrap();
    for len in 0..body.len() {
        let text = format!("sealed:v1:k1:{}", URL_SAFE_NO_PAD.encode(&body[..len]));
        let want = match len {
            0 => KeyError::SealedMalformed,
            1..40 => KeyError::SealedTruncated,
            _ => KeyError::OpenFailed,
        };
        assert_eq!(
            open(&ring, &salt, &text, CONTEXT).unwrap_err(),
            want,
            "{len}"
        );
    }
    for extra in ["A", "AA", "AAAA", ":", "=", " ", "\n"] {
        assert!(
            open(&ring, &salt, &format!("{sealed}{extra}"), CONTEXT).is_err(),
            "{extra:?}"
        );
    }
}

#[test]
fn wrong_key_salt_or_context_is_refused() {
    let salt = salt();
    let sealed = seal(&k1_ring(), &salt, b"hunter2", CONTEXT, &mut rng(5)).unwrap();
    // Another key under the same id.
    let impostor = ring(&format!("k1:{K2}"));
    assert_eq!(
        open(&impostor, &salt, &sealed, CONTEXT).unwrap_err(),
        KeyError::OpenFailed
    );
    // Another environment.
    let other_salt = EnvSalt::generate(&mut rng(6)).unwrap();
    assert_eq!(
        open(&k1_ring(), &other_salt, &sealed, CONTEXT).unwrap_err(),
        KeyError::OpenFailed
    );
    // Another field.
    for context in [
        "",
        "upstream.main.user",
        "providers.openai.api_key",
        "upstream.main.password ",
    ] {
        assert_eq!(
            open(&k1_ring(), &salt, &sealed, context).unwrap_err(),
            KeyError::OpenFailed
        );
    }
    // A keyring without the key.
    assert_eq!(
        open(&ring(&format!("k2:{K2}")), &salt, &sealed, CONTEXT).unwrap_err(),
        KeyError::UnknownKeyId { id: id("k1") }
    );
    let err = open(&impostor, &salt, &sealed, CONTEXT)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another key") && err.contains("salt") && err.contains("field"),
        "{err}"
    );
}

#[test]
fn malformed_and_future_values_are_refused() {
    let (ring, salt) = (k1_ring(), salt());
    for (text, want) in [
        ("hunter2", KeyError::SealedMalformed),
        ("sealed:", KeyError::SealedMalformed),
        ("sealed:v1", KeyError::SealedMalformed),
        ("sealed:v1:k1", KeyError::SealedMalformed),
        ("sealed:v1:k1:", KeyError::SealedMalformed),
        ("sealed:v1:K1:AAAA", KeyError::SealedMalformed),
        ("sealed:v1:k1:AA+A", KeyError::SealedMalformed),
        ("sealed:v1:k1:AAAA", KeyError::SealedTruncated),
        ("sealed:v2:k1:AAAA", KeyError::SealedUnsupportedVersion),
        ("sealed:x:k1:AAAA", KeyError::SealedMalformed),
    ] {
        assert_eq!(
            open(&ring, &salt, text, CONTEXT).unwrap_err(),
            want,
            "{text}"
        );
    }
    assert!(!is_sealed("hunter2"));
    let big = vec![7u8; MAX_SEALED_PLAINTEXT + 1];
    assert_eq!(
        seal(&ring, &salt, &big, CONTEXT, &mut rng(7)).unwrap_err(),
        KeyError::PlaintextTooLarge {
            len: MAX_SEALED_PLAINTEXT + 1,
            max: MAX_SEALED_PLAINTEXT
        }
    );
    assert!(seal(&ring, &salt, &big[1..], CONTEXT, &mut rng(7)).is_ok());
}

#[test]
fn errors_never_show_the_plaintext_or_the_sealed_data() {
    let salt = salt();
    let secret = "sk-live-THE-REAL-PROVIDER-KEY";
    let sealed = seal(&k1_ring(), &salt, secret.as_bytes(), CONTEXT, &mut rng(8)).unwrap();
    let data = sealed.strip_prefix("sealed:v1:k1:").unwrap();
    for err in [
        open(&ring(&format!("k1:{K2}")), &salt, &sealed, CONTEXT).unwrap_err(),
        open(&k1_ring(), &salt, &sealed[..sealed.len() - 3], CONTEXT).unwrap_err(),
        open(&k1_ring(), &salt, &sealed, "x").unwrap_err(),
    ] {
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(
                !shown.contains(secret) && !shown.contains(&data[..16]),
                "{shown}"
            );
        }
    }
}

// === rotation ===

#[test]
fn rotation_end_to_end() {
    let salt = salt();
    let mut rng = rng(9);
    let secrets: [(&str, &[u8]); 3] = [
        ("upstream.main.password", b"pg-password"),
        ("providers.openai.api_key", b"sk-openai-key"),
        ("providers.anthropic.api_key", b"sk-ant-key"),
    ];
    // Sealed with key 1.
    let v1 = k1_ring();
    let sealed: Vec<String> = secrets
        .iter()
        .map(|(ctx, secret)| seal(&v1, &salt, secret, ctx, &mut rng).unwrap())
        .collect();
    let token = issue_tenant_token(&v1, &salt, "acme", None).unwrap();
    assert!(sealed.iter().all(|s| !needs_reseal(&v1, s)));

    // Rotate: keys 2 then 1. Everything still opens and verifies; everything wants re-sealing.
    let v12 = v1
        .with_new_current(id("k2"), MasterKey::from_base64(K2).unwrap())
        .unwrap();
    assert_eq!(v12.render().as_str(), format!("k2:{K2},k1:{K1}"));
    for ((ctx, secret), value) in secrets.iter().zip(&sealed) {
        assert_eq!(open(&v12, &salt, value, ctx).unwrap().as_slice(), *secret);
        assert!(needs_reseal(&v12, value));
        assert_eq!(sealed_key_id(value).unwrap(), id("k1"));
    }
    assert_eq!(
        verify_tenant_token(&v12, &salt, &token, NOW)
            .unwrap()
            .tenant,
        "acme"
    );

    // Re-seal: now with key 2, nothing more to do.
    let resealed: Vec<String> = secrets
        .iter()
        .zip(&sealed)
        .map(|((ctx, _), value)| reseal(&v12, &salt, value, ctx, &mut rng).unwrap())
        .collect();
    for value in &resealed {
        assert!(value.starts_with("sealed:v1:k2:"));
        assert!(!needs_reseal(&v12, value));
    }
    let new_token = issue_tenant_token(&v12, &salt, "acme", None).unwrap();
    assert!(new_token.contains(".k2."));

    // Key 2 alone (restarted from its text form): re-sealed values open, old ones name a gone key.
    let v2 = Keyring::parse(&v12.without(&id("k1")).unwrap().render()).unwrap();
    assert_eq!(v2.ids().collect::<Vec<_>>(), [&id("k2")]);
    for ((ctx, secret), value) in secrets.iter().zip(&resealed) {
        assert_eq!(open(&v2, &salt, value, ctx).unwrap().as_slice(), *secret);
    }
    assert_eq!(
        open(&v2, &salt, &sealed[0], secrets[0].0).unwrap_err(),
        KeyError::UnknownKeyId { id: id("k1") }
    );
    assert_eq!(
        verify_tenant_token(&v2, &salt, &token, NOW).unwrap_err(),
        KeyError::TokenUnknownKey {
            kind: TokenKind::Tenant
        }
    );
    assert!(verify_tenant_token(&v2, &salt, &new_token, NOW).is_ok());
    assert!(!needs_reseal(&v2, "not sealed at all"));
}

// === tokens ===

#[test]
fn tenant_tokens_round_trip_and_expire() {
    let (ring, salt) = (k1_ring(), salt());
    let forever = issue_tenant_token(&ring, &salt, "acme", None).unwrap();
    assert!(forever.starts_with("stk1.acme.0.k1."), "{forever}");
    assert_eq!(forever.len(), "stk1.acme.0.k1.".len() + 43);
    assert_eq!(
        verify_tenant_token(&ring, &salt, &forever, u64::MAX).unwrap(),
        TenantClaims {
            tenant: "acme".into(),
            expires_at: None
        }
    );
    let expiring = issue_tenant_token(&ring, &salt, "Acme_EU-2", Some(NOW + 60)).unwrap();
    assert!(expiring.starts_with(&format!("stk1.Acme_EU-2.{}.k1.", NOW + 60)));
    for now in [0, NOW, NOW + 59] {
        assert_eq!(
            verify_tenant_token(&ring, &salt, &expiring, now).unwrap(),
            TenantClaims {
                tenant: "Acme_EU-2".into(),
                expires_at: Some(NOW + 60)
            }
        );
    }
    for now in [NOW + 60, NOW + 61, u64::MAX] {
        assert_eq!(
            verify_tenant_token(&ring, &salt, &expiring, now).unwrap_err(),
            KeyError::TokenExpired {
                kind: TokenKind::Tenant
            }
        );
    }
}

#[test]
fn issuing_refuses_bad_fields() {
    let (ring, salt) = (k1_ring(), salt());
    for tenant in ["", "acme.eu", "acme eu", "ac:me", "é", &"a".repeat(65)] {
        assert_eq!(
            issue_tenant_token(&ring, &salt, tenant, None).unwrap_err(),
            KeyError::InvalidTenant
        );
        assert_eq!(
            issue_virtual_key(&ring, &salt, tenant, "abc").unwrap_err(),
            KeyError::InvalidTenant
        );
        assert_eq!(
            issue_admin_token(&ring, &salt, tenant, None).unwrap_err(),
            KeyError::InvalidName
        );
        assert_eq!(
            issue_virtual_key(&ring, &salt, "acme", tenant).unwrap_err(),
            KeyError::InvalidVirtualKeyId
        );
    }
    assert_eq!(
        issue_tenant_token(&ring, &salt, "acme", Some(0)).unwrap_err(),
        KeyError::InvalidExpiry
    );
    assert_eq!(
        issue_admin_token(&ring, &salt, "ops", Some(0)).unwrap_err(),
        KeyError::InvalidExpiry
    );
    let longest = issue_tenant_token(&ring, &salt, &"a".repeat(64), Some(u64::MAX)).unwrap();
    assert!(longest.len() <= MAX_TOKEN_LEN);
    assert!(verify_tenant_token(&ring, &salt, &longest, NOW).is_ok());
}

#[test]
fn tampered_tenant_tokens_are_refused() {
    let ring = ring(&format!("k1:{K1},k2:{K2}"));
    let salt = salt();
    let token = issue_tenant_token(&ring, &salt, "acme", Some(NOW + 3600)).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 5);
    let bad_sig = KeyError::TokenBadSignature {
        kind: TokenKind::Tenant,
    };
    let rebuilt = |i: usize, value: &str| {
        let mut p = parts.clone();
        p[i] = value;
        p.join(".")
    };
    let later = (NOW + 7200).to_string();
    // Each field changed to another well-formed value.
    for (edited, want) in [
        (rebuilt(1, "evil"), bad_sig.clone()),
        (rebuilt(1, "acmf"), bad_sig.clone()),
        (rebuilt(2, &later), bad_sig.clone()),
        (rebuilt(2, "0"), bad_sig.clone()),
        (rebuilt(3, "k2"), bad_sig.clone()),
        (
            rebuilt(3, "k9"),
            KeyError::TokenUnknownKey {
                kind: TokenKind::Tenant,
            },
        ),
        (rebuilt(4, &"A".repeat(43)), bad_sig.clone()),
        (
            rebuilt(0, "stk2"),
            KeyError::TokenMalformed {
                kind: TokenKind::Tenant,
            },
        ),
        (
            format!("{token}.x"),
            KeyError::TokenMalformed {
                kind: TokenKind::Tenant,
            },
        ),
        (
            token[..token.len() - 1].to_owned(),
            KeyError::TokenMalformed {
                kind: TokenKind::Tenant,
            },
        ),
        (
            String::new(),
            KeyError::TokenMalformed {
                kind: TokenKind::Tenant,
            },
        ),
        (
            "x".repeat(MAX_TOKEN_LEN + 1),
            KeyError::TokenMalformed {
                kind: TokenKind::Tenant,
            },
        ),
    ] {
        assert_eq!(
            verify_tenant_token(&ring, &salt, &edited, NOW).unwrap_err(),
            want,
            "{edited}"
        );
    }
    // Every single-character edit anywhere, including the MAC's last character (whose spare bits
    // must be zero) fails.
    for edited in single_char_edits(&token) {
        let err = verify_tenant_token(&ring, &salt, &edited, NOW).unwrap_err();
        assert!(err.is_credential_rejection(), "{edited}: {err:?}");
        assert!(!err.to_string().contains(&token[5..]), "{err}");
    }
}

#[test]
fn tokens_from_another_environment_are_refused() {
    let ring = k1_ring();
    let here = salt();
    let there = EnvSalt::generate(&mut rng(10)).unwrap();
    let token = issue_tenant_token(&ring, &there, "acme", None).unwrap();
    assert_eq!(
        verify_tenant_token(&ring, &here, &token, NOW).unwrap_err(),
        KeyError::TokenBadSignature {
            kind: TokenKind::Tenant
        }
    );
    let vkey = issue_virtual_key(&ring, &there, "acme", "abc123").unwrap();
    assert_eq!(
        verify_virtual_key(&ring, &here, &vkey).unwrap_err(),
        KeyError::TokenBadSignature {
            kind: TokenKind::VirtualKey
        }
    );
    let admin = issue_admin_token(&ring, &there, "ops", None).unwrap();
    assert_eq!(
        verify_admin_token(&ring, &here, &admin, NOW).unwrap_err(),
        KeyError::TokenBadSignature {
            kind: TokenKind::Admin
        }
    );
    // Same key id, another master key.
    let impostor = Keyring::parse(&format!("k1:{K2}")).unwrap();
    assert_eq!(
        verify_tenant_token(
            &impostor,
            &here,
            &issue_tenant_token(&ring, &here, "acme", None).unwrap(),
            NOW
        )
        .unwrap_err(),
        KeyError::TokenBadSignature {
            kind: TokenKind::Tenant
        }
    );
}

#[test]
fn credentials_of_one_kind_never_verify_as_another() {
    let (ring, salt) = (k1_ring(), salt());
    let tenant = issue_tenant_token(&ring, &salt, "acme", None).unwrap();
    let vkey = issue_virtual_key(&ring, &salt, "acme", "0").unwrap();
    let admin = issue_admin_token(&ring, &salt, "acme", None).unwrap();
    use TokenKind::{Admin, Tenant, VirtualKey};
    let wrong = |expected, found| KeyError::TokenWrongKind { expected, found };
    assert_eq!(
        verify_tenant_token(&ring, &salt, &vkey, NOW).unwrap_err(),
        wrong(Tenant, VirtualKey)
    );
    assert_eq!(
        verify_tenant_token(&ring, &salt, &admin, NOW).unwrap_err(),
        wrong(Tenant, Admin)
    );
    assert_eq!(
        verify_virtual_key(&ring, &salt, &tenant).unwrap_err(),
        wrong(VirtualKey, Tenant)
    );
    assert_eq!(
        verify_virtual_key(&ring, &salt, &admin).unwrap_err(),
        wrong(VirtualKey, Admin)
    );
    assert_eq!(
        verify_admin_token(&ring, &salt, &tenant, NOW).unwrap_err(),
        wrong(Admin, Tenant)
    );
    assert_eq!(
        verify_admin_token(&ring, &salt, &vkey, NOW).unwrap_err(),
        wrong(Admin, VirtualKey)
    );

    // Rewritten into the other's format, field for field: the purpose keys differ, so the MAC
    // fails.
    let tenant_fields = tenant.strip_prefix("stk1.").unwrap();
    assert_eq!(
        verify_admin_token(&ring, &salt, &format!("sat1.{tenant_fields}"), NOW).unwrap_err(),
        KeyError::TokenBadSignature { kind: Admin }
    );
    let admin_fields = admin.strip_prefix("sat1.").unwrap();
    assert_eq!(
        verify_tenant_token(&ring, &salt, &format!("stk1.{admin_fields}"), NOW).unwrap_err(),
        KeyError::TokenBadSignature { kind: Tenant }
    );
    // A virtual key `sk-stn-acme.0.k1.<mac>` read as the tenant token `stk1.acme.0.k1.<mac>`.
    let vkey_fields = vkey.strip_prefix("sk-stn-").unwrap();
    assert_eq!(
        verify_tenant_token(&ring, &salt, &format!("stk1.{vkey_fields}"), NOW).unwrap_err(),
        KeyError::TokenBadSignature { kind: Tenant }
    );
    let tenant_as_vkey = format!("sk-stn-{tenant_fields}");
    assert_eq!(
        verify_virtual_key(&ring, &salt, &tenant_as_vkey).unwrap_err(),
        KeyError::TokenBadSignature { kind: VirtualKey }
    );
    assert_eq!(TokenKind::sniff(&vkey), Some(VirtualKey));
    assert_eq!(TokenKind::sniff("hunter2"), None);
}

#[test]
fn virtual_keys_round_trip_and_refuse_tampering() {
    let (ring, salt) = (k1_ring(), salt());
    let key_id = new_virtual_key_id(&mut rng(11));
    assert_eq!(key_id.len(), 22);
    assert_ne!(key_id, new_virtual_key_id(&mut rng(12)));
    let vkey = issue_virtual_key(&ring, &salt, "acme-eu", &key_id).unwrap();
    assert!(
        vkey.starts_with(&format!("sk-stn-acme-eu.{key_id}.k1.")),
        "{vkey}"
    );
    assert_eq!(
        verify_virtual_key(&ring, &salt, &vkey).unwrap(),
        VirtualKeyClaims {
            tenant: "acme-eu".into(),
            key_id: key_id.clone()
        }
    );
    let parts: Vec<&str> = vkey.split('.').collect();
    assert_eq!(parts.len(), 4);
    for (edited, want) in [
        (
            vkey.replacen("acme-eu", "acme-us", 1),
            KeyError::TokenBadSignature {
                kind: TokenKind::VirtualKey,
            },
        ),
        (
            vkey.replacen(&key_id, "other", 1),
            KeyError::TokenBadSignature {
                kind: TokenKind::VirtualKey,
            },
        ),
        (
            vkey.replacen(".k1.", ".k7.", 1),
            KeyError::TokenUnknownKey {
                kind: TokenKind::VirtualKey,
            },
        ),
        (
            format!("{}.{}", parts[..3].join("."), "A".repeat(43)),
            KeyError::TokenBadSignature {
                kind: TokenKind::VirtualKey,
            },
        ),
        // Base64 whose spare bits are not zero is not canonical, so no two texts carry one MAC.
        (
            format!("{}.{}", parts[..3].join("."), "B".repeat(43)),
            KeyError::TokenMalformed {
                kind: TokenKind::VirtualKey,
            },
        ),
        (
            format!("sk-stn-acme.{}", parts[1..].join(".")),
            KeyError::TokenBadSignature {
                kind: TokenKind::VirtualKey,
            },
        ),
        (
            parts[..3].join("."),
            KeyError::TokenMalformed {
                kind: TokenKind::VirtualKey,
            },
        ),
        (
            "sk-proj-abc".to_owned(),
            KeyError::TokenMalformed {
                kind: TokenKind::VirtualKey,
            },
        ),
    ] {
        assert_eq!(
            verify_virtual_key(&ring, &salt, &edited).unwrap_err(),
            want,
            "{edited}"
        );
    }
    for edited in single_char_edits(&vkey) {
        assert!(
            verify_virtual_key(&ring, &salt, &edited).is_err(),
            "{edited}"
        );
    }
}

#[test]
fn admin_tokens_round_trip_expire_and_refuse_tampering() {
    let (ring, salt) = (k1_ring(), salt());
    let token = issue_admin_token(&ring, &salt, "ops-oncall", Some(NOW + 10)).unwrap();
    assert!(token.starts_with(&format!("sat1.ops-oncall.{}.k1.", NOW + 10)));
    assert_eq!(
        verify_admin_token(&ring, &salt, &token, NOW).unwrap(),
        AdminClaims {
            name: "ops-oncall".into(),
            expires_at: Some(NOW + 10)
        }
    );
    assert_eq!(
        verify_admin_token(&ring, &salt, &token, NOW + 10).unwrap_err(),
        KeyError::TokenExpired {
            kind: TokenKind::Admin
        }
    );
    assert_eq!(
        verify_admin_token(&ring, &salt, &token.replacen("ops-oncall", "root", 1), NOW)
            .unwrap_err(),
        KeyError::TokenBadSignature {
            kind: TokenKind::Admin
        }
    );
    for edited in single_char_edits(&token) {
        assert!(
            verify_admin_token(&ring, &salt, &edited, NOW).is_err(),
            "{edited}"
        );
    }
}

// === stability and redaction ===

/// Values made with the fixed keys above (key `k1`), and checked once against an independent
/// implementation (Python: HKDF and HMAC from `hmac`/`hashlib`, XChaCha20-Poly1305 as HChaCha20
/// plus `cryptography`'s ChaCha20-Poly1305). If these stop opening or verifying, the v1 formats changed
/// and everything already deployed would break.
#[test]
fn known_answers_keep_opening() {
    let (ring, salt) = (ring(&format!("k2:{K2},k1:{K1}")), salt());
    let sealed =
        "sealed:v1:k1:nAIX_QkKnaE0anbB9lGTsop53GKIwcc5GjNvEsA9Gkw6NiHYz0bxDhW2y-qHtl1kA2i1ww";
    assert_eq!(
        open(&ring, &salt, sealed, CONTEXT).unwrap().as_slice(),
        b"known answer"
    );
    let token = "stk1.acme.4102444800.k1.u5aO6EXFFxMZKCGmBjogoAin_pdQgNR37W62zTiJB5Y";
    assert_eq!(
        verify_tenant_token(&ring, &salt, token, NOW).unwrap(),
        TenantClaims {
            tenant: "acme".into(),
            expires_at: Some(4_102_444_800)
        }
    );
    let vkey = "sk-stn-acme.vk1.k1.5S7xSeHf4n9QrZbSML7wjiC7KddlbM9ByMlChEdsb5E";
    assert_eq!(
        verify_virtual_key(&ring, &salt, vkey).unwrap(),
        VirtualKeyClaims {
            tenant: "acme".into(),
            key_id: "vk1".into()
        }
    );
}

#[test]
fn debug_output_holds_no_key_material() {
    let ring = ring(&format!("k2:{K2},k1:{K1}"));
    let salt = salt();
    let (_, master) = ring.current();
    let sub = derive(master, &salt, Purpose::Sealing);
    let shown = format!("{ring:?} {ring:#?} {master:?} {sub:?} {salt:?}");
    for secret in [K1, K2, SALT] {
        assert!(!shown.contains(secret.trim_end_matches('=')), "{shown}");
        assert!(!shown.contains(&secret[..12]), "{shown}");
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(K2)
        .unwrap();
    assert!(!shown.contains(&format!("{raw:?}")[1..20]), "{shown}");
    assert!(
        !shown.contains(&format!("{:02x}{:02x}{:02x}", raw[0], raw[1], raw[2])),
        "{shown}"
    );
    assert_eq!(format!("{sub:?}"), "SubKey(<redacted>)");
}

#[test]
fn short_and_low_entropy_master_keys_are_refused() {
    let std = base64::engine::general_purpose::STANDARD;
    let random = std.decode(K1).unwrap();
    for (bytes, kind) in [
        (random[..16].to_vec(), "master_key_too_short"),
        (random[..31].to_vec(), "master_key_too_short"),
        (vec![0u8; 32], "master_key_low_entropy"),
        (vec![0xffu8; 48], "master_key_low_entropy"),
        (b"0123456789abcdef".repeat(2), "master_key_low_entropy"),
        (random[..16].repeat(2), "master_key_low_entropy"),
        ((0..32).collect(), "master_key_low_entropy"),
        (
            b"my company's super secret password!!".to_vec(),
            "master_key_low_entropy",
        ),
    ] {
        let err = MasterKey::from_base64(&std.encode(&bytes)).unwrap_err();
        assert_eq!(err.label(), kind);
        assert!(err.to_string().contains("sentinel keys new"), "{err}");
        let in_ring = Keyring::parse(&format!("k1:{}", std.encode(&bytes))).unwrap_err();
        assert!(
            in_ring.to_string().contains("sentinel keys new"),
            "{in_ring}"
        );
    }
    assert_eq!(Keyring::parse("").unwrap_err(), KeyError::MissingMasterKey);
    assert!(
        KeyError::MissingMasterKey
            .to_string()
            .contains("sentinel keys new")
    );
}
