//! `sentinel audit`: what in the upstream database would defeat row-level security anyway.
//!
//! Sentinel makes sure every statement runs with the right tenant in the tenant setting; the RLS
//! policies turn that into row filtering. Nothing Sentinel does helps if the role it logs in as
//! skips the policies, or if a table has none. So for each configured user (except
//! `tenancy.bypass_users`) and each of its databases, the audit logs in exactly as the proxy
//! does (same server user, same password source, same upstream and TLS settings) and asks the
//! catalogs, as that role:
//!
//! | code | what |
//! |---|---|
//! | `superuser` | the role is a superuser: it skips every policy (nothing else is checked) |
//! | `bypassrls` | the role has BYPASSRLS: it skips every policy |
//! | `owner_without_force` | the role owns (or has the rights of the owner of) a table with RLS enabled but not forced: owners skip the policies |
//! | `no_rls` | a table (or materialized view) the role can read or write has no RLS |
//! | `policy_ignores_setting` | a permissive policy that applies to the role never reads the tenant setting, or is `USING (true)` |
//! | `view_not_security_invoker` | a view the role can read runs with its owner's rights, so the policies see the owner |
//! | `security_definer_function` | a `SECURITY DEFINER` function the role can execute runs with its owner's rights |
//!
//! Objects in `pg_catalog`, `information_schema` and other `pg_*` schemas, objects that belong to
//! an extension, and the tables of `tenancy.global_tables` are not checked. A policy that ignores
//! the setting is not reported when a restrictive policy for the same command reads it (the
//! restrictive one filters every row anyway).
//!
//! `sentinel run` calls [`audit`] at start when `tenancy.audit_on_start` is `warn` or `refuse`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use serde::Serialize;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use crate::config::{AuditOnStart, Config, PasswordSource, UpstreamTls, UserConfig};
use crate::secrets::{PasswordError, Secrets};

/// How long the catalog queries of one database may take in all.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finding is about; its `snake_case` name is the stable code in every output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Superuser,
    Bypassrls,
    OwnerWithoutForce,
    NoRls,
    PolicyIgnoresSetting,
    ViewNotSecurityInvoker,
    SecurityDefinerFunction,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Superuser => "superuser",
            Code::Bypassrls => "bypassrls",
            Code::OwnerWithoutForce => "owner_without_force",
            Code::NoRls => "no_rls",
            Code::PolicyIgnoresSetting => "policy_ignores_setting",
            Code::ViewNotSecurityInvoker => "view_not_security_invoker",
            Code::SecurityDefinerFunction => "security_definer_function",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that would let a statement see or write another tenant's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: Code,
    /// The configured (client) user whose upstream login was audited.
    pub user: String,
    /// The role Sentinel logs in as for that user.
    pub server_user: String,
    pub database: String,
    /// The object, as SQL names it: `role app`, `table public.notes`,
    /// `policy p on public.notes`, `view public.v`, `function public.f(integer)`.
    pub object: String,
    /// What is wrong, in one line.
    pub problem: String,
    /// How to fix it, in one line (SQL where it can be).
    pub fix: String,
}

/// One upstream login the audit checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Audited {
    pub user: String,
    pub server_user: String,
    pub database: String,
}

/// What to audit: every configured user and database, or a subset.
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    /// Only this configured (client) user; audited even if it is in `tenancy.bypass_users`.
    pub user: Option<String>,
    /// Only this database (instead of each user's `databases`).
    pub database: Option<String>,
}

/// What the audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub audited: Vec<Audited>,
    pub findings: Vec<Finding>,
}

/// Why the audit could not finish. Messages never hold a password.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("--user {0:?} is not one of postgres.users")]
    UnknownUser(String),
    #[error("nothing to audit: every user in postgres.users is in tenancy.bypass_users")]
    NothingToAudit,
    #[error("user {user}: upstream password: {error}")]
    Password { user: String, error: PasswordError },
    #[error("postgres.upstream.ca_file: {0}")]
    Tls(String),
    #[error(
        "user {user}: cannot log in to {upstream} as {server_user}, database {database}: {error}"
    )]
    Connect {
        user: String,
        server_user: String,
        database: String,
        upstream: String,
        error: String,
    },
    #[error("user {user}, database {database}: reading the catalogs: {error}")]
    Query {
        user: String,
        database: String,
        error: String,
    },
}

/// Runs the audit (see the module docs) and returns the findings, in the order of the
/// configured users, their databases, then by code and object.
pub async fn audit(
    config: &Config,
    secrets: &Secrets,
    options: &AuditOptions,
) -> Result<Vec<Finding>, AuditError> {
    audit_report(config, secrets, options)
        .await
        .map(|r| r.findings)
}

/// [`audit`], with the list of logins it checked.
pub async fn audit_report(
    config: &Config,
    secrets: &Secrets,
    options: &AuditOptions,
) -> Result<Report, AuditError> {
    let tls = match config.postgres.upstream.tls {
        UpstreamTls::Disable => None,
        UpstreamTls::VerifyFull => {
            let ca =
                config.postgres.upstream.ca_file.as_deref().ok_or_else(|| {
                    AuditError::Tls("required with tls = \"verify-full\"".to_owned())
                })?;
            Some(RustlsMakeConnect(
                crate::pg::tls::client_config(ca)
                    .map_err(|e| AuditError::Tls(format!("{}: {e:#}", ca.display())))?,
            ))
        }
    };
    let mut report = Report::default();
    for user in users_to_audit(config, options)? {
        let databases = match &options.database {
            Some(db) => vec![db.clone()],
            None => user.prewarm_databases(),
        };
        for database in databases {
            let target = Audited {
                user: user.name.clone(),
                server_user: user.server_user().to_owned(),
                database,
            };
            // Two client users logging in as the same role to the same database: one audit.
            if report
                .audited
                .iter()
                .any(|a| a.server_user == target.server_user && a.database == target.database)
            {
                continue;
            }
            let client = connect(config, secrets, user, &target, tls.as_ref()).await?;
            let mut found = tokio::time::timeout(QUERY_TIMEOUT, check(&client, config, &target))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {QUERY_TIMEOUT:?}")))
                .map_err(|error| AuditError::Query {
                    user: target.user.clone(),
                    database: target.database.clone(),
                    error,
                })?;
            found.sort_by(|a, b| (a.code, &a.object).cmp(&(b.code, &b.object)));
            report.findings.extend(found);
            report.audited.push(target);
        }
    }
    Ok(report)
}

/// `tenancy.audit_on_start`, for `sentinel run` before it serves: runs the audit on a small
/// runtime of its own. `warn`: logs each finding (and an audit that cannot run) and goes on.
/// `refuse`: logs each finding and fails if there is one, or if the audit cannot run.
pub fn on_start(config: &Config, secrets: &Secrets) -> anyhow::Result<()> {
    let mode = config.tenancy.audit_on_start;
    if mode == AuditOnStart::Off {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(audit(config, secrets, &AuditOptions::default()));
    drop(runtime);
    let findings = match result {
        Ok(findings) => findings,
        Err(AuditError::NothingToAudit) => Vec::new(),
        Err(e) if mode == AuditOnStart::Warn => {
            tracing::warn!(error = %e, "the audit at start could not run; starting anyway");
            return Ok(());
        }
        Err(e) => anyhow::bail!(
            "the audit at start (tenancy.audit_on_start = \"refuse\") could not run: {e}"
        ),
    };
    if findings.is_empty() {
        tracing::info!("audit at start: no findings");
        return Ok(());
    }
    for f in &findings {
        let code = f.code.as_str();
        if mode == AuditOnStart::Refuse {
            tracing::error!(code, object = %f.object, user = %f.user, database = %f.database,
                problem = %f.problem, fix = %f.fix, "audit finding");
        } else {
            tracing::warn!(code, object = %f.object, user = %f.user, database = %f.database,
                problem = %f.problem, fix = %f.fix, "audit finding");
        }
    }
    if mode == AuditOnStart::Refuse {
        anyhow::bail!(
            "the audit at start found {} problem(s) that defeat row-level security (logged \
             above; `sentinel audit` lists them): refusing to start (tenancy.audit_on_start = \
             \"refuse\")",
            findings.len()
        );
    }
    Ok(())
}

fn users_to_audit<'c>(
    config: &'c Config,
    options: &AuditOptions,
) -> Result<Vec<&'c UserConfig>, AuditError> {
    let users = &config.postgres.users;
    if let Some(name) = &options.user {
        return users
            .iter()
            .find(|u| &u.name == name)
            .map(|u| vec![u])
            .ok_or_else(|| AuditError::UnknownUser(name.clone()));
    }
    let bypass = &config.tenancy.bypass_users;
    let list: Vec<&UserConfig> = users.iter().filter(|u| !bypass.contains(&u.name)).collect();
    if list.is_empty() {
        return Err(AuditError::NothingToAudit);
    }
    Ok(list)
}

/// Logs in like the proxy: the user's server user, its password read from the same source with
/// the same code, the upstream host and port, TLS when configured.
async fn connect(
    config: &Config,
    secrets: &Secrets,
    user: &UserConfig,
    target: &Audited,
    tls: Option<&RustlsMakeConnect>,
) -> Result<Client, AuditError> {
    let upstream = &config.postgres.upstream;
    let failed = |error: String| AuditError::Connect {
        user: target.user.clone(),
        server_user: target.server_user.clone(),
        database: target.database.clone(),
        upstream: format!("{}:{}", upstream.host, upstream.port),
        error,
    };
    let password: Option<zeroize::Zeroizing<String>> = match user.server_password() {
        PasswordSource::None => None,
        source => secrets
            .read_password(&source)
            .map_err(|error| AuditError::Password {
                user: user.name.clone(),
                error,
            })?,
    };
    let mut pg = tokio_postgres::Config::new();
    pg.host(&upstream.host)
        .port(upstream.port)
        .user(&target.server_user)
        .dbname(&target.database)
        .application_name("sentinel audit")
        .connect_timeout(config.postgres.server_connect_timeout);
    if let Some(password) = &password {
        pg.password(password.as_bytes());
    }
    let timeout = config.postgres.server_connect_timeout;
    let no_answer = || format!("no answer within server_connect_timeout ({timeout:?})");
    let client = match tls {
        None => {
            pg.ssl_mode(SslMode::Disable);
            let (client, connection) = tokio::time::timeout(timeout, pg.connect(NoTls))
                .await
                .map_err(|_| failed(no_answer()))?
                .map_err(|e| failed(pg_error(&e)))?;
            spawn_connection(connection);
            client
        }
        Some(tls) => {
            pg.ssl_mode(SslMode::Require);
            let (client, connection) = tokio::time::timeout(timeout, pg.connect(tls.clone()))
                .await
                .map_err(|_| failed(no_answer()))?
                .map_err(|e| failed(pg_error(&e)))?;
            spawn_connection(connection);
            client
        }
    };
    // tokio-postgres keeps its own copy of the password in `pg` (not wiped on drop, unlike
    // ours); drop it as soon as the login is done.
    drop(pg);
    Ok(client)
}

/// A tokio-postgres error with its causes (its own message is only "db error" for an
/// ErrorResponse): `db error: FATAL: password authentication failed for user "app"`.
fn pg_error(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "audit connection closed with an error");
        }
    });
}

mod checks;
mod report;

use crate::pg::client_tls::RustlsMakeConnect;
use checks::check;

pub use report::{render_json, render_text};
