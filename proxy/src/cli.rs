//! Command line: `sentinel run`, `sentinel check-config`, `sentinel audit`, `sentinel
//! scram-verifier`, and the key commands `sentinel keys new|rotate|drop|check`, `sentinel seal`,
//! `sentinel token issue`, `sentinel vkey issue`, `sentinel admin-token issue`.
//!
//! Every command that needs the master keyring reads it like `run` does: from
//! `SENTINEL_MASTER_KEY`, or from the file named by `[keys] master_key_file` in the config.
//! Secrets are never taken as arguments (they would show in `ps` and shell history): `seal` reads
//! its secret on stdin.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::audit::{AuditOptions, audit_report, render_json, render_text};
use crate::config::Config;
use crate::pg::auth::scram::ScramVerifier;
use crate::secrets::commands::{self, SealFor};
use crate::secrets::{Secrets, reachable_sealed_values};
use crate::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "sentinel",
    version,
    about = "Tenant-safe Postgres proxy and budgeted LLM egress sidecar"
)]
struct Cli {
    /// Log output format (JSON: one object per line, with the span fields: client id, user,
    /// database and tenant of a Postgres client; request id, tenant and model of an LLM call).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SENTINEL_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--config`, shared by every command that reads one.
#[derive(clap::Args)]
struct ConfigArg {
    #[arg(long, short, default_value = "sentinel.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar. Needs the master keyring (SENTINEL_MASTER_KEY or [keys] master_key_file)
    /// and [keys] salt, and opens every sealed value of the config before it serves.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Zero-downtime upgrade: take the listening sockets from the running Sentinel over
        /// [process] upgrade_socket, then send that one SIGQUIT; it hands them over and drains.
        #[arg(long)]
        upgrade: bool,
    },
    /// Load and validate a configuration file, then exit (the keyring is not needed).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Read a password on stdin and print its SCRAM-SHA-256 verifier for `scram_verifier`.
    ScramVerifier,
    /// The budget ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Make, rotate, drop and check master keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read a secret on stdin (one line) and print it sealed for the config file.
    ///
    /// Upstream passwords are sealed for the context `postgres.users.<name>.server_password`
    /// (`--for-user <name>` says just that); the sealed value goes in that user's
    /// `server_password_sealed`, or in its `server_password_env` variable or
    /// `server_password_file`.
    Seal {
        #[command(flatten)]
        config: ConfigArg,
        /// The field the secret is for, e.g. `postgres.users.app.server_password`.
        #[arg(
            long,
            required_unless_present = "for_user",
            conflicts_with = "for_user"
        )]
        context: Option<String>,
        /// Seal the upstream password of this configured user.
        #[arg(long)]
        for_user: Option<String>,
    },
    /// Tenant tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Virtual LLM keys.
    #[command(subcommand)]
    Vkey(VkeyCommand),
    /// Bearer tokens for the admin port.
    #[command(subcommand)]
    AdminToken(AdminTokenCommand),
    /// Log in upstream as each configured user (except tenancy.bypass_users) and report what
    /// would defeat row-level security: a superuser or BYPASSRLS role, tables without RLS or
    /// owned without FORCE, policies that ignore the tenant setting, views and functions that
    /// run as their owner. Exit status 0: no findings; 1: findings; 2: the audit could not run.
    /// Reads the master keyring like `run` (for sealed upstream passwords).
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this configured user (audited even if it is in tenancy.bypass_users).
        #[arg(long)]
        user: Option<String>,
        /// Only this database (instead of each user's `databases`).
        #[arg(long)]
        database: Option<String>,
        /// Output: lines for people, or one JSON document.
        #[arg(long, value_enum, default_value = "text")]
        format: AuditFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AuditFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Create the ledger's schema or bring it up to date (`sentinel run` does this itself at
    /// start; this is for those who migrate before deploying). Needs the keyring when the
    /// ledger password is sealed.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new keyring (for SENTINEL_MASTER_KEY or a key file) and a new salt (for [keys]).
    New {
        /// Id of the new key.
        #[arg(long, default_value = "k1")]
        id: String,
    },
    /// Add a new current key, re-seal every sealed value of the config with it, keep the old
    /// keys. Prints the new keyring (or rewrites [keys] master_key_file).
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        /// Id of the new key (default: k<n+1> after the highest k<n>).
        #[arg(long)]
        id: Option<String>,
    },
    /// Remove an old key once nothing in the config is sealed with it. Prints the new keyring
    /// (or rewrites [keys] master_key_file).
    Drop {
        #[command(flatten)]
        config: ConfigArg,
        /// Id of the key to remove.
        #[arg(long)]
        id: String,
    },
    /// Prove the keyring opens every sealed value of the config (exit 1 naming the field if not).
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a tenant token (`stk1.…`).
    Issue {
        #[command(flatten)]
        config: ConfigArg,
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// How long the token is valid (e.g. 24h, 30d); without it, it never expires.
        #[arg(long)]
        ttl: Option<humantime_serde::re::humantime::Duration>,
    },
}

#[derive(Subcommand)]
enum AdminTokenCommand {
    /// Print an admin token (`sat1.…`) for `Authorization: Bearer` on the admin port.
    Issue {
        #[command(flatten)]
        config: ConfigArg,
        /// A name for the token (logged with each admin request; listed in [admin]
        /// revoked_names to revoke it).
        #[arg(long)]
        name: String,
        /// How long the token is valid (e.g. 24h, 30d); without it, it never expires.
        #[arg(long)]
        ttl: Option<humantime_serde::re::humantime::Duration>,
    },
}

#[derive(Subcommand)]
enum VkeyCommand {
    /// Print a virtual LLM key (`sk-stn-…`) for a tenant, with a fresh random key id.
    Issue {
        #[command(flatten)]
        config: ConfigArg,
        /// The tenant id.
        #[arg(long)]
        tenant: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Audit {
            config,
            user,
            database,
            format,
        } => return audit(&config.config, AuditOptions { user, database }, format),
        Command::Run { config, upgrade } => run(&config.config, upgrade),
        Command::CheckConfig { config } => Config::load(&config.config)
            .map(|_| {
                eprintln!("{}: ok", config.config.display());
            })
            .map_err(anyhow::Error::from),
        Command::ScramVerifier => scram_verifier(),
        Command::Ledger(LedgerCommand::Migrate { config }) => ledger_migrate(&config.config),
        Command::Keys(KeysCommand::New { id }) => commands::keys_new(&id),
        Command::Keys(KeysCommand::Rotate { config, id }) => {
            commands::keys_rotate(&config.config, id.as_deref())
        }
        Command::Keys(KeysCommand::Drop { config, id }) => commands::keys_drop(&config.config, &id),
        Command::Keys(KeysCommand::Check { config }) => commands::keys_check(&config.config),
        Command::Seal {
            config,
            context,
            for_user,
        } => {
            let target = match (&context, &for_user) {
                (Some(context), _) => SealFor::Context(context),
                (None, Some(user)) => SealFor::User(user),
                (None, None) => SealFor::Context(""),
            };
            commands::seal(&config.config, target)
        }
        Command::Token(TokenCommand::Issue {
            config,
            tenant,
            ttl,
        }) => commands::token_issue(&config.config, &tenant, ttl.map(Into::into)),
        Command::AdminToken(AdminTokenCommand::Issue { config, name, ttl }) => {
            commands::admin_token_issue(&config.config, &name, ttl.map(Into::into))
        }
        Command::Vkey(VkeyCommand::Issue { config, tenant }) => {
            commands::vkey_issue(&config.config, &tenant)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sentinel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sentinel run`: refuses to start without the keyring and the salt, and unless the keyring
/// opens every sealed value the config reaches.
fn run(path: &Path, upgrade: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let secrets = Secrets::load(&config)?;
    let proof = secrets.prove(&reachable_sealed_values(&config))?;
    tracing::info!(
        keys = %secrets.key_ids(),
        current = %secrets.keyring().current_id(),
        sealed_values = proof.opened,
        "keyring loaded; it opens every sealed value of the config"
    );
    if !proof.older.is_empty() {
        tracing::warn!(
            fields = %proof.older.join(", "),
            "sealed with an older key; `sentinel keys rotate` re-seals them"
        );
    }
    crate::audit::on_start(&config, &secrets)?;
    let options = crate::app::RunOptions {
        config_path: path.to_owned(),
        upgrade,
    };
    crate::app::run(config, Arc::new(secrets), options).map(|_| ())
}

/// `sentinel audit`: exit status 0 without findings, 1 with findings, 2 when it cannot run.
fn audit(path: &Path, options: AuditOptions, format: AuditFormat) -> ExitCode {
    let report = (|| -> anyhow::Result<_> {
        let config = Config::load(path)?;
        let secrets = Secrets::load(&config)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(audit_report(&config, &secrets, &options))?)
    })();
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("sentinel audit: {e:#}");
            return ExitCode::from(2);
        }
    };
    let text = match format {
        AuditFormat::Text => render_text(&report),
        AuditFormat::Json => render_json(&report) + "\n",
    };
    if let Err(e) = std::io::stdout().lock().write_all(text.as_bytes()) {
        eprintln!("sentinel audit: writing the report: {e}");
        return ExitCode::from(2);
    }
    if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `sentinel ledger migrate`.
fn ledger_migrate(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let ledger = config
        .ledger
        .as_ref()
        .filter(|l| l.backend == crate::config::LedgerBackend::Postgres)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no [ledger] with backend = \"postgres\"",
                path.display()
            )
        })?;
    let secrets = Secrets::load(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let applied = runtime.block_on(crate::ledger::postgres::migrate(&config, ledger, &secrets))?;
    let latest = crate::ledger::postgres::schema::latest();
    if applied.is_empty() {
        eprintln!(
            "ledger schema {:?} is up to date (version {latest})",
            ledger.schema
        );
    } else {
        eprintln!(
            "ledger schema {:?}: applied {applied:?}; now at version {latest}",
            ledger.schema
        );
    }
    Ok(())
}

fn scram_verifier() -> anyhow::Result<()> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!("no password on stdin");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", ScramVerifier::make(password.as_bytes()))?;
    Ok(())
}
