//! The key commands of the CLI: `sentinel keys new|rotate|drop|check`, `sentinel seal`,
//! `sentinel token issue`, `sentinel vkey issue`.
//!
//! What is meant to be copied (a keyring, a salt line, a sealed value, a token) goes to stdout,
//! alone, so it can be piped or captured; explanations go to stderr. Each command reads the
//! keyring the way `sentinel run` does (`SENTINEL_MASTER_KEY` or `[keys] master_key_file`).

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rand::rngs::OsRng;
use sentinel_policy::keys::{
    EnvSalt, KeyId, Keyring, MAX_SEALED_PLAINTEXT, MasterKey, issue_admin_token,
    issue_tenant_token, issue_virtual_key, needs_reseal, new_virtual_key_id, reseal,
};
use zeroize::Zeroizing;

use super::rewrite::{Replacement, replace_sealed};
use super::{KeyringSource, MASTER_KEY_ENV, Origin, SealedValue, Secrets, reachable_sealed_values};
use crate::config::{Config, server_password_context};

/// Loads the config and the keys, and proves the keyring opens every sealed value it reaches.
fn load(config_path: &Path) -> anyhow::Result<(Config, KeyringSource, Secrets, Vec<SealedValue>)> {
    let config = Config::load(config_path)?;
    let source = KeyringSource::of(&config.keys)?;
    let secrets = Secrets::load_from(&config, &source)?;
    let values = reachable_sealed_values(&config);
    Ok((config, source, secrets, values))
}

/// Writes `text` to stdout and flushes, so it is out before anything else happens.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// `sentinel keys new`: a keyring of one new key and a new salt.
pub fn keys_new(id: &str) -> anyhow::Result<()> {
    let id = KeyId::new(id).context("--id")?;
    let keyring = Keyring::generate(id, &mut OsRng)?;
    let salt = EnvSalt::generate(&mut OsRng)?;
    let text = Zeroizing::new(format!(
        "{MASTER_KEY_ENV}={}\nsalt = \"{}\"\n",
        keyring.render().as_str(),
        salt.to_base64()
    ));
    print_stdout(&text)?;
    eprintln!(
        "sentinel: line 1 is the master keyring: keep it secret, in {MASTER_KEY_ENV} or in a file \
         (mode 0600) named by [keys] master_key_file; line 2 goes under [keys] in sentinel.toml \
         (not secret; one salt per environment)"
    );
    Ok(())
}

/// `sentinel keys check`: the keyring opens every sealed value the config reaches.
pub fn keys_check(config_path: &Path) -> anyhow::Result<()> {
    let (_, source, secrets, values) = load(config_path)?;
    let proof = secrets.prove(&values)?;
    let mut line = format!(
        "ok: the keyring from {} (keys {}, current {}) opens all {} sealed value(s) of {}",
        source.describe(),
        secrets.key_ids(),
        secrets.keyring().current_id(),
        proof.opened,
        config_path.display()
    );
    if !proof.older.is_empty() {
        line.push_str(&format!(
            "; sealed with an older key: {} (`sentinel keys rotate` re-seals them)",
            proof.older.join(", ")
        ));
    }
    line.push('\n');
    print_stdout(&line)
}

/// The next id after the ring's: `k<n+1>` when every id is `k<n>`.
fn next_key_id(keyring: &Keyring) -> anyhow::Result<KeyId> {
    let mut highest = 0u64;
    for id in keyring.ids() {
        let n = id
            .as_str()
            .strip_prefix('k')
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| {
                format!("cannot pick the id after key `{id}`: give one with --id (e.g. --id k2)")
            })?;
        highest = highest.max(n);
    }
    Ok(KeyId::new(&format!("k{}", highest + 1))?)
}

/// `sentinel keys rotate`: a new current key, every reachable sealed value re-sealed with it,
/// the old keys kept.
pub fn keys_rotate(config_path: &Path, id: Option<&str>) -> anyhow::Result<()> {
    let (_, source, secrets, values) = load(config_path)?;
    secrets.prove(&values)?;
    let id = match id {
        Some(id) => KeyId::new(id).context("--id")?,
        None => next_key_id(secrets.keyring())?,
    };
    let keyring = secrets
        .keyring()
        .with_new_current(id.clone(), MasterKey::generate(&mut OsRng)?)?;
    let rotated = Secrets::new(keyring, secrets.salt().clone());

    // Re-seal in memory first; nothing is written unless all of it works.
    let mut config_edits = Vec::new();
    let mut file_edits = Vec::new();
    let mut env_left = Vec::new();
    for value in &values {
        if !needs_reseal(rotated.keyring(), &value.value) {
            continue;
        }
        let new = reseal(
            rotated.keyring(),
            rotated.salt(),
            &value.value,
            &value.context,
            &mut OsRng,
        )
        .with_context(|| value.field.clone())?;
        match &value.origin {
            Origin::Config => config_edits.push((value, new)),
            Origin::File(path) => file_edits.push((value, path.clone(), new)),
            Origin::Env(var) => env_left.push((value, var.clone())),
        }
    }
    let config_file = real_path(config_path)?;
    let old_text = std::fs::read_to_string(&config_file)
        .with_context(|| format!("reading {}", config_file.display()))?;
    let replacements: Vec<Replacement<'_>> = config_edits
        .iter()
        .map(|(value, new)| Replacement {
            old: &value.value,
            new,
            field: &value.field,
        })
        .collect();
    let new_text = replace_sealed(&old_text, &replacements)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("re-sealing {} (nothing was changed)", config_path.display()))?;
    check_rewritten(&new_text, &rotated)
        .with_context(|| format!("re-sealing {} (nothing was changed)", config_path.display()))?;

    // The keyring first: once the config is re-sealed, only the new keyring opens it.
    write_keyring(&source, rotated.keyring())?;
    if !config_edits.is_empty() {
        write_atomic(&config_file, new_text.as_bytes(), None)
            .with_context(|| format!("writing {}", config_file.display()))?;
    }
    for (value, path, new) in &file_edits {
        let path = real_path(path)?;
        write_atomic(&path, format!("{new}\n").as_bytes(), None)
            .with_context(|| format!("{}: writing {}", value.field, path.display()))?;
    }

    eprintln!(
        "sentinel: key `{id}` is now current (keyring {}); re-sealed {} value(s) in {}{}",
        rotated.key_ids(),
        config_edits.len(),
        config_path.display(),
        if file_edits.is_empty() {
            String::new()
        } else {
            format!(" and {} password file(s)", file_edits.len())
        }
    );
    for (value, var) in &env_left {
        eprintln!(
            "sentinel: {} is sealed with an older key and lives in the environment: re-seal it \
             with `sentinel seal` and update {var} before dropping that key",
            value.field
        );
    }
    eprintln!(
        "{}",
        restart_hint(
            &source,
            " (the old value no longer opens what was re-sealed)"
        )
    );
    let old: Vec<String> = rotated
        .keyring()
        .ids()
        .skip(1)
        .map(ToString::to_string)
        .collect();
    eprintln!(
        "sentinel: the old key(s) {} stay in the keyring; once every Sentinel runs with the new \
         keyring, remove one with `sentinel keys drop --id <id>` (tokens and virtual keys it \
         signed stop verifying then)",
        old.join(", ")
    );
    Ok(())
}

/// What to do with the keyring just written or printed.
fn restart_hint(source: &KeyringSource, why: &str) -> String {
    match source {
        KeyringSource::Env => format!(
            "sentinel: set {MASTER_KEY_ENV} to the keyring printed on stdout{why}, then restart \
             Sentinel"
        ),
        KeyringSource::File(path) => format!(
            "sentinel: wrote the new keyring to {}; restart Sentinel",
            path.display()
        ),
    }
}

/// The rewritten config loads, and the new keyring opens every value sealed in it, each with
/// the current key.
fn check_rewritten(text: &str, secrets: &Secrets) -> anyhow::Result<()> {
    let config = Config::parse(text).context("the re-sealed config does not load")?;
    let values: Vec<SealedValue> = reachable_sealed_values(&config)
        .into_iter()
        .filter(|v| v.origin == Origin::Config)
        .collect();
    secrets.prove(&values)?;
    if let Some(stale) = values
        .iter()
        .find(|v| needs_reseal(secrets.keyring(), &v.value))
    {
        bail!("{} was not re-sealed", stale.field);
    }
    Ok(())
}

/// `sentinel keys drop`: removes an old key once nothing reachable is sealed with it.
pub fn keys_drop(config_path: &Path, id: &str) -> anyhow::Result<()> {
    let (_, source, secrets, values) = load(config_path)?;
    let id = KeyId::new(id).context("--id")?;
    let keyring = secrets.keyring().without(&id)?;
    for value in &values {
        if value.key_id().as_ref() == Some(&id) {
            bail!(
                "{} is still sealed with key `{id}`: run `sentinel keys rotate` first (or re-seal \
                 it with `sentinel seal`); nothing was changed",
                value.field
            );
        }
    }
    let remaining = Secrets::new(keyring, secrets.salt().clone());
    remaining
        .prove(&values)
        .context("the keyring without that key does not open everything; nothing was changed")?;
    write_keyring(&source, remaining.keyring())?;
    eprintln!(
        "sentinel: dropped key `{id}`; the keyring is now {}. Tenant tokens, virtual keys and \
         admin tokens signed with `{id}` no longer verify.",
        remaining.key_ids()
    );
    eprintln!("{}", restart_hint(&source, ""));
    Ok(())
}

/// Prints the keyring (for `SENTINEL_MASTER_KEY`) or rewrites the key file.
fn write_keyring(source: &KeyringSource, keyring: &Keyring) -> anyhow::Result<()> {
    let text = Zeroizing::new(format!("{MASTER_KEY_ENV}={}\n", keyring.render().as_str()));
    match source {
        KeyringSource::Env => print_stdout(&text),
        KeyringSource::File(path) => {
            let path = real_path(path)?;
            let body = Zeroizing::new(format!("{}\n", keyring.render().as_str()));
            write_atomic(&path, body.as_bytes(), Some(0o600))
                .with_context(|| format!("writing the keyring to {}", path.display()))
        }
    }
}

/// The file a path names, through symlinks, so a rewrite replaces the file and not the link.
fn real_path(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))
}

/// Replaces the file at `path` with `contents` in one step (a temp file beside it, synced, then
/// renamed over it), keeping its permissions (or `mode`) and, where allowed, its owner.
fn write_atomic(path: &Path, contents: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let old = std::fs::metadata(path).ok();
    let mode = mode.unwrap_or_else(|| old.as_ref().map_or(0o600, |m| m.permissions().mode()));
    let mut nonce = [0u8; 6];
    rand::RngCore::fill_bytes(&mut OsRng, &mut nonce);
    let tmp = dir.join(format!(
        ".{name}.sentinel-{}",
        nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        if let Some(old) = &old {
            // Only root can give a file away; otherwise it stays ours, as before.
            let _ = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()));
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// How `sentinel seal` names the field a secret is sealed for.
pub enum SealFor<'a> {
    Context(&'a str),
    User(&'a str),
}

/// `sentinel seal`: a secret from stdin, sealed for a field of the config.
pub fn seal(config_path: &Path, target: SealFor<'_>) -> anyhow::Result<()> {
    let (config, _, secrets, _) = load(config_path)?;
    let context = match target {
        SealFor::Context(context) => {
            if context.is_empty() {
                bail!("--context must not be empty");
            }
            context.to_owned()
        }
        SealFor::User(name) => {
            if !config.postgres.users.iter().any(|u| u.name == name) {
                bail!(
                    "{} has no [[postgres.users]] entry named {name:?}; to seal for a user not \
                     configured yet, use --context {}",
                    config_path.display(),
                    server_password_context(name)
                );
            }
            server_password_context(name)
        }
    };
    let secret = read_secret()?;
    let sealed = secrets.seal(secret.as_bytes(), &context)?;
    print_stdout(&format!("{sealed}\n"))?;
    eprintln!(
        "sentinel: sealed for `{context}` with key `{}`{}",
        secrets.keyring().current_id(),
        if context.starts_with("postgres.users.") {
            " (use it as server_password_sealed of that user, or as the content of its \
             server_password_env variable or server_password_file)"
        } else {
            ""
        }
    );
    Ok(())
}

/// One line from stdin without its line end; the buffer is wiped when dropped.
fn read_secret() -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::with_capacity(256));
    let limit = u64::try_from(MAX_SEALED_PLAINTEXT + 2).unwrap_or(u64::MAX);
    std::io::stdin()
        .lock()
        .take(limit)
        .read_line(&mut line)
        .context("reading the secret from stdin")?;
    let len = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(len);
    if line.is_empty() {
        bail!(
            "no secret on stdin (give it as one line, e.g. `printf '%s' \"$SECRET\" | sentinel seal ...`)"
        );
    }
    Ok(line)
}

fn unix_now() -> anyhow::Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs())
}

/// `sentinel token issue`: a tenant token.
/// The expiry of a credential valid for `ttl` from now (`None`: never expires).
fn expiry_from(ttl: Option<Duration>) -> anyhow::Result<Option<u64>> {
    match ttl {
        None => Ok(None),
        Some(ttl) if ttl.as_secs() == 0 => bail!("--ttl must be at least 1s"),
        Some(ttl) => Ok(Some(
            unix_now()?
                .checked_add(ttl.as_secs())
                .context("--ttl is too long")?,
        )),
    }
}

fn describe_expiry(expires_at: Option<u64>) -> String {
    match expires_at {
        Some(at) => format!(
            "expires {}",
            humantime_serde::re::humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_secs(at)
            )
        ),
        None => "never expires (give --ttl for one that does)".to_owned(),
    }
}

/// `sentinel admin-token issue`: a bearer token for the admin port, valid on every replica of
/// this environment (same keyring and salt).
pub fn admin_token_issue(
    config_path: &Path,
    name: &str,
    ttl: Option<Duration>,
) -> anyhow::Result<()> {
    let (_, _, secrets, _) = load(config_path)?;
    let expires_at = expiry_from(ttl)?;
    let token = Zeroizing::new(issue_admin_token(
        secrets.keyring(),
        secrets.salt(),
        name,
        expires_at,
    )?);
    print_stdout(&format!("{}\n", token.as_str()))?;
    eprintln!(
        "sentinel: admin token `{name}`, signed with key `{}`; {}. Revoke it by listing its \
         name in [admin] revoked_names (then reload), or by dropping its key.",
        secrets.keyring().current_id(),
        describe_expiry(expires_at)
    );
    Ok(())
}

pub fn token_issue(config_path: &Path, tenant: &str, ttl: Option<Duration>) -> anyhow::Result<()> {
    let (_, _, secrets, _) = load(config_path)?;
    let expires_at = expiry_from(ttl)?;
    let token = Zeroizing::new(issue_tenant_token(
        secrets.keyring(),
        secrets.salt(),
        tenant,
        expires_at,
    )?);
    print_stdout(&format!("{}\n", token.as_str()))?;
    let expiry = describe_expiry(expires_at);
    eprintln!(
        "sentinel: tenant token for `{tenant}`, signed with key `{}`; {expiry}",
        secrets.keyring().current_id()
    );
    Ok(())
}

/// `sentinel vkey issue`: a virtual LLM key with a fresh random id.
pub fn vkey_issue(config_path: &Path, tenant: &str) -> anyhow::Result<()> {
    let (_, _, secrets, _) = load(config_path)?;
    let key_id = new_virtual_key_id(&mut OsRng);
    let key = Zeroizing::new(issue_virtual_key(
        secrets.keyring(),
        secrets.salt(),
        tenant,
        &key_id,
    )?);
    print_stdout(&format!("{}\n", key.as_str()))?;
    eprintln!(
        "sentinel: virtual LLM key for tenant `{tenant}`, id `{key_id}` (revoke it by this id), \
         signed with key `{}`",
        secrets.keyring().current_id()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn next_key_ids() {
        let mut rng = StdRng::seed_from_u64(9);
        let ring = Keyring::generate(KeyId::new("k1").unwrap(), &mut rng).unwrap();
        assert_eq!(next_key_id(&ring).unwrap().as_str(), "k2");
        let ring = ring
            .with_new_current(
                KeyId::new("k7").unwrap(),
                MasterKey::generate(&mut rng).unwrap(),
            )
            .unwrap();
        assert_eq!(next_key_id(&ring).unwrap().as_str(), "k8");
        let ring = ring
            .with_new_current(
                KeyId::new("prod").unwrap(),
                MasterKey::generate(&mut rng).unwrap(),
            )
            .unwrap();
        let err = next_key_id(&ring).unwrap_err().to_string();
        assert!(err.contains("--id"), "{err}");
    }

    #[test]
    fn write_atomic_keeps_the_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"new", None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        write_atomic(&path, b"key", Some(0o600)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
