//! The crate's shape, read from its source:
//!
//! 1. **Layers.** `docs/ARCHITECTURE.md` declares a layer for every top-level module (its
//!    table "Layers"); a module may import only modules of lower layers. An import from the
//!    same or a higher layer fails the test and is printed with its file.
//! 2. **No circles**, between top-level modules and, inside each folder, between sibling files
//!    (`models/fused.rs` ↔ `models/mlp.rs` would be one). A folder's `mod.rs` is the parent, not
//!    a sibling: a child naming a type the parent defines is not an edge between siblings.
//!
//! Imports are every `crate::…` and `super::…` path in `src/` (the library, not the CLI
//! binary), grouped `use` trees expanded, outside comments and the `#[cfg(test)]` part at the
//! bottom of a file (where a unit test may use a higher layer to check a lower one). A path is
//! resolved to the longest module it names: `crate::kernels::gemm::matmul` is an edge to
//! `kernels::gemm`, `super::Model` in `models/mlp.rs` an edge to `models`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file (`src/train/optim.rs` → `["train", "optim"]`,
/// `src/models/mod.rs` → `["models"]`), or None for the crate root and the binary.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if parts.first().is_some_and(|p| p == "lib.rs" || p == "bin") {
        return None;
    }
    let last = parts.pop()?;
    if last != "mod.rs" {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    Some(parts)
}

/// The code of a file that counts: before `#[cfg(test)]`, without comments.
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> usize {
    s.char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(s.len(), |(i, _)| i)
}

fn skip_ws(s: &str) -> &str {
    s.trim_start()
}

/// Parses a path tree at the start of `s` (`a::b::{c, d::{e, f}}`, or `a::b`): every full
/// path it names, each as its segments.
fn path_tree(s: &str) -> Vec<Vec<String>> {
    fn go(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
        let mut segs = prefix.to_vec();
        let mut i = 0;
        loop {
            let rest = skip_ws(&s[i..]);
            i = s.len() - rest.len();
            if let Some(group) = rest.strip_prefix('{') {
                let mut j = i + 1;
                loop {
                    j += go(&s[j..], &segs, out);
                    let r = skip_ws(&s[j..]);
                    j = s.len() - r.len();
                    if let Some(r2) = r.strip_prefix(',') {
                        j = s.len() - r2.len();
                        if skip_ws(r2).starts_with('}') {
                            let r3 = skip_ws(r2);
                            return s.len() - r3.len() + 1;
                        }
                        continue;
                    }
                    if r.starts_with('}') {
                        return j + 1;
                    }
                    let _ = group;
                    return j;
                }
            }
            let n = ident(rest);
            if n == 0 {
                out.push(segs);
                return i;
            }
            segs.push(rest[..n].to_string());
            i += n;
            let after = &s[i..];
            if let Some(a) = after.strip_prefix("::") {
                i = s.len() - a.len();
            } else {
                out.push(segs);
                return i;
            }
        }
    }
    let mut out = Vec::new();
    go(s, &[], &mut out);
    out
}

/// Every path in `code` that starts at the crate root or at a parent module, made absolute
/// from `module` (the module path of the file).
fn paths(code: &str, module: &[String], is_mod_rs: bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let boundary = i == 0 || {
            let c = bytes[i - 1] as char;
            !(c.is_alphanumeric() || c == '_' || c == ':')
        };
        let crate_root = rest.starts_with("crate::");
        let sup = rest.starts_with("super::");
        if boundary && (crate_root || sup) {
            let mut base: Vec<String> = Vec::new();
            let mut r = rest;
            if crate_root {
                r = &r[7..];
            } else {
                // `super` of a file's module: its parent (for `mod.rs`, the folder is the module).
                base = module.to_vec();
                let _ = is_mod_rs;
                while let Some(x) = r.strip_prefix("super::") {
                    base.pop();
                    r = x;
                }
            }
            for p in path_tree(r) {
                let mut full = base.clone();
                full.extend(p);
                out.push(full);
            }
            i += rest.len() - r.len();
        } else {
            i += rest.chars().next().map_or(1, |c| c.len_utf8());
        }
    }
    out
}

/// The longest known module that `path` names (or None outside the crate's modules).
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

/// Edges between modules (full module paths), each with a file that makes it.
type Edges = BTreeMap<(Vec<String>, Vec<String>), String>;

fn edges(src: &Path) -> (BTreeSet<Vec<String>>, Edges) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules = BTreeSet::new();
    let mut per_file = Vec::new();
    for f in files {
        if let Some(m) = module_of(src, &f) {
            modules.insert(m.clone());
            per_file.push((f, m));
        }
    }
    let mut out = Edges::new();
    for (f, m) in per_file {
        let text = std::fs::read_to_string(&f).unwrap();
        let is_mod_rs = f.file_name().is_some_and(|n| n == "mod.rs");
        // In `a/b.rs`, `super` is `a`; in `a/mod.rs`, `super` is the crate (`a`'s parent).
        for p in paths(&code_of(&text), &m, is_mod_rs) {
            if let Some(to) = resolve(&p, &modules) {
                if to != m {
                    let rel = f.strip_prefix(src).unwrap().display().to_string();
                    out.entry((m.clone(), to)).or_insert(rel);
                }
            }
        }
    }
    (modules, out)
}

/// The layers `docs/ARCHITECTURE.md` declares: rows `| N | `a`, `b` | … |` of its table.
fn declared_layers(doc: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let table = doc
        .split("## Layers")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a section \"Layers\"");
    for line in table.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(layer) = cells.get(1).unwrap_or(&"").parse::<usize>() else {
            continue;
        };
        for name in cells[2].split(',') {
            let name = name.trim().trim_matches('`');
            if !name.is_empty() {
                out.insert(name.to_string(), layer);
            }
        }
    }
    out
}

/// Every import that breaks the declared layers, as a line to print.
fn layer_violations(edges: &Edges, layers: &BTreeMap<String, usize>) -> Vec<String> {
    let mut bad = Vec::new();
    for ((from, to), file) in edges {
        let (a, b) = (&from[0], &to[0]);
        if a == b {
            continue;
        }
        match (layers.get(a), layers.get(b)) {
            (Some(la), Some(lb)) if lb < la => {}
            (Some(la), Some(lb)) => bad.push(format!(
                "{} (layer {la}) imports {} (layer {lb}), in src/{file}",
                from.join("::"),
                to.join("::")
            )),
            (None, _) => bad.push(format!("{a}: no layer declared in docs/ARCHITECTURE.md")),
            (_, None) => bad.push(format!("{b}: no layer declared in docs/ARCHITECTURE.md")),
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

/// A circle through `start`, if any (depth-first search for a path back to it).
fn circle_through(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn dfs(
        g: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if dfs(g, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    dfs(g, start, start, &mut path, &mut seen).then_some(path)
}

fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for m in g.keys() {
        if covered.contains(m) {
            continue;
        }
        if let Some(c) = circle_through(g, m) {
            covered.extend(c.iter().cloned());
            found.push(c.join(" → "));
        }
    }
    found
}

/// The graphs whose circles count: between top-level modules, and between the children of
/// each folder (an edge from `a::b::x` to `a::c` is an edge `b → c` inside `a`).
fn graphs(edges: &Edges) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        // The longest common parent, and the children of it on each side.
        let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
        if common == from.len() || common == to.len() {
            continue; // a parent and its own descendant
        }
        let parent = if common == 0 {
            "crate".to_string()
        } else {
            from[..common].join("::")
        };
        out.entry(parent)
            .or_default()
            .entry(from[common].clone())
            .or_default()
            .insert(to[common].clone());
    }
    out
}

#[test]
fn modules_keep_their_declared_layers_and_form_no_circles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (modules, e) = edges(&root.join("src"));
    assert!(
        modules.len() >= 20,
        "expected the crate's modules, found {modules:?}"
    );
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let layers = declared_layers(&doc);
    let tops: BTreeSet<&String> = modules.iter().map(|m| &m[0]).collect();
    let undeclared: Vec<&&String> = tops.iter().filter(|t| !layers.contains_key(**t)).collect();
    assert!(
        undeclared.is_empty(),
        "top-level modules without a layer in docs/ARCHITECTURE.md: {undeclared:?}"
    );
    let bad = layer_violations(&e, &layers);
    assert!(
        bad.is_empty(),
        "imports against the layers of docs/ARCHITECTURE.md:\n  {}",
        bad.join("\n  ")
    );
    let mut found = Vec::new();
    for (parent, g) in graphs(&e) {
        for c in circles(&g) {
            found.push(format!("in {parent}: {c}"));
        }
    }
    assert!(
        found.is_empty(),
        "modules that import each other (directly or through others):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_checks_find_what_they_look_for() {
    // A mutation check of the test itself: a → b → c → a is reported, a layered graph is not.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let edge = |g: &mut BTreeMap<String, BTreeSet<String>>, a: &str, b: &str| {
        g.entry(a.into()).or_default().insert(b.into());
    };
    edge(&mut g, "a", "b");
    edge(&mut g, "b", "c");
    edge(&mut g, "d", "a");
    assert!(circles(&g).is_empty());
    edge(&mut g, "c", "a");
    assert_eq!(circles(&g), ["a → b → c → a"]);

    // Paths: grouped trees expanded, `super` made absolute, the test part of a file and
    // comments skipped.
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let text = "use crate::{data::{A, rows::B}, error::Result};\nuse super::fused::X;\n\
                use super::super::io;\n/// [`crate::train`]\nfn f() { crate::rng::Rng::new(1); }\n\
                #[cfg(test)]\nmod tests { use crate::report; }";
    let got = paths(&code_of(text), &m("models::mlp"), false);
    assert_eq!(
        got,
        [
            m("data::A"),
            m("data::rows::B"),
            m("error::Result"),
            m("models::fused::X"),
            m("io"),
            m("rng::Rng::new"),
        ]
    );
    let modules: BTreeSet<Vec<String>> = [m("data"), m("data::rows"), m("models")].into();
    assert_eq!(
        resolve(&m("data::rows::B"), &modules),
        Some(m("data::rows"))
    );
    assert_eq!(resolve(&m("models::Model"), &modules), Some(m("models")));

    // Layers: an import of a higher layer and one of the same layer are reported; a lower one
    // is not; siblings in a folder that import each other are a circle inside it.
    let layers: BTreeMap<String, usize> = declared_layers(
        "## Layers\n\n| layer | modules | what |\n|---|---|---|\n| 0 | `kernels` | k |\n\
         | 1 | `models`, `teachers` | m |\n| 2 | `train` | t |\n\nafter\n",
    );
    assert_eq!(layers["kernels"], 0);
    assert_eq!(layers["teachers"], 1);
    let mut e = Edges::new();
    e.insert(
        (m("models::mlp"), m("kernels::gemm")),
        "models/mlp.rs".into(),
    );
    assert!(layer_violations(&e, &layers).is_empty());
    e.insert((m("kernels::gemm"), m("train")), "kernels/gemm.rs".into());
    e.insert((m("models"), m("teachers")), "models/mod.rs".into());
    assert_eq!(
        layer_violations(&e, &layers),
        [
            "kernels::gemm (layer 0) imports train (layer 2), in src/kernels/gemm.rs",
            "models (layer 1) imports teachers (layer 1), in src/models/mod.rs",
        ]
    );
    let mut e = Edges::new();
    e.insert((m("models::mlp"), m("models::fused")), String::new());
    e.insert((m("models::fused"), m("models")), String::new());
    assert!(graphs(&e).values().all(|g| circles(g).is_empty()));
    e.insert((m("models::fused"), m("models::mlp")), String::new());
    let g = graphs(&e);
    assert_eq!(circles(&g["models"]), ["fused → mlp → fused"]);
}
