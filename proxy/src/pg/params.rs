//! Client settings under pooling: what a client asked for (startup parameters, and the
//! reported settings it changes later) is applied with SET on whichever server connection it
//! lands on, and what the previous client left is reset.

use std::collections::BTreeMap;

/// Settings that Postgres reports with ParameterStatus and a client may change. A change the
/// client makes to one of these follows it to its next server connection.
const TRACKED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "default_transaction_read_only",
    "intervalstyle",
    "search_path",
    "standard_conforming_strings",
    "timezone",
];

pub fn is_tracked(name: &str) -> bool {
    TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// The statements that turn a server's applied settings into the client's, or None when they
/// already match.
pub fn sync_sql(
    applied: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> Option<String> {
    // set_config takes the value as the startup packet does (a list stays a list), where SET
    // would read a quoted list as one name.
    let changed: Vec<String> = desired
        .iter()
        .filter(|(name, value)| applied.get(*name) != Some(*value))
        .map(|(name, value)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                quote_literal(name),
                quote_literal(value)
            )
        })
        .collect();
    let mut sql = String::new();
    if !changed.is_empty() {
        sql.push_str(&format!("SELECT {};", changed.join(", ")));
    }
    for name in applied.keys().filter(|k| !desired.contains_key(*k)) {
        sql.push_str(&format!("RESET {};", quote_ident(name)));
    }
    (!sql.is_empty()).then_some(sql)
}

/// A setting name; `a.b` custom settings are quoted part by part.
fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// An escape-string literal: correct whatever standard_conforming_strings is.
fn quote_literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sync_sets_and_resets() {
        assert_eq!(sync_sql(&map(&[("a", "1")]), &map(&[("a", "1")])), None);
        assert_eq!(
            sync_sql(&map(&[("a", "1"), ("b", "2")]), &map(&[("a", "x'y\\z")])).as_deref(),
            Some("SELECT pg_catalog.set_config(E'a', E'x\\'y\\\\z', false);RESET \"b\";")
        );
        assert_eq!(
            sync_sql(&map(&[]), &map(&[("my.set", "v"), ("search_path", "a, b")])).as_deref(),
            Some(
                "SELECT pg_catalog.set_config(E'my.set', E'v', false), \
                 pg_catalog.set_config(E'search_path', E'a, b', false);"
            )
        );
    }

    #[test]
    fn tracked_names_ignore_case() {
        assert!(is_tracked("TimeZone"));
        assert!(!is_tracked("is_superuser"));
    }
}
