//! `sentinel.toml`: typed, validated whole before anything uses it.
//!
//! Every section denies unknown fields, so a typo is an error that names the field rather than a
//! setting silently ignored. Secrets never live here: passwords are named by environment
//! variable or file and read when needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::pg::auth::scram::ScramVerifier;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub process: ProcessConfig,
    pub postgres: PostgresConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// Worker threads for each service.
    pub threads: usize,
    /// How long transactions in flight may run on after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            threads: 2,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Transaction,
    Session,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    #[serde(default = "defaults::pool_mode")]
    pub pool_mode: PoolMode,
    #[serde(default = "defaults::max_client_conn")]
    pub max_client_conn: usize,
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    #[serde(default)]
    pub min_pool_size: usize,
    #[serde(default = "defaults::pool_wait_timeout", with = "humantime_serde")]
    pub pool_wait_timeout: Duration,
    #[serde(default = "defaults::server_connect_timeout", with = "humantime_serde")]
    pub server_connect_timeout: Duration,
    #[serde(default = "defaults::server_lifetime", with = "humantime_serde")]
    pub server_lifetime: Duration,
    #[serde(default = "defaults::server_idle_timeout", with = "humantime_serde")]
    pub server_idle_timeout: Duration,
    /// Zero: off.
    #[serde(default, with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Zero: off.
    #[serde(default, with = "humantime_serde")]
    pub idle_transaction_timeout: Duration,
    #[serde(default = "defaults::client_login_timeout", with = "humantime_serde")]
    pub client_login_timeout: Duration,
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    #[serde(default = "defaults::trust_networks")]
    pub trust_networks: Vec<IpNet>,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

mod defaults {
    use super::*;
    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 6432))
    }
    pub fn pool_mode() -> PoolMode {
        PoolMode::Transaction
    }
    pub fn max_client_conn() -> usize {
        1000
    }
    pub fn pool_size() -> usize {
        20
    }
    pub fn pool_wait_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn server_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn server_lifetime() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn server_idle_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn client_login_timeout() -> Duration {
        Duration::from_secs(15)
    }
    pub fn max_message_bytes() -> usize {
        32 << 20
    }
    pub fn trust_networks() -> Vec<IpNet> {
        vec![
            IpNet::V4(std::net::Ipv4Addr::LOCALHOST.into()),
            IpNet::V6(std::net::Ipv6Addr::LOCALHOST.into()),
        ]
    }
    pub fn upstream_port() -> u16 {
        5432
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    /// TLS required, with the chain checked against `ca_file` and the host name.
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub host: String,
    #[serde(default = "defaults::upstream_port")]
    pub port: u16,
    #[serde(default = "UpstreamConfig::default_tls")]
    pub tls: UpstreamTls,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl UpstreamConfig {
    fn default_tls() -> UpstreamTls {
        UpstreamTls::Disable
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    Trust,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub auth: ClientAuth,
    #[serde(default)]
    pub scram_verifier: Option<String>,
    #[serde(default)]
    pub server_user: Option<String>,
    #[serde(default)]
    pub server_password_env: Option<String>,
    #[serde(default)]
    pub server_password_file: Option<PathBuf>,
    /// Databases whose pools are opened at start, so min_pool_size holds before the first
    /// client arrives. Empty: the database named like the user, as Postgres defaults.
    #[serde(default)]
    pub databases: Vec<String>,
}

impl UserConfig {
    /// Databases this user's pools are opened for at start.
    pub fn prewarm_databases(&self) -> Vec<String> {
        if self.databases.is_empty() {
            vec![self.name.clone()]
        } else {
            self.databases.clone()
        }
    }

    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }

    /// Where the upstream password comes from.
    pub fn server_password(&self) -> PasswordSource {
        match (&self.server_password_env, &self.server_password_file) {
            (Some(var), _) => PasswordSource::Env(var.clone()),
            (None, Some(path)) => PasswordSource::File(path.clone()),
            (None, None) => PasswordSource::None,
        }
    }
}

/// Where an upstream password is read from, at connect time (so a rotated file is picked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    None,
    Env(String),
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: Box<toml::de::Error>,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { error, .. } => ConfigError::Parse {
                path: path.to_owned(),
                error,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            error: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything that types alone cannot, so a config that loads is one that runs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.process.threads == 0 {
            return Err(invalid("process.threads", "must be at least 1"));
        }
        let pg = &self.postgres;
        if pg.pool_size == 0 {
            return Err(invalid("postgres.pool_size", "must be at least 1"));
        }
        if pg.min_pool_size > pg.pool_size {
            return Err(invalid(
                "postgres.min_pool_size",
                "must not exceed postgres.pool_size",
            ));
        }
        if pg.max_client_conn == 0 {
            return Err(invalid("postgres.max_client_conn", "must be at least 1"));
        }
        if pg.max_message_bytes < 1024 || pg.max_message_bytes > (1 << 30) {
            return Err(invalid(
                "postgres.max_message_bytes",
                "must be between 1024 and 1 GiB",
            ));
        }
        if pg.pool_wait_timeout.is_zero() {
            return Err(invalid("postgres.pool_wait_timeout", "must be positive"));
        }
        if pg.server_connect_timeout.is_zero() {
            return Err(invalid(
                "postgres.server_connect_timeout",
                "must be positive",
            ));
        }
        if pg.upstream.host.is_empty() {
            return Err(invalid("postgres.upstream.host", "must not be empty"));
        }
        if pg.upstream.tls == UpstreamTls::VerifyFull && pg.upstream.ca_file.is_none() {
            return Err(invalid(
                "postgres.upstream.ca_file",
                "required with tls = \"verify-full\"",
            ));
        }
        if pg.users.is_empty() {
            return Err(invalid("postgres.users", "at least one user is required"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, user) in pg.users.iter().enumerate() {
            let field = |name: &str| format!("postgres.users[{i}].{name}");
            if user.name.is_empty() {
                return Err(invalid(field("name"), "must not be empty"));
            }
            if !seen.insert(user.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("user {:?} is listed twice", user.name),
                ));
            }
            match (user.auth, &user.scram_verifier) {
                (ClientAuth::ScramSha256, None) => {
                    return Err(invalid(
                        field("scram_verifier"),
                        "required with auth = \"scram-sha-256\" (print one with `sentinel scram-verifier`)",
                    ));
                }
                (ClientAuth::ScramSha256, Some(v)) => {
                    v.parse::<ScramVerifier>()
                        .map_err(|e| invalid(field("scram_verifier"), e.to_string()))?;
                }
                (ClientAuth::Trust, Some(_)) => {
                    return Err(invalid(
                        field("scram_verifier"),
                        "not used with auth = \"trust\"",
                    ));
                }
                (ClientAuth::Trust, None) => {}
            }
            if user.server_password_env.is_some() && user.server_password_file.is_some() {
                return Err(invalid(
                    field("server_password_env"),
                    "give server_password_env or server_password_file, not both",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[postgres.upstream]
host = "127.0.0.1"

[[postgres.users]]
name = "app"
auth = "trust"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).expect("valid");
        assert_eq!(c.postgres.listen.port(), 6432);
        assert_eq!(c.postgres.pool_mode, PoolMode::Transaction);
        assert_eq!(c.postgres.upstream.port, 5432);
        assert_eq!(c.postgres.users[0].server_user(), "app");
        assert_eq!(c.postgres.users[0].server_password(), PasswordSource::None);
    }

    #[test]
    fn unknown_field_is_named() {
        let text = MINIMAL.replace("auth = \"trust\"", "auth = \"trust\"\npasword = \"x\"");
        let err = Config::parse(&text).expect_err("unknown field").to_string();
        assert!(err.contains("pasword"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let text = format!("{MINIMAL}\n");
        let text = text.replace(
            "[postgres.upstream]",
            "[postgres]\npool_size = 0\n[postgres.upstream]",
        );
        let err = Config::parse(&text).expect_err("pool_size 0").to_string();
        assert!(err.starts_with("postgres.pool_size"), "{err}");

        let text = MINIMAL.replace("auth = \"trust\"", "auth = \"scram-sha-256\"");
        let err = Config::parse(&text).expect_err("no verifier").to_string();
        assert!(err.starts_with("postgres.users[0].scram_verifier"), "{err}");

        let text = MINIMAL.replace(
            "auth = \"trust\"",
            "auth = \"scram-sha-256\"\nscram_verifier = \"SCRAM-SHA-256$x\"",
        );
        let err = Config::parse(&text).expect_err("bad verifier").to_string();
        assert!(err.starts_with("postgres.users[0].scram_verifier"), "{err}");
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../deploy/sentinel.example.toml");
        Config::parse(text).expect("deploy/sentinel.example.toml is valid");
    }
}
