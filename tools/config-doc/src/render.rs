//! Walking the config types from `Config` and writing the reference.

use std::collections::HashMap;

use crate::eval::{Evaluator, Shown, Value};
use crate::model::{Container, DefaultAttr, Serde, StructRef, Ty, derives_default, doc_text};
use crate::source::{Scope, Sources, TypeDef, tail_expr};

/// The command that regenerates the reference.
pub const COMMAND: &str = "cargo run -p sentinel-config-doc";

/// The root type of `sentinel.toml`, in the config module's root file.
const ROOT: &str = "Config";

/// Renders the whole reference, or every problem found on the way.
pub fn render(sources: &Sources) -> Result<String, Vec<String>> {
    let mut walk = Walk {
        sources,
        eval: Evaluator { sources },
        errors: Vec::new(),
        sections: Vec::new(),
        rendered: HashMap::new(),
        stack: Vec::new(),
    };
    walk.root();
    if !walk.errors.is_empty() {
        return Err(walk.errors);
    }
    let preamble = doc_text(&sources.files[0].ast.attrs);
    Ok(write(&preamble, &walk.sections))
}

struct Walk<'a> {
    sources: &'a Sources,
    eval: Evaluator<'a>,
    errors: Vec<String>,
    sections: Vec<Section>,
    /// Structs already written out, with the title of their section.
    rendered: HashMap<(usize, String), String>,
    /// Structs being walked, to catch a cycle.
    stack: Vec<(usize, String)>,
}

struct Section {
    depth: usize,
    /// `` `[postgres.upstream]` ``.
    title: String,
    intro: Vec<String>,
    keys: Vec<Key>,
    /// Titles of the tables within.
    tables: Vec<String>,
    /// The title of the section with the same keys, for a struct met before.
    same_as: Option<String>,
    /// Whether unknown keys are refused.
    strict: bool,
}

struct Key {
    name: String,
    aliases: Vec<String>,
    ty: String,
    default: DefaultLine,
    doc: String,
    /// An enum's values: value, aliases, doc.
    values: Vec<(String, Vec<String>, String)>,
}

enum DefaultLine {
    Required,
    NotSet,
    /// A TOML value, and a note on it (`32 MiB`).
    Toml(String, Option<String>),
    /// In the doc comment's words.
    Stated(String),
}

/// A default as derived from the code.
enum Derived {
    Required,
    NotSet,
    Toml(String),
    Unknown(String),
}

/// A field of a table, flattened fields included.
struct Field {
    ident: String,
    key: String,
    aliases: Vec<String>,
    doc: String,
    ty: Ty,
    serde: Serde,
    owner: StructRef,
    owner_serde: Serde,
}

/// A table to walk after its parent's section.
struct Child {
    path: Vec<String>,
    container: Container,
    table: StructRef,
    intro: Vec<String>,
}

impl Walk<'_> {
    fn error(&mut self, message: String) {
        if !self.errors.contains(&message) {
            self.errors.push(message);
        }
    }

    fn root(&mut self) {
        let root = match self.sources.find_type(0, ROOT) {
            Ok(TypeDef::Struct(def)) => StructRef {
                name: ROOT.to_owned(),
                file: def.file,
                item: def.item,
            },
            Ok(TypeDef::Enum(_)) => return self.error(format!("`{ROOT}` is not a struct")),
            Err(e) => return self.error(e),
        };
        self.table(Vec::new(), Container::Plain, &root, Vec::new(), 0);
    }

    fn table(
        &mut self,
        path: Vec<String>,
        container: Container,
        table: &StructRef,
        mut intro: Vec<String>,
        depth: usize,
    ) {
        let heading = title(&path, container);
        let id = (table.file, table.name.clone());
        if let Some(first) = self.rendered.get(&id) {
            self.sections.push(Section {
                depth,
                title: heading,
                intro,
                keys: Vec::new(),
                tables: Vec::new(),
                same_as: Some(first.clone()),
                strict: true,
            });
            return;
        }
        if self.stack.contains(&id) {
            return self.error(format!("{heading}: `{}` contains itself", table.name));
        }
        let serde = match Serde::parse(&table.item.attrs) {
            Ok(s) => s,
            Err(e) => return self.error(format!("{heading} ({}): {e}", table.name)),
        };
        let own_doc = doc_text(&table.item.attrs);
        if !own_doc.is_empty() {
            intro.insert(0, own_doc);
        }
        let mut fields = Vec::new();
        self.fields(&path, table, &mut fields);

        let mut keys = Vec::new();
        let mut children = Vec::new();
        for field in fields {
            let dotted = dotted(&path, &field.key);
            if field.doc.is_empty() {
                self.error(format!(
                    "{dotted}: no doc comment (`{}::{}` in {}): write a `///` comment saying what \
                     it does",
                    field.owner.name, field.ident, self.sources.files[field.owner.file].rel
                ));
            }
            if let Some((sub, container)) = field.ty.table() {
                let mut sub_path = path.clone();
                sub_path.push(field.key.clone());
                if container == Container::Map {
                    sub_path.push("<name>".to_owned());
                }
                let required = container == Container::Plain
                    && field.serde.default.is_none()
                    && field.owner_serde.default.is_none();
                let mut sub_intro = vec![field.doc.clone()];
                sub_intro.extend(presence(&sub_path, container, required));
                children.push(Child {
                    path: sub_path,
                    container,
                    table: sub.clone(),
                    intro: sub_intro,
                });
            } else if field.ty.nested_struct() {
                self.error(format!(
                    "{dotted}: a table nested in an array or map of arrays or maps is not \
                     supported by the generator"
                ));
            } else {
                keys.push(self.key(&dotted, field));
            }
        }
        let tables = children
            .iter()
            .map(|c| title(&c.path, c.container))
            .collect();
        // The root holds only tables: it gets a section only for keys of its own.
        if !path.is_empty() || !keys.is_empty() {
            self.sections.push(Section {
                depth,
                title: if path.is_empty() {
                    "Top-level keys".to_owned()
                } else {
                    heading.clone()
                },
                intro,
                keys,
                tables,
                same_as: None,
                strict: serde.deny_unknown_fields,
            });
        }
        self.rendered.insert(id.clone(), heading);
        self.stack.push(id);
        let child_depth = if path.is_empty() { depth } else { depth + 1 };
        for child in children {
            self.table(
                child.path,
                child.container,
                &child.table,
                child.intro,
                child_depth,
            );
        }
        self.stack.pop();
    }

    /// The fields of `table` as keys of its TOML table, `#[serde(flatten)]` ones expanded.
    fn fields(&mut self, path: &[String], table: &StructRef, out: &mut Vec<Field>) {
        let here = |what: &str| {
            format!(
                "{} (`{}` in {})",
                if path.is_empty() {
                    "the root table".to_owned()
                } else {
                    title(path, Container::Plain)
                },
                table.name,
                what
            )
        };
        let file = &self.sources.files[table.file].rel;
        let owner_serde = match Serde::parse(&table.item.attrs) {
            Ok(s) => s,
            Err(e) => return self.error(format!("{}: {e}", here(file))),
        };
        if let Some(attr) = owner_serde.unsupported.first() {
            return self.error(format!(
                "{}: #[serde({attr})] is not supported by the generator",
                here(file)
            ));
        }
        let syn::Fields::Named(named) = &table.item.fields else {
            return self.error(format!(
                "{}: only structs with named fields are tables",
                here(file)
            ));
        };
        for f in &named.named {
            let ident = f
                .ident
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let serde = match Serde::parse(&f.attrs) {
                Ok(s) => s,
                Err(e) => {
                    self.error(format!("{}::{ident}: {e}", here(file)));
                    continue;
                }
            };
            if serde.skip {
                continue;
            }
            if let Some(attr) = serde.unsupported.first() {
                self.error(format!(
                    "{}::{ident}: #[serde({attr})] is not supported by the generator",
                    here(file)
                ));
                continue;
            }
            let humantime = match serde.with.as_deref() {
                None => false,
                Some("humantime_serde") => true,
                Some(other) => {
                    self.error(format!(
                        "{}::{ident}: #[serde(with = {other:?})] is not supported by the generator",
                        here(file)
                    ));
                    continue;
                }
            };
            let ty = match crate::model::resolve(self.sources, table.file, &f.ty, humantime) {
                Ok(ty) => ty,
                Err(e) => {
                    self.error(format!("{}::{ident}: {e}", here(file)));
                    continue;
                }
            };
            if serde.flatten {
                match &ty {
                    Ty::Struct(inner) => {
                        let inner = inner.clone();
                        self.fields(path, &inner, out);
                    }
                    _ => self.error(format!(
                        "{}::{ident}: only a struct can be flattened",
                        here(file)
                    )),
                }
                continue;
            }
            let key = match &serde.rename {
                Some(r) => r.clone(),
                None => match crate::model::rename_field(&ident, owner_serde.rename_all.as_deref())
                {
                    Ok(k) => k,
                    Err(e) => {
                        self.error(format!("{}: {e}", here(file)));
                        continue;
                    }
                },
            };
            out.push(Field {
                ident,
                key,
                aliases: serde.aliases.clone(),
                doc: doc_text(&f.attrs),
                ty,
                serde,
                owner: table.clone(),
                owner_serde: Serde {
                    default: owner_serde.default.clone(),
                    ..Serde::default()
                },
            });
        }
    }

    fn key(&mut self, dotted: &str, field: Field) -> Key {
        let (doc, stated) = match split_stated(&field.doc) {
            Ok(split) => split,
            Err(e) => {
                self.error(format!("{dotted}: {e}"));
                (field.doc.clone(), None)
            }
        };
        if doc.is_empty() && !field.doc.is_empty() {
            self.error(format!(
                "{dotted}: the doc comment only states the default: say what the key does too"
            ));
        }
        let default = match (self.derive(&field), stated) {
            (Derived::Required, None) => DefaultLine::Required,
            (Derived::Required, Some(s)) => {
                self.error(format!(
                    "{dotted}: the doc comment says `Default: {s}` but the key is required (it \
                     has no #[serde(default)])"
                ));
                DefaultLine::Required
            }
            (Derived::Toml(v), None) => DefaultLine::Toml(v, None),
            (Derived::Toml(v), Some(s)) => {
                let bare = v.trim_matches('"');
                if !s.contains(&v) && !s.contains(bare) {
                    self.error(format!(
                        "{dotted}: the doc comment says `Default: {s}` but the code's default is \
                         {v}"
                    ));
                }
                DefaultLine::Toml(v, None)
            }
            (Derived::NotSet, None) => DefaultLine::NotSet,
            (Derived::NotSet | Derived::Unknown(_), Some(s)) => DefaultLine::Stated(s),
            (Derived::Unknown(why), None) => {
                self.error(format!(
                    "{dotted}: the default cannot be written out mechanically ({why}); say it in \
                     the doc comment as a sentence `Default: ….` (`{}::{}` in {})",
                    field.owner.name, field.ident, self.sources.files[field.owner.file].rel
                ));
                DefaultLine::Stated(String::new())
            }
        };
        let mut values = Vec::new();
        if let Some(e) = field.ty.listed_enum() {
            for v in &e.variants {
                if v.doc.is_empty() {
                    self.error(format!(
                        "{dotted}: the value \"{}\" has no doc comment (`{}::{}` in {}): write a \
                         `///` comment saying what it does",
                        v.value, e.name, v.ident, self.sources.files[e.file].rel
                    ));
                }
                values.push((v.value.clone(), v.aliases.clone(), v.doc.clone()));
            }
        }
        // A size in bytes reads better in MiB as well.
        let default = match default {
            DefaultLine::Toml(v, None) if field.key.ends_with("bytes") => {
                let note = v.parse::<u128>().ok().and_then(size_note);
                DefaultLine::Toml(v, note)
            }
            other => other,
        };
        Key {
            name: field.key,
            aliases: field.aliases,
            ty: field.ty.describe(),
            default,
            doc,
            values,
        }
    }

    /// The default the code gives a key.
    fn derive(&self, field: &Field) -> Derived {
        let scope = Scope {
            file: field.owner.file,
            module: Vec::new(),
            impl_type: Some(field.owner.name.clone()),
        };
        let from_fn = |path: &str| -> Result<(Scope, syn::Block), String> {
            let segments: Vec<String> = path.split("::").map(str::to_owned).collect();
            self.sources
                .find_fn(&scope, &segments)
                .ok_or_else(|| format!("cannot find the function `{path}`"))
        };
        let value = match (&field.serde.default, &field.owner_serde.default) {
            (Some(DefaultAttr::Path(path)), _) => {
                from_fn(path).and_then(|(scope, block)| self.eval.eval_block(&scope, &block, 0))
            }
            (Some(DefaultAttr::Trait), _) => Ok(Value::TypeDefault),
            (None, Some(DefaultAttr::Trait)) if derives_default(&field.owner.item.attrs) => {
                Ok(Value::TypeDefault)
            }
            (None, Some(DefaultAttr::Trait)) => {
                match self
                    .sources
                    .default_literal(field.owner.file, &field.owner.name)
                {
                    Some(Ok((scope, literal))) => self.literal_field(&scope, &literal, field),
                    Some(Err(e)) => Err(e),
                    None => Err(format!("no `impl Default for {}` found", field.owner.name)),
                }
            }
            (None, Some(DefaultAttr::Path(path))) => {
                from_fn(path).and_then(|(scope, block)| match tail_expr(&block) {
                    Some(syn::Expr::Struct(literal)) if literal.rest.is_none() => {
                        self.literal_field(&scope, literal, field)
                    }
                    _ => Err(format!("`{path}` is not a single struct literal")),
                })
            }
            (None, None) if matches!(field.ty, Ty::Option(_)) => return Derived::NotSet,
            (None, None) => return Derived::Required,
        };
        match value.and_then(|v| self.eval.render(&v, &field.ty, 0)) {
            Ok(Shown::Toml(v)) => Derived::Toml(v),
            Ok(Shown::NotSet) => Derived::NotSet,
            Err(e) => Derived::Unknown(e),
        }
    }

    fn literal_field(
        &self,
        scope: &Scope,
        literal: &syn::ExprStruct,
        field: &Field,
    ) -> Result<Value, String> {
        let expr = literal
            .fields
            .iter()
            .find(|fv| matches!(&fv.member, syn::Member::Named(i) if *i == field.ident))
            .map(|fv| &fv.expr)
            .ok_or_else(|| {
                format!(
                    "`impl Default for {}` does not set `{}`",
                    field.owner.name, field.ident
                )
            })?;
        self.eval.eval(scope, expr, 0)
    }
}

/// `32 MiB` for a whole number of KiB, MiB or GiB.
fn size_note(n: u128) -> Option<String> {
    [(1u128 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        .into_iter()
        .find(|(unit, _)| n >= *unit && n.is_multiple_of(*unit))
        .map(|(unit, name)| format!("{} {name}", n / unit))
}

/// What a section says about a table's presence, beyond its doc comments.
fn presence(path: &[String], container: Container, required: bool) -> Option<String> {
    match container {
        Container::Array => Some(format!(
            "An array of tables: one `[[{}]]` per entry.",
            path.join(".")
        )),
        Container::Map => Some(format!(
            "One table per name: `[{}]`, with the name in place of `<name>`.",
            path.join(".")
        )),
        Container::Plain if required => Some("Required.".to_owned()),
        _ => None,
    }
}

/// Splits off the `Default: ….` sentence of a doc comment: the text without it, and what it
/// says. The sentence starts a paragraph or follows a sentence's end, and ends at a `.` (outside
/// code) followed by white space, or at the end of its paragraph.
fn split_stated(doc: &str) -> Result<(String, Option<String>), String> {
    const MARK: &str = "Default:";
    let starts: Vec<usize> = doc
        .match_indices(MARK)
        .map(|(i, _)| i)
        .filter(|&i| {
            let before = doc[..i].trim_end_matches([' ', '\n']);
            before.is_empty() || before.ends_with('.') || doc[..i].ends_with("\n\n")
        })
        .collect();
    let start = match starts.as_slice() {
        [] => return Ok((doc.to_owned(), None)),
        [one] => *one,
        _ => return Err("the doc comment says `Default:` more than once".to_owned()),
    };
    let body = &doc[start + MARK.len()..];
    let mut in_code = false;
    let mut end = body.len();
    let mut next = body.len();
    let bytes = body.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'`' => in_code = !in_code,
            b'.' if !in_code && bytes.get(i + 1).is_none_or(|c| c.is_ascii_whitespace()) => {
                end = i;
                next = i + 1;
                break;
            }
            b'\n' if bytes.get(i + 1) == Some(&b'\n') => {
                end = i;
                next = i;
                break;
            }
            _ => {}
        }
    }
    let stated = body[..end].split_whitespace().collect::<Vec<_>>().join(" ");
    if stated.is_empty() {
        return Err("the doc comment's `Default:` says nothing".to_owned());
    }
    let before = doc[..start].trim_end_matches(' ');
    let after = body[next..].trim_start_matches(' ');
    let rest = if before.ends_with('\n') || before.is_empty() || after.starts_with('\n') {
        format!("{before}{after}")
    } else if after.is_empty() {
        before.to_owned()
    } else {
        format!("{before} {after}")
    };
    let rest = rest
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned();
    Ok((rest, Some(stated)))
}

/// `` `[postgres.upstream]` ``, `` `[[postgres.users]]` ``.
fn title(path: &[String], container: Container) -> String {
    let p = path
        .iter()
        .map(|s| toml_key(s))
        .collect::<Vec<_>>()
        .join(".");
    match container {
        Container::Array => format!("`[[{p}]]`"),
        _ => format!("`[{p}]`"),
    }
}

fn dotted(path: &[String], key: &str) -> String {
    let mut parts: Vec<String> = path.iter().map(|s| toml_key(s)).collect();
    parts.push(toml_key(key));
    parts.join(".")
}

/// A key as TOML writes it: bare when it can be.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare || key == "<name>" {
        key.to_owned()
    } else {
        crate::eval::toml_string(key)
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to `-`, and `-1`,
/// `-2`, ... on repeats.
fn anchor(heading: &str, seen: &mut HashMap<String, usize>) -> String {
    let base: String = heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect();
    let n = seen.entry(base.clone()).or_insert(0);
    let out = if *n == 0 { base } else { format!("{base}-{n}") };
    *n += 1;
    out
}

/// A code span around `text`, with a fence longer than any run of backticks in it.
fn code(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    if longest > 0 {
        format!("{fence} {text} {fence}")
    } else {
        format!("{fence}{text}{fence}")
    }
}

/// Indents every non-empty line of `text`.
fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn write(preamble: &str, sections: &[Section]) -> String {
    let mut seen = HashMap::new();
    let mut out = String::new();
    let mut push = |s: &str| {
        out.push_str(s);
        out.push_str("\n\n");
    };
    push(&format!(
        "<!-- Generated by `{COMMAND}` from the doc comments of proxy/src/config/. Do not edit: \
         edit those comments and run it again. -->"
    ));
    anchor("Configuration reference", &mut seen);
    push("# Configuration reference");
    push(&format!(
        "Every table and key of `sentinel.toml`. This file is generated from the doc comments of \
         the configuration types in `proxy/src/config/`: to change it, edit those and run \
         `{COMMAND}`. `cargo test` fails while it is out of date."
    ));
    if !preamble.is_empty() {
        push(preamble);
    }
    push(
        "How to read it: each key shows its TOML type and its default. A duration is a string \
         of numbers with units: `\"250ms\"`, `\"5s\"`, `\"10m\"`, `\"1h 30m\"`. A key marked \
         **required** must be given; one \"not set by default\" may be left out. \
         [`deploy/sentinel.example.toml`](../deploy/sentinel.example.toml) is an example of \
         the whole file.",
    );

    anchor("Contents", &mut seen);
    let anchors: Vec<String> = sections
        .iter()
        .map(|s| anchor(&s.title, &mut seen))
        .collect();
    let by_title: HashMap<&str, &str> = sections
        .iter()
        .zip(&anchors)
        .map(|(s, a)| (s.title.as_str(), a.as_str()))
        .collect();
    let link = |title: &str| match by_title.get(title) {
        Some(a) => format!("[{title}](#{a})"),
        None => title.to_owned(),
    };

    push("## Contents");
    let contents = sections
        .iter()
        .map(|s| format!("{}- {}", "  ".repeat(s.depth), link(&s.title)))
        .collect::<Vec<_>>()
        .join("\n");
    push(&contents);

    for section in sections {
        let level = if section.depth == 0 { "##" } else { "###" };
        push(&format!("{level} {}", section.title));
        for paragraph in &section.intro {
            push(paragraph);
        }
        if let Some(first) = &section.same_as {
            push(&format!("Same keys as {}.", link(first)));
        }
        if !section.strict {
            push("Keys not listed here are ignored.");
        }
        for key in &section.keys {
            let mut line = format!("- **{}**", code(&key.name));
            for alias in &key.aliases {
                line.push_str(&format!(" (or {})", code(alias)));
            }
            line.push_str(&format!(" · {}", key.ty));
            match &key.default {
                DefaultLine::Required => line.push_str(" · **required**"),
                DefaultLine::NotSet => line.push_str(" · not set by default"),
                DefaultLine::Toml(v, None) => line.push_str(&format!(" · default {}", code(v))),
                DefaultLine::Toml(v, Some(note)) => {
                    line.push_str(&format!(" · default {} ({note})", code(v)));
                }
                DefaultLine::Stated(s) => line.push_str(&format!(" · default: {s}")),
            }
            push(&line);
            if !key.doc.is_empty() {
                push(&indent(&key.doc, 2));
            }
            if !key.values.is_empty() {
                let values = key
                    .values
                    .iter()
                    .map(|(value, aliases, doc)| {
                        let mut item = format!("- {}", code(&format!("\"{value}\"")));
                        for alias in aliases {
                            item.push_str(&format!(" (or {})", code(&format!("\"{alias}\""))));
                        }
                        if !doc.is_empty() {
                            item.push_str(": ");
                            let mut lines = doc.lines();
                            item.push_str(lines.next().unwrap_or(""));
                            for l in lines {
                                item.push('\n');
                                if !l.is_empty() {
                                    item.push_str("  ");
                                    item.push_str(l);
                                }
                            }
                        }
                        item
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                push(&indent(&values, 2));
            }
        }
        if !section.tables.is_empty() {
            let tables = section
                .tables
                .iter()
                .map(|t| link(t))
                .collect::<Vec<_>>()
                .join(", ");
            push(&format!("Tables in it: {tables}."));
        }
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stated_default_is_split_off() {
        let split = |d: &str| split_stated(d).expect("valid");
        assert_eq!(
            split("The host. Default: `[postgres.upstream] host`."),
            (
                "The host.".to_owned(),
                Some("`[postgres.upstream] host`".to_owned())
            )
        );
        assert_eq!(
            split("Where.\nDefault: \"127.0.0.1:9930\". More."),
            (
                "Where.\nMore.".to_owned(),
                Some("\"127.0.0.1:9930\"".to_owned())
            )
        );
        assert_eq!(
            split("Ratio. Default: `0.8` of it.\n\nNext."),
            ("Ratio.\n\nNext.".to_owned(), Some("`0.8` of it".to_owned()))
        );
        assert_eq!(
            split("Mentions the default: not a statement."),
            ("Mentions the default: not a statement.".to_owned(), None)
        );
        assert!(split_stated("A. Default: x. Default: y.").is_err());
    }

    #[test]
    fn anchors_follow_github() {
        let mut seen = HashMap::new();
        assert_eq!(
            anchor("`[postgres.upstream]`", &mut seen),
            "postgresupstream"
        );
        assert_eq!(anchor("`[[postgres.users]]`", &mut seen), "postgresusers");
        assert_eq!(
            anchor("`[llm.tenants.<name>]`", &mut seen),
            "llmtenantsname"
        );
        assert_eq!(
            anchor("`[llm.tenant_defaults]`", &mut seen),
            "llmtenant_defaults"
        );
        assert_eq!(
            anchor("`[postgres.upstream]`", &mut seen),
            "postgresupstream-1"
        );
    }

    #[test]
    fn code_spans_survive_backticks() {
        assert_eq!(code("\"5s\""), "`\"5s\"`");
        assert_eq!(code("a`b"), "`` a`b ``");
    }
}
