//! Named prepared statements under transaction pooling.
//!
//! A client's statement names mean nothing on the server connection its next transaction lands
//! on, so each client statement is mapped to a server-side name derived from its text and
//! parameter types. Any server connection that has prepared that text under that name can run
//! it; one that has not gets a Parse injected just before the Bind or Describe that needs it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sentinel_wire::encode;
use sha2::Sha256;

/// Server-side statement names start with this; a client name with this prefix never reaches
/// a server unmapped.
pub const SERVER_PREFIX: &str = "sentinel_";

/// Plan generations per statement text, shared by all sessions.
///
/// When a server reports that a statement's cached plan went stale (the table changed shape),
/// the text moves to a new generation, which is a new server-side name: clients that prepare it
/// from then on get a fresh plan, while clients that prepared it before keep getting the error
/// until they prepare again, exactly as Postgres would tell them. Silently re-preparing under
/// the old name would hand them rows of a shape they did not describe.
#[derive(Default)]
pub struct Generations(parking_lot::Mutex<HashMap<Arc<str>, u32>>);

impl Generations {
    pub fn current(&self, base: &str) -> u32 {
        self.0.lock().get(base).copied().unwrap_or(0)
    }

    /// Records that `stmt`'s plan went stale.
    pub fn outdate(&self, stmt: &Statement) {
        let mut map = self.0.lock();
        let generation = map.entry(stmt.base.clone()).or_insert(0);
        *generation = (*generation).max(stmt.generation + 1);
    }

    pub fn is_outdated(&self, stmt: &Statement) -> bool {
        self.current(&stmt.base) > stmt.generation
    }
}

/// A client's prepared statement.
#[derive(Debug)]
pub struct Statement {
    /// Name derived from the text and parameter types.
    pub base: Arc<str>,
    pub generation: u32,
    /// The name on servers: the base name and its generation.
    pub server_name: Arc<str>,
    /// The Parse message that prepares it under `server_name`.
    pub parse: Bytes,
}

impl Statement {
    /// `key` is random per process, so no client can predict (and prepare in advance, with
    /// different text) the name a statement will get on the server.
    ///
    /// `search_path` is part of the identity: the same text means other tables under another
    /// search path, so clients with different paths never share a server statement.
    pub fn new(
        sql: &str,
        param_types: &[u8],
        search_path: &str,
        key: &[u8; 32],
        generations: &Generations,
    ) -> Statement {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(sql.as_bytes());
        mac.update(&[0]);
        mac.update(param_types);
        mac.update(&[0]);
        mac.update(search_path.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut base = String::with_capacity(SERVER_PREFIX.len() + 32);
        base.push_str(SERVER_PREFIX);
        for b in &digest[..16] {
            base.push_str(&format!("{b:02x}"));
        }
        let generation = generations.current(&base);
        let server_name = if generation == 0 {
            base.clone()
        } else {
            format!("{base}_{generation}")
        };
        let mut parse = BytesMut::new();
        encode::parse_raw_types(&mut parse, &server_name, sql, param_types);
        Statement {
            base: base.into(),
            generation,
            server_name: server_name.into(),
            parse: parse.freeze(),
        }
    }
}

/// One client's statements by the names it gave them.
#[derive(Default)]
pub struct ClientStatements {
    map: HashMap<String, Arc<Statement>>,
    /// Statements by server name, so several client names for one text share one Statement
    /// (and its encoded Parse) instead of holding copies.
    by_text: HashMap<Arc<str>, Arc<Statement>>,
}

impl ClientStatements {
    pub fn prepare(
        &mut self,
        name: &str,
        sql: &str,
        param_types: &[u8],
        search_path: &str,
        key: &[u8; 32],
        generations: &Generations,
    ) -> Arc<Statement> {
        let stmt = Arc::new(Statement::new(
            sql,
            param_types,
            search_path,
            key,
            generations,
        ));
        let stmt = self
            .by_text
            .entry(stmt.server_name.clone())
            .or_insert(stmt)
            .clone();
        self.map.insert(name.to_owned(), stmt.clone());
        stmt
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.map.get(name)
    }

    /// Forgets a statement; returns it, so a Close the server ends up skipping can be undone.
    pub fn close(&mut self, name: &str) -> Option<Arc<Statement>> {
        let stmt = self.map.remove(name)?;
        if !self.map.values().any(|s| s.server_name == stmt.server_name) {
            self.by_text.remove(&stmt.server_name);
        }
        Some(stmt)
    }

    /// Puts back a statement a skipped Close had forgotten.
    pub fn restore(&mut self, name: String, stmt: Arc<Statement>) {
        self.by_text
            .entry(stmt.server_name.clone())
            .or_insert_with(|| stmt.clone());
        self.map.insert(name, stmt);
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.by_text.clear();
    }
}

/// A simple-query command Sentinel answers for the client's virtual session.
#[derive(Debug, PartialEq, Eq)]
pub enum LocalCommand {
    Deallocate(String),
    DeallocateAll,
    DiscardAll,
    ResetAll,
    Reset(String),
}

/// Recognises `DEALLOCATE [PREPARE] name|ALL`, `DISCARD ALL`, `RESET ALL` and `RESET name`
/// written alone. Anything else, including these with comments or other statements around
/// them, is left to the server.
pub fn local_command(sql: &str) -> Option<LocalCommand> {
    let words = words(sql)?;
    let keyword = |i: usize, k: &str| {
        words
            .get(i)
            .is_some_and(|w| matches!(w, Word::Bare(b) if b.eq_ignore_ascii_case(k)))
    };
    let name = |i: usize| -> Option<String> {
        match words.get(i)? {
            Word::Bare(b) => b
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == '.')
                .then(|| b.to_lowercase()),
            Word::Quoted(q) => Some(q.clone()),
        }
    };
    match words.len() {
        2 if keyword(0, "discard") && keyword(1, "all") => Some(LocalCommand::DiscardAll),
        2 if keyword(0, "reset") && keyword(1, "all") => Some(LocalCommand::ResetAll),
        2 if keyword(0, "reset") => name(1).map(LocalCommand::Reset),
        2 if keyword(0, "deallocate") && keyword(1, "all") => Some(LocalCommand::DeallocateAll),
        2 if keyword(0, "deallocate") => name(1).map(LocalCommand::Deallocate),
        3 if keyword(0, "deallocate") && keyword(1, "prepare") && keyword(2, "all") => {
            Some(LocalCommand::DeallocateAll)
        }
        3 if keyword(0, "deallocate") && keyword(1, "prepare") => {
            name(2).map(LocalCommand::Deallocate)
        }
        _ => None,
    }
}

/// A query made only of `RESET` statements (`RESET a; RESET b`), which the server runs but
/// whose effect on the client's settings Sentinel must follow.
pub fn reset_commands(sql: &str) -> Option<Vec<LocalCommand>> {
    let parts: Vec<&str> = sql.split(';').filter(|p| !p.trim().is_empty()).collect();
    if parts.is_empty() {
        return None;
    }
    parts
        .into_iter()
        .map(|part| match local_command(part)? {
            cmd @ (LocalCommand::ResetAll | LocalCommand::Reset(_)) => Some(cmd),
            _ => None,
        })
        .collect()
}

enum Word {
    Bare(String),
    Quoted(String),
}

/// Splits a short statement into words and double-quoted identifiers, with one optional
/// trailing semicolon. None for anything this simple reader cannot vouch for (comments,
/// string literals, several statements).
fn words(sql: &str) -> Option<Vec<Word>> {
    let sql = sql.trim();
    let sql = sql.strip_suffix(';').unwrap_or(sql);
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut ident = String::new();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        ident.push('"');
                    }
                    '"' => break,
                    other => ident.push(other),
                }
            }
            if ident.is_empty() {
                return None;
            }
            out.push(Word::Quoted(ident));
        } else if matches!(c, ';' | '\'' | '-' | '/' | '(' | ')' | ',') {
            return None;
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' {
                    break;
                }
                if matches!(c, ';' | '\'' | '-' | '/' | '(' | ')' | ',') {
                    return None;
                }
                word.push(c);
                chars.next();
            }
            out.push(Word::Bare(word));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn generations() -> Generations {
        Generations::default()
    }

    #[test]
    fn server_names_depend_on_text_and_types() {
        let a = Statement::new("select $1", &[0, 1, 0, 0, 0, 23], "", &KEY, &generations());
        let b = Statement::new("select $1", &[0, 1, 0, 0, 0, 25], "", &KEY, &generations());
        let c = Statement::new("select $1", &[0, 1, 0, 0, 0, 23], "", &KEY, &generations());
        assert_ne!(a.server_name, b.server_name);
        assert_eq!(a.server_name, c.server_name);
        assert!(a.server_name.starts_with(SERVER_PREFIX));
    }

    #[test]
    fn client_names_map_and_close() {
        let gens = generations();
        let mut s = ClientStatements::default();
        let one = s.prepare("s1", "select 1", &[0, 0], "", &KEY, &gens);
        let two = s.prepare("s2", "select 1", &[0, 0], "", &KEY, &gens);
        assert!(Arc::ptr_eq(&one, &two));
        s.close("s1");
        assert!(s.get("s1").is_none());
        assert!(s.get("s2").is_some());
        s.clear();
        assert!(s.get("s2").is_none());
    }

    #[test]
    fn local_commands() {
        assert_eq!(
            local_command("DEALLOCATE s1"),
            Some(LocalCommand::Deallocate("s1".into()))
        );
        assert_eq!(
            local_command("deallocate prepare \"S1\";"),
            Some(LocalCommand::Deallocate("S1".into()))
        );
        assert_eq!(
            local_command(" Deallocate ALL "),
            Some(LocalCommand::DeallocateAll)
        );
        assert_eq!(
            local_command("discard all;"),
            Some(LocalCommand::DiscardAll)
        );
        assert_eq!(local_command("discard temp"), None);
        assert_eq!(local_command("deallocate s1; select 1"), None);
        assert_eq!(local_command("/* x */ discard all"), None);
        assert_eq!(local_command("select 1"), None);
        assert_eq!(
            local_command("deallocate \"Mixed Case\""),
            Some(LocalCommand::Deallocate("Mixed Case".into()))
        );
        assert_eq!(
            local_command("deallocate \"a\"\"b\""),
            Some(LocalCommand::Deallocate("a\"b".into()))
        );
        assert_eq!(local_command("RESET ALL"), Some(LocalCommand::ResetAll));
        assert_eq!(
            local_command("reset search_path;"),
            Some(LocalCommand::Reset("search_path".into()))
        );
        assert_eq!(local_command("reset \"unterminated"), None);
        assert_eq!(local_command("deallocate 'x'"), None);
        assert_eq!(
            reset_commands("reset a; RESET ALL;"),
            Some(vec![
                LocalCommand::Reset("a".into()),
                LocalCommand::ResetAll
            ])
        );
        assert_eq!(reset_commands("reset a; select 1"), None);
    }

    #[test]
    fn stale_plans_move_a_text_to_a_new_name() {
        let gens = generations();
        let old = Statement::new("select * from t", &[0, 0], "", &KEY, &gens);
        assert!(!gens.is_outdated(&old));
        gens.outdate(&old);
        gens.outdate(&old);
        assert!(gens.is_outdated(&old));
        let new = Statement::new("select * from t", &[0, 0], "", &KEY, &gens);
        assert_eq!(new.generation, 1);
        assert_eq!(new.base, old.base);
        assert_ne!(new.server_name, old.server_name);
        assert!(!gens.is_outdated(&new));
    }
}
