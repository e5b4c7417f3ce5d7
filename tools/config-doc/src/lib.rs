//! Generates `docs/configuration.md`, the reference of `sentinel.toml`, from the config types in
//! `proxy/src/config/` and their doc comments, so the reference cannot drift from the code.
//!
//! `cargo run -p sentinel-config-doc` rewrites the file; `-- --check` only compares. The test
//! `tests/up_to_date.rs` fails (under `cargo test --workspace`) while the committed file differs
//! from what the sources give.
//!
//! # What is read
//!
//! The sources are parsed with `syn`, never compiled: `proxy/src/config/mod.rs`, the files of the
//! `mod x;` it declares, and the modules of workspace crates (`sentinel_policy`, ...) that those
//! files import types or constants from. The walk starts at `struct Config` and follows field
//! types: a struct is a table (`[postgres]`), `Option<T>` an optional one, `Vec<T>` of a struct
//! an array of tables (`[[postgres.users]]`), a `BTreeMap`/`HashMap` with `String` keys a table
//! per name (`[llm.tenants.<name>]`); other fields are keys. Enums of unit variants are strings,
//! their values listed; `#[serde(rename)]`, `rename_all`, `alias`, `flatten`, `skip` and
//! `with = "humantime_serde"` are honoured. Any other serde attribute that changes the file's
//! shape, or a type the walk does not know, is an error rather than a guess.
//!
//! # Doc comments are required
//!
//! Every key and table field, and every value of an enum a key takes, needs a `///` comment:
//! the generator fails, naming each one missing, otherwise. The comment of a field is the text
//! under its key (one that only states the default is not enough); a table field's comment
//! opens the table's section, after the struct's own comment if it has one.
//!
//! # The rule for defaults
//!
//! A key's default is derived from the code when it can be written out mechanically:
//!
//! - `#[serde(default = "path")]`: the body of that function, evaluated;
//! - `#[serde(default)]` on the field: the type's default (`0`, `false`, `""`, `[]`, not set for
//!   `Option`, the `#[default]` variant or `impl Default` of an enum);
//! - `#[serde(default)]` on the struct: the field's expression in its `impl Default` (one
//!   struct literal), or the field type's default with `#[derive(Default)]`;
//! - no default and not an `Option`: the key is **required**; an `Option` without one is "not set
//!   by default".
//!
//! The evaluator knows literals, integer arithmetic, `vec![..]`, constants (also imported
//! ones), calls of argument-less functions of the config module, `Duration::from_secs` and
//! friends (written `"5s"`), `SocketAddr::from(([127, 0, 0, 1], 6432))` (`"127.0.0.1:6432"`),
//! `Ipv4Addr::LOCALHOST`, `IpNet::V4(..)`, enum variants (their config spelling),
//! `"...".parse()`, `.to_owned()`, `.into()`, `.expect(..)` and the like; see
//! `eval::Evaluator::eval`.
//!
//! A doc comment may state the default in a sentence of its own, `Default: ….`, starting a
//! paragraph or following a sentence's end. That sentence is taken out of the text and:
//!
//! - where the code's default cannot be written out mechanically, it is the default shown; the
//!   generator **fails**, naming the field, when there is no such sentence, so the reference
//!   never ships a blank;
//! - where the code's default is "not set" (`Option`), it is shown instead, since it says what
//!   not setting the key means (`Default: [postgres.upstream] host.`);
//! - where the code's default is a value, the value is shown and the sentence must contain it
//!   (`Default: 20.`), or the generator fails: the comment has drifted from the code;
//! - on a required key it is an error.

mod diff;
mod eval;
mod model;
mod render;
mod source;

use std::fmt;
use std::path::{Path, PathBuf};

pub use diff::diff_summary;
pub use render::COMMAND;

/// The generated file, relative to the workspace root.
pub const OUTPUT: &str = "docs/configuration.md";

/// The workspace root, as seen from this crate's manifest.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Renders the reference from the sources under `root` (the workspace root).
pub fn generate(root: &Path) -> Result<String, Error> {
    let sources = source::Sources::load(root).map_err(|e| Error(vec![e]))?;
    render::render(&sources).map_err(Error)
}

/// Everything that stopped the reference from being generated, one problem a line.
#[derive(Debug)]
pub struct Error(pub Vec<String>);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "- {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests;
