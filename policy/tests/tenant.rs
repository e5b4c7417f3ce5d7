//! Black-box tests of `sentinel_policy::tenant`: the encodings real sqlcommenter libraries emit,
//! tags that are really data, conflicting and malformed tags (fail closed), comment stripping for
//! cache keys, errors, and properties over random ids and SQL-ish text.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sentinel_policy::tenant::*;

fn tag(query: &str) -> Option<String> {
    tenant_tag(query, DEFAULT_TENANT_KEY).unwrap()
}

fn tag_err(query: &str) -> TenantError {
    tenant_tag(query, DEFAULT_TENANT_KEY).unwrap_err()
}

// === what the libraries emit ===

#[test]
fn plain_spec_form_before_and_after() {
    assert_eq!(
        tag("/*tenant='acme'*/ SELECT * FROM t").as_deref(),
        Some("acme")
    );
    assert_eq!(
        tag("SELECT * FROM t /*tenant='acme'*/").as_deref(),
        Some("acme")
    );
    assert_eq!(
        tag("SELECT 1 /*action='list',tenant='acme',route='%2Fa'*/;").as_deref(),
        Some("acme")
    );
    assert_eq!(tag("SELECT 1"), None);
    assert_eq!(tag("SELECT 1 /*route='x'*/"), None);
}

#[test]
fn go_and_java_url_encoding_with_plus() {
    let q = "SELECT 1 /*controller='user+list',route='%2Fusers%3Fpage%3D2',tenant='acme'*/";
    let tags = sqlcommenter_tags(q).unwrap();
    assert_eq!(tags.get("controller"), Some("user list"));
    assert_eq!(tags.get("route"), Some("/users?page=2"));
    assert_eq!(tags.get("tenant"), Some("acme"));
    assert_eq!(tags.len(), 3);
}

#[test]
fn node_encode_uri_component_with_unescaped_quote() {
    // encodeURIComponent leaves `'` alone and never meta-escapes.
    let q = "SELECT 1 /*route='%2Fo'brien%20and%20co',tenant='acme'*/";
    let tags = sqlcommenter_tags(q).unwrap();
    assert_eq!(tags.get("route"), Some("/o'brien and co"));
    assert_eq!(tags.get("tenant"), Some("acme"));
}

#[test]
fn meta_escaped_quotes() {
    let q = r"SELECT 1 /*action='it\'s',tenant='acme'*/";
    let tags = sqlcommenter_tags(q).unwrap();
    assert_eq!(tags.get("action"), Some("it's"));
    assert_eq!(tags.get("tenant"), Some("acme"));
}

#[test]
fn python_percent_doubling_and_repr_double_quotes() {
    let q = "SELECT 1 /*db_driver='psycopg2',route='%%2Fapi%%2Fv1%%20x',tenant='acme'*/";
    let tags = sqlcommenter_tags(q).unwrap();
    assert_eq!(tags.get("route"), Some("/api/v1 x"));
    assert_eq!(tags.get("db_driver"), Some("psycopg2"));
    // Python keeps `/` unencoded.
    assert_eq!(
        sqlcommenter_tags("SELECT 1 /*route='/api/v1'*/")
            .unwrap()
            .get("route"),
        Some("/api/v1")
    );
    // repr() picks double quotes for a value with a `'` in it.
    let q = r#"SELECT 1 /*action="it's",tenant="acme"*/"#;
    let tags = sqlcommenter_tags(q).unwrap();
    assert_eq!(tags.get("action"), Some("it's"));
    assert_eq!(tags.get("tenant"), Some("acme"));
}

#[test]
fn spec_typo_comma_inside_quotes() {
    let q = "SELECT * FROM FOO /*action='%2Fparam*d',controller='index,'framework='spring',\
             tenant='acme'*/";
    let tags = sqlcommenter_tags(q).unwrap();
    assert_eq!(tags.get("controller"), Some("index"));
    assert_eq!(tags.get("framework"), Some("spring"));
    assert_eq!(tags.get("tenant"), Some("acme"));
}

#[test]
fn whitespace_newlines_and_trailing_comma() {
    let q = "SELECT 1 /* action = 'a' ,\n tenant = 'acme' , */";
    assert_eq!(tag(q).as_deref(), Some("acme"));
}

#[test]
fn encoded_tenant_value_is_decoded() {
    assert_eq!(tag("SELECT 1 /*tenant='t%2D17'*/").as_deref(), Some("t-17"));
    assert_eq!(tag(r"SELECT 1 /*tenant='ac\me'*/").as_deref(), Some("acme"));
}

// === data is never a tag ===

#[test]
fn tags_inside_strings_identifiers_and_dollar_quotes_are_data() {
    for q in [
        "SELECT '/*tenant=''x''*/'",
        r"SELECT E'\' /*tenant=''x''*/'",
        r#"SELECT 1 AS "/*tenant='x'*/""#,
        "SELECT $$ /*tenant='x'*/ $$",
        "SELECT $body$ $$ /*tenant='x'*/ $$ $body$",
        "SELECT 1 -- /*tenant='x'*/",
        "SELECT U&'/*tenant=''x''*/'",
    ] {
        assert_eq!(tag(q), None, "{q}");
        assert!(sqlcommenter_tags(q).unwrap().is_empty(), "{q}");
    }
    // …and the real tag next to such data is found.
    assert_eq!(
        tag("SELECT '/*tenant=''x''*/', $$/*tenant='y'*/$$ /*tenant='acme'*/").as_deref(),
        Some("acme")
    );
}

#[test]
fn unterminated_text_fails_closed() {
    for (q, what) in [
        ("SELECT 'abc /*tenant='acme'*/", Unterminated::StringLiteral),
        (
            r"SELECT E'\' /*tenant='acme'*/",
            Unterminated::StringLiteral,
        ),
        (
            "SELECT \"abc /*tenant='acme'*/",
            Unterminated::QuotedIdentifier,
        ),
        (
            "SELECT $q$ /*tenant='acme'*/",
            Unterminated::DollarQuotedString,
        ),
        ("SELECT 1 /*tenant='acme'", Unterminated::BlockComment),
        ("SELECT 1 /*tenant='acme' /* */", Unterminated::BlockComment),
    ] {
        let err = tag_err(q);
        assert!(
            matches!(err, TenantError::Unterminated { what: w, .. } if w == what),
            "{q}: {err:?}"
        );
        assert_eq!(err.sqlstate(), Some("42601"));
        assert_eq!(err.label(), "unterminated_sql");
        assert!(sqlcommenter_tags(q).is_err());
    }
}

// === conflicts and malformed tags ===

#[test]
fn conflicting_tenants_are_refused() {
    for q in [
        "/*tenant='a'*/ SELECT 1 /*tenant='b'*/",
        "SELECT 1 /*tenant='a',tenant='b'*/",
        "SELECT 1 /*tenant='a'*/; SELECT 2 /*tenant='b'*/",
        "SELECT 1 /*tenant='a'*/ /*tenant='a%20'*/",
    ] {
        let err = tag_err(q);
        assert_eq!(err, TenantError::ConflictingTenants, "{q}");
        assert_eq!(err.sqlstate(), Some("42501"));
        assert!(!err.to_string().contains("'a'"));
    }
    // The same tenant twice is fine.
    assert_eq!(
        tag("/*tenant='a'*/ SELECT 1 /*route='x',tenant='a'*/").as_deref(),
        Some("a")
    );
    // All pairs are kept by sqlcommenter_tags.
    let tags = sqlcommenter_tags("/*tenant='a'*/ SELECT 1 /*tenant='b'*/").unwrap();
    assert_eq!(tags.get_all("tenant").collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn malformed_tags_that_mention_the_tenant_fail_closed() {
    for q in [
        "SELECT 1 /*tenant=acme*/",
        "SELECT 1 /* tenant: acme */",
        "SELECT 1 /*TENANT = acme*/",
        "SELECT 1 /*tenant='acme*/",
        "SELECT 1 /*tenant='%zz'*/",
        "SELECT 1 /*tenant='%FF'*/",
        "SELECT 1 /*route='x' tenant='acme'*/",
        "SELECT 1 /*route='x'tenant='evil'*/",
        "SELECT 1 /* note /*tenant='a'*/ */",
        "SELECT 1 /*tenant='a' and more*/",
    ] {
        let err = tag_err(q);
        assert!(
            matches!(err, TenantError::MalformedTenantTag { .. }),
            "{q}: {err:?}"
        );
        assert_eq!(err.sqlstate(), Some("42501"));
        assert_eq!(err.label(), "malformed_tenant_tag");
        assert!(!err.to_string().contains("acme"));
        assert!(!err.to_string().contains("SELECT"));
    }
}

#[test]
fn ordinary_comments_are_ignored() {
    for q in [
        "SELECT 1 /* fetch the tenant rows */",
        "SELECT 1 /* tenants=3 */",
        "SELECT 1 /* a = b */",
        "SELECT 1 /**/",
        "SELECT 1 /* route='%zz' */",
        "/* leading */ SELECT 1 -- tenant='x'",
    ] {
        assert_eq!(tag(q), None, "{q}");
    }
}

#[test]
fn configured_key() {
    let q = "SELECT 1 /*org='acme',tenant='other'*/";
    assert_eq!(tenant_tag(q, "org").unwrap().as_deref(), Some("acme"));
    assert!(matches!(
        tenant_tag("SELECT 1 /*org=acme*/", "org"),
        Err(TenantError::MalformedTenantTag { .. })
    ));
    assert_eq!(tenant_tag("SELECT 1 /*tenant=acme*/", "org").unwrap(), None);
    assert!(sqlcommenter_tags_for_key("SELECT 1 /*org=acme*/", "org").is_err());
}

#[test]
fn validated_tenant_from_comments() {
    let pattern = TenantIdPattern::default();
    let id = tenant_id_from_comments("SELECT 1 /*tenant='t17'*/", "tenant", &pattern)
        .unwrap()
        .unwrap();
    assert_eq!(id.as_str(), "t17");
    assert_eq!(
        tenant_id_from_comments("SELECT 1", "tenant", &pattern).unwrap(),
        None
    );
    let err =
        tenant_id_from_comments("SELECT 1 /*tenant='a%27%3B'*/", "tenant", &pattern).unwrap_err();
    assert_eq!(err.sqlstate(), Some("28000"));
    assert!(!err.to_string().contains('\''));
    let err = tenant_id_from_comments("SELECT 1 /*tenant=''*/", "tenant", &pattern).unwrap_err();
    assert_eq!(err.label(), "invalid_tenant_id");
}

// === comment stripping ===

#[test]
fn strip_makes_tenants_share_one_key() {
    assert_eq!(
        strip_comments("select 1 /*tenant='a'*/"),
        strip_comments("select 1 /*tenant='b'*/")
    );
    assert_eq!(
        strip_comments("/*tenant='a',traceparent='00-1'*/ select * from t where x = $1"),
        strip_comments("/*tenant='b',traceparent='00-2'*/ select * from t where x = $1"),
    );
}

#[test]
fn strip_keeps_literals_intact() {
    let q = "select '/*tenant=''a''*/', E'\\' -- ', $$ /* $$, \"/*\" /*tenant='a'*/ -- x";
    assert_eq!(
        strip_comments(q),
        "select '/*tenant=''a''*/', E'\\' -- ', $$ /* $$, \"/*\" "
    );
    assert_eq!(strip_comments("select 'a' -- x\n"), "select 'a' \n");
}

// === errors ===

#[test]
fn error_mapping() {
    let cases = [
        (
            TenantError::InvalidTenantId { reason: "x" },
            Some("28000"),
            "invalid_tenant_id",
        ),
        (
            TenantError::ConflictingTenants,
            Some("42501"),
            "conflicting_tenants",
        ),
        (
            TenantError::MalformedTenantTag {
                key: "tenant".into(),
                reason: "x",
            },
            Some("42501"),
            "malformed_tenant_tag",
        ),
        (
            TenantError::Unterminated {
                what: Unterminated::StringLiteral,
                offset: 3,
            },
            Some("42601"),
            "unterminated_sql",
        ),
        (
            TenantError::InvalidPattern { reason: "x".into() },
            None,
            "invalid_id_pattern",
        ),
        (TenantError::InvalidTagKey, None, "invalid_tag_key"),
    ];
    for (err, sqlstate, label) in cases {
        assert_eq!(err.sqlstate(), sqlstate);
        assert_eq!(err.label(), label);
        assert_eq!(err.is_config_error(), sqlstate.is_none());
    }
}

#[test]
fn pattern_refusals() {
    for bad in [
        "[a-z]+",
        "^[a-z]+",
        "^a|b$",
        "^.*$",
        r"^[\s\w]+$",
        r"^[^x]+$",
        "^[a-z'-]+$",
    ] {
        let err = TenantIdPattern::new(bad).unwrap_err();
        assert!(err.is_config_error(), "{bad}");
        assert_eq!(err.sqlstate(), None);
    }
    assert!(TenantIdPattern::new(DEFAULT_TENANT_ID_PATTERN).is_ok());
}

// === properties ===

/// SQL-ish tokens without comments: words, numbers, parameters, operators, string literals
/// (whose text may look like comments or tags), quoted identifiers and dollar quotes.
fn token() -> impl Strategy<Value = String> {
    let inner = "[a-z /*'=,$-]{0,12}";
    prop_oneof![
        "[A-Za-z_][A-Za-z0-9_$]{0,8}",
        "[0-9]{1,5}(\\.[0-9]{1,3})?",
        "\\$[1-9]",
        prop::sample::select(vec![
            "=", "<", ">=", "+", "-", "*", "/", "(", ")", ",", ";", "::"
        ])
        .prop_map(str::to_owned),
        inner.prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
        inner.prop_map(|s| format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))),
        inner.prop_map(|s| format!("\"{}\"", s.replace('"', "\"\""))),
        inner.prop_map(|s| format!("$q$ {} $q$", s.replace('$', ""))),
        inner.prop_map(|s| format!("$$ {} $$", s.replace('$', ""))),
    ]
}

fn sqlish() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(token(), 1..20),
        prop::collection::vec(prop::sample::select(vec![" ", "\n", "  ", "\t"]), 20),
    )
        .prop_map(|(tokens, seps)| {
            let mut out = String::new();
            for (i, t) in tokens.iter().enumerate() {
                if i > 0 {
                    out.push_str(seps[i % seps.len()]);
                }
                out.push_str(t);
            }
            out
        })
}

proptest! {
    #[test]
    fn appended_tag_is_found_and_stripped(
        id in "[A-Za-z0-9][A-Za-z0-9_-]{0,62}",
        text in sqlish(),
    ) {
        prop_assert!(block_comments(&text).unwrap().is_empty());
        prop_assert_eq!(tenant_tag(&text, "tenant").unwrap(), None);
        let query = format!("{text} /*tenant='{id}'*/");
        prop_assert_eq!(tenant_tag(&query, "tenant").unwrap(), Some(id.clone()));
        let stripped = strip_comments(&query);
        prop_assert_eq!(stripped.trim_end(), text.trim_end());
        let prefixed = format!("/*tenant='{id}'*/ {text}");
        prop_assert_eq!(tenant_tag(&prefixed, "tenant").unwrap(), Some(id));
        let stripped = strip_comments(&prefixed);
        prop_assert_eq!(stripped.trim_start(), text.trim_start());
    }

    #[test]
    fn different_tenants_share_the_stripped_text(
        a in "[a-z0-9]{1,10}",
        b in "[a-z0-9]{1,10}",
        text in sqlish(),
    ) {
        let qa = format!("{text} /*route='%2Fx',tenant='{a}'*/");
        let qb = format!("{text} /*route='%2Fx',tenant='{b}'*/");
        prop_assert_eq!(strip_comments(&qa), strip_comments(&qb));
    }

    #[test]
    fn default_pattern_agrees_with_its_regex(id in "[ -~]{0,70}|[A-Za-z0-9_-]{0,70}") {
        let regex = regex::Regex::new(DEFAULT_TENANT_ID_PATTERN).unwrap();
        let safe = !id.contains("--");
        prop_assert_eq!(
            TenantIdPattern::default().is_match(&id),
            regex.is_match(&id) && safe
        );
    }

    #[test]
    fn lexer_never_panics(text in "\\PC{0,80}") {
        let _ = tenant_tag(&text, "tenant");
        let _ = strip_comments(&text);
    }
}
