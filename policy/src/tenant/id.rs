//! Tenant ids and the configured pattern they must match.
//!
//! A [`TenantId`] exists only after a [`TenantIdPattern`] accepted it, so code that holds one
//! never re-checks it. Two layers guard the text:
//!
//! 1. the operator's pattern (`id_pattern`, default [`DEFAULT_TENANT_ID_PATTERN`]), which must be
//!    anchored at both ends and is refused at load if it matches any of the probe characters
//!    (quotes, backslash, `;`, NUL, whitespace) alone or next to an ordinary character — a
//!    heuristic that catches wide patterns early, not the guarantee;
//! 2. the guarantee: a fixed safe set, checked on every id, that no pattern can widen: 1 to [`MAX_TENANT_ID_LEN`] printable ASCII
//!    characters, none of `'` `"` `\` `;` `` ` ``, and no `--`, `/*` or `*/` anywhere.
//!
//! So a tenant id can never carry SQL string, identifier or comment syntax, whatever the config.

use std::borrow::Borrow;
use std::fmt;

use regex::{Regex, RegexBuilder};

use super::error::TenantError;

/// The default `id_pattern`: a letter or digit, then up to 62 letters, digits, `_` or `-`
/// (at most 63 characters, like a Postgres identifier).
pub const DEFAULT_TENANT_ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$";

/// No tenant id is longer than this, whatever the pattern allows.
pub const MAX_TENANT_ID_LEN: usize = 255;

/// Longest accepted pattern text.
const MAX_PATTERN_LEN: usize = 1024;

/// Compiled-size ceiling for a configured pattern.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Characters no pattern may match (tested alone and next to ordinary characters when the
/// pattern is loaded).
const PROBE_CHARS: [char; 14] = [
    '\'', '"', '\\', ';', '`', '\0', ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{a0}',
];

/// Neighbours the probe characters are tried with, so `^a[;]b$`-style patterns are caught too.
const PROBE_NEIGHBOURS: [&str; 6] = ["", "a", "A", "0", "_", "-"];

/// A validated tenant id. Made only by [`TenantIdPattern::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// How a pattern matches: the default one is checked by hand (no regex, and no compile step that
/// could fail), any other by its compiled, fully anchored regex.
#[derive(Clone)]
enum Matcher {
    Default,
    Regex(Regex),
}

/// The configured tenant id pattern, compiled and checked.
#[derive(Clone)]
pub struct TenantIdPattern {
    source: String,
    matcher: Matcher,
}

impl fmt::Debug for TenantIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TenantIdPattern")
            .field(&self.source)
            .finish()
    }
}

impl Default for TenantIdPattern {
    /// [`DEFAULT_TENANT_ID_PATTERN`].
    fn default() -> Self {
        TenantIdPattern {
            source: DEFAULT_TENANT_ID_PATTERN.to_owned(),
            matcher: Matcher::Default,
        }
    }
}

impl TenantIdPattern {
    /// Compiles and checks a configured pattern.
    ///
    /// Refused: patterns longer than 1024 characters, that do not start with `^` (or `\A`) and
    /// end with an unescaped `$` (or `\z`), that have an alternation `|` outside any group (write
    /// `^(?:a|b)$`), that do not compile, that match the empty string, or that match any probe
    /// character (`'`, `"`, `\`, `;`, `` ` ``, NUL, whitespace) alone or next to a letter, digit,
    /// `_` or `-`. Whatever the text, matching is always against the whole id.
    pub fn new(pattern: &str) -> Result<Self, TenantError> {
        if pattern == DEFAULT_TENANT_ID_PATTERN {
            return Ok(TenantIdPattern::default());
        }
        let refuse = |reason: String| Err(TenantError::InvalidPattern { reason });
        if pattern.len() > MAX_PATTERN_LEN {
            return refuse(format!("longer than {MAX_PATTERN_LEN} characters"));
        }
        if !(pattern.starts_with('^') || pattern.starts_with("\\A")) {
            return refuse(format!("`{pattern}` must start with `^` (anchored)"));
        }
        if !ends_anchored(pattern) {
            return refuse(format!("`{pattern}` must end with `$` (anchored)"));
        }
        if has_top_level_alternation(pattern) {
            return refuse(format!(
                "`{pattern}` has a `|` outside any group, which unanchors its branches; \
                 write `^(?:a|b)$`"
            ));
        }
        let regex = RegexBuilder::new(&format!(r"\A(?:{pattern})\z"))
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|err| TenantError::InvalidPattern {
                reason: format!("`{pattern}` does not compile: {err}"),
            })?;
        if regex.is_match("") {
            return refuse(format!("`{pattern}` matches the empty string"));
        }
        for c in PROBE_CHARS {
            for before in PROBE_NEIGHBOURS {
                for after in PROBE_NEIGHBOURS {
                    if regex.is_match(&format!("{before}{c}{after}")) {
                        return refuse(format!(
                            "`{pattern}` matches {}, which a tenant id must never contain",
                            c.escape_debug()
                        ));
                    }
                }
            }
        }
        Ok(TenantIdPattern {
            source: pattern.to_owned(),
            matcher: Matcher::Regex(regex),
        })
    }

    /// The pattern as configured.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Validates `text` as a tenant id: the fixed safe set first, then the pattern.
    pub fn parse(&self, text: &str) -> Result<TenantId, TenantError> {
        check_safe(text)?;
        let matched = match &self.matcher {
            Matcher::Default => matches_default(text),
            Matcher::Regex(regex) => regex.is_match(text),
        };
        if matched {
            Ok(TenantId(text.to_owned()))
        } else {
            Err(TenantError::InvalidTenantId {
                reason: "it does not match the configured id_pattern",
            })
        }
    }

    /// True if `text` would parse.
    pub fn is_match(&self, text: &str) -> bool {
        self.parse(text).is_ok()
    }
}

/// The fixed safe set every tenant id must be within, whatever the pattern.
fn check_safe(text: &str) -> Result<(), TenantError> {
    let refuse = |reason| Err(TenantError::InvalidTenantId { reason });
    if text.is_empty() {
        return refuse("it is empty");
    }
    if text.len() > MAX_TENANT_ID_LEN {
        return refuse("it is longer than 255 bytes");
    }
    let bytes = text.as_bytes();
    if !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return refuse("it has whitespace, control or non-ASCII characters");
    }
    if bytes
        .iter()
        .any(|b| matches!(b, b'\'' | b'"' | b'\\' | b';' | b'`'))
    {
        return refuse("it has a quote, backslash or semicolon");
    }
    if bytes
        .windows(2)
        .any(|w| w == b"--" || w == b"/*" || w == b"*/")
    {
        return refuse("it has comment syntax (`--`, `/*` or `*/`)");
    }
    Ok(())
}

/// [`DEFAULT_TENANT_ID_PATTERN`] by hand.
fn matches_default(text: &str) -> bool {
    let bytes = text.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphanumeric()
                && rest.len() <= 62
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
        }
        None => false,
    }
}

/// Ends with `\z`, or with a `$` that is not escaped (an even number of backslashes before it).
fn ends_anchored(pattern: &str) -> bool {
    if let Some(head) = pattern.strip_suffix("\\z") {
        return trailing_backslashes(head).is_multiple_of(2);
    }
    match pattern.strip_suffix('$') {
        Some(head) => trailing_backslashes(head).is_multiple_of(2),
        None => false,
    }
}

fn trailing_backslashes(text: &str) -> usize {
    text.bytes().rev().take_while(|b| *b == b'\\').count()
}

/// A `|` at group depth 0 and outside a character class.
fn has_top_level_alternation(pattern: &str) -> bool {
    let bytes = pattern.as_bytes();
    let mut depth = 0usize;
    let mut class = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 1,
            b'[' => {
                class += 1;
                // A `]` right after `[` or `[^` is a literal.
                if bytes.get(i + 1) == Some(&b'^') {
                    i += 1;
                }
                if bytes.get(i + 1) == Some(&b']') {
                    i += 1;
                }
            }
            b']' if class > 0 => class -= 1,
            b'(' if class == 0 => depth += 1,
            b')' if class == 0 => depth = depth.saturating_sub(1),
            b'|' if class == 0 && depth == 0 => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn default_accepts_ordinary_ids() {
        let p = TenantIdPattern::default();
        for ok in ["acme", "t17", "A", "0", "acme-corp_2", &"a".repeat(63)] {
            assert_eq!(p.parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn default_refuses_everything_else() {
        let p = TenantIdPattern::default();
        for bad in [
            "",
            "-acme",
            "_acme",
            "ac me",
            "acme'",
            "acme;",
            "a\"b",
            "a\\b",
            "a\0b",
            "ümlaut",
            "a.b",
            "a--b",
            &"a".repeat(64),
        ] {
            let err = p.parse(bad).unwrap_err();
            assert_eq!(err.sqlstate(), Some("28000"), "{bad:?}");
            assert!(!err.to_string().contains(bad) || bad.is_empty() || bad == "a");
        }
    }

    #[test]
    fn default_source_gives_the_builtin_matcher() {
        let p = TenantIdPattern::new(DEFAULT_TENANT_ID_PATTERN).unwrap();
        assert!(matches!(p.matcher, Matcher::Default));
        assert_eq!(p.as_str(), DEFAULT_TENANT_ID_PATTERN);
    }

    #[test]
    fn custom_patterns() {
        let uuid =
            TenantIdPattern::new(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
                .unwrap();
        assert!(uuid.is_match("550e8400-e29b-41d4-a716-446655440000"));
        assert!(!uuid.is_match("acme"));
        let grouped = TenantIdPattern::new(r"^(?:org|team)_[a-z]+$").unwrap();
        assert!(grouped.is_match("org_acme"));
        assert!(!grouped.is_match("x org_acme"));
        let dotted = TenantIdPattern::new(r"\A[a-z]+(\.[a-z]+)*\z").unwrap();
        assert!(dotted.is_match("eu.acme"));
    }

    #[test]
    fn refuses_unanchored_patterns() {
        for bad in [
            "[a-z]+",
            "^[a-z]+",
            "[a-z]+$",
            r"^[a-z]+\$",
            "^a|b$",
            "^a$|^b$",
            "(?m)^[a-z]+$",
        ] {
            let err = TenantIdPattern::new(bad).unwrap_err();
            assert!(err.is_config_error(), "{bad}");
            assert_eq!(err.label(), "invalid_id_pattern");
        }
    }

    #[test]
    fn refuses_patterns_that_match_unsafe_characters() {
        for bad in [
            "^.+$",
            r"^[^/]+$",
            r"^\S+$",
            r"^[a-z ]+$",
            r"^[a-z;]+$",
            r"^[a-z']+$",
            r#"^[a-z"]+$"#,
            r"^[a-z\\]+$",
            r"^[a-z\x00]+$",
            r"^[\w\s]+$",
            r"^a;$",
            r"^[a-z]*$",
            "^(",
        ] {
            assert!(TenantIdPattern::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn safe_set_holds_even_when_a_pattern_is_wide() {
        // Wider than the default but passes the probes (no quote, backslash, `;`, space).
        let p = TenantIdPattern::new(r"^[a-z/*.-]+$").unwrap();
        assert!(p.is_match("a/b.c"));
        for bad in ["a/*b", "a*/b", "a--b"] {
            assert_eq!(p.parse(bad).unwrap_err().label(), "invalid_tenant_id");
        }
        // The load-time probes cannot see every context; the safe set still refuses.
        let sneaky = TenantIdPattern::new(r"^a[';]b$").unwrap();
        assert_eq!(
            sneaky.parse("a'b").unwrap_err().label(),
            "invalid_tenant_id"
        );
        assert_eq!(
            sneaky.parse("a;b").unwrap_err().label(),
            "invalid_tenant_id"
        );
        let long = TenantIdPattern::new(r"^[a-z]{1,1000}$").unwrap();
        assert!(long.is_match(&"a".repeat(255)));
        assert!(!long.is_match(&"a".repeat(256)));
    }

    #[test]
    fn tenant_id_traits() {
        let id = TenantIdPattern::default().parse("acme").unwrap();
        assert_eq!(id.to_string(), "acme");
        assert_eq!(AsRef::<str>::as_ref(&id), "acme");
        let set: std::collections::HashSet<TenantId> = [id.clone()].into();
        assert!(set.contains("acme"));
        assert_eq!(id.into_string(), "acme");
    }
}
