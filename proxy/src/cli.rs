//! Command line: `sentinel run`, `sentinel check-config`, `sentinel scram-verifier`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::pg::auth::scram::ScramVerifier;
use crate::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "sentinel",
    version,
    about = "Tenant-safe Postgres proxy and budgeted LLM egress sidecar"
)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run {
        #[arg(long, short, default_value = "sentinel.toml")]
        config: PathBuf,
    },
    /// Load and validate a configuration file, then exit.
    CheckConfig {
        #[arg(long, short, default_value = "sentinel.toml")]
        config: PathBuf,
    },
    /// Read a password on stdin and print its SCRAM-SHA-256 verifier for `scram_verifier`.
    ScramVerifier,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Run { config } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(crate::app::run)
            .map(|_| ()),
        Command::CheckConfig { config } => Config::load(&config)
            .map(|_| {
                eprintln!("{}: ok", config.display());
            })
            .map_err(anyhow::Error::from),
        Command::ScramVerifier => scram_verifier(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sentinel: {e:#}");
            ExitCode::FAILURE
        }
    }
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
