//! The documentation cannot drift from the code:
//! - every key the experiment file's parser accepts (a field of a settings type that rejects
//!   unknown keys) is written in `docs/config.md`;
//! - every `distillery run configs/…` command in README.md and `docs/` names a config that
//!   exists and passes `distillery check` with the same `--set` overrides (the configs
//!   themselves are run with `--quick` by `tests/cli.rs`); a config whose pretrained model is
//!   fetched by `scripts/fetch_minilm.sh` may fail only by naming that missing folder;
//! - README.md stays a landing page (at most 250 lines) and its links to `docs/` resolve.

mod common;
use common::{repo, run, stderr};
use std::collections::BTreeSet;

/// Field names (serde's, after `rename`) of every struct or enum in `text` marked
/// `deny_unknown_fields`: the keys the experiment file accepts.
fn accepted_keys(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Comments out first: a brace or parenthesis in a doc comment is not code.
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("deny_unknown_fields") {
        // Only in a serde attribute (not a comment that names it).
        let line_start = rest[..i].rfind('\n').map_or(0, |j| j + 1);
        let on_attribute = rest[line_start..i].trim_start().starts_with("#[serde(");
        rest = &rest[i + "deny_unknown_fields".len()..];
        if !on_attribute {
            continue;
        }
        let Some(open) = rest.find('{') else { break };
        // The body of the type: up to its matching brace.
        let body = &rest[open + 1..];
        let mut depth = 0usize;
        let mut end = body.len();
        for (j, c) in body.char_indices() {
            match c {
                '{' | '(' => depth += 1,
                '}' | ')' if depth == 0 => {
                    end = j;
                    break;
                }
                '}' | ')' => depth -= 1,
                _ => {}
            }
        }
        let body = &body[..end];
        let mut rename: Option<String> = None;
        let mut skip = false;
        for line in body.lines() {
            let l = line.trim();
            if l.starts_with("#[serde(") {
                if let Some(r) = l.split("rename = \"").nth(1) {
                    rename = r.split('"').next().map(String::from);
                }
                if l.contains("skip)") || l.contains("skip,") || l.contains("skip_deserializing") {
                    skip = true;
                }
                continue;
            }
            if l.starts_with("//") || l.starts_with("#[") || l.is_empty() {
                continue;
            }
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let name: String = l
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let after = l[name.len()..].trim_start();
            let is_field = !name.is_empty() && after.starts_with(':') && !after.starts_with("::");
            if is_field && !skip {
                out.insert(rename.take().unwrap_or(name));
            }
            rename = None;
            skip = false;
        }
        rest = &rest[open + 1 + end..];
    }
    out
}

fn rust_sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_key_the_parser_accepts_is_in_the_reference() {
    let root = repo();
    let mut files = Vec::new();
    rust_sources(&root.join("src"), &mut files);
    let mut keys = BTreeSet::new();
    for f in files {
        let k = accepted_keys(&std::fs::read_to_string(&f).unwrap());
        if std::env::var_os("DOCS_KEYS").is_some() {
            eprintln!("{}: {k:?}", f.display());
        }
        keys.extend(k);
    }
    assert!(
        keys.len() > 60,
        "expected the config's keys, found {keys:?}"
    );
    let doc = std::fs::read_to_string(root.join("docs/config.md")).unwrap();
    let written = |k: &str| {
        doc.match_indices(k).any(|(i, _)| {
            let before = doc[..i].chars().next_back();
            let after = doc[i + k.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !word(before) && !word(after)
        })
    };
    let missing: Vec<&String> = keys.iter().filter(|k| !written(k)).collect();
    assert!(
        missing.is_empty(),
        "keys the experiment file accepts that docs/config.md does not mention: {missing:?}"
    );
}

#[test]
fn the_key_reader_reads_fields_renames_and_skips() {
    let text = "#[serde(deny_unknown_fields)]\npub struct A {\n    /// doc\n    pub alpha: f32,\n    \
                #[serde(rename = \"beta-x\")]\n    pub beta: Vec<(u8, u8)>,\n    #[serde(skip)]\n    \
                pub hidden: u8,\n    gamma: Option<u8>,\n}\nstruct B { pub not_this: u8 }\n";
    let got: Vec<String> = accepted_keys(text).into_iter().collect();
    assert_eq!(got, ["alpha", "beta-x", "gamma"]);
}

#[test]
fn documented_commands_name_configs_that_pass_check() {
    let root = repo();
    let mut docs = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "md") {
            docs.push(e.path());
        }
    }
    let mut commands = BTreeSet::new();
    for d in &docs {
        let text = std::fs::read_to_string(d).unwrap();
        for (i, _) in text.match_indices("run configs/") {
            let cmd: String = text[i + 4..]
                .chars()
                .take_while(|&c| c != '`' && c != '\n' && c != '|' && c != '#')
                .collect();
            commands.insert(cmd.trim().to_string());
        }
    }
    assert!(commands.len() >= 15, "{commands:?}");
    for cmd in &commands {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let mut args = vec!["check", words[0], "-q"];
        let mut i = 1;
        while i < words.len() {
            if words[i] == "--set" && i + 1 < words.len() {
                args.extend(["--set", words[i + 1]]);
                i += 1;
            }
            i += 1;
        }
        let o = run(&args);
        let err = stderr(&o);
        let fetched_model_missing = err.contains("'models/") && err.contains("does not exist");
        assert!(
            o.status.success() || fetched_model_missing,
            "`distillery {cmd}` (as documented) fails `distillery check`: {err}"
        );
    }
}

#[test]
fn readme_is_a_landing_page_whose_links_resolve() {
    let root = repo();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let n = readme.lines().count();
    assert!(
        n <= 250,
        "README.md has {n} lines; keep it a landing page (≤ 250)"
    );
    for (i, _) in readme.match_indices("](") {
        let target: String = readme[i + 2..].chars().take_while(|&c| c != ')').collect();
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let file = target.split('#').next().unwrap();
        assert!(
            root.join(file).exists(),
            "README.md links to {target}, which does not exist"
        );
    }
}
