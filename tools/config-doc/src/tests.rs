//! The generator on small config modules of its own.

use crate::render::render;
use crate::source::Sources;

fn generate(text: &str) -> Result<String, Vec<String>> {
    let sources = Sources::from_texts(&[("config/mod.rs", text)]).map_err(|e| vec![e])?;
    render(&sources)
}

const FIXTURE: &str = r#"
//! What the file is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server.
    pub server: Server,
    /// Optional extras.
    #[serde(default)]
    pub extra: Option<Extra>,
    /// Backends.
    #[serde(default)]
    pub backends: Vec<Extra>,
    /// Per-tenant extras.
    #[serde(default)]
    pub tenants: BTreeMap<String, Extra>,
}

/// The server section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Where it listens.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// How long to wait.
    #[serde(default = "defaults::wait", with = "humantime_serde")]
    pub wait: Duration,
    /// The mode.
    #[serde(default)]
    pub mode: Mode,
    /// The name.
    pub name: String,
    /// Largest message.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: usize,
    /// Renamed.
    #[serde(rename = "other-name", default)]
    pub renamed: bool,
    /// The host to use. Default: the listen address's host.
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The first.
    #[default]
    FirstOne,
    /// The second.
    Second,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Extra {
    /// Networks.
    pub networks: Vec<IpNet>,
    /// Ratio.
    pub ratio: f64,
    /// Modes.
    pub modes: Vec<Mode>,
}

impl Default for Extra {
    fn default() -> Self {
        Extra {
            networks: vec![IpNet::V4(Ipv4Addr::LOCALHOST.into()), "::1/128".parse().expect("valid")],
            ratio: 0.8,
            modes: vec![Mode::Second],
        }
    }
}

mod defaults {
    use super::*;
    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 6432))
    }
    pub fn wait() -> Duration {
        Duration::from_secs(90)
    }
    pub fn max_bytes() -> usize {
        32 << 20
    }
}
"#;

#[test]
fn renders_tables_keys_types_and_defaults() {
    let out = generate(FIXTURE).unwrap_or_else(|e| panic!("{}", e.join("\n")));
    for want in [
        "What the file is.",
        "## `[server]`\n\nThe server section.\n\nThe server.\n\nRequired.",
        "- **`listen`** · string (`\"ip:port\"`) · default `\"127.0.0.1:6432\"`\n\n  Where it \
         listens.",
        "- **`wait`** · duration · default `\"1m 30s\"`",
        "- **`mode`** · one of `\"first-one\"` \\| `\"second\"` · default `\"first-one\"`",
        "  - `\"first-one\"`: The first.\n  - `\"second\"`: The second.",
        "- **`name`** · string · **required**",
        "- **`max_bytes`** · integer · default `33554432` (32 MiB)",
        "- **`other-name`** · boolean · default `false`",
        "- **`host`** · string · default: the listen address's host\n\n  The host to use.\n",
        "## `[extra]`",
        "- **`networks`** · array of strings (networks, `\"address/prefix\"`) · default \
         `[\"127.0.0.1/32\", \"::1/128\"]`",
        "- **`ratio`** · float · default `0.8`",
        "- **`modes`** · array of (`\"first-one\"` \\| `\"second\"`) · default `[\"second\"]`",
        "## `[[backends]]`\n\nBackends.\n\nAn array of tables: one `[[backends]]` per \
         entry.\n\nSame keys as [`[extra]`](#extra).",
        "## `[tenants.<name>]`",
        "- [`[tenants.<name>]`](#tenantsname)",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn a_key_without_a_doc_comment_is_named() {
    let text = FIXTURE.replace("    /// Ratio.\n", "");
    let errors = generate(&text).expect_err("no doc");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("extra.ratio: no doc comment") && e.contains("Extra::ratio")),
        "{errors:?}"
    );
    let text = FIXTURE.replace("    /// The second.\n", "");
    let errors = generate(&text).expect_err("no doc");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("the value \"second\" has no doc comment")),
        "{errors:?}"
    );
}

#[test]
fn a_default_that_cannot_be_written_out_must_be_stated() {
    let text = FIXTURE.replace("Duration::from_secs(90)", "compute_wait(90)");
    let errors = generate(&text).expect_err("unknown default");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("server.wait: the default cannot be written out")),
        "{errors:?}"
    );
    let text = text.replace(
        "/// How long to wait.",
        "/// How long to wait. Default: 90 seconds.",
    );
    let out = generate(&text).unwrap_or_else(|e| panic!("{}", e.join("\n")));
    assert!(
        out.contains("- **`wait`** · duration · default: 90 seconds\n\n  How long to wait.\n"),
        "{out}"
    );
}

#[test]
fn a_stated_default_must_agree_with_the_code() {
    let text = FIXTURE.replace("/// Ratio.", "/// Ratio. Default: `0.8`.");
    let out = generate(&text).unwrap_or_else(|e| panic!("{}", e.join("\n")));
    assert!(
        out.contains("- **`ratio`** · float · default `0.8`\n\n  Ratio.\n"),
        "{out}"
    );

    let text = FIXTURE.replace("/// Ratio.", "/// Ratio. Default: `0.5`.");
    let errors = generate(&text).expect_err("drifted");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("extra.ratio: the doc comment says `Default: `0.5``")),
        "{errors:?}"
    );

    let text = FIXTURE.replace("/// The name.", "/// The name. Default: `x`.");
    let errors = generate(&text).expect_err("required");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("server.name:") && e.contains("required")),
        "{errors:?}"
    );
}

#[test]
fn unknown_types_and_serde_shapes_are_errors() {
    let text = FIXTURE.replace("pub ratio: f64", "pub ratio: Mystery");
    let errors = generate(&text).expect_err("unknown type");
    assert!(
        errors.iter().any(|e| e.contains("type `Mystery`")),
        "{errors:?}"
    );
    let text = FIXTURE.replace(
        "#[serde(rename_all = \"kebab-case\")]",
        "#[serde(rename_all = \"kebab-case\", untagged)]",
    );
    let errors = generate(&text).expect_err("untagged");
    assert!(errors.iter().any(|e| e.contains("untagged")), "{errors:?}");
}
