//! `sentinel.toml`: typed, validated whole before anything uses it.
//!
//! Every section denies unknown fields, so a typo is an error that names the field rather than a
//! setting silently ignored. Secrets never live here in the clear: upstream passwords are named by
//! environment variable or file and read when needed, or written sealed (`sealed:v1:…`, made by
//! `sentinel seal`) and opened with the master keyring. The keyring itself never lives here either
//! (`SENTINEL_MASTER_KEY` or the file named by `[keys] master_key_file`); `[keys] salt`, the
//! per-environment salt, is not a secret.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use sentinel_policy::keys::{EnvSalt, is_sealed, sealed_key_id};

use crate::pg::auth::scram::ScramVerifier;

mod admin;
mod ledger;
mod llm;
mod tenancy;

pub use admin::{ADMIN_TOKEN_CONTEXT, AdminConfig};
pub use ledger::{LedgerBackend, LedgerConfig};
pub use llm::{
    LedgerOutage, LlmConfig, PriceConfig, ProviderConfig, ProviderKind, TenantLlmConfig,
};
pub use tenancy::{AuditOnStart, Scope, Source, TenancyConfig, TenantConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The process: worker threads and graceful shutdown.
    #[serde(default)]
    pub process: ProcessConfig,
    /// Required in substance: `salt` must be set (validated with a message that says how).
    #[serde(default)]
    pub keys: KeysConfig,
    /// The Postgres front: where clients connect, how server connections are pooled, the
    /// upstream server, and the users clients log in as.
    pub postgres: PostgresConfig,
    /// Tenant context: how each statement's tenant is found, and what is refused without one.
    #[serde(default)]
    pub tenancy: TenancyConfig,
    /// The LLM egress proxy; absent: not started.
    #[serde(default)]
    pub llm: Option<LlmConfig>,
    /// Where LLM budgets live; required with `[llm]`.
    #[serde(default)]
    pub ledger: Option<LedgerConfig>,
    /// The admin port and the Postgres console.
    #[serde(default)]
    pub admin: AdminConfig,
}

/// `[keys]`: where the master keyring comes from, and this environment's salt.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The per-environment salt (standard base64 of 32 random bytes, printed by
    /// `sentinel keys new`). Not a secret, but every environment needs its own.
    #[serde(default)]
    pub salt: Option<String>,
    /// A file holding the keyring text (`k2:<base64>,k1:<base64>`, first entry current). Without
    /// it, the keyring is read from the `SENTINEL_MASTER_KEY` environment variable.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
}

impl KeysConfig {
    /// The parsed salt. `validate` has checked it, so this fails only on a config that was not
    /// validated.
    pub fn env_salt(&self) -> Result<EnvSalt, ConfigError> {
        let text = self.salt.as_deref().ok_or_else(missing_salt)?;
        EnvSalt::from_base64(text).map_err(|e| invalid("keys.salt", e.to_string()))
    }
}

fn missing_salt() -> ConfigError {
    invalid(
        "keys.salt",
        "missing: every environment needs its own salt. Make one (with a master key) with \
         `sentinel keys new` and put the `salt = \"...\"` line it prints under [keys]",
    )
}

/// A sealed value the config holds, with the field it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedField {
    /// Where it is in the config, for messages: `postgres.users[0].server_password_sealed`.
    pub field: String,
    /// The context it is sealed for (part of the AEAD's associated data).
    pub context: String,
    /// The sealed text (`sealed:v1:<key id>:<data>`): ciphertext, not a secret.
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// Worker threads for each service; at least 1. Changing it needs a restart.
    pub threads: usize,
    /// How long transactions in flight may run on after SIGTERM. Sentinel stops accepting
    /// clients, lets go of those between transactions at once, and closes those still inside a
    /// transaction when this has passed (SQLSTATE 57P01).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The Unix socket over which a new process started with `sentinel run --upgrade` takes
    /// the listening sockets from the running one (which is then sent SIGQUIT): a restart
    /// without refusing a single connection. Default: "/tmp/sentinel-upgrade.sock".
    pub upgrade_socket: PathBuf,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            threads: 2,
            shutdown_grace: Duration::from_secs(30),
            upgrade_socket: PathBuf::from("/tmp/sentinel-upgrade.sock"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// For one transaction: the server connection goes back to the pool when the transaction
    /// ends, so many clients share few server connections.
    Transaction,
    /// For as long as the client stays connected.
    Session,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The address Postgres clients connect to (the apps' `DATABASE_URL` points here).
    /// Changing it needs a restart.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// How long a client holds a server connection.
    #[serde(default = "defaults::pool_mode")]
    pub pool_mode: PoolMode,
    /// Most clients connected at once; one more is refused once logged in (SQLSTATE 53300).
    #[serde(default = "defaults::max_client_conn")]
    pub max_client_conn: usize,
    /// Most server connections of each pool; there is a pool per (database, server user). A
    /// client that needs one while all are busy waits up to `pool_wait_timeout`.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// Server connections each pool keeps open even when idle; at most `pool_size`. The pools
    /// of each user's `databases` are opened at start, others when first used.
    #[serde(default)]
    pub min_pool_size: usize,
    /// How long a client waits for a server connection of a full pool before it is refused
    /// (SQLSTATE 53300). Must be positive.
    #[serde(default = "defaults::pool_wait_timeout", with = "humantime_serde")]
    pub pool_wait_timeout: Duration,
    /// How long opening a server connection may take, from the TCP connect through TLS and the
    /// login to the server being ready; a client waiting for it is then refused (SQLSTATE
    /// 08006). Must be positive.
    #[serde(default = "defaults::server_connect_timeout", with = "humantime_serde")]
    pub server_connect_timeout: Duration,
    /// Server connections older than this are closed when next idle, never while in use.
    #[serde(default = "defaults::server_lifetime", with = "humantime_serde")]
    pub server_lifetime: Duration,
    /// Server connections unused for this long are closed, down to `min_pool_size` per pool.
    #[serde(default = "defaults::server_idle_timeout", with = "humantime_serde")]
    pub server_idle_timeout: Duration,
    /// A request (a simple query, or extended-protocol messages up to Sync) running longer is
    /// cancelled: Sentinel sends Postgres a cancel request, and the client gets its error
    /// (SQLSTATE 57014). `"0s"`: no limit.
    #[serde(default, with = "humantime_serde")]
    pub query_timeout: Duration,
    /// A client that leaves a transaction open and idle for longer is disconnected (SQLSTATE
    /// 25P03) and its server connection closed, which rolls the transaction back. `"0s"`: no
    /// limit.
    #[serde(default, with = "humantime_serde")]
    pub idle_transaction_timeout: Duration,
    /// A client that has not finished logging in (TLS and authentication included) within
    /// this is disconnected.
    #[serde(default = "defaults::client_login_timeout", with = "humantime_serde")]
    pub client_login_timeout: Duration,
    /// Largest protocol message accepted from a client, in bytes, from 1024 to 1 GiB; a larger
    /// one ends the connection as a protocol violation (SQLSTATE 08P01). The startup packet is
    /// capped at 10000 bytes regardless.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    /// Client addresses from which users with `auth = "trust"` may log in; from anywhere else
    /// they are refused (SQLSTATE 28000).
    #[serde(default = "defaults::trust_networks")]
    pub trust_networks: Vec<IpNet>,
    /// The Postgres server behind Sentinel. Changing it needs a restart.
    pub upstream: UpstreamConfig,
    /// TLS towards clients: a client's SSLRequest is answered with a TLS handshake with this
    /// certificate. Without it, SSLRequest is answered "no" and clients connect in plain text.
    /// Changing it needs a restart.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// The users clients may log in as; a client's startup user must be one of them. At least
    /// one is required.
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
    /// Plain TCP.
    Disable,
    /// TLS required, with the chain checked against `ca_file` and the host name.
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Host name or IP address of the Postgres server; with `tls = "verify-full"`, also the
    /// name its certificate must carry.
    pub host: String,
    /// Port of the Postgres server.
    #[serde(default = "defaults::upstream_port")]
    pub port: u16,
    /// TLS towards the Postgres server.
    #[serde(default = "UpstreamConfig::default_tls")]
    pub tls: UpstreamTls,
    /// PEM file of the CA certificates the server's chain is checked against (they are the only
    /// ones trusted). Required with `tls = "verify-full"`.
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
    /// PEM file of the certificate chain shown to clients, Sentinel's certificate first.
    pub cert_file: PathBuf,
    /// PEM file of that certificate's private key.
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// SCRAM-SHA-256, checked against `scram_verifier`: the password itself never crosses the
    /// network.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// No password, from the addresses of `[postgres] trust_networks` only.
    Trust,
    /// The password is a tenant token (`sentinel token issue`), sent in clear text: accepted over
    /// TLS or from loopback only. The connection is bound to the token's tenant.
    TenantToken,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name clients log in with (the `user` of their startup packet); each is listed
    /// once.
    pub name: String,
    /// How a client proves it may log in as this user.
    pub auth: ClientAuth,
    /// The SCRAM-SHA-256 verifier of the user's password, printed by `sentinel scram-verifier`
    /// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, not the password).
    /// Required with `auth = "scram-sha-256"`, refused with the other methods.
    #[serde(default)]
    pub scram_verifier: Option<String>,
    /// The role Sentinel logs into Postgres as for this user's clients. Default: the user's
    /// `name`.
    #[serde(default)]
    pub server_user: Option<String>,
    /// An environment variable holding the upstream password, or a sealed value (opened with
    /// the master keyring); read at each server connect.
    #[serde(default)]
    pub server_password_env: Option<String>,
    /// A file holding the upstream password (its trailing newline dropped), or a sealed value;
    /// read at each server connect, so a rotated file is picked up.
    #[serde(default)]
    pub server_password_file: Option<PathBuf>,
    /// The upstream password sealed with the master keyring (`sentinel seal --for-user <name>`
    /// seals it for the context `postgres.users.<name>.server_password`). At most one of
    /// `server_password_sealed`, `server_password_env` and `server_password_file` is given;
    /// with none, Sentinel logs in without a password.
    #[serde(default)]
    pub server_password_sealed: Option<String>,
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

    /// The context the upstream password is sealed for, wherever the sealed value is kept
    /// (`server_password_sealed`, or an environment variable or file holding a sealed value):
    /// `postgres.users.<name>.server_password`. `sentinel seal --for-user <name>` uses it.
    pub fn server_password_context(&self) -> String {
        server_password_context(&self.name)
    }

    /// Where the upstream password comes from.
    pub fn server_password(&self) -> PasswordSource {
        PasswordSource::from_fields(
            self.server_password_sealed.as_deref(),
            self.server_password_env.as_deref(),
            self.server_password_file.as_deref(),
            self.server_password_context(),
        )
    }
}

/// The sealing context of a user's upstream password: `postgres.users.<name>.server_password`.
pub fn server_password_context(user: &str) -> String {
    format!("postgres.users.{user}.server_password")
}

/// Where an upstream password is read from, at connect time (so a rotated file is picked up).
/// A value read from an environment variable or a file that starts with `sealed:` is a sealed
/// value and is opened for `context`.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordSource {
    None,
    Env {
        var: String,
        context: String,
    },
    File {
        path: PathBuf,
        context: String,
    },
    /// Sealed in the config itself.
    Sealed {
        value: String,
        context: String,
    },
}

impl PasswordSource {
    /// The source a config entry names with its `…_sealed`, `…_env` and `…_file` fields, in
    /// that order of precedence (validation allows one of them), sealed for `context`.
    pub fn from_fields(
        sealed: Option<&str>,
        env: Option<&str>,
        file: Option<&Path>,
        context: String,
    ) -> PasswordSource {
        match (sealed, env, file) {
            (Some(value), _, _) => PasswordSource::Sealed {
                value: value.to_owned(),
                context,
            },
            (None, Some(var), _) => PasswordSource::Env {
                var: var.to_owned(),
                context,
            },
            (None, None, Some(path)) => PasswordSource::File {
                path: path.to_owned(),
                context,
            },
            (None, None, None) => PasswordSource::None,
        }
    }
}

impl std::fmt::Debug for PasswordSource {
    /// The sealed text is ciphertext, but it stays out of logs all the same: only its key id.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::None => f.write_str("None"),
            PasswordSource::Env { var, .. } => f.debug_struct("Env").field("var", var).finish(),
            PasswordSource::File { path, .. } => {
                f.debug_struct("File").field("path", path).finish()
            }
            PasswordSource::Sealed { value, .. } => {
                let key = sealed_key_id(value)
                    .map(|id| id.to_string())
                    .unwrap_or_else(|_| "?".to_owned());
                f.debug_struct("Sealed")
                    .field("key", &key)
                    .field("value", &"<redacted>")
                    .finish()
            }
        }
    }
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
        self.keys.env_salt()?;
        if let Some(path) = &self.keys.master_key_file
            && path.as_os_str().is_empty()
        {
            return Err(invalid("keys.master_key_file", "must not be empty"));
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
                (ClientAuth::Trust | ClientAuth::TenantToken, None) => {}
                (ClientAuth::TenantToken, Some(_)) => {
                    return Err(invalid(
                        field("scram_verifier"),
                        "not used with auth = \"tenant-token\"",
                    ));
                }
            }
            if user.auth == ClientAuth::TenantToken && !self.tenancy.allows(Source::Token) {
                return Err(invalid(
                    field("auth"),
                    "auth = \"tenant-token\" needs tenancy enabled with the \"token\" source",
                ));
            }
            let sources = [
                user.server_password_sealed.is_some(),
                user.server_password_env.is_some(),
                user.server_password_file.is_some(),
            ];
            if sources.iter().filter(|&&given| given).count() > 1 {
                let first = if user.server_password_sealed.is_some() {
                    "server_password_sealed"
                } else {
                    "server_password_env"
                };
                return Err(invalid(
                    field(first),
                    "give one of server_password_sealed, server_password_env and \
                     server_password_file",
                ));
            }
            if let Some(value) = &user.server_password_sealed {
                check_sealed(value).map_err(|e| invalid(field("server_password_sealed"), e))?;
            }
        }
        self.tenancy.validate()?;
        if let Some(llm) = &self.llm {
            llm.validate()?;
            if self.ledger.is_none() {
                return Err(invalid(
                    "ledger",
                    "[llm] needs a [ledger]: the Postgres ledger shared by replicas (backend = \
                     \"postgres\" with database, user and a password source), or backend = \
                     \"memory\" for one process whose budgets restart with it",
                ));
            }
        }
        if let Some(ledger) = &self.ledger {
            ledger.validate()?;
        }
        self.admin.validate(&self.postgres.users)?;
        for name in &self.tenancy.bypass_users {
            if !self.postgres.users.iter().any(|u| &u.name == name) {
                return Err(invalid(
                    "tenancy.bypass_users",
                    format!("{name:?} is not one of postgres.users"),
                ));
            }
        }
        Ok(())
    }

    /// Every sealed value written in the config, with its field and context. `sentinel keys
    /// check` and `rotate` and the start-up check go through this list, so a new sealed field
    /// is added here.
    pub fn sealed_fields(&self) -> Vec<SealedField> {
        let mut out = Vec::new();
        for (i, user) in self.postgres.users.iter().enumerate() {
            if let Some(value) = &user.server_password_sealed {
                out.push(SealedField {
                    field: format!("postgres.users[{i}].server_password_sealed"),
                    context: user.server_password_context(),
                    value: value.clone(),
                });
            }
        }
        if let Some(llm) = &self.llm {
            llm.sealed_fields(&mut out);
        }
        if let Some(ledger) = &self.ledger {
            ledger.sealed_fields(&mut out);
        }
        self.admin.sealed_fields(&mut out);
        out
    }
}

/// A config field meant to hold a sealed value must hold a well-formed one: plaintext there is a
/// secret in the clear.
fn check_sealed(value: &str) -> Result<(), String> {
    if !is_sealed(value) {
        return Err(
            "must be a sealed value (`sealed:v1:...`, printed by `sentinel seal`), never the \
             password itself"
                .to_owned(),
        );
    }
    sealed_key_id(value).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: &str = "46TaY3MHFe+hUwfJlWEhphIPQoXgmg2UV42DWWLQDEk=";

    const MINIMAL: &str = r#"
[keys]
salt = "46TaY3MHFe+hUwfJlWEhphIPQoXgmg2UV42DWWLQDEk="

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
            "\n[postgres.upstream]",
            "\n[postgres]\npool_size = 0\n[postgres.upstream]",
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

    /// A well-formed sealed value (its data is random, it opens with no key).
    const SEALED: &str =
        "sealed:v1:k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKiss";

    #[test]
    fn keys_salt_is_required_and_checked() {
        let text = MINIMAL.replace(&format!("salt = \"{SALT}\""), "");
        let err = Config::parse(&text).expect_err("no salt").to_string();
        assert!(err.starts_with("keys.salt: missing"), "{err}");
        assert!(err.contains("sentinel keys new"), "{err}");

        let text = MINIMAL.replace(SALT, "c2hvcnQ=");
        let err = Config::parse(&text).expect_err("short salt").to_string();
        assert!(err.starts_with("keys.salt:"), "{err}");
        assert!(err.contains("32"), "{err}");

        let text = MINIMAL.replace(
            "[keys]",
            "[keys]\nmaster_key_file = \"/etc/sentinel/master.key\"",
        );
        let c = Config::parse(&text).expect("valid");
        assert_eq!(
            c.keys.master_key_file.as_deref(),
            Some(Path::new("/etc/sentinel/master.key"))
        );
        c.keys.env_salt().expect("salt parses");

        let text = MINIMAL.replace("[keys]", "[keys]\nmaster_key = \"k1:x\"");
        let err = Config::parse(&text).expect_err("unknown field").to_string();
        assert!(err.contains("master_key"), "{err}");
    }

    #[test]
    fn sealed_server_password() {
        let text = MINIMAL.replace(
            "auth = \"trust\"",
            &format!("auth = \"trust\"\nserver_password_sealed = \"{SEALED}\""),
        );
        let c = Config::parse(&text).expect("valid");
        let user = &c.postgres.users[0];
        assert_eq!(
            user.server_password(),
            PasswordSource::Sealed {
                value: SEALED.to_owned(),
                context: "postgres.users.app.server_password".to_owned(),
            }
        );
        let debug = format!("{:?}", user.server_password());
        assert!(!debug.contains(SEALED), "{debug}");
        assert!(debug.contains("k1"), "{debug}");
        assert_eq!(
            c.sealed_fields(),
            vec![SealedField {
                field: "postgres.users[0].server_password_sealed".to_owned(),
                context: "postgres.users.app.server_password".to_owned(),
                value: SEALED.to_owned(),
            }]
        );

        // Plaintext where a sealed value belongs is refused, naming the field.
        let text = MINIMAL.replace(
            "auth = \"trust\"",
            "auth = \"trust\"\nserver_password_sealed = \"hunter2\"",
        );
        let err = Config::parse(&text).expect_err("plaintext").to_string();
        assert!(
            err.starts_with("postgres.users[0].server_password_sealed: must be a sealed value"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");

        let text = MINIMAL.replace(
            "auth = \"trust\"",
            "auth = \"trust\"\nserver_password_sealed = \"sealed:v9:k1:AAAA\"",
        );
        let err = Config::parse(&text).expect_err("version").to_string();
        assert!(err.contains("format version"), "{err}");

        // One source only.
        let text = MINIMAL.replace(
            "auth = \"trust\"",
            &format!(
                "auth = \"trust\"\nserver_password_sealed = \"{SEALED}\"\nserver_password_env = \"X\""
            ),
        );
        let err = Config::parse(&text).expect_err("two sources").to_string();
        assert!(
            err.starts_with("postgres.users[0].server_password_sealed: give one of"),
            "{err}"
        );

        let text = MINIMAL.replace(
            "auth = \"trust\"",
            "auth = \"trust\"\nserver_password_env = \"X\"",
        );
        let c = Config::parse(&text).expect("valid");
        assert_eq!(
            c.postgres.users[0].server_password(),
            PasswordSource::Env {
                var: "X".to_owned(),
                context: "postgres.users.app.server_password".to_owned(),
            }
        );
        assert!(c.sealed_fields().is_empty());
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../deploy/sentinel.example.toml");
        Config::parse(text).expect("deploy/sentinel.example.toml is valid");
    }
}
