//! The configuration files shipped in `deploy/` load: `sentinel check-config` accepts
//! `sentinel.example.toml` (every option) and `sentinel.minimal.toml` (the smallest start), with
//! a master keyring in the environment and without one (check-config does not need it). A copy
//! with its salt removed is refused, so the check is not vacuous.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use sentinel_tests::config::{MASTER_KEY_ENV, new_keyring_text};
use sentinel_tests::run_sentinel;

const FILES: &[&str] = &["sentinel.example.toml", "sentinel.minimal.toml"];

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// `sentinel check-config --config <path>` with `env`.
async fn check_config(path: &Path, env: &[(&str, &str)]) -> Result<sentinel_tests::CliOutput> {
    let path = path.display().to_string();
    run_sentinel(&["check-config", "--config", path.as_str()], env, None).await
}

#[tokio::test]
async fn check_config_accepts_the_deploy_examples() -> Result<()> {
    let ring = new_keyring_text("k1");
    for name in FILES {
        let path = deploy_file(name);
        ensure!(path.is_file(), "{} is missing", path.display());
        for env in [&[(MASTER_KEY_ENV, ring.as_str())][..], &[]] {
            let out = check_config(&path, env).await?;
            ensure!(
                out.success(),
                "check-config {name} (keyring in the environment: {}) exited {:?}:\n{}",
                !env.is_empty(),
                out.code(),
                out.all()
            );
            ensure!(
                out.stderr.contains(": ok"),
                "check-config {name} did not say ok:\n{}",
                out.all()
            );
        }
    }
    Ok(())
}

#[test]
fn the_minimal_example_has_what_a_newcomer_needs() -> Result<()> {
    let path = deploy_file("sentinel.minimal.toml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let config: toml::Value = toml::from_str(&text)?;
    let get = |keys: &[&str]| {
        keys.iter()
            .try_fold(&config, |v, k| v.get(k))
            .with_context(|| format!("{} has no {}", path.display(), keys.join(".")))
    };
    get(&["keys", "salt"])?;
    get(&["postgres", "listen"])?;
    get(&["postgres", "upstream", "host"])?;
    let users = get(&["postgres", "users"])?
        .as_array()
        .context("postgres.users is not an array")?;
    ensure!(users.len() == 1, "{} users, expected one", users.len());
    let globals = get(&["tenancy", "global_tables"])?
        .as_array()
        .context("tenancy.global_tables is not an array")?;
    ensure!(!globals.is_empty(), "tenancy.global_tables has no example");
    ensure!(
        text.contains("sentinel keys new"),
        "the salt has no comment saying how to make one"
    );
    Ok(())
}

#[tokio::test]
async fn check_config_refuses_a_copy_without_its_salt() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("sentinel-example-configs-")
        .tempdir()?;
    let text = std::fs::read_to_string(deploy_file("sentinel.minimal.toml"))?;
    let broken: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("salt ="))
        .map(|l| format!("{l}\n"))
        .collect();
    ensure!(broken != text, "the minimal example has no salt line");
    let path = dir.path().join("no-salt.toml");
    std::fs::write(&path, broken)?;
    let out = check_config(&path, &[]).await?;
    ensure!(
        !out.success() && out.all().contains("keys.salt"),
        "check-config of a config without a salt: exit {:?}\n{}",
        out.code(),
        out.all()
    );
    Ok(())
}

/// The `[table]` headers of a TOML text, written or commented out (`# [table]`), with the lines
/// under each.
fn example_sections(text: &str) -> Vec<(String, Vec<&str>)> {
    let mut sections: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        let bare = line.trim_start().trim_start_matches('#').trim();
        let header = bare.starts_with('[')
            && bare.ends_with(']')
            && !bare.contains(' ')
            && !bare.contains('=');
        if header {
            sections.push((bare.to_owned(), Vec::new()));
        } else if let Some((_, lines)) = sections.last_mut() {
            lines.push(line);
        }
    }
    sections
}

/// Whether `header` (from the example) is the documented `table`, where `<name>` stands for
/// any name.
fn header_matches(table: &str, header: &str) -> bool {
    match table.split_once("<name>") {
        Some((before, after)) => {
            header.len() > before.len() + after.len()
                && header.starts_with(before)
                && header.ends_with(after)
        }
        None => table == header,
    }
}

/// `deploy/sentinel.example.toml` shows every option of the configuration reference (which is
/// generated from the code), set or commented out, in its table.
#[test]
fn the_example_shows_every_option_of_the_reference() -> Result<()> {
    let reference_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let reference = std::fs::read_to_string(&reference_path)?;
    let example = std::fs::read_to_string(deploy_file("sentinel.example.toml"))?;
    let sections = example_sections(&example);
    let mut table = None;
    let mut checked = 0;
    let mut missing = Vec::new();
    for line in reference.lines() {
        if line.starts_with("## `[") || line.starts_with("### `[") {
            table = line.split('`').nth(1).map(str::to_owned);
            continue;
        }
        let (Some(table), Some(rest)) = (&table, line.strip_prefix("- **`")) else {
            continue;
        };
        let Some(key) = rest.split('`').next() else {
            continue;
        };
        checked += 1;
        let shown = sections
            .iter()
            .filter(|(header, _)| header_matches(table, header))
            .flat_map(|(_, lines)| lines.iter())
            .any(|l| {
                let bare = l.trim_start().trim_start_matches('#').trim_start();
                bare.strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            });
        if !shown {
            missing.push(format!("{table} {key}"));
        }
    }
    ensure!(
        checked > 50,
        "only {checked} options read from the reference"
    );
    ensure!(
        missing.is_empty(),
        "deploy/sentinel.example.toml does not show: {}",
        missing.join(", ")
    );
    Ok(())
}
