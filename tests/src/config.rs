//! `sentinel.toml` for tests.
//!
//! Tests describe the Sentinel they need in a line
//! (`SentinelConfig::new(&pg).user("app", Auth::Scram("pw"), "app").pool_size(4)`) and get the
//! TOML of `deploy/sentinel.example.toml` with every option spelled out, so a test never depends
//! on a default it did not see. Server passwords never appear in the TOML: like in production they
//! travel in environment variables, which [`SentinelConfig::env`] lists and
//! [`SentinelProcess::start_with`](crate::sentinel::SentinelProcess::start_with) passes on (or
//! sealed, with [`SentinelConfig::server_password_sealed`]).
//!
//! Keys: every config gets a fresh random master keyring (`k1`, passed as `SENTINEL_MASTER_KEY`
//! in [`SentinelConfig::env`]) and a fresh environment salt (`[keys] salt`), made with the policy
//! crate. [`SentinelConfig::master_key`], [`SentinelConfig::salt`],
//! [`SentinelConfig::master_key_file`], [`SentinelConfig::without_master_key`] and
//! [`SentinelConfig::without_salt`] override them.
//!
//! Options this builder does not know yet can be set with [`SentinelConfig::option`] (a key of an
//! existing table) or [`SentinelConfig::extra_toml`] (whole new tables), so new features can be
//! tested before the builder grows a method for them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::OsRng;
use sentinel_policy::keys::{EnvSalt, KeyId, Keyring, issue_tenant_token};
use sentinel_policy::tenant::DEFAULT_TENANT_ID_PATTERN;

use crate::pg::{PgCluster, TestDb};
use crate::sentinel::free_port;

/// The environment variable Sentinel reads the master keyring from.
pub const MASTER_KEY_ENV: &str = "SENTINEL_MASTER_KEY";

/// A new random keyring of one key with id `id`, in its text form (`id:<base64>`).
pub fn new_keyring_text(id: &str) -> String {
    let id = KeyId::new(id).expect("a valid key id ([a-z0-9]{1,16})");
    let ring = Keyring::generate(id, &mut OsRng).expect("the OS random number generator works");
    ring.render().as_str().to_owned()
}

/// A new random environment salt, standard base64.
pub fn new_salt() -> String {
    EnvSalt::generate(&mut OsRng)
        .expect("the OS random number generator works")
        .to_base64()
}

/// How a client authenticates to Sentinel as a configured user.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// `auth = "trust"` (only from `trust_networks`).
    Trust,
    /// `auth = "scram-sha-256"` with a verifier computed here from this client password.
    Scram(&'a str),
    /// `auth = "scram-sha-256"` with this ready-made verifier (`SCRAM-SHA-256$...`).
    Verifier(&'a str),
    /// `auth = "tenant-token"`: the client's password is a tenant token
    /// ([`SentinelConfig::tenant_token`]); needs tenancy with the `token` source.
    TenantToken,
}

/// `pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection is held for one transaction (the default).
    Transaction,
    /// A server connection is held for the whole client session.
    Session,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

/// One `[[postgres.users]]` entry.
#[derive(Debug, Clone)]
struct User {
    name: String,
    /// `None` for trust or tenant-token, else the SCRAM verifier.
    scram_verifier: Option<String>,
    /// `auth = "tenant-token"` (then `scram_verifier` is `None`).
    tenant_token: bool,
    server_user: String,
    server_password_env: Option<String>,
    server_password_file: Option<PathBuf>,
    server_password_sealed: Option<String>,
}

/// Builds a `sentinel.toml`; see the module docs. Every setter consumes and returns the builder.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    listen_port: u16,
    upstream_host: String,
    upstream_port: u16,
    /// (table, key) -> raw TOML value, e.g. ("postgres", "pool_size") -> "20".
    options: BTreeMap<(String, String), String>,
    users: Vec<User>,
    env: Vec<(String, String)>,
    extra: String,
}

/// Renders a duration the way the config expects: `"5s"`, `"250ms"`, `"0s"`.
pub fn duration_str(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A TOML array of basic strings.
fn toml_list(items: &[&str]) -> String {
    let list: Vec<String> = items.iter().map(|i| toml_str(i)).collect();
    format!("[{}]", list.join(", "))
}

/// A TOML key: bare if it can be, else quoted.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { key.to_owned() } else { toml_str(key) }
}

fn bool_str(on: bool) -> &'static str {
    if on { "true" } else { "false" }
}

/// `[tenancy] scope`: how long a tenant given by the `set` source lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenancyScope {
    /// Until the end of the transaction it was set in (the default).
    Transaction,
    /// Until changed or reset.
    Session,
}

impl TenancyScope {
    fn as_str(self) -> &'static str {
        match self {
            TenancyScope::Transaction => "transaction",
            TenancyScope::Session => "session",
        }
    }
}

impl SentinelConfig {
    /// A config whose upstream is `pg`, listening on a fresh free port on 127.0.0.1, with the
    /// defaults of `deploy/sentinel.example.toml` except a 5s shutdown grace (tests should not
    /// wait 30s) and no users.
    pub fn new(pg: &PgCluster) -> Self {
        Self::with_upstream("127.0.0.1", pg.port())
    }

    /// Like [`new`](Self::new) for any upstream address.
    pub fn with_upstream(host: &str, port: u16) -> Self {
        let mut cfg = Self {
            listen_port: free_port(),
            upstream_host: host.to_owned(),
            upstream_port: port,
            options: BTreeMap::new(),
            users: Vec::new(),
            env: Vec::new(),
            extra: String::new(),
        }
        .master_key(&new_keyring_text("k1"))
        .salt(&new_salt());
        let defaults: &[(&str, &str, &str)] = &[
            ("process", "threads", "2"),
            ("process", "shutdown_grace", "\"5s\""),
            ("postgres", "pool_mode", "\"transaction\""),
            ("postgres", "max_client_conn", "1000"),
            ("postgres", "pool_size", "20"),
            ("postgres", "min_pool_size", "0"),
            ("postgres", "pool_wait_timeout", "\"5s\""),
            ("postgres", "server_connect_timeout", "\"5s\""),
            ("postgres", "server_lifetime", "\"1h\""),
            ("postgres", "server_idle_timeout", "\"10m\""),
            ("postgres", "query_timeout", "\"0s\""),
            ("postgres", "idle_transaction_timeout", "\"0s\""),
            ("postgres", "client_login_timeout", "\"15s\""),
            ("postgres", "max_message_bytes", "33554432"),
            (
                "postgres",
                "trust_networks",
                "[\"127.0.0.1/32\", \"::1/128\"]",
            ),
            ("postgres.upstream", "tls", "\"disable\""),
            // Tenancy is on by default in Sentinel; tests of the proxy's mechanics switch it
            // off, and tenancy tests switch it on with the options they are about.
            ("tenancy", "enabled", "false"),
        ];
        let admin = toml_str(&format!("127.0.0.1:{}", free_port()));
        for (table, key, value) in defaults {
            cfg = cfg.option(table, key, value);
        }
        // Every test process gets its own admin port (the default 9930 would collide) and its
        // own upgrade socket.
        let upgrade =
            std::env::temp_dir().join(format!("sentinel-upgrade-{}.sock", cfg.listen_port));
        cfg.option("admin", "listen", &admin).option(
            "process",
            "upgrade_socket",
            &toml_str(&upgrade.display().to_string()),
        )
    }

    /// `http://127.0.0.1:<admin port>`.
    pub fn admin_url(&self) -> String {
        let listen = self
            .options
            .get(&("admin".to_owned(), "listen".to_owned()))
            .and_then(|v| toml::from_str::<toml::Value>(&format!("v = {v}")).ok())
            .and_then(|t| t.get("v").and_then(|v| v.as_str().map(str::to_owned)))
            .unwrap_or_else(|| "127.0.0.1:9930".to_owned());
        format!("http://{listen}")
    }

    /// Sets `key = <raw TOML value>` in `[table]` (`process`, `keys`, `postgres`,
    /// `postgres.upstream`; not `postgres.users`). Overrides the builder's own value for that key.
    pub fn option(mut self, table: &str, key: &str, raw_toml_value: &str) -> Self {
        self.options.insert(
            (table.to_owned(), key.to_owned()),
            raw_toml_value.to_owned(),
        );
        self
    }

    /// Removes `key` from `[table]` (the key is then absent from the TOML).
    pub fn remove_option(mut self, table: &str, key: &str) -> Self {
        self.options.remove(&(table.to_owned(), key.to_owned()));
        self
    }

    fn duration_option(self, table: &str, key: &str, d: Duration) -> Self {
        let value = toml_str(&duration_str(d));
        self.option(table, key, &value)
    }

    /// Appends raw TOML after everything else (for whole new tables such as a future `[admin]`).
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra.push('\n');
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// The Postgres listen port (default: a free port picked by [`new`](Self::new)).
    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = port;
        self
    }

    /// `[process] threads`.
    pub fn threads(self, n: u32) -> Self {
        self.option("process", "threads", &n.to_string())
    }

    /// `[process] shutdown_grace`.
    pub fn shutdown_grace(self, d: Duration) -> Self {
        self.duration_option("process", "shutdown_grace", d)
    }

    /// `pool_mode`.
    pub fn pool_mode(self, mode: PoolMode) -> Self {
        let value = toml_str(mode.as_str());
        self.option("postgres", "pool_mode", &value)
    }

    /// `pool_size`.
    pub fn pool_size(self, n: u32) -> Self {
        self.option("postgres", "pool_size", &n.to_string())
    }

    /// `min_pool_size`.
    pub fn min_pool_size(self, n: u32) -> Self {
        self.option("postgres", "min_pool_size", &n.to_string())
    }

    /// `max_client_conn`.
    pub fn max_client_conn(self, n: u32) -> Self {
        self.option("postgres", "max_client_conn", &n.to_string())
    }

    /// `pool_wait_timeout`.
    pub fn pool_wait_timeout(self, d: Duration) -> Self {
        self.duration_option("postgres", "pool_wait_timeout", d)
    }

    /// `server_connect_timeout`.
    pub fn server_connect_timeout(self, d: Duration) -> Self {
        self.duration_option("postgres", "server_connect_timeout", d)
    }

    /// `server_lifetime`.
    pub fn server_lifetime(self, d: Duration) -> Self {
        self.duration_option("postgres", "server_lifetime", d)
    }

    /// `server_idle_timeout`.
    pub fn server_idle_timeout(self, d: Duration) -> Self {
        self.duration_option("postgres", "server_idle_timeout", d)
    }

    /// `query_timeout` (`Duration::ZERO` switches it off).
    pub fn query_timeout(self, d: Duration) -> Self {
        self.duration_option("postgres", "query_timeout", d)
    }

    /// `idle_transaction_timeout` (`Duration::ZERO` switches it off).
    pub fn idle_transaction_timeout(self, d: Duration) -> Self {
        self.duration_option("postgres", "idle_transaction_timeout", d)
    }

    /// `client_login_timeout`.
    pub fn client_login_timeout(self, d: Duration) -> Self {
        self.duration_option("postgres", "client_login_timeout", d)
    }

    /// `max_message_bytes`.
    pub fn max_message_bytes(self, n: u64) -> Self {
        self.option("postgres", "max_message_bytes", &n.to_string())
    }

    /// `trust_networks` (CIDRs).
    pub fn trust_networks(self, nets: &[&str]) -> Self {
        let list: Vec<String> = nets.iter().map(|n| toml_str(n)).collect();
        let value = format!("[{}]", list.join(", "));
        self.option("postgres", "trust_networks", &value)
    }

    /// `[postgres.upstream] tls` (see the example config for the accepted values).
    pub fn upstream_tls(self, mode: &str) -> Self {
        let value = toml_str(mode);
        self.option("postgres.upstream", "tls", &value)
    }

    /// Adds a `[[postgres.users]]` entry: clients log in as `name` with `auth`; Sentinel logs in
    /// to Postgres as `server_user`, without a password unless
    /// [`server_password`](Self::server_password) or
    /// [`server_password_env`](Self::server_password_env) follows.
    pub fn user(mut self, name: &str, auth: Auth<'_>, server_user: &str) -> Self {
        let scram_verifier = match auth {
            Auth::Trust | Auth::TenantToken => None,
            Auth::Scram(password) => Some(scram_verifier(password)),
            Auth::Verifier(v) => Some(v.to_owned()),
        };
        self.users.push(User {
            name: name.to_owned(),
            scram_verifier,
            tenant_token: matches!(auth, Auth::TenantToken),
            server_user: server_user.to_owned(),
            server_password_env: None,
            server_password_file: None,
            server_password_sealed: None,
        });
        self
    }

    /// Adds a user for a [`TestDb`]: clients log in as its role with `auth`, and Sentinel logs
    /// in to Postgres as that role with its password (passed in an environment variable).
    pub fn user_for(self, db: &TestDb, auth: Auth<'_>) -> Self {
        self.user(&db.role, auth, &db.role)
            .server_password(&db.password)
    }

    /// The last added user's server password: stored in a generated environment variable that
    /// [`env`](Self::env) lists, and named in `server_password_env`.
    pub fn server_password(mut self, password: &str) -> Self {
        let var = format!("SENTINEL_TEST_SERVER_PASSWORD_{}", self.users.len());
        self.env.push((var.clone(), password.to_owned()));
        self.server_password_env(&var)
    }

    /// The last added user's `server_password_env` (the test supplies the variable itself).
    pub fn server_password_env(mut self, var: &str) -> Self {
        if let Some(user) = self.users.last_mut() {
            user.server_password_env = Some(var.to_owned());
        }
        self
    }

    /// The last added user's `server_password_file`.
    pub fn server_password_file(mut self, path: &Path) -> Self {
        if let Some(user) = self.users.last_mut() {
            user.server_password_file = Some(path.to_owned());
        }
        self
    }

    /// The last added user's `server_password_sealed` (a `sealed:v1:…` value, e.g. from
    /// `sentinel seal --for-user`).
    pub fn server_password_sealed(mut self, sealed: &str) -> Self {
        if let Some(user) = self.users.last_mut() {
            user.server_password_sealed = Some(sealed.to_owned());
        }
        self
    }

    /// `server_password_sealed` of the user named `name` (added before; ignored otherwise).
    pub fn server_password_sealed_for(mut self, name: &str, sealed: &str) -> Self {
        if let Some(user) = self.users.iter_mut().find(|u| u.name == name) {
            user.server_password_sealed = Some(sealed.to_owned());
        }
        self
    }

    /// `server_password_file` of the user named `name` (added before; ignored otherwise).
    pub fn server_password_file_for(mut self, name: &str, path: &Path) -> Self {
        if let Some(user) = self.users.iter_mut().find(|u| u.name == name) {
            user.server_password_file = Some(path.to_owned());
        }
        self
    }

    /// Adds an environment variable for the Sentinel process; replaces one of the same name.
    pub fn env_var(mut self, name: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Removes an environment variable from [`env`](Self::env).
    pub fn without_env_var(mut self, name: &str) -> Self {
        self.env.retain(|(k, _)| k != name);
        self
    }

    /// The master keyring text (`k2:<base64>,k1:<base64>`) passed as `SENTINEL_MASTER_KEY`,
    /// instead of the fresh one every config gets.
    pub fn master_key(self, keyring_text: &str) -> Self {
        self.env_var(MASTER_KEY_ENV, keyring_text)
    }

    /// No `SENTINEL_MASTER_KEY` at all (Sentinel must refuse to start without a
    /// `master_key_file`).
    pub fn without_master_key(self) -> Self {
        self.without_env_var(MASTER_KEY_ENV)
    }

    /// `[keys] master_key_file`: the keyring is read from this file, so `SENTINEL_MASTER_KEY`
    /// is no longer passed (Sentinel refuses both at once). The test writes the file.
    pub fn master_key_file(self, path: &Path) -> Self {
        let value = toml_str(&path.display().to_string());
        self.without_master_key()
            .option("keys", "master_key_file", &value)
    }

    /// The keyring text passed as `SENTINEL_MASTER_KEY`, if any.
    pub fn master_key_text(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == MASTER_KEY_ENV)
            .map(|(_, v)| v.as_str())
    }

    /// `[keys] salt` (standard base64 of 32 random bytes), instead of the fresh one every config
    /// gets.
    pub fn salt(self, salt_base64: &str) -> Self {
        let value = toml_str(salt_base64);
        self.option("keys", "salt", &value)
    }

    /// No `[keys] salt` (Sentinel must refuse to start).
    pub fn without_salt(self) -> Self {
        self.remove_option("keys", "salt")
    }

    /// `[keys] salt`, if set.
    pub fn salt_base64(&self) -> Option<String> {
        let raw = self.options.get(&("keys".to_owned(), "salt".to_owned()))?;
        toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()?
            .get("v")?
            .as_str()
            .map(str::to_owned)
    }

    // --- [tenancy] ---

    /// Tenant enforcement on (`[tenancy] enabled = true`), with every other `[tenancy]` key
    /// spelled out at the product default so a test sees what it runs with:
    /// `enforce = true`, `setting = "app.tenant_id"`, the default `id_pattern`, all four
    /// sources, `scope = "transaction"`, `comment_key = "tenant"`, no global tables, no bypass
    /// users, `allow_do = false`, `allow_functions = false`, loopback `startup_networks`, `verdict_cache_size = 10000`,
    /// `audit_on_start = "off"`. The setters below change one key each.
    pub fn tenancy(self) -> Self {
        self.option("tenancy", "enabled", "true")
            .tenancy_enforce(true)
            .tenancy_setting("app.tenant_id")
            .tenancy_id_pattern(DEFAULT_TENANT_ID_PATTERN)
            .tenancy_sources(&["token", "startup", "comment", "set"])
            .tenancy_scope(TenancyScope::Transaction)
            .tenancy_comment_key("tenant")
            .tenancy_signed_comments(false)
            .tenancy_global_tables(&[])
            .tenancy_bypass_users(&[])
            .tenancy_allow_do(false)
            .tenancy_allow_functions(false)
            .tenancy_startup_networks(&["127.0.0.1/32", "::1/128"])
            .tenancy_verdict_cache_size(10_000)
            .tenancy_audit_on_start("off")
    }

    /// `[tenancy] enabled` (the builder's default is `false`; [`tenancy`](Self::tenancy) sets
    /// it and the rest).
    pub fn tenancy_enabled(self, on: bool) -> Self {
        self.option("tenancy", "enabled", bool_str(on))
    }

    /// `[tenancy] enforce` (`false`: report-only).
    pub fn tenancy_enforce(self, on: bool) -> Self {
        self.option("tenancy", "enforce", bool_str(on))
    }

    /// `[tenancy] setting`: the setting the RLS policies read.
    pub fn tenancy_setting(self, name: &str) -> Self {
        let value = toml_str(name);
        self.option("tenancy", "setting", &value)
    }

    /// `[tenancy] id_pattern`.
    pub fn tenancy_id_pattern(self, pattern: &str) -> Self {
        let value = toml_str(pattern);
        self.option("tenancy", "id_pattern", &value)
    }

    /// `[tenancy] sources`: any of `token`, `startup`, `comment`, `set`.
    pub fn tenancy_sources(self, sources: &[&str]) -> Self {
        let value = toml_list(sources);
        self.option("tenancy", "sources", &value)
    }

    /// `[tenancy] scope`.
    pub fn tenancy_scope(self, scope: TenancyScope) -> Self {
        let value = toml_str(scope.as_str());
        self.option("tenancy", "scope", &value)
    }

    /// `[tenancy] comment_key`.
    pub fn tenancy_comment_key(self, key: &str) -> Self {
        let value = toml_str(key);
        self.option("tenancy", "comment_key", &value)
    }

    /// `[tenancy] signed_comments`.
    pub fn tenancy_signed_comments(self, on: bool) -> Self {
        self.option("tenancy", "signed_comments", bool_str(on))
    }

    /// `[tenancy] global_tables`: `name` or `schema.name`.
    pub fn tenancy_global_tables(self, tables: &[&str]) -> Self {
        let value = toml_list(tables);
        self.option("tenancy", "global_tables", &value)
    }

    /// `[tenancy] bypass_users`: client user names, each also a `[[postgres.users]]` entry.
    pub fn tenancy_bypass_users(self, users: &[&str]) -> Self {
        let value = toml_list(users);
        self.option("tenancy", "bypass_users", &value)
    }

    /// `[tenancy] allow_do`.
    pub fn tenancy_allow_do(self, on: bool) -> Self {
        self.option("tenancy", "allow_do", bool_str(on))
    }

    /// `[tenancy] allow_functions`.
    pub fn tenancy_allow_functions(self, on: bool) -> Self {
        self.option("tenancy", "allow_functions", bool_str(on))
    }

    /// `[tenancy] startup_networks` (CIDRs).
    pub fn tenancy_startup_networks(self, nets: &[&str]) -> Self {
        let value = toml_list(nets);
        self.option("tenancy", "startup_networks", &value)
    }

    /// `[tenancy] verdict_cache_size`.
    pub fn tenancy_verdict_cache_size(self, n: u64) -> Self {
        self.option("tenancy", "verdict_cache_size", &n.to_string())
    }

    /// `[tenancy] audit_on_start`: `off`, `warn` or `refuse`.
    pub fn tenancy_audit_on_start(self, mode: &str) -> Self {
        let value = toml_str(mode);
        self.option("tenancy", "audit_on_start", &value)
    }

    /// `[tenancy.tenants.<tenant>] statement_timeout`.
    pub fn tenant_statement_timeout(self, tenant: &str, d: Duration) -> Self {
        let table = format!("tenancy.tenants.{}", toml_key(tenant));
        self.duration_option(&table, "statement_timeout", d)
    }

    /// Adds a `[[postgres.users]]` entry with `auth = "tenant-token"` whose server side is the
    /// [`TestDb`]'s role and password: clients log in as `name` with a tenant token as their
    /// password ([`tenant_token`](Self::tenant_token)).
    pub fn tenant_token_user_for(self, name: &str, db: &TestDb) -> Self {
        self.user(name, Auth::TenantToken, &db.role)
            .server_password(&db.password)
    }

    /// A tenant token (`stk1.<tenant>.<exp|0>.<kid>.<mac>`) for `tenant`, made in-process with
    /// this config's master keyring and salt, as `sentinel token issue` would print it;
    /// `expires_at` is a unix time (`None`: never expires).
    pub fn tenant_token(&self, tenant: &str, expires_at: Option<u64>) -> anyhow::Result<String> {
        let ring = self
            .master_key_text()
            .ok_or_else(|| anyhow::anyhow!("this config has no SENTINEL_MASTER_KEY keyring"))?;
        let keyring = Keyring::parse(ring)?;
        let salt = EnvSalt::from_base64(
            &self
                .salt_base64()
                .ok_or_else(|| anyhow::anyhow!("this config has no [keys] salt"))?,
        )?;
        Ok(issue_tenant_token(&keyring, &salt, tenant, expires_at)?)
    }

    /// The Postgres listen port.
    pub fn port(&self) -> u16 {
        self.listen_port
    }

    /// Environment variables the Sentinel process needs (the master keyring, server
    /// passwords, ...).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// [`env`](Self::env) as string pairs, the form [`SentinelProcess::start`] and
    /// [`run_sentinel`](crate::sentinel::run_sentinel) take.
    ///
    /// [`SentinelProcess::start`]: crate::sentinel::SentinelProcess::start
    pub fn env_pairs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Writes the TOML to `path` (for tests that run `sentinel` commands on a config file).
    pub fn write_to(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.render())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut out = String::from("# Rendered by sentinel-tests (SentinelConfig).\n");
        let mut listen = Some(toml_str(&format!("127.0.0.1:{}", self.listen_port)));
        let upstream = [
            ("host".to_owned(), toml_str(&self.upstream_host)),
            ("port".to_owned(), self.upstream_port.to_string()),
        ];
        const KNOWN: [&str; 4] = ["process", "keys", "postgres", "postgres.upstream"];
        for table in KNOWN {
            if table == "keys" && !self.options.keys().any(|(t, _)| t == "keys") {
                continue;
            }
            let _ = writeln!(out, "\n[{table}]");
            if table == "postgres"
                && let Some(listen) = listen.take()
            {
                let _ = writeln!(out, "listen = {listen}");
            }
            if table == "postgres.upstream" {
                for (k, v) in &upstream {
                    let _ = writeln!(out, "{k} = {v}");
                }
            }
            for ((t, k), v) in &self.options {
                if t == table {
                    let _ = writeln!(out, "{k} = {v}");
                }
            }
        }
        // Tables set only through `option` that the builder does not know.
        let mut other_tables: Vec<&str> = self
            .options
            .keys()
            .map(|(t, _)| t.as_str())
            .filter(|t| !KNOWN.contains(t))
            .collect();
        other_tables.dedup();
        for table in other_tables {
            let _ = writeln!(out, "\n[{table}]");
            for ((t, k), v) in &self.options {
                if t == table {
                    let _ = writeln!(out, "{k} = {v}");
                }
            }
        }
        for user in &self.users {
            out.push_str("\n[[postgres.users]]\n");
            let _ = writeln!(out, "name = {}", toml_str(&user.name));
            match &user.scram_verifier {
                Some(v) => {
                    out.push_str("auth = \"scram-sha-256\"\n");
                    let _ = writeln!(out, "scram_verifier = {}", toml_str(v));
                }
                None if user.tenant_token => out.push_str("auth = \"tenant-token\"\n"),
                None => out.push_str("auth = \"trust\"\n"),
            }
            let _ = writeln!(out, "server_user = {}", toml_str(&user.server_user));
            if let Some(var) = &user.server_password_env {
                let _ = writeln!(out, "server_password_env = {}", toml_str(var));
            }
            if let Some(path) = &user.server_password_file {
                let path = path.display().to_string();
                let _ = writeln!(out, "server_password_file = {}", toml_str(&path));
            }
            if let Some(sealed) = &user.server_password_sealed {
                let _ = writeln!(out, "server_password_sealed = {}", toml_str(sealed));
            }
        }
        out.push_str(&self.extra);
        out
    }
}

/// A SCRAM-SHA-256 verifier (`SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>`) for a
/// password, with a random salt: the same format Postgres stores and `sentinel scram-verifier`
/// prints.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}
