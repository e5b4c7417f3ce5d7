//! sqlcommenter tags (`/*key='value',key2='value2'*/`) in the top-level block comments found by
//! the [lexer](super::lex), and the tenant tag among them.
//!
//! Accepted, because real libraries emit it:
//!
//! - URL-encoded keys and values, `%XX` and `+` for a space (Go `url.QueryEscape`, Java
//!   `URLEncoder`), `%20` (Node `encodeURIComponent`, Python `urllib.parse.quote`);
//! - meta-escaping `\'` (any `\X` stands for `X`);
//! - Python's `%%` doubling of every `%` (for pyformat drivers): a value with `%%` is undoubled
//!   before URL-decoding;
//! - values in double quotes (Python's `repr()`);
//! - a `'` left unescaped inside a value (Node): a quote closes the value only where the rest of
//!   the comment reads as its end or as `,key='…`;
//! - the spec exhibit's typo `controller='index,'framework='spring'` (the comma inside the quotes):
//!   a value ending in `,` followed directly by the next `key=` loses that comma;
//! - whitespace and newlines around pairs, a trailing comma, and several comments.
//!
//! A comment that does not read as sqlcommenter is ignored, unless it mentions the tenant key
//! (`tenant=` or `tenant:` in any case): then the statement is refused, never run without the
//! tenant its author meant. Line comments (`-- …`) are never tags.

use std::borrow::Cow;

use super::error::TenantError;
use super::id::{TenantId, TenantIdPattern};
use super::lex::{CommentKind, comments};

/// The tag key that carries the tenant unless configured otherwise.
pub const DEFAULT_TENANT_KEY: &str = "tenant";

/// Longest accepted tag key in config.
const MAX_TAG_KEY_LEN: usize = 64;

/// The decoded sqlcommenter pairs of a query, in the order they appear (duplicates kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    pairs: Vec<(String, String)>,
}

impl Tags {
    /// The first value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// No pairs at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl IntoIterator for Tags {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.pairs.into_iter()
    }
}

/// The sqlcommenter pairs of every top-level block comment of `query`, with
/// [`DEFAULT_TENANT_KEY`] as the tenant key (a malformed comment that mentions it is an error).
pub fn sqlcommenter_tags(query: &str) -> Result<Tags, TenantError> {
    sqlcommenter_tags_for_key(query, DEFAULT_TENANT_KEY)
}

/// [`sqlcommenter_tags`] with a configured tenant key.
pub fn sqlcommenter_tags_for_key(query: &str, tenant_key: &str) -> Result<Tags, TenantError> {
    check_key(tenant_key)?;
    let mut tags = Tags::default();
    for comment in comments(query) {
        let comment = comment?;
        if comment.kind != CommentKind::Block {
            continue;
        }
        if let Some(pairs) = parse_tag_comment(comment.body, tenant_key)? {
            tags.pairs.extend(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_owned())),
            );
        }
    }
    Ok(tags)
}

/// The tenant named by the `key` tag of `query`'s comments: `None` if no comment has one, an
/// error if the query text does not lex, if a comment that mentions `key` is malformed, or if two
/// pairs (in one comment or several) give different values. The value is not validated: pass it
/// to [`TenantIdPattern::parse`] (or use [`tenant_id_from_comments`]).
pub fn tenant_tag(query: &str, key: &str) -> Result<Option<String>, TenantError> {
    check_key(key)?;
    let mut found: Option<String> = None;
    for comment in comments(query) {
        let comment = comment?;
        if comment.kind != CommentKind::Block {
            continue;
        }
        let Some(pairs) = parse_tag_comment(comment.body, key)? else {
            continue;
        };
        for (k, value) in pairs {
            if k != key {
                continue;
            }
            match &found {
                Some(previous) if *previous != value => {
                    return Err(TenantError::ConflictingTenants);
                }
                Some(_) => {}
                None => found = Some(value.into_owned()),
            }
        }
    }
    Ok(found)
}

/// [`tenant_tag`], validated by `pattern`.
pub fn tenant_id_from_comments(
    query: &str,
    key: &str,
    pattern: &TenantIdPattern,
) -> Result<Option<TenantId>, TenantError> {
    tenant_tag(query, key)?
        .map(|value| pattern.parse(&value))
        .transpose()
}

fn check_key(key: &str) -> Result<(), TenantError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_TAG_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TenantError::InvalidTagKey)
    }
}

type Pairs<'b> = Vec<(Cow<'b, str>, Cow<'b, str>)>;

/// One block comment body: `Some(pairs)` if it reads as sqlcommenter, `None` if it does not and
/// does not mention `tenant_key`, an error if it does not and does.
fn parse_tag_comment<'b>(
    body: &'b str,
    tenant_key: &str,
) -> Result<Option<Pairs<'b>>, TenantError> {
    let malformed = |reason| {
        if mentions_key(body, tenant_key) {
            Err(TenantError::MalformedTenantTag {
                key: tenant_key.to_owned(),
                reason,
            })
        } else {
            Ok(None)
        }
    };
    // Cheap exit for ordinary comments.
    if !body.contains('=') {
        return malformed("no `key='value'` pair");
    }
    let raw = match split_pairs(body) {
        Ok(raw) => raw,
        Err(reason) => return malformed(reason),
    };
    let mut pairs = Vec::with_capacity(raw.len());
    for pair in raw {
        // A value that itself reads `tenant=…` means the quoting is not what it seems.
        if mentions_key(pair.value, tenant_key) {
            return malformed("a value contains another tag");
        }
        let (Some(key), Some(value)) = (decode(pair.key), decode(pair.value)) else {
            return malformed("bad escaping or URL-encoding");
        };
        pairs.push((key, value));
    }
    Ok(Some(pairs))
}

/// A pair as written: the key, and the value between its quotes (escapes still in).
struct RawPair<'b> {
    key: &'b str,
    value: &'b str,
}

/// Splits a comment body into `key='value'` pairs, or says why it is not sqlcommenter.
fn split_pairs(body: &str) -> Result<Vec<RawPair<'_>>, &'static str> {
    let bytes = body.as_bytes();
    let mut pairs = Vec::new();
    let mut i = skip_ws(bytes, 0);
    if i == bytes.len() {
        return Ok(pairs);
    }
    loop {
        let key_end = skip_key(bytes, i);
        if key_end == i {
            return Err("a pair does not start with a key");
        }
        let key = body.get(i..key_end).unwrap_or_default();
        i = skip_ws(bytes, key_end);
        if bytes.get(i) != Some(&b'=') {
            return Err("a key is not followed by `=`");
        }
        i = skip_ws(bytes, i + 1);
        let quote = match bytes.get(i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err("a value is not quoted"),
        };
        let value_start = i + 1;
        let mut j = value_start;
        let next = loop {
            match bytes.get(j) {
                None => return Err("a value has no closing quote"),
                Some(b'\\') => j += 2,
                Some(&c) if c == quote => {
                    let value = body.get(value_start..j).unwrap_or_default();
                    match after_value(bytes, j + 1) {
                        After::End => {
                            pairs.push(RawPair { key, value });
                            return Ok(pairs);
                        }
                        After::Next(next) => {
                            pairs.push(RawPair { key, value });
                            break next;
                        }
                        // `controller='index,'framework=…`: the comma went inside the quotes.
                        After::Adjacent(next) if value.ends_with(',') => {
                            let value = value.get(..value.len() - 1).unwrap_or_default();
                            pairs.push(RawPair { key, value });
                            break next;
                        }
                        // A quote inside the value, left unescaped.
                        After::Adjacent(_) | After::Neither => j += 1,
                    }
                }
                Some(_) => j += 1,
            }
        };
        i = next;
    }
}

/// What follows a candidate closing quote.
enum After {
    /// Only whitespace (and at most one comma) up to the end of the comment.
    End,
    /// A comma, then the next pair starting at this position.
    Next(usize),
    /// The next pair starting here with no comma before it.
    Adjacent(usize),
    /// Anything else: the quote was part of the value.
    Neither,
}

fn after_value(bytes: &[u8], from: usize) -> After {
    let i = skip_ws(bytes, from);
    match bytes.get(i) {
        None => After::End,
        Some(b',') => {
            let j = skip_ws(bytes, i + 1);
            if j == bytes.len() {
                After::End
            } else if pair_starts_at(bytes, j) {
                After::Next(j)
            } else {
                After::Neither
            }
        }
        Some(_) if pair_starts_at(bytes, i) => After::Adjacent(i),
        Some(_) => After::Neither,
    }
}

/// `key =` followed by a quote.
fn pair_starts_at(bytes: &[u8], i: usize) -> bool {
    let key_end = skip_key(bytes, i);
    if key_end == i {
        return false;
    }
    let eq = skip_ws(bytes, key_end);
    if bytes.get(eq) != Some(&b'=') {
        return false;
    }
    matches!(bytes.get(skip_ws(bytes, eq + 1)), Some(b'\'' | b'"'))
}

/// Key characters as the libraries write them: URL-encoded text (`%`, `+`) and the characters
/// URL encoders leave alone (`-`, `_`, `.`, `~`, and `/` for Python).
fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~' | b'%' | b'+' | b'/')
}

fn skip_key(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while bytes.get(i).is_some_and(|&b| is_key_byte(b)) {
        i += 1;
    }
    i
}

fn skip_ws(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// `key` (ASCII case-insensitive) as a whole word, followed by optional whitespace and `=` or
/// `:`. Catches `tenant = acme`, `TENANT: acme`, `x,tenant='a` but not `tenants` or `fetch tenant
/// rows`.
fn mentions_key(text: &str, key: &str) -> bool {
    let bytes = text.as_bytes();
    let key = key.as_bytes();
    if key.is_empty() || bytes.len() < key.len() {
        return false;
    }
    (0..=bytes.len() - key.len()).any(|at| {
        let word_before = at > 0 && bytes.get(at - 1).is_some_and(|&b| is_word_byte(b));
        let end = at + key.len();
        !word_before
            && bytes
                .get(at..end)
                .is_some_and(|w| w.eq_ignore_ascii_case(key))
            && !bytes.get(end).is_some_and(|&b| is_word_byte(b))
            && matches!(bytes.get(skip_ws(bytes, end)), Some(b'=' | b':'))
    })
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Undoes the encodings of a key or value: meta-escapes (`\X` → `X`), Python's `%%`, then URL
/// encoding (`%XX`, `+` for a space). `None` if a `%` is not followed by two hex digits or the
/// bytes are not UTF-8.
fn decode(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.bytes().any(|b| matches!(b, b'\\' | b'%' | b'+')) {
        return Some(Cow::Borrowed(raw));
    }
    let mut text: Vec<u8> = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'\\' {
            text.push(bytes.next()?);
        } else {
            text.push(b);
        }
    }
    if text.windows(2).any(|w| w == b"%%") {
        let mut undoubled = Vec::with_capacity(text.len());
        let mut i = 0;
        while let Some(&b) = text.get(i) {
            undoubled.push(b);
            i += if b == b'%' && text.get(i + 1) == Some(&b'%') {
                2
            } else {
                1
            };
        }
        text = undoubled;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        match b {
            b'%' => {
                let hi = hex(*text.get(i + 1)?)?;
                let lo = hex(*text.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tags(query: &str) -> Vec<(String, String)> {
        sqlcommenter_tags(query).unwrap().into_iter().collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn spec_exhibit_with_its_typo() {
        let q = "SELECT * FROM FOO /*action='%2Fparam*d',controller='index,'framework='spring',\n\
                 traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01',\n\
                 tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa0ba902b7'*/";
        assert_eq!(
            tags(q),
            pairs(&[
                ("action", "/param*d"),
                ("controller", "index"),
                ("framework", "spring"),
                (
                    "traceparent",
                    "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01"
                ),
                ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ])
        );
    }

    #[test]
    fn decode_forms() {
        assert_eq!(decode("a+b%20c").unwrap(), "a b c");
        assert_eq!(decode(r"it\'s").unwrap(), "it's");
        assert_eq!(decode("%%2Fapi%%2Fv1").unwrap(), "/api/v1");
        assert_eq!(decode("%%25").unwrap(), "%");
        assert_eq!(decode("%C3%A9").unwrap(), "é");
        assert!(decode("%zz").is_none());
        assert!(decode("%2").is_none());
        assert!(decode("%FF").is_none());
        assert!(decode("a\\").is_none());
    }

    #[test]
    fn mentions() {
        assert!(mentions_key("tenant=acme", "tenant"));
        assert!(mentions_key(" Tenant : acme", "tenant"));
        assert!(mentions_key("x,tenant='a", "tenant"));
        assert!(!mentions_key("fetch tenant rows", "tenant"));
        assert!(!mentions_key("tenants=3", "tenant"));
        assert!(!mentions_key("my_tenant=3", "tenant"));
        assert!(!mentions_key("ten", "tenant"));
    }

    #[test]
    fn bad_keys_are_config_errors() {
        for key in ["", "a b", "t'", &"k".repeat(65)] {
            let err = tenant_tag("select 1", key).unwrap_err();
            assert_eq!(err, TenantError::InvalidTagKey);
            assert!(err.is_config_error());
        }
        assert_eq!(
            tenant_tag("/*app.tenant='a'*/", "app.tenant")
                .unwrap()
                .as_deref(),
            Some("a")
        );
    }
}
