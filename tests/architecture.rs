//! The crate's top-level modules form layers: none may import, directly or through others, a
//! module that imports it back. This test reads every `crate::<module>` path in `src/` (the
//! library, not the CLI binary, and not the `#[cfg(test)]` part at the bottom of a file, where a
//! unit test may use a higher layer to check a lower one), builds the graph between top-level
//! modules and fails on any circle, printing it.

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

/// The top-level module a file belongs to (`src/train/fast.rs` → `train`), or None for the
/// crate root and the binary.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    if first == "lib.rs" || first == "bin" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every top-level module named by a `crate::name` path in `text` (before `#[cfg(test)]`).
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    // Comments (doc links included) are not imports.
    let body: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let body = body.as_str();
    let mut out = BTreeSet::new();
    // Grouped imports (`use crate::{a::X, b}`) name several modules.
    let mut rest = body;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for part in split_top_level(&group[..end]) {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The module graph of `src/`: module → the modules it imports.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(m) = module_of(src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        let entry = g.entry(m.clone()).or_default();
        for i in imports(&text) {
            if i != m {
                entry.insert(i);
            }
        }
    }
    g
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

#[test]
fn top_level_modules_form_layers_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() >= 8, "expected the crate's modules, found {g:?}");
    let found = circles(&g);
    assert!(
        found.is_empty(),
        "modules that import each other (directly or through others):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_circle_finder_finds_circles() {
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
    // Grouped and inline paths are both read; the test part of a file is not.
    let text = "use crate::{data::{A, B}, error::Result};\n/// [`crate::train`]\nfn f() { crate::rng::Rng::new(1); }\n#[cfg(test)]\nmod tests { use crate::report; }";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["data", "error", "rng"]);
}
