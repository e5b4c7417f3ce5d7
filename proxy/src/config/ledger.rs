//! `[ledger]`: where LLM budgets, reservations and usage live.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, PasswordSource, SealedField, UpstreamTls, check_sealed, invalid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerBackend {
    /// A `sentinel` schema in Postgres, shared by every replica (the default).
    Postgres,
    /// This process only, gone at exit: tests and single-process trials.
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Where the ledger lives; the other keys of this table matter to the postgres backend
    /// only.
    #[serde(default = "defaults::backend")]
    pub backend: LedgerBackend,
    /// Host of the ledger's Postgres server. Default: `[postgres.upstream] host`.
    #[serde(default)]
    pub host: Option<String>,
    /// Port of the ledger's Postgres server. Default: `[postgres.upstream] port`.
    #[serde(default)]
    pub port: Option<u16>,
    /// The database holding the ledger's schema; required with the postgres backend.
    #[serde(default)]
    pub database: Option<String>,
    /// The role Sentinel logs in as to keep the ledger: its own, never the app's, so the app
    /// cannot touch budgets. Required with the postgres backend.
    #[serde(default)]
    pub user: Option<String>,
    /// The role's password sealed with the master keyring (`sentinel seal --context
    /// ledger.password`). At most one of `password_sealed`, `password_env` and `password_file`
    /// is given; with none, no password is sent.
    #[serde(default)]
    pub password_sealed: Option<String>,
    /// An environment variable holding the password, or a sealed value; read at start.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (its trailing newline dropped), or a sealed value; read at
    /// start.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS towards the ledger's Postgres server. Default: `[postgres.upstream] tls` and
    /// `ca_file`.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// PEM file of the CA certificates the ledger server's chain is checked against, with
    /// `tls = "verify-full"`. Default: `[postgres.upstream] ca_file`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The schema Sentinel creates and migrates.
    #[serde(default = "defaults::schema")]
    pub schema: String,
    /// The time zone of `day` and `month` budget periods (an IANA name Postgres knows).
    #[serde(default = "defaults::time_zone")]
    pub time_zone: String,
    /// How long a replica's budget lease lives without a heartbeat; after it, other replicas
    /// sweep it.
    #[serde(default = "defaults::lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// The local append-only file usage is written to before the database.
    #[serde(default = "defaults::spool_path")]
    pub spool_path: PathBuf,
    /// Connections to the ledger database.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
}

impl LedgerConfig {
    pub fn password_context(&self) -> String {
        "ledger.password".to_owned()
    }

    pub fn password(&self) -> PasswordSource {
        PasswordSource::from_fields(
            self.password_sealed.as_deref(),
            self.password_env.as_deref(),
            self.password_file.as_deref(),
            self.password_context(),
        )
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !is_identifier(&self.schema) {
            return Err(invalid(
                "ledger.schema",
                "must be a plain lower-case identifier ([a-z_][a-z0-9_]*, at most 63 bytes)",
            ));
        }
        if self.backend == LedgerBackend::Memory {
            return Ok(());
        }
        if self.database.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "ledger.database",
                "required for the postgres backend",
            ));
        }
        if self.user.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "ledger.user",
                "required for the postgres backend: a role of its own that owns the ledger's \
                 schema (never the app's role)",
            ));
        }
        let sources = [
            self.password_sealed.is_some(),
            self.password_env.is_some(),
            self.password_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "ledger.password_sealed",
                "at most one of password_sealed, password_env, password_file",
            ));
        }
        if let Some(value) = &self.password_sealed {
            check_sealed(value).map_err(|r| invalid("ledger.password_sealed", r))?;
        }
        if self.time_zone.is_empty() {
            return Err(invalid("ledger.time_zone", "must not be empty"));
        }
        if self.lease_ttl < Duration::from_secs(3) {
            return Err(invalid("ledger.lease_ttl", "must be at least 3s"));
        }
        if self.pool_size == 0 || self.pool_size > 64 {
            return Err(invalid("ledger.pool_size", "must be between 1 and 64"));
        }
        if self.spool_path.as_os_str().is_empty() {
            return Err(invalid("ledger.spool_path", "must not be empty"));
        }
        Ok(())
    }

    pub(super) fn sealed_fields(&self, out: &mut Vec<SealedField>) {
        if let Some(value) = &self.password_sealed {
            out.push(SealedField {
                field: "ledger.password_sealed".to_owned(),
                context: self.password_context(),
                value: value.clone(),
            });
        }
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

mod defaults {
    use super::*;

    pub fn backend() -> LedgerBackend {
        LedgerBackend::Postgres
    }
    pub fn schema() -> String {
        "sentinel".to_owned()
    }
    pub fn time_zone() -> String {
        "UTC".to_owned()
    }
    pub fn lease_ttl() -> Duration {
        Duration::from_secs(15)
    }
    pub fn spool_path() -> PathBuf {
        PathBuf::from("/var/lib/sentinel/usage.spool")
    }
    pub fn pool_size() -> usize {
        4
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, LedgerBackend};

    const BASE: &str = r#"
[keys]
salt = "46TaY3MHFe+hUwfJlWEhphIPQoXgmg2UV42DWWLQDEk="

[postgres.upstream]
host = "db.internal"
port = 5433

[[postgres.users]]
name = "app"
auth = "trust"

[llm]
[[llm.providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
models = ["gpt-4o-mini"]
api_key_env = "OPENAI_API_KEY"

[ledger]
database = "app"
user = "sentinel_ledger"
password_env = "LEDGER_PW"
"#;

    #[test]
    fn postgres_is_the_default_backend() {
        let c = Config::parse(BASE).expect("valid");
        let l = c.ledger.as_ref().expect("[ledger]");
        assert_eq!(l.backend, LedgerBackend::Postgres);
        assert_eq!(
            (l.schema.as_str(), l.time_zone.as_str()),
            ("sentinel", "UTC")
        );
        assert_eq!(c.sealed_fields().len(), 0);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (BASE.replace("user = \"sentinel_ledger\"\n", ""), "ledger.user"),
            (BASE.replace("database = \"app\"\n", ""), "ledger.database"),
            (BASE.replace("[ledger]", "[ledger]\nschema = \"Bad-Name\""), "ledger.schema"),
            (BASE.replace("[ledger]", "[ledger]\nlease_ttl = \"1s\""), "ledger.lease_ttl"),
            (BASE.replace("[ledger]", "[ledger]\npool_size = 0"), "ledger.pool_size"),
            (
                BASE.replace("password_env = \"LEDGER_PW\"", "password_env = \"A\"\npassword_file = \"/p\""),
                "at most one",
            ),
            (
                BASE.replace("password_env = \"LEDGER_PW\"", "password_sealed = \"hunter2\""),
                "ledger.password_sealed",
            ),
            (
                BASE.replace("[ledger]\ndatabase = \"app\"\nuser = \"sentinel_ledger\"\npassword_env = \"LEDGER_PW\"\n", ""),
                "[llm] needs a [ledger]",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(&text).expect_err(want).to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn the_memory_backend_needs_no_database() {
        let text = BASE.replace(
            "[ledger]\ndatabase = \"app\"\nuser = \"sentinel_ledger\"\npassword_env = \"LEDGER_PW\"\n",
            "[ledger]\nbackend = \"memory\"\n",
        );
        let c = Config::parse(&text).expect("valid");
        assert_eq!(
            c.ledger.as_ref().map(|l| l.backend),
            Some(LedgerBackend::Memory)
        );
    }
}
