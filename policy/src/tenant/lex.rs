//! Finds the comments of Postgres SQL text with a lexer, never a regex over the query.
//!
//! The lexer knows just enough of Postgres' `scan.l` to tell where comments are:
//!
//! - `'…'` with `''` for a quote (also `B'…'`, `X'…'`, `N'…'`, `U&'…'`: the prefix is an ordinary
//!   word, the quote rules are the same), and `E'…'` where a backslash escapes the next byte as
//!   well;
//! - `"…"` quoted identifiers with `""` for a quote (also `U&"…"`);
//! - `$$…$$` and `$tag$…$tag$` dollar quotes (a tag is `[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*`);
//!   a `$` inside a word (`a$b`) or before digits (`$1`) does not open one;
//! - `-- …` to the end of the line (`\n` or `\r`);
//! - `/* … */`, nested: every `/*` inside opens one more level.
//!
//! Anything else is stepped over a word or a byte at a time. Text inside a string, identifier or
//! dollar quote is data: a `/*tenant='x'*/` there is never a comment. Text that ends inside one of
//! them (or inside a block comment) is an error, so a caller can fail closed.
//!
//! Assumes `standard_conforming_strings = on` (the default since Postgres 9.1): with it off, a
//! backslash escapes a quote in plain `'…'` literals too. The proxy must keep it on.

use std::ops::Range;

use super::error::{TenantError, Unterminated};

/// Block (`/* … */`) or line (`-- …`) comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommentKind {
    /// `/* … */`, possibly with nested comments inside.
    Block,
    /// `-- …` up to (not including) the end of the line.
    Line,
}

/// One top-level comment of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment<'q> {
    /// Block or line.
    pub kind: CommentKind,
    /// Byte span of the whole comment, delimiters included (for a line comment, the newline is
    /// not part of it).
    pub span: Range<usize>,
    /// The text between the delimiters: after `/*` and before the last `*/`, or after `--`.
    pub body: &'q str,
}

/// Iterator over the top-level comments of a query, in order. Yields at most one error, then
/// stops.
#[derive(Debug, Clone)]
pub struct Comments<'q> {
    query: &'q str,
    pos: usize,
    done: bool,
}

/// The top-level comments of `query`, lazily.
pub fn comments(query: &str) -> Comments<'_> {
    Comments {
        query,
        pos: 0,
        done: false,
    }
}

/// Every top-level block comment of `query` with its span, or the lexer's error.
pub fn block_comments(query: &str) -> Result<Vec<Comment<'_>>, TenantError> {
    comments(query)
        .filter(|c| {
            !matches!(
                c,
                Ok(Comment {
                    kind: CommentKind::Line,
                    ..
                })
            )
        })
        .collect()
}

impl<'q> Iterator for Comments<'q> {
    type Item = Result<Comment<'q>, TenantError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(comment)) => Some(Ok(comment)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

impl std::iter::FusedIterator for Comments<'_> {}

impl<'q> Comments<'q> {
    /// Advances to the next comment, skipping everything else.
    fn step(&mut self) -> Result<Option<Comment<'q>>, TenantError> {
        let bytes = self.query.as_bytes();
        while let Some(&b) = bytes.get(self.pos) {
            let start = self.pos;
            let next = bytes.get(start + 1).copied();
            self.pos = match (b, next) {
                (b'-', Some(b'-')) => {
                    let end = bytes[start..]
                        .iter()
                        .position(|&c| c == b'\n' || c == b'\r')
                        .map_or(bytes.len(), |n| start + n);
                    self.pos = end;
                    return Ok(Some(self.comment(CommentKind::Line, start, end, 2, 0)));
                }
                (b'/', Some(b'*')) => {
                    let end = skip_block_comment(bytes, start)?;
                    self.pos = end;
                    return Ok(Some(self.comment(CommentKind::Block, start, end, 2, 2)));
                }
                (b'\'', _) => skip_quoted(bytes, start, b'\'', false)?,
                (b'E' | b'e', Some(b'\'')) => skip_quoted(bytes, start + 1, b'\'', true)?,
                (b'"', _) => skip_quoted(bytes, start, b'"', false)?,
                (b'$', Some(d)) if d.is_ascii_digit() => {
                    skip_while(bytes, start + 1, |c| c.is_ascii_digit())
                }
                (b'$', _) => skip_dollar(self.query, start)?,
                (c, _) if is_ident_start(c) => skip_while(bytes, start + 1, is_ident_cont),
                (c, _) if c.is_ascii_digit() => skip_while(bytes, start + 1, |c| {
                    c.is_ascii_alphanumeric() || c == b'_' || c == b'.'
                }),
                _ => start + 1,
            };
        }
        Ok(None)
    }

    fn comment(
        &self,
        kind: CommentKind,
        start: usize,
        end: usize,
        open: usize,
        close: usize,
    ) -> Comment<'q> {
        Comment {
            kind,
            span: start..end,
            body: self
                .query
                .get(start + open..end - close)
                .unwrap_or_default(),
        }
    }
}

/// `query` with each constant (string literal of any form, dollar-quoted string, number)
/// replaced by [`MASK`] (a character no SQL text holds, unlike `?`, which is an operator) and
/// each comment by a space; words, quoted identifiers, parameters (`$1`),
/// operators and whitespace kept as they are. Two texts with the same masked form differ only in
/// the values of their constants (and their comments). `None` if the text does not lex.
pub fn mask_constants(query: &str) -> Option<String> {
    if query.contains(MASK) {
        return None;
    }
    let bytes = query.as_bytes();
    let mut out = String::with_capacity(query.len());
    let mut pos = 0;
    while let Some(&b) = bytes.get(pos) {
        let next = bytes.get(pos + 1).copied();
        let (end, masked) = match (b, next) {
            (b'-', Some(b'-')) => (
                skip_while(bytes, pos, |c| c != b'\n' && c != b'\r'),
                Some(" "),
            ),
            (b'/', Some(b'*')) => (skip_block_comment(bytes, pos).ok()?, Some(" ")),
            (b'\'', _) => (skip_quoted(bytes, pos, b'\'', false).ok()?, Some(MASK_STR)),
            (b'E' | b'e', Some(b'\'')) => (
                skip_quoted(bytes, pos + 1, b'\'', true).ok()?,
                Some(MASK_STR),
            ),
            (b'"', _) => (skip_quoted(bytes, pos, b'"', false).ok()?, None),
            (b'$', Some(d)) if d.is_ascii_digit() => {
                (skip_while(bytes, pos + 1, |c| c.is_ascii_digit()), None)
            }
            (b'$', _) => {
                let end = skip_dollar(query, pos).ok()?;
                (end, (end > pos + 1).then_some(MASK_STR))
            }
            (c, _) if is_ident_start(c) => (skip_while(bytes, pos + 1, is_ident_cont), None),
            (c, _) if c.is_ascii_digit() => {
                // Only a plain number (digits, one point, an exponent with its sign) is masked;
                // anything else that starts with a digit (`1from`, `0x1F`, `1e`) is read by
                // versions of Postgres differently: no masked key for such text.
                let end = number_end(bytes, pos);
                if bytes
                    .get(end)
                    .is_some_and(|&c| is_ident_cont(c) || c == b'.')
                {
                    return None;
                }
                (end, Some(MASK_STR))
            }
            // One character, whole (it may be more than one byte).
            _ => (
                pos + query.get(pos..)?.chars().next().map_or(1, char::len_utf8),
                None,
            ),
        };
        match masked {
            Some(m) => out.push_str(m),
            None => out.push_str(query.get(pos..end)?),
        }
        pos = end;
    }
    Some(out)
}

/// What [`mask_constants`] puts in place of a constant.
pub const MASK: char = '\u{1}';
const MASK_STR: &str = "\u{1}";

/// The end of the number starting at `start`: `123`, `1.5`, `1.`, `1e10`, `1.5E-3`.
fn number_end(bytes: &[u8], start: usize) -> usize {
    let mut i = skip_while(bytes, start, |c| c.is_ascii_digit());
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1) != Some(&b'.') {
        i = skip_while(bytes, i + 1, |c| c.is_ascii_digit());
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(bytes.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if bytes.get(j).is_some_and(u8::is_ascii_digit) {
            i = skip_while(bytes, j, |c| c.is_ascii_digit());
        }
    }
    i
}

/// `[A-Za-z_\x80-\xff]`: starts a word (keyword or identifier).
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// `[A-Za-z0-9_$\x80-\xff]`: continues a word. A `$` here never opens a dollar quote.
fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Tag characters after the first: like a word but without `$`.
fn is_tag_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

fn skip_while(bytes: &[u8], from: usize, keep: impl Fn(u8) -> bool) -> usize {
    bytes[from..]
        .iter()
        .position(|&c| !keep(c))
        .map_or(bytes.len(), |n| from + n)
}

/// From the opening quote at `open`, the position after the closing one. A doubled quote is part
/// of the text; with `backslash`, so is any byte after a backslash (`E'…'`).
fn skip_quoted(
    bytes: &[u8],
    open: usize,
    quote: u8,
    backslash: bool,
) -> Result<usize, TenantError> {
    let mut i = open + 1;
    while let Some(n) = bytes
        .get(i..)
        .and_then(|rest| rest.iter().position(|&c| c == quote || c == b'\\'))
    {
        i += n;
        let c = bytes.get(i).copied().unwrap_or(quote);
        if c == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += if backslash && c == b'\\' { 2 } else { 1 };
    }
    let what = if quote == b'"' {
        Unterminated::QuotedIdentifier
    } else {
        Unterminated::StringLiteral
    };
    // `E'` starts one byte before the quote.
    let offset = if backslash { open - 1 } else { open };
    Err(TenantError::Unterminated { what, offset })
}

/// At a `$` that is not inside a word nor before a digit: a dollar quote if `$$` or `$tag$`
/// follows (position after its closing delimiter), otherwise just the `$`.
fn skip_dollar(query: &str, start: usize) -> Result<usize, TenantError> {
    let bytes = query.as_bytes();
    let tag_end = match bytes.get(start + 1) {
        Some(b'$') => start + 1,
        Some(&c) if is_ident_start(c) => {
            let end = skip_while(bytes, start + 2, is_tag_cont);
            if bytes.get(end) != Some(&b'$') {
                return Ok(start + 1);
            }
            end
        }
        _ => return Ok(start + 1),
    };
    // Both ends of the delimiter are `$`, so these are char boundaries.
    let delimiter = query.get(start..=tag_end).unwrap_or("$$");
    let body_start = tag_end + 1;
    match query
        .get(body_start..)
        .and_then(|rest| rest.find(delimiter))
    {
        Some(n) => Ok(body_start + n + delimiter.len()),
        None => Err(TenantError::Unterminated {
            what: Unterminated::DollarQuotedString,
            offset: start,
        }),
    }
}

/// From the `/*` at `start`, the position after the `*/` that closes it, counting nesting.
fn skip_block_comment(bytes: &[u8], start: usize) -> Result<usize, TenantError> {
    let mut depth = 1usize;
    let mut i = start + 2;
    while let Some(n) = bytes
        .get(i..)
        .and_then(|rest| rest.iter().position(|&c| c == b'/' || c == b'*'))
    {
        i += n;
        let c = bytes.get(i).copied();
        let next = bytes.get(i + 1).copied();
        match (c, next) {
            (Some(b'/'), Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (Some(b'*'), Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => i += 1,
        }
    }
    Err(TenantError::Unterminated {
        what: Unterminated::BlockComment,
        offset: start,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn bodies(query: &str) -> Vec<(CommentKind, &str)> {
        comments(query)
            .map(|c| c.map(|c| (c.kind, c.body)))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn unterminated(query: &str) -> (Unterminated, usize) {
        match comments(query).find_map(Result::err) {
            Some(TenantError::Unterminated { what, offset }) => (what, offset),
            other => panic!("expected an unterminated error, got {other:?}"),
        }
    }

    use CommentKind::{Block, Line};

    #[test]
    fn plain_comments_and_spans() {
        let q = "/*a*/ select 1 -- b\nfrom t /* c */";
        let all: Vec<_> = comments(q).map(Result::unwrap).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(&q[all[0].span.clone()], "/*a*/");
        assert_eq!(&q[all[1].span.clone()], "-- b");
        assert_eq!(&q[all[2].span.clone()], "/* c */");
        assert_eq!(bodies(q), [(Block, "a"), (Line, " b"), (Block, " c ")]);
    }

    #[test]
    fn nested_block_comments() {
        assert_eq!(
            bodies("select /* a /* b */ c */ 1 /*x*/"),
            [(Block, " a /* b */ c "), (Block, "x")]
        );
        assert_eq!(bodies("/*/**/*/"), [(Block, "/**/")]);
        assert_eq!(bodies("/**/"), [(Block, "")]);
        assert_eq!(bodies("/* ** / * */"), [(Block, " ** / * ")]);
        assert_eq!(
            unterminated("select /* a /* b */ 1"),
            (Unterminated::BlockComment, 7)
        );
    }

    #[test]
    fn quotes_hide_comments() {
        assert!(bodies("select '/*tenant=''x''*/' as a").is_empty());
        assert!(bodies(r#"select 1 as "/*tenant='x'*/""#).is_empty());
        assert!(bodies(r#"select 1 as "a""/*""#).is_empty());
        assert!(bodies("select '--', 'it''s /* no */'").is_empty());
        assert!(bodies("select U&'/*x*/', B'1', X'1f', N'/*'").is_empty());
    }

    #[test]
    fn e_strings_with_backslash_escapes() {
        assert!(bodies(r"select E'it\'s /*tenant=''x''*/'").is_empty());
        assert!(bodies(r"select e'\\' /*c*/").len() == 1);
        assert_eq!(bodies(r"select E'\'' /*c*/"), [(Block, "c")]);
        // Not an E prefix: part of a word; `\'` does not escape in a plain string.
        assert_eq!(bodies(r"select type'\' /*c*/"), [(Block, "c")]);
        assert_eq!(
            unterminated(r"select E'\' /*c*/"),
            (Unterminated::StringLiteral, 7)
        );
        assert_eq!(unterminated(r"select 'a"), (Unterminated::StringLiteral, 7));
    }

    #[test]
    fn dollar_quotes() {
        assert!(bodies("select $$ /*tenant='x'*/ $$").is_empty());
        assert!(bodies("select $fn$ $$ /*x*/ $$ $fn$").is_empty());
        assert!(bodies("select $a$ $b$ /*x*/ $b$ $a$").is_empty());
        assert_eq!(bodies("select $fn$ x $fn$ /*c*/"), [(Block, "c")]);
        assert_eq!(bodies("select $1 /*c*/, $2"), [(Block, "c")]);
        // `$` inside a word does not open a dollar quote.
        assert_eq!(bodies("select a$$b /*c*/"), [(Block, "c")]);
        // `$abc` without a closing `$` is a lone `$`.
        assert_eq!(bodies("select $abc /*c*/"), [(Block, "c")]);
        assert_eq!(bodies("select $ä$ x $ä$ /*c*/"), [(Block, "c")]);
        assert_eq!(
            unterminated("select $tag$ x $tags$"),
            (Unterminated::DollarQuotedString, 7)
        );
    }

    #[test]
    fn line_comments() {
        assert_eq!(
            bodies("select 1 -- a /* b\n/*c*/"),
            [(Line, " a /* b"), (Block, "c")]
        );
        assert_eq!(
            bodies("select 1 -- 'x\r/*c*/"),
            [(Line, " 'x"), (Block, "c")]
        );
        assert_eq!(bodies("select 1 --"), [(Line, "")]);
        assert_eq!(bodies("select 1 - - 2 /*c*/"), [(Block, "c")]);
        assert_eq!(bodies("select 1 /* -- */ 2"), [(Block, " -- ")]);
    }

    #[test]
    fn unterminated_identifier() {
        assert_eq!(
            unterminated(r#"select "a /*c*/"#),
            (Unterminated::QuotedIdentifier, 7)
        );
    }

    #[test]
    fn block_comments_only() {
        let all = block_comments("/*a*/ -- b\n select /*c*/").unwrap();
        assert_eq!(all.len(), 2);
        assert!(block_comments("select 'x").is_err());
    }

    #[test]
    fn constants_are_masked() {
        let m = |q| mask_constants(q).unwrap().replace(MASK, "#");
        assert_eq!(
            m("SELECT * FROM t1 WHERE a = 10 AND b = 'x''y' AND c = E'\\'' AND d = $1"),
            "SELECT * FROM t1 WHERE a = # AND b = # AND c = # AND d = $1"
        );
        assert_eq!(
            m("SELECT 1.5e3, $$a$$, $q$b$q$ /* c */ -- d"),
            "SELECT #, #, #    "
        );
        // `?` is an operator, not a constant: it never shares a key with one.
        assert_ne!(m("SELECT f(1) '{}'"), m("SELECT f(1) ?"));
        assert_ne!(m("SELECT 1e+5"), m("SELECT 1+5"));
        assert_eq!(m("SELECT 1e+5"), m("SELECT 2E-3"));
        // Numbers run into words are left to the parser.
        assert_eq!(mask_constants("SELECT 1from t"), None);
        assert_eq!(mask_constants("SELECT 0x1F"), None);
        assert_eq!(mask_constants("SELECT '\u{1}'"), None);
        assert_eq!(
            m(r#"SELECT "it's 1" FROM "t2""#),
            r#"SELECT "it's 1" FROM "t2""#
        );
        assert_eq!(m("SELECT a$1, x1 FROM été"), "SELECT a$1, x1 FROM été");
        assert_eq!(m("SELECT 1"), m("SELECT 99999"));
        assert_ne!(m("SELECT a FROM t"), m("SELECT b FROM t"));
        assert_eq!(mask_constants("SELECT 'open"), None);
    }

    #[test]
    fn non_ascii_text() {
        assert_eq!(bodies("select 'ü/*' as ä /*ö*/"), [(Block, "ö")]);
    }
}
