//! Reading and indexing the source files: the config module and the workspace crates it imports
//! types and constants from.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use syn::{Item, UseTree};

/// The config module's root file, relative to the workspace root.
pub const CONFIG_ROOT: &str = "proxy/src/config/mod.rs";

/// Workspace crates the config may import types and constants from, with their `src` folder.
const WORKSPACE_CRATES: &[(&str, &str)] = &[
    ("sentinel_policy", "policy/src"),
    ("sentinel_wire", "proxy/wire/src"),
];

/// One parsed file.
pub struct SourceFile {
    /// Relative to the workspace root, with `/`, for messages.
    pub rel: String,
    /// Whether it is part of the config module (rather than a crate it imports from).
    pub is_config: bool,
    /// The crate it belongs to (`sentinel_policy`) and its module path in it, for imported files.
    pub module: Option<(String, Vec<String>)>,
    pub ast: syn::File,
    /// Names brought in by `use` at the top of the file: name → full path (last segment the
    /// original name).
    pub uses: HashMap<String, Vec<String>>,
}

/// A definition found in some file.
pub struct Def<T> {
    pub file: usize,
    pub item: T,
}

/// Everything the generator reads.
pub struct Sources {
    pub files: Vec<SourceFile>,
}

/// A type definition.
pub enum TypeDef {
    Struct(Def<syn::ItemStruct>),
    Enum(Def<syn::ItemEnum>),
}

impl Sources {
    /// Reads the config module (its root file and the files of the `mod x;` it declares) and
    /// the files of the workspace crates' modules it imports from.
    pub fn load(root: &Path) -> Result<Sources, String> {
        let mut files = Vec::new();
        let config_root = root.join(CONFIG_ROOT);
        let main = parse_file(root, &config_root)?;
        let dir = config_root
            .parent()
            .ok_or_else(|| format!("{CONFIG_ROOT} has no parent folder"))?
            .to_owned();
        let submodules = declared_modules(&main.ast);
        files.push(main);
        for name in submodules {
            let flat = dir.join(format!("{name}.rs"));
            let nested = dir.join(&name).join("mod.rs");
            let path = if flat.exists() { flat } else { nested };
            files.push(parse_file(root, &path)?);
        }

        // Modules of workspace crates that config files import from.
        let mut wanted = BTreeSet::new();
        for file in &files {
            for path in file.uses.values() {
                if let Some((_, dir)) = WORKSPACE_CRATES.iter().find(|(c, _)| path[0] == *c) {
                    let module = &path[1..path.len().saturating_sub(1)];
                    wanted.insert((path[0].clone(), dir.to_owned(), module.to_vec()));
                }
            }
        }
        let mut loaded = BTreeSet::new();
        for (krate, src, module) in wanted {
            let base = root.join(src);
            let mut candidates = Vec::new();
            let module_dir = module.iter().fold(base.clone(), |p, m| p.join(m));
            if module.is_empty() {
                candidates.push(base.join("lib.rs"));
            } else {
                candidates.push(module_dir.with_extension("rs"));
            }
            if module_dir.is_dir() {
                collect_rs(&module_dir, &mut candidates)?;
            }
            for path in candidates {
                if !path.is_file() || !loaded.insert(path.clone()) {
                    continue;
                }
                let mut file = parse_file(root, &path)?;
                file.is_config = false;
                let rel = path
                    .strip_prefix(&base)
                    .map_err(|_| format!("{} is outside {src}", path.display()))?;
                file.module = Some((krate.clone(), module_path(rel)));
                files.push(file);
            }
        }
        Ok(Sources { files })
    }

    /// The struct or enum `name` as seen from file `from`: defined in the config module, or
    /// imported into `from` from a workspace crate.
    pub fn find_type(&self, from: usize, name: &str) -> Result<TypeDef, String> {
        let mut found = Vec::new();
        self.each_item(from, name, |file, item| match item {
            Item::Struct(s) if s.ident == name => found.push(TypeDef::Struct(Def {
                file,
                item: s.clone(),
            })),
            Item::Enum(e) if e.ident == name => found.push(TypeDef::Enum(Def {
                file,
                item: e.clone(),
            })),
            _ => {}
        });
        single(found, || {
            format!(
                "type `{name}` (used in {}) is neither defined in the config module nor \
                 imported from a workspace crate",
                self.files[from].rel
            )
        })
    }

    /// The constant `name` as seen from file `from` (same rules as types).
    pub fn find_const(&self, from: usize, name: &str) -> Result<Def<syn::ItemConst>, String> {
        let mut found = Vec::new();
        // The file's own (private) constants first.
        for item in &self.files[from].ast.items {
            if let Item::Const(c) = item
                && c.ident == name
            {
                return Ok(Def {
                    file: from,
                    item: c.clone(),
                });
            }
        }
        self.each_item(from, name, |file, item| {
            if let Item::Const(c) = item
                && c.ident == name
            {
                found.push(Def {
                    file,
                    item: c.clone(),
                });
            }
        });
        single(found, || {
            format!(
                "constant `{name}` (used in {}) is not found in the config module nor in a \
                 workspace crate it imports from",
                self.files[from].rel
            )
        })
    }

    /// Calls `f` on the top-level items that may define `name` for file `from`: those of every
    /// config file, or, when `from` imports `name` from a workspace crate, those of that
    /// crate's module.
    fn each_item<'a>(&'a self, from: usize, name: &str, mut f: impl FnMut(usize, &'a Item)) {
        let imported = self.files[from].uses.get(name).filter(|path| {
            WORKSPACE_CRATES
                .iter()
                .any(|(krate, _)| path.first().is_some_and(|p| p == krate))
        });
        for (i, file) in self.files.iter().enumerate() {
            let in_scope = match (imported, &file.module) {
                (None, _) => file.is_config,
                (Some(path), Some((krate, module))) => {
                    let wanted = &path[1..path.len() - 1];
                    *krate == path[0] && module.starts_with(wanted)
                }
                (Some(_), None) => false,
            };
            if in_scope {
                for item in &file.ast.items {
                    f(i, item);
                }
            }
        }
    }

    /// The function a `#[serde(default = "...")]` path or a call in a default expression names,
    /// looked up from `scope`: a function of an inline module (`defaults::listen`), of an
    /// `impl` block (`UpstreamConfig::default_tls`, `Self::x`) or of the file.
    pub fn find_fn(&self, scope: &Scope, path: &[String]) -> Option<(Scope, syn::Block)> {
        let mut path: Vec<String> = path.to_vec();
        let mut module = scope.module.clone();
        while let Some(first) = path.first() {
            match first.as_str() {
                "self" => {
                    path.remove(0);
                }
                "super" => {
                    module.pop();
                    path.remove(0);
                }
                "Self" => {
                    let ty = scope.impl_type.clone()?;
                    path[0] = ty;
                    break;
                }
                _ => break,
            }
        }
        let (name, prefix) = path.split_last()?;
        // `Type::function`, in any config file.
        if let [ty] = prefix {
            for (i, file) in self.files.iter().enumerate() {
                if !file.is_config && i != scope.file {
                    continue;
                }
                for item in &file.ast.items {
                    if let Some(block) = impl_fn(item, ty, name) {
                        let scope = Scope {
                            file: i,
                            module: Vec::new(),
                            impl_type: Some(ty.clone()),
                        };
                        return Some((scope, block));
                    }
                }
            }
        }
        // A function in an inline module, relative to the current module and then to the file.
        let mut bases = vec![module];
        if !scope.module.is_empty() {
            bases.push(Vec::new());
        }
        for base in bases {
            let mut full = base.clone();
            full.extend(prefix.iter().cloned());
            if let Some(items) = module_items(&self.files[scope.file].ast.items, &full) {
                for item in items {
                    if let Item::Fn(f) = item
                        && f.sig.ident == name
                    {
                        let scope = Scope {
                            file: scope.file,
                            module: full,
                            impl_type: None,
                        };
                        return Some((scope, (*f.block).clone()));
                    }
                }
            }
        }
        None
    }

    /// The struct literal of `impl Default for <name>` (`Name { .. }` or `Self { .. }`), with
    /// its scope; `Err` when there is such an impl but its body is not one struct literal.
    pub fn default_literal(
        &self,
        file: usize,
        name: &str,
    ) -> Option<Result<(Scope, syn::ExprStruct), String>> {
        for item in &self.files[file].ast.items {
            let Some(block) = default_impl_body(item, name) else {
                continue;
            };
            let scope = Scope {
                file,
                module: Vec::new(),
                impl_type: Some(name.to_owned()),
            };
            return Some(match tail_expr(&block) {
                Some(syn::Expr::Struct(s)) if s.rest.is_none() => Ok((scope, s.clone())),
                _ => Err(format!(
                    "`impl Default for {name}` is not a single struct literal"
                )),
            });
        }
        None
    }

    /// The body of `impl Default for <name>` in `file`, with its scope.
    pub fn default_fn(&self, file: usize, name: &str) -> Option<(Scope, syn::Block)> {
        self.files[file].ast.items.iter().find_map(|item| {
            default_impl_body(item, name).map(|block| {
                let scope = Scope {
                    file,
                    module: Vec::new(),
                    impl_type: Some(name.to_owned()),
                };
                (scope, block)
            })
        })
    }
}

#[cfg(test)]
impl Sources {
    /// Config files given as text, the first one the root.
    pub fn from_texts(files: &[(&str, &str)]) -> Result<Sources, String> {
        let files = files
            .iter()
            .map(|(rel, text)| parse_text((*rel).to_owned(), text))
            .collect::<Result<_, _>>()?;
        Ok(Sources { files })
    }
}

/// Where an expression is evaluated: its file, inline module and `impl` block.
#[derive(Clone, Debug)]
pub struct Scope {
    pub file: usize,
    pub module: Vec<String>,
    pub impl_type: Option<String>,
}

/// The final expression of a block that is only that expression.
pub fn tail_expr(block: &syn::Block) -> Option<&syn::Expr> {
    match block.stmts.as_slice() {
        [syn::Stmt::Expr(e, None)] => Some(e),
        _ => None,
    }
}

fn impl_fn(item: &Item, ty: &str, name: &str) -> Option<syn::Block> {
    let Item::Impl(imp) = item else { return None };
    if imp.trait_.is_some() || type_name(&imp.self_ty).as_deref() != Some(ty) {
        return None;
    }
    imp.items.iter().find_map(|i| match i {
        syn::ImplItem::Fn(f) if f.sig.ident == name && f.sig.inputs.is_empty() => {
            Some(f.block.clone())
        }
        _ => None,
    })
}

fn default_impl_body(item: &Item, name: &str) -> Option<syn::Block> {
    let Item::Impl(imp) = item else { return None };
    let (_, trait_path, _) = imp.trait_.as_ref()?;
    let is_default = trait_path
        .segments
        .last()
        .is_some_and(|s| s.ident == "Default");
    if !is_default || type_name(&imp.self_ty).as_deref() != Some(name) {
        return None;
    }
    imp.items.iter().find_map(|i| match i {
        syn::ImplItem::Fn(f) if f.sig.ident == "default" => Some(f.block.clone()),
        _ => None,
    })
}

/// The last segment of a path type.
pub fn type_name(ty: &syn::Type) -> Option<String> {
    match ty {
        syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn module_items<'a>(items: &'a [Item], path: &[String]) -> Option<&'a [Item]> {
    let Some((first, rest)) = path.split_first() else {
        return Some(items);
    };
    items.iter().find_map(|item| match item {
        Item::Mod(m) if m.ident == first => {
            m.content.as_ref().and_then(|(_, i)| module_items(i, rest))
        }
        _ => None,
    })
}

fn single<T>(mut found: Vec<T>, missing: impl FnOnce() -> String) -> Result<T, String> {
    match found.len() {
        1 => found.pop().ok_or_else(missing),
        0 => Err(missing()),
        n => Err(format!("{} ({n} definitions are in scope)", missing())),
    }
}

fn parse_file(root: &Path, path: &Path) -> Result<SourceFile, String> {
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/");
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_text(rel, &text)
}

fn parse_text(rel: String, text: &str) -> Result<SourceFile, String> {
    let ast = syn::parse_file(text).map_err(|e| format!("{rel}: {e}"))?;
    let mut uses = HashMap::new();
    for item in &ast.items {
        if let Item::Use(u) = item {
            flatten_use(&u.tree, &mut Vec::new(), &mut uses);
        }
    }
    Ok(SourceFile {
        rel,
        is_config: true,
        module: None,
        ast,
        uses,
    })
}

fn flatten_use(tree: &UseTree, prefix: &mut Vec<String>, out: &mut HashMap<String, Vec<String>>) {
    match tree {
        UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(n) => {
            let mut path = prefix.clone();
            path.push(n.ident.to_string());
            out.insert(n.ident.to_string(), path);
        }
        UseTree::Rename(r) => {
            let mut path = prefix.clone();
            path.push(r.ident.to_string());
            out.insert(r.rename.to_string(), path);
        }
        UseTree::Glob(_) => {}
        UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, out);
            }
        }
    }
}

/// The `mod x;` declarations of a file (not inline modules, not `#[cfg(test)]` ones).
fn declared_modules(file: &syn::File) -> Vec<String> {
    file.items
        .iter()
        .filter_map(|item| match item {
            Item::Mod(m) if m.content.is_none() && !is_cfg_test(&m.attrs) => {
                Some(m.ident.to_string())
            }
            _ => None,
        })
        .collect()
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `budget/period.rs` → `["budget", "period"]`; `budget/mod.rs` → `["budget"]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}
