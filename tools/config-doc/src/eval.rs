//! Evaluating default expressions (`Duration::from_secs(5)`, `SocketAddr::from(([127, 0, 0, 1],
//! 6432))`, `vec![...]`, constants, `defaults::x()`, ...) and writing them as TOML values.
//!
//! Only the forms listed in [`Evaluator::eval`] are understood; anything else is an error that
//! the caller turns into "state the default in the doc comment".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use quote::ToTokens;
use syn::{BinOp, Expr, Lit};

use crate::model::{EnumInfo, Ty};
use crate::source::{Scope, Sources, tail_expr};

/// A value computed from a default expression.
#[derive(Clone, Debug)]
pub enum Value {
    Str(String),
    Int(i128),
    /// As written (`0.8`).
    Float(String),
    Bool(bool),
    /// Nanoseconds.
    Duration(u128),
    Ip(IpAddr),
    Net(IpAddr, u8),
    Socket(SocketAddr),
    Variant {
        enum_name: String,
        variant: String,
    },
    Array(Vec<Value>),
    Tuple(Vec<Value>),
    EmptyMap,
    None,
    /// `Default::default()`: whatever the field's type defaults to.
    TypeDefault,
}

/// A default as the reference shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shown {
    /// A TOML value.
    Toml(String),
    /// An `Option` left at `None`.
    NotSet,
}

pub struct Evaluator<'a> {
    pub sources: &'a Sources,
}

/// Calls nested deeper than this are taken for a cycle.
const MAX_DEPTH: usize = 16;

impl Evaluator<'_> {
    /// Evaluates the body of a function (`#[serde(default = "...")]`).
    pub fn eval_block(
        &self,
        scope: &Scope,
        block: &syn::Block,
        depth: usize,
    ) -> Result<Value, String> {
        let expr = tail_expr(block)
            .ok_or_else(|| format!("`{}` is not a single expression", short(block)))?;
        self.eval(scope, expr, depth)
    }

    /// Evaluates `expr`. Understood: literals; `+ - * / <<` on integers; `vec![..]`, arrays and
    /// tuples; `Some(x)`, `None`; `Enum::Variant`; constants; calls of argument-less functions
    /// of the config module; `Duration::from_secs/_millis/_micros/_nanos`, `Duration::ZERO`;
    /// `SocketAddr::from((ip, port))` and `SocketAddr::new`; `Ipv4Addr::new`, `LOCALHOST`,
    /// `UNSPECIFIED`; `IpAddr::V4/V6`, `IpNet::V4/V6`; `String::from`, `PathBuf::from`,
    /// `.to_owned()`, `.to_string()`, `.into()`, `.parse()`, `.unwrap()`, `.expect(..)`;
    /// `Vec::new()`, `BTreeMap::new()`, `String::new()`, `Default::default()`.
    pub fn eval(&self, scope: &Scope, expr: &Expr, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("default functions call each other too deeply".into());
        }
        let unsupported = || Err(format!("cannot evaluate `{}`", short(expr)));
        match expr {
            Expr::Lit(lit) => match &lit.lit {
                Lit::Str(s) => Ok(Value::Str(s.value())),
                Lit::Int(i) => i
                    .base10_parse::<i128>()
                    .map(Value::Int)
                    .map_err(|e| e.to_string()),
                Lit::Float(f) => Ok(Value::Float(f.base10_digits().to_owned())),
                Lit::Bool(b) => Ok(Value::Bool(b.value)),
                _ => unsupported(),
            },
            Expr::Paren(e) => self.eval(scope, &e.expr, depth),
            Expr::Group(e) => self.eval(scope, &e.expr, depth),
            Expr::Reference(e) => self.eval(scope, &e.expr, depth),
            Expr::Cast(e) => self.eval(scope, &e.expr, depth),
            Expr::Block(b) if b.label.is_none() => self.eval_block(scope, &b.block, depth),
            Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => {
                match self.eval(scope, &u.expr, depth)? {
                    Value::Int(i) => Ok(Value::Int(-i)),
                    Value::Float(f) => Ok(Value::Float(format!("-{f}"))),
                    _ => unsupported(),
                }
            }
            Expr::Binary(b) => {
                let (Value::Int(l), Value::Int(r)) = (
                    self.eval(scope, &b.left, depth)?,
                    self.eval(scope, &b.right, depth)?,
                ) else {
                    return unsupported();
                };
                let v = match b.op {
                    BinOp::Add(_) => l.checked_add(r),
                    BinOp::Sub(_) => l.checked_sub(r),
                    BinOp::Mul(_) => l.checked_mul(r),
                    BinOp::Div(_) => l.checked_div(r),
                    BinOp::Shl(_) => u32::try_from(r).ok().and_then(|r| l.checked_shl(r)),
                    _ => None,
                };
                v.map(Value::Int)
                    .ok_or_else(|| format!("cannot evaluate `{}`", short(expr)))
            }
            Expr::Array(a) => a
                .elems
                .iter()
                .map(|e| self.eval(scope, e, depth))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Expr::Tuple(t) => t
                .elems
                .iter()
                .map(|e| self.eval(scope, e, depth))
                .collect::<Result<_, _>>()
                .map(Value::Tuple),
            Expr::Macro(m) if m.mac.path.is_ident("vec") => {
                let elems = m
                    .mac
                    .parse_body_with(
                        syn::punctuated::Punctuated::<Expr, syn::Token![,]>::parse_terminated,
                    )
                    .map_err(|_| format!("cannot evaluate `{}`", short(expr)))?;
                elems
                    .iter()
                    .map(|e| self.eval(scope, e, depth))
                    .collect::<Result<_, _>>()
                    .map(Value::Array)
            }
            Expr::Path(p) => self.eval_path(scope, &segments(&p.path), depth),
            Expr::Call(c) => {
                let Expr::Path(f) = &*c.func else {
                    return unsupported();
                };
                let path = segments(&f.path);
                let args = c
                    .args
                    .iter()
                    .map(|a| self.eval(scope, a, depth))
                    .collect::<Result<Vec<_>, _>>()?;
                match self.call(&path, args)? {
                    Some(v) => Ok(v),
                    None if c.args.is_empty() => match self.sources.find_fn(scope, &path) {
                        Some((inner, block)) => self.eval_block(&inner, &block, depth + 1),
                        None => Err(format!("cannot find the function `{}`", path.join("::"))),
                    },
                    None => unsupported(),
                }
            }
            Expr::MethodCall(m) => {
                let receiver = self.eval(scope, &m.receiver, depth)?;
                match (m.method.to_string().as_str(), receiver) {
                    (
                        "to_owned" | "to_string" | "into" | "clone" | "unwrap" | "expect"
                        | "to_path_buf" | "as_str" | "as_ref",
                        v,
                    ) => Ok(v),
                    // A string parsed into the field's type: the TOML value is the string.
                    ("parse", v @ Value::Str(_)) => Ok(v),
                    _ => unsupported(),
                }
            }
            _ => unsupported(),
        }
    }

    fn eval_path(&self, scope: &Scope, path: &[String], depth: usize) -> Result<Value, String> {
        let tail: Vec<&str> = path
            .iter()
            .rev()
            .take(2)
            .rev()
            .map(String::as_str)
            .collect();
        match tail.as_slice() {
            ["None"] => return Ok(Value::None),
            ["Ipv4Addr", "LOCALHOST"] => return Ok(Value::Ip(Ipv4Addr::LOCALHOST.into())),
            ["Ipv4Addr", "UNSPECIFIED"] => return Ok(Value::Ip(Ipv4Addr::UNSPECIFIED.into())),
            ["Ipv6Addr", "LOCALHOST"] => return Ok(Value::Ip(Ipv6Addr::LOCALHOST.into())),
            ["Ipv6Addr", "UNSPECIFIED"] => return Ok(Value::Ip(Ipv6Addr::UNSPECIFIED.into())),
            ["Duration", "ZERO"] => return Ok(Value::Duration(0)),
            [name] => {
                let def = self.sources.find_const(scope.file, name)?;
                let inner = Scope {
                    file: def.file,
                    module: Vec::new(),
                    impl_type: None,
                };
                return self.eval(&inner, &def.item.expr, depth + 1);
            }
            _ => {}
        }
        if let [ty, variant] = tail.as_slice() {
            let ty = match (*ty, &scope.impl_type) {
                ("Self", Some(t)) => t.as_str(),
                (t, _) => t,
            };
            if let Ok(crate::source::TypeDef::Enum(e)) = self.sources.find_type(scope.file, ty)
                && e.item.variants.iter().any(|v| v.ident == variant)
            {
                return Ok(Value::Variant {
                    enum_name: ty.to_owned(),
                    variant: (*variant).to_owned(),
                });
            }
        }
        Err(format!("cannot evaluate `{}`", path.join("::")))
    }

    /// The std and ipnet functions understood; `None` for other paths.
    fn call(&self, path: &[String], args: Vec<Value>) -> Result<Option<Value>, String> {
        let tail: Vec<&str> = path
            .iter()
            .rev()
            .take(2)
            .rev()
            .map(String::as_str)
            .collect();
        let bad = || Err(format!("cannot evaluate a call of `{}`", path.join("::")));
        let int = |v: &Value| match v {
            Value::Int(i) => u128::try_from(*i).ok(),
            _ => None,
        };
        let octets = |v: &Value| -> Option<IpAddr> {
            match v {
                Value::Ip(ip) => Some(*ip),
                Value::Array(a) if a.len() == 4 => {
                    let mut o = [0u8; 4];
                    for (slot, v) in o.iter_mut().zip(a) {
                        *slot = u8::try_from(int(v)?).ok()?;
                    }
                    Some(IpAddr::from(o))
                }
                Value::Array(a) if a.len() == 16 => {
                    let mut o = [0u8; 16];
                    for (slot, v) in o.iter_mut().zip(a) {
                        *slot = u8::try_from(int(v)?).ok()?;
                    }
                    Some(IpAddr::from(o))
                }
                _ => None,
            }
        };
        let single = |args: Vec<Value>| args.into_iter().next();
        // `SocketAddr::from((ip, port))` takes its two arguments as one tuple.
        let args = match (tail.as_slice(), args.as_slice()) {
            (["SocketAddr", "from"], [Value::Tuple(pair)]) => pair.clone(),
            _ => args,
        };
        Ok(Some(match (tail.as_slice(), args.as_slice()) {
            (["Some"], [_]) => return Ok(single(args)),
            (
                [
                    "Duration",
                    f @ ("from_secs" | "from_millis" | "from_micros" | "from_nanos"),
                ],
                [v],
            ) => {
                let Some(n) = int(v) else { return bad() };
                let unit: u128 = match *f {
                    "from_secs" => 1_000_000_000,
                    "from_millis" => 1_000_000,
                    "from_micros" => 1_000,
                    _ => 1,
                };
                Value::Duration(n * unit)
            }
            (["SocketAddr", "from" | "new"], [ip, port]) => {
                let (Some(ip), Some(port)) = (octets(ip), int(port)) else {
                    return bad();
                };
                let Ok(port) = u16::try_from(port) else {
                    return bad();
                };
                Value::Socket(SocketAddr::new(ip, port))
            }
            (["Ipv4Addr", "new"], [a, b, c, d]) => {
                let parts = [a, b, c, d].map(|v| int(v).and_then(|i| u8::try_from(i).ok()));
                let [Some(a), Some(b), Some(c), Some(d)] = parts else {
                    return bad();
                };
                Value::Ip(Ipv4Addr::new(a, b, c, d).into())
            }
            (["IpAddr" | "Ipv4Addr" | "Ipv6Addr", "V4" | "V6" | "from"], [v]) => {
                let Some(ip) = octets(v) else { return bad() };
                Value::Ip(ip)
            }
            (["IpNet", "V4" | "V6" | "from"], [v]) => match v {
                Value::Net(..) => v.clone(),
                _ => {
                    let Some(ip) = octets(v) else { return bad() };
                    Value::Net(ip, if ip.is_ipv4() { 32 } else { 128 })
                }
            },
            (["IpNet" | "Ipv4Net" | "Ipv6Net", "new"], [ip, prefix]) => {
                let (Some(ip), Some(prefix)) = (octets(ip), int(prefix)) else {
                    return bad();
                };
                let Ok(prefix) = u8::try_from(prefix) else {
                    return bad();
                };
                Value::Net(ip, prefix)
            }
            (
                [
                    "String" | "PathBuf" | "From" | "Into" | "ToOwned" | "Path",
                    "from" | "into" | "new" | "to_owned",
                ],
                [_],
            ) => return Ok(single(args)),
            (["Vec" | "BTreeSet" | "HashSet", "new"], []) => Value::Array(Vec::new()),
            (["BTreeMap" | "HashMap" | "IndexMap", "new"], []) => Value::EmptyMap,
            (["String", "new"], []) => Value::Str(String::new()),
            ([.., "default"], []) => Value::TypeDefault,
            _ => return Ok(None),
        }))
    }

    /// Writes `value` as a TOML value of type `ty`.
    pub fn render(&self, value: &Value, ty: &Ty, depth: usize) -> Result<Shown, String> {
        let mismatch = || {
            Err(format!(
                "the default {value:?} does not fit the type ({})",
                ty.describe()
            ))
        };
        let toml = |s: String| Ok(Shown::Toml(s));
        match (value, ty) {
            (Value::TypeDefault, _) => self.type_default(ty, depth),
            (Value::None, Ty::Option(_)) => Ok(Shown::NotSet),
            (Value::None, _) => mismatch(),
            (v, Ty::Option(inner)) => self.render(v, inner, depth),
            (Value::Str(s), Ty::Str | Ty::Path | Ty::SocketAddr | Ty::IpAddr | Ty::IpNet) => {
                toml(toml_string(s))
            }
            (Value::Str(s), Ty::Enum(e)) if e.variants.iter().any(|v| &v.value == s) => {
                toml(toml_string(s))
            }
            (Value::Int(i), Ty::Int) => toml(i.to_string()),
            (Value::Int(i), Ty::Float) => toml(format!("{i}.0")),
            (Value::Float(f), Ty::Float) => toml(f.clone()),
            (Value::Bool(b), Ty::Bool) => toml(b.to_string()),
            (Value::Duration(n), Ty::Duration) => toml(toml_string(&format_duration(*n))),
            (Value::Ip(ip), Ty::IpAddr) => toml(toml_string(&ip.to_string())),
            (Value::Ip(ip), Ty::IpNet) => {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                toml(toml_string(&format!("{ip}/{prefix}")))
            }
            (Value::Net(ip, prefix), Ty::IpNet) => toml(toml_string(&format!("{ip}/{prefix}"))),
            (Value::Socket(s), Ty::SocketAddr) => toml(toml_string(&s.to_string())),
            (Value::Variant { enum_name, variant }, Ty::Enum(e)) if *enum_name == e.name => {
                match e.variants.iter().find(|v| v.ident == *variant) {
                    Some(v) => toml(toml_string(&v.value)),
                    None => Err(format!(
                        "{enum_name}::{variant} cannot be written in a config"
                    )),
                }
            }
            (Value::Array(items), Ty::Array(inner)) => {
                let mut out = Vec::new();
                for item in items {
                    match self.render(item, inner, depth)? {
                        Shown::Toml(s) => out.push(s),
                        Shown::NotSet => return mismatch(),
                    }
                }
                toml(format!("[{}]", out.join(", ")))
            }
            (Value::EmptyMap, Ty::Map(_)) => toml("{}".into()),
            _ => mismatch(),
        }
    }

    /// What `Default::default()` gives for `ty`.
    fn type_default(&self, ty: &Ty, depth: usize) -> Result<Shown, String> {
        let toml = |s: &str| Ok(Shown::Toml(s.to_owned()));
        match ty {
            Ty::Option(_) => Ok(Shown::NotSet),
            Ty::Str | Ty::Path => toml("\"\""),
            Ty::Bool => toml("false"),
            Ty::Int => toml("0"),
            Ty::Float => toml("0.0"),
            Ty::Duration => toml("\"0s\""),
            Ty::Array(_) => toml("[]"),
            Ty::Map(_) => toml("{}"),
            Ty::Enum(e) => self.enum_default(e, ty, depth),
            Ty::SocketAddr | Ty::IpAddr | Ty::IpNet | Ty::Struct(_) => {
                Err(format!("no mechanical default for a {}", ty.describe()))
            }
        }
    }

    fn enum_default(&self, e: &EnumInfo, ty: &Ty, depth: usize) -> Result<Shown, String> {
        if let Some(ident) = &e.default_variant {
            let value = Value::Variant {
                enum_name: e.name.clone(),
                variant: ident.clone(),
            };
            return self.render(&value, ty, depth);
        }
        let Some((scope, block)) = self.sources.default_fn(e.file, &e.name) else {
            return Err(format!(
                "enum {} has neither a #[default] variant nor an `impl Default`",
                e.name
            ));
        };
        let value = self.eval_block(&scope, &block, depth + 1)?;
        if matches!(value, Value::TypeDefault) {
            return Err(format!("`impl Default for {}` calls itself", e.name));
        }
        self.render(&value, ty, depth + 1)
    }
}

fn segments(path: &syn::Path) -> Vec<String> {
    path.segments.iter().map(|s| s.ident.to_string()).collect()
}

/// Source text for messages, shortened.
fn short(tokens: &impl ToTokens) -> String {
    let s = tokens.to_token_stream().to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration the way `humantime` parses it: `"1h 30m"`, `"250ms"`, `"0s"`.
pub fn format_duration(nanos: u128) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    const UNITS: [(u128, &str); 7] = [
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let mut rest = nanos;
    let mut parts = Vec::new();
    for (size, unit) in UNITS {
        if rest >= size {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_back_by_humantime() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(5_000_000_000), "5s");
        assert_eq!(format_duration(3_600_000_000_000), "1h");
        assert_eq!(format_duration(5_400_000_000_000), "1h 30m");
        assert_eq!(format_duration(250_000_000), "250ms");
        assert_eq!(format_duration(86_400_000_000_000 + 1), "1d 1ns");
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
