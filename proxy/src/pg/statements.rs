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

/// A client's prepared statement.
pub struct Statement {
    pub server_name: Arc<str>,
    /// The Parse message that prepares it under `server_name`.
    pub parse: Bytes,
}

impl Statement {
    /// `key` is random per process, so no client can predict (and prepare in advance, with
    /// different text) the name a statement will get on the server.
    pub fn new(sql: &str, param_types: &[u8], key: &[u8; 32]) -> Statement {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(sql.as_bytes());
        mac.update(&[0]);
        mac.update(param_types);
        let digest = mac.finalize().into_bytes();
        let mut name = String::with_capacity(SERVER_PREFIX.len() + 32);
        name.push_str(SERVER_PREFIX);
        for b in &digest[..16] {
            name.push_str(&format!("{b:02x}"));
        }
        let mut parse = BytesMut::new();
        encode::parse_raw_types(&mut parse, &name, sql, param_types);
        Statement {
            server_name: name.into(),
            parse: parse.freeze(),
        }
    }
}

/// One client's statements by the names it gave them.
#[derive(Default)]
pub struct ClientStatements {
    map: HashMap<String, Arc<Statement>>,
    /// Statements already built for this text, so re-preparing the same text under another
    /// client name does not hash it again.
    by_text: HashMap<Arc<str>, Arc<Statement>>,
}

impl ClientStatements {
    pub fn prepare(
        &mut self,
        name: &str,
        sql: &str,
        param_types: &[u8],
        key: &[u8; 32],
    ) -> Arc<Statement> {
        let stmt = Arc::new(Statement::new(sql, param_types, key));
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

    pub fn close(&mut self, name: &str) {
        if let Some(stmt) = self.map.remove(name)
            && !self.map.values().any(|s| s.server_name == stmt.server_name)
        {
            self.by_text.remove(&stmt.server_name);
        }
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
}

/// Recognises `DEALLOCATE [PREPARE] name|ALL` and `DISCARD ALL` written alone. Anything else,
/// including these with comments or other statements around them, is left to the server.
pub fn local_command(sql: &str) -> Option<LocalCommand> {
    let sql = sql.trim();
    let sql = sql.strip_suffix(';').unwrap_or(sql).trim_end();
    if sql.contains([';', '-', '/']) {
        return None;
    }
    let mut words = sql.split_whitespace();
    let first = words.next()?;
    if first.eq_ignore_ascii_case("discard") {
        let all = words.next()?;
        return (all.eq_ignore_ascii_case("all") && words.next().is_none())
            .then_some(LocalCommand::DiscardAll);
    }
    if !first.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("prepare") {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    if name.eq_ignore_ascii_case("all") {
        return Some(LocalCommand::DeallocateAll);
    }
    identifier(name).map(LocalCommand::Deallocate)
}

/// An SQL identifier as Postgres folds it: quoted kept as is, unquoted lower-cased.
fn identifier(word: &str) -> Option<String> {
    if let Some(inner) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        if inner.is_empty() {
            return None;
        }
        let unescaped = inner.replace("\"\"", "\"");
        return (!unescaped.replace("\"", "").len().eq(&0)
            && !inner.replace("\"\"", "").contains('"'))
        .then_some(unescaped);
    }
    word.chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        .then(|| word.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn server_names_depend_on_text_and_types() {
        let a = Statement::new("select $1", &[0, 1, 0, 0, 0, 23], &KEY);
        let b = Statement::new("select $1", &[0, 1, 0, 0, 0, 25], &KEY);
        let c = Statement::new("select $1", &[0, 1, 0, 0, 0, 23], &KEY);
        assert_ne!(a.server_name, b.server_name);
        assert_eq!(a.server_name, c.server_name);
        assert!(a.server_name.starts_with(SERVER_PREFIX));
    }

    #[test]
    fn client_names_map_and_close() {
        let mut s = ClientStatements::default();
        let one = s.prepare("s1", "select 1", &[0, 0], &KEY);
        let two = s.prepare("s2", "select 1", &[0, 0], &KEY);
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
    }
}
