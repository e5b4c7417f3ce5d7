//! The master keyring and the environment salt as the process holds them, and every sealed value
//! the config reaches.
//!
//! - The keyring text (`k2:<base64>,k1:<base64>`, first entry current) comes from the
//!   `SENTINEL_MASTER_KEY` environment variable, or from the file named by
//!   `[keys] master_key_file` — one of them, never both. The salt is `[keys] salt`.
//! - [`Secrets`] is the handle: built once at start (or by a CLI command) and passed as an
//!   `Arc<Secrets>` to whoever seals, opens, signs or verifies. Nothing here is global.
//! - Sealed values are found by [`reachable_sealed_values`]: those written in the config
//!   ([`Config::sealed_fields`]) and those kept in an environment variable or a file that the
//!   config names as an upstream password source. `sentinel run` and `sentinel keys check` open
//!   every one of them before anything else ([`Secrets::prove`]), and fail naming the field.
//!
//! Nothing in this module logs or prints key material, a plaintext or a credential; `Debug` of
//! [`Secrets`] shows key ids only.

pub mod commands;
mod rewrite;

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use sentinel_policy::keys::{
    EnvSalt, KeyError, KeyId, Keyring, is_sealed, needs_reseal, open, seal, sealed_key_id,
};
use zeroize::Zeroizing;

use crate::config::{Config, ConfigError, KeysConfig, PasswordSource};

/// The environment variable that holds the keyring text when no `master_key_file` is configured.
pub const MASTER_KEY_ENV: &str = "SENTINEL_MASTER_KEY";

/// Largest master key file read (a keyring of many keys is a few KiB).
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Largest upstream password file read when looking for a sealed value in it.
const MAX_PASSWORD_FILE: u64 = 1024 * 1024;

/// What can stop Sentinel from getting at its keys. Messages never hold key material.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "no master key: {MASTER_KEY_ENV} is not set and [keys] master_key_file is not \
         configured. Make a keyring and a salt with `sentinel keys new`, then set \
         {MASTER_KEY_ENV} to the keyring it prints (or write the keyring to a file, mode 0600, \
         and name it in [keys] master_key_file)"
    )]
    NoMasterKey,
    #[error(
        "both {MASTER_KEY_ENV} and [keys] master_key_file ({}) are set: keep one of them so there \
         is one keyring",
        path.display()
    )]
    TwoMasterKeys { path: PathBuf },
    #[error("[keys] master_key_file: cannot read {}: {error}", path.display())]
    ReadKeyFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: {error}{}", how_to_make_one(error))]
    BadKeyring { origin: String, error: KeyError },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{field}: {error}")]
    Sealed { field: String, error: OpenError },
}

/// The hint every keyring error ends with (the policy crate's own messages carry it for some).
fn how_to_make_one(error: &KeyError) -> &'static str {
    if error.to_string().contains("sentinel keys new") {
        ""
    } else {
        "; make a keyring with `sentinel keys new`"
    }
}

/// Why a sealed value did not give a usable secret.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("the sealed value opens, but its secret is not UTF-8 text")]
    NotUtf8,
}

// === keyring source ===

/// Where the keyring text is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringSource {
    /// `SENTINEL_MASTER_KEY`.
    Env,
    /// `[keys] master_key_file`.
    File(PathBuf),
}

impl KeyringSource {
    /// The one source the config and the environment give; refuses none and both.
    pub fn of(keys: &KeysConfig) -> Result<KeyringSource, SecretsError> {
        let env_set = std::env::var_os(MASTER_KEY_ENV).is_some_and(|v| !v.is_empty());
        match (&keys.master_key_file, env_set) {
            (Some(path), true) => Err(SecretsError::TwoMasterKeys { path: path.clone() }),
            (Some(path), false) => Ok(KeyringSource::File(path.clone())),
            (None, true) => Ok(KeyringSource::Env),
            (None, false) => Err(SecretsError::NoMasterKey),
        }
    }

    /// How messages name this source.
    pub fn describe(&self) -> String {
        match self {
            KeyringSource::Env => MASTER_KEY_ENV.to_owned(),
            KeyringSource::File(path) => format!("[keys] master_key_file ({})", path.display()),
        }
    }

    /// Reads and parses the keyring.
    pub fn read(&self) -> Result<Keyring, SecretsError> {
        let text = match self {
            KeyringSource::Env => match std::env::var(MASTER_KEY_ENV) {
                Ok(text) => Zeroizing::new(text),
                Err(std::env::VarError::NotPresent) => return Err(SecretsError::NoMasterKey),
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SecretsError::BadKeyring {
                        origin: self.describe(),
                        error: KeyError::MasterKeyNotBase64,
                    });
                }
            },
            KeyringSource::File(path) => read_key_file(path)?,
        };
        Keyring::parse(&keyring_text(&text)).map_err(|error| SecretsError::BadKeyring {
            origin: self.describe(),
            error,
        })
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<String>, SecretsError> {
    let failed = |error: std::io::Error| SecretsError::ReadKeyFile {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    if let Ok(meta) = file.metadata() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "the master key file is readable by others than its owner; chmod 600 it"
            );
        }
    }
    let mut text = Zeroizing::new(String::with_capacity(4096));
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(failed)?;
    Ok(text)
}

/// The keyring text of a key file or variable: lines starting with `#` are comments, and a
/// `SENTINEL_MASTER_KEY=` in front of an entry (as `sentinel keys new` prints it) is dropped, so
/// the printed line can be saved as a key file as it is.
fn keyring_text(text: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix(MASTER_KEY_ENV)
            .and_then(|rest| rest.strip_prefix('='))
            .unwrap_or(line);
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(line);
    }
    out
}

// === the handle ===

/// The keyring and the environment salt: everything that seals, opens, signs and verifies.
/// Passed around as `Arc<Secrets>`; wiped from memory when the last handle goes.
#[derive(Clone)]
pub struct Secrets {
    keyring: Keyring,
    salt: EnvSalt,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("keys", &self.key_ids())
            .field("salt", &"<redacted>")
            .finish()
    }
}

impl Secrets {
    pub fn new(keyring: Keyring, salt: EnvSalt) -> Secrets {
        Secrets { keyring, salt }
    }

    /// The keyring from its source (see [`KeyringSource::of`]) and the salt from `[keys]`.
    pub fn load(config: &Config) -> Result<Secrets, SecretsError> {
        let source = KeyringSource::of(&config.keys)?;
        Secrets::load_from(config, &source)
    }

    /// [`load`](Self::load) with the source already chosen.
    pub fn load_from(config: &Config, source: &KeyringSource) -> Result<Secrets, SecretsError> {
        let salt = config.keys.env_salt()?;
        let keyring = source.read()?;
        Ok(Secrets::new(keyring, salt))
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn salt(&self) -> &EnvSalt {
        &self.salt
    }

    /// The key ids, current first, as `k2,k1`.
    pub fn key_ids(&self) -> String {
        self.keyring
            .ids()
            .map(KeyId::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Seals `plaintext` for `context` with the current key.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String, KeyError> {
        seal(&self.keyring, &self.salt, plaintext, context, &mut OsRng)
    }

    /// Opens a sealed value made for `context` and returns its secret as text.
    pub fn open_text(&self, sealed: &str, context: &str) -> Result<Zeroizing<String>, OpenError> {
        let mut bytes = open(&self.keyring, &self.salt, sealed, context)?;
        // Moves the bytes into the String without a copy; nothing is left behind unwiped.
        let vec = std::mem::take(&mut *bytes);
        String::from_utf8(vec).map(Zeroizing::new).map_err(|e| {
            drop(Zeroizing::new(e.into_bytes()));
            OpenError::NotUtf8
        })
    }

    /// Opens every value (and forgets the secrets at once). Fails on the first value that does
    /// not open, naming its field.
    pub fn prove(&self, values: &[SealedValue]) -> Result<Proof, SecretsError> {
        let mut proof = Proof::default();
        for value in values {
            self.open_text(&value.value, &value.context)
                .map_err(|error| SecretsError::Sealed {
                    field: value.field.clone(),
                    error,
                })?;
            proof.opened += 1;
            if needs_reseal(&self.keyring, &value.value) {
                proof.older.push(value.field.clone());
            }
        }
        Ok(proof)
    }
}

impl Secrets {
    /// Reads an upstream password from where the config says it is, at the time of the call (so
    /// a rotated file is picked up): a sealed value in the config, or the content of an
    /// environment variable or a file, opened with the keyring if it is a sealed value (a plain
    /// file loses its trailing newline). `None` for [`PasswordSource::None`]. The value is wiped
    /// when dropped; errors never hold it.
    pub fn read_password(
        &self,
        source: &PasswordSource,
    ) -> Result<Option<Zeroizing<String>>, PasswordError> {
        let unseal = |sealed: &str, context: &str, origin: String| {
            self.open_text(sealed, context)
                .map_err(|error| PasswordError::Open { origin, error })
        };
        match source {
            PasswordSource::None => Ok(None),
            PasswordSource::Sealed { value, context } => {
                unseal(value, context, "server_password_sealed".to_owned()).map(Some)
            }
            PasswordSource::Env { var, context } => {
                let value = std::env::var(var)
                    .map(Zeroizing::new)
                    .map_err(|_| PasswordError::EnvNotSet(var.clone()))?;
                match sealed_text(&value) {
                    Some(sealed) => {
                        unseal(&sealed, context, format!("environment variable {var}")).map(Some)
                    }
                    None => Ok(Some(value)),
                }
            }
            PasswordSource::File { path, context } => {
                let mut value =
                    std::fs::read_to_string(path)
                        .map(Zeroizing::new)
                        .map_err(|error| PasswordError::ReadFile {
                            path: path.clone(),
                            error,
                        })?;
                match sealed_text(&value) {
                    Some(sealed) => unseal(&sealed, context, path.display().to_string()).map(Some),
                    None => {
                        // Truncating in place leaves nothing unwiped behind.
                        let len = value.trim_end_matches(['\n', '\r']).len();
                        value.truncate(len);
                        Ok(Some(value))
                    }
                }
            }
        }
    }
}

/// Why [`Secrets::read_password`] got no password. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("environment variable {0} is not set")]
    EnvNotSet(String),
    #[error("cannot read {}: {error}", path.display())]
    ReadFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: {error}")]
    Open { origin: String, error: OpenError },
}

/// What [`Secrets::prove`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Values opened.
    pub opened: usize,
    /// Fields whose value is sealed with a key other than the current one.
    pub older: Vec<String>,
}

// === reachable sealed values ===

/// Where a sealed value is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Written in the config file.
    Config,
    /// In an environment variable the config names.
    Env(String),
    /// In a file the config names.
    File(PathBuf),
}

/// A sealed value Sentinel can reach, with the field that names it in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    pub field: String,
    pub context: String,
    /// `sealed:v1:…`: ciphertext only.
    pub value: String,
    pub origin: Origin,
}

impl SealedValue {
    /// The id of the key it is sealed with (`None` if malformed: opening it says why).
    pub fn key_id(&self) -> Option<KeyId> {
        sealed_key_id(&self.value).ok()
    }
}

/// Every sealed value the config holds or points at: those in the config, and upstream
/// passwords in environment variables or files whose content is a sealed value. A variable that
/// is not set or a file that cannot be read is skipped here (connecting reports it, as for a
/// plaintext password); plaintext values are read and wiped without being kept.
pub fn reachable_sealed_values(config: &Config) -> Vec<SealedValue> {
    let mut out: Vec<SealedValue> = config
        .sealed_fields()
        .into_iter()
        .map(|f| SealedValue {
            field: f.field,
            context: f.context,
            value: f.value,
            origin: Origin::Config,
        })
        .collect();
    for (i, user) in config.postgres.users.iter().enumerate() {
        if let Some(var) = &user.server_password_env
            && let Some(value) = env_sealed_value(var)
        {
            out.push(SealedValue {
                field: format!("postgres.users[{i}].server_password_env ({var})"),
                context: user.server_password_context(),
                value,
                origin: Origin::Env(var.clone()),
            });
        }
        if let Some(path) = &user.server_password_file
            && let Some(value) = file_sealed_value(path)
        {
            out.push(SealedValue {
                field: format!(
                    "postgres.users[{i}].server_password_file ({})",
                    path.display()
                ),
                context: user.server_password_context(),
                value,
                origin: Origin::File(path.clone()),
            });
        }
    }
    for (i, p) in config
        .llm
        .iter()
        .flat_map(|l| l.providers.iter().enumerate())
    {
        if let Some(var) = &p.api_key_env
            && let Some(value) = env_sealed_value(var)
        {
            out.push(SealedValue {
                field: format!("llm.providers[{i}].api_key_env ({var})"),
                context: p.api_key_context(),
                value,
                origin: Origin::Env(var.clone()),
            });
        }
        if let Some(path) = &p.api_key_file
            && let Some(value) = file_sealed_value(path)
        {
            out.push(SealedValue {
                field: format!("llm.providers[{i}].api_key_file ({})", path.display()),
                context: p.api_key_context(),
                value,
                origin: Origin::File(path.clone()),
            });
        }
    }
    out
}

/// The sealed value in environment variable `var`, if it holds one.
fn env_sealed_value(var: &str) -> Option<String> {
    let value = Zeroizing::new(std::env::var(var).ok()?);
    sealed_text(&value)
}

/// The sealed value in the file at `path`, if it holds one.
fn file_sealed_value(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_PASSWORD_FILE)
        .read_to_string(&mut text)
        .ok()?;
    sealed_text(&text)
}

/// `text` without surrounding whitespace if it is a sealed value; plaintext is not copied.
pub fn sealed_text(text: &str) -> Option<String> {
    let trimmed = text.trim();
    is_sealed(trimmed).then(|| trimmed.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn secrets(seed: u64) -> Secrets {
        let mut rng = StdRng::seed_from_u64(seed);
        let ring = Keyring::generate(KeyId::new("k1").unwrap(), &mut rng).unwrap();
        Secrets::new(ring, EnvSalt::generate(&mut rng).unwrap())
    }

    #[test]
    fn keyring_text_accepts_the_printed_line_and_comments() {
        let t = keyring_text("# made by sentinel keys new\nSENTINEL_MASTER_KEY=k2:AAA,k1:BBB\n");
        assert_eq!(t.as_str(), "k2:AAA,k1:BBB");
        let t = keyring_text("k2:AAA\nk1:BBB\n\n");
        assert_eq!(t.as_str(), "k2:AAA,k1:BBB");
    }

    #[test]
    fn debug_is_redacted() {
        let s = secrets(1);
        let debug = format!("{s:?}");
        assert_eq!(debug, "Secrets { keys: \"k1\", salt: \"<redacted>\" }");
        let key = s.keyring().current().1.to_base64();
        assert!(!debug.contains(key.as_str()));
    }

    #[test]
    fn open_text_round_trip_and_refusals() {
        let s = secrets(2);
        let sealed = s.seal(b"pa55word", "ctx").unwrap();
        assert_eq!(s.open_text(&sealed, "ctx").unwrap().as_str(), "pa55word");
        assert!(matches!(
            s.open_text(&sealed, "other"),
            Err(OpenError::Key(KeyError::OpenFailed))
        ));
        assert!(matches!(
            secrets(3).open_text(&sealed, "ctx"),
            Err(OpenError::Key(KeyError::OpenFailed))
        ));
        let binary = s.seal(&[0xff, 0xfe], "ctx").unwrap();
        assert!(matches!(
            s.open_text(&binary, "ctx"),
            Err(OpenError::NotUtf8)
        ));
    }

    #[test]
    fn prove_names_the_field() {
        let s = secrets(4);
        let good = SealedValue {
            field: "a.b".into(),
            context: "ctx".into(),
            value: s.seal(b"x", "ctx").unwrap(),
            origin: Origin::Config,
        };
        let proof = s.prove(std::slice::from_ref(&good)).unwrap();
        assert_eq!(proof.opened, 1);
        assert!(proof.older.is_empty());
        let bad = SealedValue {
            field: "c.d".into(),
            context: "other".into(),
            ..good.clone()
        };
        let err = s.prove(&[good, bad]).unwrap_err().to_string();
        assert!(err.starts_with("c.d: sealed value does not open"), "{err}");
    }

    #[test]
    fn read_password_from_each_source() {
        let s = secrets(5);
        let context = "postgres.users.app.server_password".to_owned();
        assert!(s.read_password(&PasswordSource::None).unwrap().is_none());
        let sealed = s.seal(b"pa55word", &context).unwrap();
        let source = PasswordSource::Sealed {
            value: sealed.clone(),
            context: context.clone(),
        };
        assert_eq!(
            s.read_password(&source).unwrap().unwrap().as_str(),
            "pa55word"
        );

        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "hunter2\n").unwrap();
        let source = PasswordSource::File {
            path: plain,
            context: context.clone(),
        };
        assert_eq!(
            s.read_password(&source).unwrap().unwrap().as_str(),
            "hunter2"
        );
        let in_file = dir.path().join("sealed");
        std::fs::write(&in_file, format!("{sealed}\n")).unwrap();
        let source = PasswordSource::File {
            path: in_file.clone(),
            context: "another.context".to_owned(),
        };
        let err = s.read_password(&source).unwrap_err().to_string();
        assert!(err.starts_with(&in_file.display().to_string()), "{err}");
        assert!(!err.contains("pa55word"), "{err}");

        let source = PasswordSource::Env {
            var: "SENTINEL_TEST_SURELY_UNSET_VARIABLE".to_owned(),
            context,
        };
        let err = s.read_password(&source).unwrap_err().to_string();
        assert_eq!(
            err,
            "environment variable SENTINEL_TEST_SURELY_UNSET_VARIABLE is not set"
        );
    }

    #[test]
    fn sealed_text_only_copies_sealed_values() {
        assert_eq!(
            sealed_text("  sealed:v1:k1:x\n").as_deref(),
            Some("sealed:v1:k1:x")
        );
        assert_eq!(sealed_text("hunter2"), None);
    }
}
