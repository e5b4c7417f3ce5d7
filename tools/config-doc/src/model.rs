//! What the generator reads off the Rust types: serde attributes, doc comments, and field
//! types in TOML terms.

use syn::{Attribute, Expr, Fields, Lit, LitStr, Meta};

use crate::source::{Sources, TypeDef};

/// The `#[serde(...)]` attributes the generator understands.
#[derive(Default, Debug)]
pub struct Serde {
    pub rename: Option<String>,
    pub rename_all: Option<String>,
    pub default: Option<DefaultAttr>,
    pub with: Option<String>,
    pub flatten: bool,
    pub skip: bool,
    pub deny_unknown_fields: bool,
    pub aliases: Vec<String>,
    /// Attributes that change the TOML shape in ways the generator does not model.
    pub unsupported: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum DefaultAttr {
    /// `#[serde(default)]`: the type's `Default`.
    Trait,
    /// `#[serde(default = "path")]`.
    Path(String),
}

impl Serde {
    pub fn parse(attrs: &[Attribute]) -> Result<Serde, String> {
        let mut out = Serde::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
            attr.parse_nested_meta(|meta| {
                let name = meta
                    .path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let has_value = meta.input.peek(syn::Token![=]);
                let string = |meta: &syn::meta::ParseNestedMeta<'_>| -> syn::Result<String> {
                    Ok(meta.value()?.parse::<LitStr>()?.value())
                };
                match name.as_str() {
                    "rename" if has_value => out.rename = Some(string(&meta)?),
                    "rename_all" if has_value => out.rename_all = Some(string(&meta)?),
                    "alias" => out.aliases.push(string(&meta)?),
                    "default" if has_value => {
                        out.default = Some(DefaultAttr::Path(string(&meta)?));
                    }
                    "default" => out.default = Some(DefaultAttr::Trait),
                    "with" | "deserialize_with" => out.with = Some(string(&meta)?),
                    "flatten" => out.flatten = true,
                    "skip" | "skip_deserializing" => out.skip = true,
                    "deny_unknown_fields" => out.deny_unknown_fields = true,
                    // Serialization only, or no effect on what a config file may hold.
                    "skip_serializing"
                    | "skip_serializing_if"
                    | "serialize_with"
                    | "bound"
                    | "expecting"
                    | "crate" => {
                        if has_value {
                            meta.value()?.parse::<Expr>()?;
                        }
                    }
                    _ => {
                        out.unsupported.push(name);
                        if has_value {
                            meta.value()?.parse::<Expr>()?;
                        } else if meta.input.peek(syn::token::Paren) {
                            // A list like `rename(deserialize = "...")`: skip it.
                            meta.parse_nested_meta(|inner| {
                                if inner.input.peek(syn::Token![=]) {
                                    inner.value()?.parse::<Expr>()?;
                                }
                                Ok(())
                            })?;
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e| format!("cannot read #[serde(...)]: {e}"))?;
        }
        Ok(out)
    }
}

/// The doc comment of an item (`///` lines), without the one leading space, with intra-doc
/// links written as plain code (`` [`X`] `` → `` `X` ``). Empty when there is none.
pub fn doc_text(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs {
        if let Meta::NameValue(nv) = &attr.meta
            && nv.path.is_ident("doc")
            && let Expr::Lit(lit) = &nv.value
            && let Lit::Str(s) = &lit.lit
        {
            lines.extend(s.value().split('\n').map(str::to_owned));
        }
    }
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let text = lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n");
    plain_links(text.trim())
}

/// `` [`X`] `` (an intra-doc link, meaningless outside rustdoc) → `` `X` ``.
fn plain_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[`") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("`]") {
            Some(end)
                if !after[..end].contains('`')
                    && !after[end + 2..].starts_with('(')
                    && !after[end + 2..].starts_with('[') =>
            {
                out.push('`');
                out.push_str(&after[..end]);
                out.push('`');
                rest = &after[end + 2..];
            }
            _ => {
                out.push_str("[`");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether an item carries `#[derive(..., Default, ...)]`.
pub fn derives_default(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("derive")
            && a.parse_args_with(
                syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
            )
            .is_ok_and(|paths| {
                paths
                    .iter()
                    .any(|p| p.segments.last().is_some_and(|s| s.ident == "Default"))
            })
    })
}

/// A field's type in TOML terms.
#[derive(Clone)]
pub enum Ty {
    Str,
    Path,
    SocketAddr,
    IpAddr,
    IpNet,
    Bool,
    Int,
    Float,
    /// A `Duration` read by `humantime_serde`.
    Duration,
    Option(Box<Ty>),
    Array(Box<Ty>),
    /// A table with string keys.
    Map(Box<Ty>),
    Enum(EnumInfo),
    Struct(StructRef),
}

#[derive(Clone)]
pub struct StructRef {
    pub name: String,
    pub file: usize,
    pub item: syn::ItemStruct,
}

#[derive(Clone)]
pub struct EnumInfo {
    pub name: String,
    pub file: usize,
    pub variants: Vec<Variant>,
    /// The variant marked `#[default]`, if the enum derives `Default`.
    pub default_variant: Option<String>,
}

#[derive(Clone)]
pub struct Variant {
    /// The Rust name.
    pub ident: String,
    /// What a config file says.
    pub value: String,
    pub aliases: Vec<String>,
    pub doc: String,
}

impl Ty {
    /// A struct reached through `Option`, `Vec` or a map: a TOML table.
    pub fn table(&self) -> Option<(&StructRef, Container)> {
        match self {
            Ty::Struct(s) => Some((s, Container::Plain)),
            Ty::Option(inner) => match inner.table() {
                Some((s, Container::Plain)) => Some((s, Container::Optional)),
                other => other,
            },
            Ty::Array(inner) => match &**inner {
                Ty::Struct(s) => Some((s, Container::Array)),
                _ => None,
            },
            Ty::Map(inner) => match &**inner {
                Ty::Struct(s) => Some((s, Container::Map)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether a struct hides in it somewhere `table` does not find it (`Vec<Vec<T>>`, ...).
    pub fn nested_struct(&self) -> bool {
        match self {
            Ty::Struct(_) => true,
            Ty::Option(t) | Ty::Array(t) | Ty::Map(t) => t.nested_struct(),
            _ => false,
        }
    }

    /// The type as a reader of the config file sees it.
    pub fn describe(&self) -> String {
        match self {
            Ty::Str => "string".into(),
            Ty::Path => "string (a path)".into(),
            Ty::SocketAddr => "string (`\"ip:port\"`)".into(),
            Ty::IpAddr => "string (an IP address)".into(),
            Ty::IpNet => "string (a network, `\"address/prefix\"`)".into(),
            Ty::Bool => "boolean".into(),
            Ty::Int => "integer".into(),
            Ty::Float => "float".into(),
            Ty::Duration => "duration".into(),
            Ty::Option(t) => t.describe(),
            Ty::Array(t) => match &**t {
                Ty::Enum(_) => format!("array of ({})", t.describe_values()),
                _ => format!("array of {}", t.describe_plural()),
            },
            Ty::Map(t) => format!("table of {}, by name", t.describe_plural()),
            Ty::Enum(_) => format!("one of {}", self.describe_values()),
            Ty::Struct(s) => format!("table ({})", s.name),
        }
    }

    fn describe_plural(&self) -> String {
        match self {
            Ty::Str => "strings".into(),
            Ty::Path => "strings (paths)".into(),
            Ty::SocketAddr => "strings (`\"ip:port\"`)".into(),
            Ty::IpAddr => "strings (IP addresses)".into(),
            Ty::IpNet => "strings (networks, `\"address/prefix\"`)".into(),
            Ty::Bool => "booleans".into(),
            Ty::Int => "integers".into(),
            Ty::Float => "floats".into(),
            Ty::Duration => "durations".into(),
            other => other.describe(),
        }
    }

    fn describe_values(&self) -> String {
        match self {
            Ty::Enum(e) => e
                .variants
                .iter()
                .map(|v| format!("`\"{}\"`", v.value))
                .collect::<Vec<_>>()
                .join(" \\| "),
            other => other.describe(),
        }
    }

    /// The enum in it, if its values are listed (a field of an enum type, or an array of one).
    pub fn listed_enum(&self) -> Option<&EnumInfo> {
        match self {
            Ty::Enum(e) => Some(e),
            Ty::Option(t) | Ty::Array(t) => t.listed_enum(),
            _ => None,
        }
    }
}

/// How a table is reached from its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    Plain,
    Optional,
    /// `Vec<T>`: an array of tables, `[[a.b]]`.
    Array,
    /// A map with string keys: `[a.b.<name>]`.
    Map,
}

/// Resolves a field's Rust type to its TOML shape, as seen from `file`. `humantime` tells
/// whether the field is read with `humantime_serde` (the only way a `Duration` is accepted).
pub fn resolve(
    sources: &Sources,
    file: usize,
    ty: &syn::Type,
    humantime: bool,
) -> Result<Ty, String> {
    let syn::Type::Path(p) = ty else {
        return Err(format!("type `{}` is not supported", quote::quote!(#ty)));
    };
    let Some(last) = p.path.segments.last() else {
        return Err("empty type path".into());
    };
    let args: Vec<&syn::Type> = match &last.arguments {
        syn::PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|arg| match arg {
                syn::GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let name = last.ident.to_string();
    let arg = |i: usize| {
        args.get(i)
            .copied()
            .ok_or_else(|| format!("`{name}` without its type argument"))
    };
    Ok(match name.as_str() {
        "String" | "str" => Ty::Str,
        "PathBuf" | "Path" => Ty::Path,
        "SocketAddr" => Ty::SocketAddr,
        "IpAddr" | "Ipv4Addr" | "Ipv6Addr" => Ty::IpAddr,
        "IpNet" | "Ipv4Net" | "Ipv6Net" => Ty::IpNet,
        "bool" => Ty::Bool,
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128"
        | "isize" => Ty::Int,
        "f32" | "f64" => Ty::Float,
        "Duration" if humantime => Ty::Duration,
        "Duration" => {
            return Err("a `Duration` not read with `humantime_serde` is not supported".into());
        }
        "Option" => Ty::Option(Box::new(resolve(sources, file, arg(0)?, humantime)?)),
        "Vec" | "BTreeSet" | "HashSet" => {
            Ty::Array(Box::new(resolve(sources, file, arg(0)?, humantime)?))
        }
        "BTreeMap" | "HashMap" | "IndexMap" => {
            let key = resolve(sources, file, arg(0)?, false)?;
            if !matches!(key, Ty::Str) {
                return Err(format!(
                    "`{name}` keys other than strings are not supported"
                ));
            }
            Ty::Map(Box::new(resolve(sources, file, arg(1)?, humantime)?))
        }
        _ => match sources.find_type(file, &name)? {
            TypeDef::Struct(def) => Ty::Struct(StructRef {
                name,
                file: def.file,
                item: def.item,
            }),
            TypeDef::Enum(def) => Ty::Enum(enum_info(&def.item, def.file)?),
        },
    })
}

fn enum_info(item: &syn::ItemEnum, file: usize) -> Result<EnumInfo, String> {
    let name = item.ident.to_string();
    let serde = Serde::parse(&item.attrs).map_err(|e| format!("enum {name}: {e}"))?;
    if let Some(attr) = serde.unsupported.first() {
        return Err(format!(
            "enum {name}: #[serde({attr})] is not supported by the generator"
        ));
    }
    let mut variants = Vec::new();
    let mut default_variant = None;
    for v in &item.variants {
        let ident = v.ident.to_string();
        let vs = Serde::parse(&v.attrs).map_err(|e| format!("enum {name}::{ident}: {e}"))?;
        if vs.skip {
            continue;
        }
        if let Some(attr) = vs.unsupported.first() {
            return Err(format!(
                "enum {name}::{ident}: #[serde({attr})] is not supported by the generator"
            ));
        }
        if !matches!(v.fields, Fields::Unit) {
            return Err(format!(
                "enum {name}::{ident}: only unit variants (plain strings in TOML) are supported"
            ));
        }
        if v.attrs.iter().any(|a| a.path().is_ident("default")) {
            default_variant = Some(ident.clone());
        }
        let value = match vs.rename {
            Some(r) => r,
            None => rename_variant(&ident, serde.rename_all.as_deref())
                .map_err(|e| format!("enum {name}: {e}"))?,
        };
        variants.push(Variant {
            ident,
            value,
            aliases: vs.aliases,
            doc: doc_text(&v.attrs),
        });
    }
    if !derives_default(&item.attrs) {
        default_variant = None;
    }
    Ok(EnumInfo {
        name,
        file,
        variants,
        default_variant,
    })
}

/// A variant's name under `#[serde(rename_all = ...)]` (serde's rules).
pub fn rename_variant(ident: &str, rule: Option<&str>) -> Result<String, String> {
    let snake = || {
        let mut s = String::new();
        for (i, c) in ident.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        }
        s
    };
    Ok(match rule {
        None | Some("PascalCase") => ident.to_owned(),
        Some("lowercase") => ident.to_ascii_lowercase(),
        Some("UPPERCASE") => ident.to_ascii_uppercase(),
        Some("camelCase") => {
            let mut c = ident.chars();
            c.next()
                .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
                .unwrap_or_default()
        }
        Some("snake_case") => snake(),
        Some("SCREAMING_SNAKE_CASE") => snake().to_ascii_uppercase(),
        Some("kebab-case") => snake().replace('_', "-"),
        Some("SCREAMING-KEBAB-CASE") => snake().replace('_', "-").to_ascii_uppercase(),
        Some(other) => return Err(format!("unknown rename_all rule {other:?}")),
    })
}

/// A field's name under `#[serde(rename_all = ...)]` (fields are snake_case in Rust).
pub fn rename_field(ident: &str, rule: Option<&str>) -> Result<String, String> {
    let pascal = || {
        ident
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect::<String>()
    };
    Ok(match rule {
        None | Some("snake_case") => ident.to_owned(),
        Some("lowercase") => ident.to_ascii_lowercase(),
        Some("UPPERCASE") | Some("SCREAMING_SNAKE_CASE") => ident.to_ascii_uppercase(),
        Some("PascalCase") => pascal(),
        Some("camelCase") => {
            let p = pascal();
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
                .unwrap_or_default()
        }
        Some("kebab-case") => ident.replace('_', "-"),
        Some("SCREAMING-KEBAB-CASE") => ident.replace('_', "-").to_ascii_uppercase(),
        Some(other) => return Err(format!("unknown rename_all rule {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_follow_serde() {
        let v = |i, r| rename_variant(i, Some(r)).expect("rule");
        assert_eq!(v("OpenaiCompatible", "kebab-case"), "openai-compatible");
        assert_eq!(v("O200k", "snake_case"), "o200k");
        assert_eq!(v("UseLease", "lowercase"), "uselease");
        assert_eq!(v("VerifyFull", "SCREAMING_SNAKE_CASE"), "VERIFY_FULL");
        let f = |i, r| rename_field(i, Some(r)).expect("rule");
        assert_eq!(f("pool_size", "kebab-case"), "pool-size");
        assert_eq!(f("pool_size", "camelCase"), "poolSize");
        assert_eq!(f("pool_size", "PascalCase"), "PoolSize");
    }

    #[test]
    fn doc_text_drops_the_leading_space_and_intra_doc_links() {
        let item: syn::ItemStruct = syn::parse_quote! {
            /// First line, see [`Foo::bar`].
            ///
            ///   indented [`kept`](url)
            struct S;
        };
        assert_eq!(
            doc_text(&item.attrs),
            "First line, see `Foo::bar`.\n\n  indented [`kept`](url)"
        );
    }
}
