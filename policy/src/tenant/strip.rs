//! Query text without its comments, for cache keys: a thousand tenants sending the same statement
//! with different `/*tenant='…'*/` (or trace id) tags share one verdict.

use std::borrow::Cow;

use super::comment::tenant_tag;
use super::lex::{CommentKind, comments};

/// `query` with its top-level block and line comments removed and everything else byte for byte
/// the same. A removed comment leaves one space where the bytes on both sides would otherwise
/// touch (`a/**/b` → `a b`, `-/**/-` → `- -`), nothing where whitespace or an end of the text is
/// already next to it.
///
/// Kept as they are: comments between the end of one string literal and the start of another
/// (`'a' /* c */ 'b'`), since removing them could turn two literals into one (Postgres
/// concatenates literals separated by whitespace with a newline).
///
/// Text that does not lex (an unterminated string or comment) comes back unchanged: the parser
/// refuses it anyway. Borrowed when there is nothing to remove.
pub fn strip_comments(query: &str) -> Cow<'_, str> {
    let mut spans = Vec::new();
    for comment in comments(query) {
        match comment {
            Ok(comment) => spans.push(comment.span),
            Err(_) => return Cow::Borrowed(query),
        }
    }
    if spans.is_empty() {
        return Cow::Borrowed(query);
    }

    // Group adjacent comments (only whitespace between them) into runs; a run is removed whole,
    // with the whitespace inside it.
    let bytes = query.as_bytes();
    let mut out = String::with_capacity(query.len());
    let mut kept_from = 0;
    let mut i = 0;
    while let Some(first) = spans.get(i) {
        let run_start = first.start;
        let mut run_end = first.end;
        let mut j = i + 1;
        while let Some(next) = spans.get(j) {
            let gap = bytes.get(run_end..next.start).unwrap_or_default();
            if !gap.iter().all(u8::is_ascii_whitespace) {
                break;
            }
            run_end = next.end;
            j += 1;
        }
        i = j;

        let before = last_non_ws(bytes.get(..run_start).unwrap_or_default());
        let after = first_non_ws(bytes.get(run_end..).unwrap_or_default());
        if before == Some(b'\'') && after == Some(b'\'') {
            continue;
        }
        out.push_str(query.get(kept_from..run_start).unwrap_or_default());
        let touches_before = run_start > 0
            && bytes
                .get(run_start - 1)
                .is_some_and(|b| !b.is_ascii_whitespace());
        let touches_after = bytes.get(run_end).is_some_and(|b| !b.is_ascii_whitespace());
        if touches_before && touches_after {
            out.push(' ');
        }
        kept_from = run_end;
    }
    out.push_str(query.get(kept_from..).unwrap_or_default());
    Cow::Owned(out)
}

fn last_non_ws(bytes: &[u8]) -> Option<u8> {
    bytes
        .iter()
        .rev()
        .copied()
        .find(|b| !b.is_ascii_whitespace())
}

fn first_non_ws(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// `query` with every block comment that carries a `key` tag overwritten with spaces, one per
/// character, so nothing else moves (error positions, which count characters, stay right). `None` when there is no such
/// comment, or the text does not lex. For tenant tokens in comments: once checked, they must
/// not reach the server, where other sessions of the same role could read them in
/// `pg_stat_activity` and replay them.
pub fn blank_tagged_comments(query: &str, key: &str) -> Option<String> {
    let mut spans = Vec::new();
    for comment in comments(query) {
        let comment = comment.ok()?;
        let text = query.get(comment.span.clone())?;
        if comment.kind == CommentKind::Block && matches!(tenant_tag(text, key), Ok(Some(_))) {
            spans.push(comment.span);
        }
    }
    if spans.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(query.len());
    let mut kept = 0;
    for span in spans {
        out.push_str(query.get(kept..span.start)?);
        let chars = query.get(span.clone())?.chars().count();
        out.extend(std::iter::repeat_n(' ', chars));
        kept = span.end;
    }
    out.push_str(query.get(kept..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_comments_are_blanked_in_place() {
        let q = "SELECT 1 /*action='x',tenant_token='stk1.a.0.k1.mac'*/ FROM t /*route='y'*/";
        let b = blank_tagged_comments(q, "tenant_token").expect("blanked");
        assert_eq!(b.chars().count(), q.chars().count());
        assert!(!b.contains("stk1"));
        assert!(b.contains("/*route='y'*/"));
        assert!(b.starts_with("SELECT 1 ") && b.contains(" FROM t "));
        assert_eq!(
            blank_tagged_comments("SELECT 1 /*tenant='a'*/", "tenant_token"),
            None
        );
        // In a string it is data, not a comment.
        assert_eq!(
            blank_tagged_comments("SELECT '/*tenant_token=''x''*/'", "tenant_token"),
            None
        );
    }

    #[test]
    fn removes_comments() {
        assert_eq!(strip_comments("select 1 /*tenant='a'*/"), "select 1 ");
        assert_eq!(strip_comments("/*tenant='a'*/ select 1"), " select 1");
        assert_eq!(strip_comments("select/*x*/1"), "select 1");
        assert_eq!(strip_comments("select 1 -- c\nfrom t"), "select 1 \nfrom t");
        assert_eq!(strip_comments("select 1--c\nfrom t"), "select 1\nfrom t");
        assert_eq!(strip_comments("select 1 /*a*/ /*b*/ -- c\n"), "select 1 \n");
        assert_eq!(strip_comments("select 1/*a*/ /*b*/2"), "select 1 2");
        assert_eq!(strip_comments("select 1 -/**/- 2"), "select 1 - - 2");
        assert_eq!(strip_comments("select /* a /* b */ c */ 1"), "select  1");
    }

    #[test]
    fn borrowed_when_nothing_to_do() {
        assert!(matches!(strip_comments("select '/*x*/'"), Cow::Borrowed(_)));
        assert!(matches!(strip_comments("select 'open"), Cow::Borrowed(_)));
        assert!(matches!(strip_comments("select /* open"), Cow::Borrowed(_)));
    }

    #[test]
    fn keeps_comments_between_literals() {
        let q = "select 'a'\n/* c */ 'b' /*tenant='x'*/";
        assert_eq!(strip_comments(q), "select 'a'\n/* c */ 'b' ");
    }
}
