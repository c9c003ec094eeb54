//! The workspace's structural rules, checked on every source file under `crates/*/src`:
//!
//! - **No import cycles between files.** A file depends on another when it names one of the
//!   other's items: in a `use` (other than a re-export) or as a `crate::`, `super::`, `self::` or
//!   child-module path in code. Names are followed through re-exports to the file that defines
//!   them, so `use super::Thing` where the parent only re-exports `Thing` from a sibling counts
//!   as a dependency on the sibling. A `mod` declaration and a `pub use` re-export are structure,
//!   not dependencies. Test code (`#[cfg(test)]` items and the files they declare) is left out.
//! - **No source file over 600 lines** before its tests.
//! - **No function over 120 lines** (signature to closing brace).
//! - **`#![forbid(unsafe_code)]`** in every crate root whose crate has no `unsafe`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 120;

type ModPath = Vec<String>;

#[derive(Default)]
struct FileInfo {
    rel: String,
    /// Every module (the file's own and its inline ones) → the names it defines.
    defines: HashMap<ModPath, BTreeSet<String>>,
    /// Module → name → the absolute path it is imported from (any `use`).
    imports: HashMap<ModPath, HashMap<String, ModPath>>,
    /// Absolute paths this file depends on, with the line that names them.
    refs: Vec<(ModPath, usize)>,
    /// Functions over the limit: (name, line, lines).
    long_fns: Vec<(String, usize, usize)>,
    /// Lines before the first `#[cfg(test)]`.
    code_lines: usize,
    has_unsafe: bool,
    forbids_unsafe: bool,
}

struct Crate {
    name: String,
    files: Vec<FileInfo>,
    /// Module path → index of the file that holds it.
    modules: HashMap<ModPath, usize>,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && matches!(&a.meta, syn::Meta::List(l) if {
                let s = l.tokens.to_string();
                s.contains("test") && !s.contains("not")
            })
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

fn item_name(item: &syn::Item) -> Option<String> {
    use syn::Item::*;
    let id = match item {
        Const(i) => &i.ident,
        Enum(i) => &i.ident,
        Fn(i) => &i.sig.ident,
        Mod(i) => &i.ident,
        Static(i) => &i.ident,
        Struct(i) => &i.ident,
        Trait(i) => &i.ident,
        Type(i) => &i.ident,
        Union(i) => &i.ident,
        Macro(i) => i.ident.as_ref()?,
        _ => return None,
    };
    Some(id.to_string())
}

/// Flattens a use tree into (path, name it binds); globs bind `*`.
fn flatten_use(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(ModPath, String)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) if n.ident == "self" => {
            out.push((prefix.clone(), prefix.last().cloned().unwrap_or_default()))
        }
        syn::UseTree::Name(n) => {
            let mut p = prefix.clone();
            p.push(n.ident.to_string());
            out.push((p, n.ident.to_string()));
        }
        syn::UseTree::Rename(r) => {
            let mut p = prefix.clone();
            if r.ident != "self" {
                p.push(r.ident.to_string());
            }
            out.push((p, r.rename.to_string()));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), "*".into())),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| flatten_use(t, prefix, out)),
    }
}

struct Walker<'a> {
    info: &'a mut FileInfo,
    module: ModPath,
    /// Child modules declared with `mod x;` (module path, file-relative dir for lookup).
    child_decls: Vec<(ModPath, Vec<syn::Attribute>)>,
    /// Relative paths in code, resolved after all files are read: (module, path, line).
    pending: Vec<(ModPath, ModPath, usize)>,
}

impl Walker<'_> {
    fn record(&mut self, segs: ModPath, line: usize) {
        self.pending.push((self.module.clone(), segs, line));
    }
}

impl<'ast> Visit<'ast> for Walker<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if is_cfg_test(item_attrs(item)) {
            return;
        }
        if let Some(name) = item_name(item) {
            let defs = self.info.defines.entry(self.module.clone()).or_default();
            defs.insert(name);
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        match &m.content {
            None => self
                .child_decls
                .push((self.module.clone(), m.attrs.clone())),
            Some((_, items)) => {
                self.info.defines.entry(self.module.clone()).or_default();
                items.iter().for_each(|i| self.visit_item(i));
            }
        }
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut flat = Vec::new();
        flatten_use(&u.tree, &mut Vec::new(), &mut flat);
        let reexport = !matches!(u.vis, syn::Visibility::Inherited);
        let line = u.use_token.span.start().line;
        for (path, name) in flat {
            self.pending.push((
                self.module.clone(),
                path.clone(),
                if reexport { 0 } else { line },
            ));
            let imports = self.info.imports.entry(self.module.clone()).or_default();
            imports.insert(name, path);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() && p.segments.len() > 1 {
            let segs = p.segments.iter().map(|s| s.ident.to_string()).collect();
            let line = p.segments[0].ident.span().start().line;
            self.record(segs, line);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Paths inside macro bodies (format args, `vec![..]`) are tokens, not syntax: scan them.
        let mut toks: Vec<proc_macro2::TokenTree> = Vec::new();
        flatten_tokens(m.tokens.clone(), &mut toks);
        let mut i = 0;
        while i < toks.len() {
            if let proc_macro2::TokenTree::Ident(id) = &toks[i] {
                let mut segs = vec![id.to_string()];
                let mut j = i + 1;
                while j + 2 < toks.len() + 1 && is_path_sep(&toks, j) {
                    match toks.get(j + 2) {
                        Some(proc_macro2::TokenTree::Ident(n)) => segs.push(n.to_string()),
                        _ => break,
                    }
                    j += 3;
                }
                if segs.len() > 1 && ["crate", "super", "self"].contains(&segs[0].as_str()) {
                    self.record(segs, id.span().start().line);
                }
                i = j.max(i + 1);
            } else {
                i += 1;
            }
        }
        syn::visit::visit_macro(self, m);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.check_fn(&f.sig, &f.block);
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&f.attrs) {
            self.check_fn(&f.sig, &f.block);
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(b) = &f.default {
            self.check_fn(&f.sig, b);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

impl Walker<'_> {
    fn check_fn(&mut self, sig: &syn::Signature, block: &syn::Block) {
        let start = sig.fn_token.span.start().line;
        let end = block.brace_token.span.close().end().line;
        let n = end + 1 - start;
        if n > MAX_FN_LINES {
            self.info.long_fns.push((sig.ident.to_string(), start, n));
        }
    }
}

fn is_path_sep(toks: &[proc_macro2::TokenTree], j: usize) -> bool {
    matches!((toks.get(j), toks.get(j + 1)),
        (Some(proc_macro2::TokenTree::Punct(a)), Some(proc_macro2::TokenTree::Punct(b)))
        if a.as_char() == ':' && b.as_char() == ':')
}

fn flatten_tokens(ts: proc_macro2::TokenStream, out: &mut Vec<proc_macro2::TokenTree>) {
    for t in ts {
        match t {
            proc_macro2::TokenTree::Group(g) => flatten_tokens(g.stream(), out),
            other => out.push(other),
        }
    }
}

fn has_unsafe(ts: proc_macro2::TokenStream) -> bool {
    ts.into_iter().any(|t| match t {
        proc_macro2::TokenTree::Ident(i) => i == "unsafe",
        proc_macro2::TokenTree::Group(g) => has_unsafe(g.stream()),
        _ => false,
    })
}

/// Reads one crate: its module tree from the root file, each file's definitions, imports and
/// (still relative) references.
fn read_crate(name: &str, root: &Path, ws: &Path) -> Crate {
    let mut krate = Crate {
        name: name.into(),
        files: Vec::new(),
        modules: HashMap::new(),
    };
    let mut pending_all: Vec<(usize, ModPath, ModPath, usize)> = Vec::new();
    let mut queue: Vec<(PathBuf, ModPath)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((path, module)) = queue.pop() {
        let src =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = syn::parse_file(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let idx = krate.files.len();
        let mut info = FileInfo {
            rel: path.strip_prefix(ws).unwrap_or(&path).display().to_string(),
            code_lines: src
                .lines()
                .position(|l| l.trim_start().starts_with("#[cfg(test)]"))
                .unwrap_or_else(|| src.lines().count()),
            has_unsafe: has_unsafe(src.parse().expect("tokens")),
            forbids_unsafe: src.contains("#![forbid(unsafe_code)]"),
            ..Default::default()
        };
        info.defines.entry(module.clone()).or_default();
        let mut w = Walker {
            info: &mut info,
            module: module.clone(),
            child_decls: Vec::new(),
            pending: Vec::new(),
        };
        file.items.iter().for_each(|i| w.visit_item(i));
        let (child_decls, pending) = (w.child_decls, w.pending);
        // A file `a/b.rs` or `a/b/mod.rs` (or a crate root) keeps its children in `a/b/`.
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let dir = if ["mod", "lib", "main"].contains(&stem) {
            path.parent().unwrap().to_path_buf()
        } else {
            path.with_extension("")
        };
        for (child, attrs) in child_decls {
            let rel: PathBuf = child[module.len()..].iter().collect();
            let explicit = attrs
                .iter()
                .find(|a| a.path().is_ident("path"))
                .and_then(|a| match &a.meta {
                    syn::Meta::NameValue(nv) => match &nv.value {
                        syn::Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Str(s),
                            ..
                        }) => Some(s.value()),
                        _ => None,
                    },
                    _ => None,
                });
            let file = match explicit {
                Some(p) => dir.join(p),
                None if dir.join(&rel).with_extension("rs").exists() => {
                    dir.join(&rel).with_extension("rs")
                }
                None => dir.join(&rel).join("mod.rs"),
            };
            queue.push((file, child));
        }
        for m in info.defines.keys() {
            krate.modules.insert(m.clone(), idx);
        }
        pending_all.extend(pending.into_iter().map(|(m, p, l)| (idx, m, p, l)));
        krate.files.push(info);
    }
    // Relative paths become absolute now that every module is known.
    for (idx, module, path, line) in pending_all {
        if let Some(abs) = absolutise(&krate, &module, &path) {
            if line > 0 {
                krate.files[idx].refs.push((abs, line));
            }
        }
    }
    krate
}

/// `crate::a`, `super::a`, `self::a` or `child::a` seen in `module` → an absolute module path,
/// or None for paths into other crates and local names.
fn absolutise(k: &Crate, module: &ModPath, path: &ModPath) -> Option<ModPath> {
    absolutise_at(k, module, path, 0)
}

fn absolutise_at(k: &Crate, module: &ModPath, path: &ModPath, depth: usize) -> Option<ModPath> {
    let mut base = module.clone();
    let mut rest = &path[..];
    match rest.first()?.as_str() {
        "crate" => {
            base.clear();
            rest = &rest[1..];
        }
        "self" => rest = &rest[1..],
        "super" => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        first => {
            let mut child = module.clone();
            child.push(first.to_string());
            if !k.modules.contains_key(&child) {
                // A name imported into this module from inside the crate (`use super::ops;`).
                let imported = k.files[*k.modules.get(module)?]
                    .imports
                    .get(module)?
                    .get(first)?;
                // `use other_crate::{self}` binds a name to itself: not this crate's.
                if depth > 16 || imported.first().map(String::as_str) == Some(first) {
                    return None;
                }
                let abs = absolutise_at(k, module, imported, depth + 1)?;
                return Some(abs.into_iter().chain(rest[1..].iter().cloned()).collect());
            }
        }
    }
    Some(base.into_iter().chain(rest.iter().cloned()).collect())
}

/// The file that defines what an absolute path names, following imports and re-exports.
fn defining_file(k: &Crate, path: &ModPath, depth: usize) -> Option<usize> {
    let split = (0..=path.len())
        .rev()
        .find(|&i| k.modules.contains_key(&path[..i]))?;
    let module = path[..split].to_vec();
    let file = k.modules[&module];
    let Some(name) = path.get(split) else {
        return Some(file);
    };
    if depth < 16
        && !k.files[file]
            .defines
            .get(&module)
            .is_some_and(|d| d.contains(name))
    {
        if let Some(from) = k.files[file].imports.get(&module).and_then(|m| m.get(name)) {
            if let Some(abs) = absolutise(k, &module, from) {
                let abs: ModPath = abs
                    .into_iter()
                    .chain(path[split + 1..].iter().cloned())
                    .collect();
                return defining_file(k, &abs, depth + 1).or(Some(file));
            }
        }
    }
    Some(file)
}

fn workspace_crates() -> Vec<Crate> {
    let ws = stainedglass_test_support::workspace_root()
        .canonicalize()
        .unwrap();
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(ws.join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        for root in ["src/lib.rs", "src/main.rs"] {
            let p = dir.join(root);
            if p.exists() {
                let name = format!("{} ({root})", dir.file_name().unwrap().to_string_lossy());
                out.push(read_crate(&name, &p, &ws));
            }
        }
    }
    out
}

/// Strongly connected components of more than one file (Tarjan, iterative enough for our sizes).
fn cycles(edges: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let reach = |from: usize| {
        let mut seen = vec![false; n];
        let mut stack = vec![from];
        while let Some(v) = stack.pop() {
            for &w in &edges[v] {
                if !seen[w] {
                    seen[w] = true;
                    stack.push(w);
                }
            }
        }
        seen
    };
    let reach: Vec<Vec<bool>> = (0..n).map(reach).collect();
    let mut done = vec![false; n];
    let mut out = Vec::new();
    for v in 0..n {
        if done[v] {
            continue;
        }
        let comp: Vec<usize> = (0..n)
            .filter(|&w| w == v || (reach[v][w] && reach[w][v]))
            .collect();
        comp.iter().for_each(|&w| done[w] = true);
        if comp.len() > 1 {
            out.push(comp);
        }
    }
    out
}

#[test]
fn no_import_cycles_between_files() {
    let mut problems = Vec::new();
    for k in workspace_crates() {
        let mut edges = vec![BTreeSet::new(); k.files.len()];
        let mut why: HashMap<(usize, usize), String> = HashMap::new();
        for (i, f) in k.files.iter().enumerate() {
            for (path, line) in &f.refs {
                if let Some(j) = defining_file(&k, path, 0) {
                    if j != i && edges[i].insert(j) {
                        why.insert(
                            (i, j),
                            format!("{}:{line} names {}", f.rel, path.join("::")),
                        );
                    }
                }
            }
        }
        for comp in cycles(&edges) {
            let mut lines = vec![format!("{}: a cycle between files:", k.name)];
            for &a in &comp {
                for &b in &comp {
                    if let Some(w) = why.get(&(a, b)) {
                        lines.push(format!("    {w}"));
                    }
                }
            }
            problems.push(lines.join("\n"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn files_and_functions_stay_short() {
    let mut problems = Vec::new();
    for k in workspace_crates() {
        for f in &k.files {
            if f.code_lines > MAX_FILE_LINES {
                problems.push(format!(
                    "{}: {} lines before its tests (max {MAX_FILE_LINES})",
                    f.rel, f.code_lines
                ));
            }
            for (name, line, n) in &f.long_fns {
                problems.push(format!(
                    "{}:{line}: fn {name} has {n} lines (max {MAX_FN_LINES})",
                    f.rel
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "split these by what they hold:\n{}",
        problems.join("\n")
    );
}

#[test]
fn crates_without_unsafe_forbid_it() {
    let mut problems = Vec::new();
    for k in workspace_crates() {
        let any_unsafe = k.files.iter().any(|f| f.has_unsafe);
        let root = &k.files[0];
        if !any_unsafe && !root.forbids_unsafe {
            problems.push(format!(
                "{}: no unsafe code, so add #![forbid(unsafe_code)]",
                root.rel
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
