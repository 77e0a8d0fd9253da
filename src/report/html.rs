//! `report.html`: the Markdown report rendered to one self-contained page — the same tables
//! (sortable by a click on a column head), the plots inline as SVG, the run's config, and links
//! to the model files. No network, no external scripts, styles or fonts.

use super::Metrics;
use std::fmt::Write;
use std::path::Path;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1180px; padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .86rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #d6d6d6; padding: .3rem .55rem; }
th { background: #f2f4f7; cursor: pointer; user-select: none; white-space: nowrap; }
th[data-dir="asc"]::after { content: " ▲"; } th[data-dir="desc"]::after { content: " ▼"; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.2rem 0; } figure svg { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
code { background: #f2f2f2; padding: 0 .2rem; }
nav a { margin-right: .8rem; }
"#;

/// Sorts a table by the clicked column: numbers (units and % ignored) numerically, text
/// alphabetically; a second click reverses.
const SCRIPT: &str = r#"
(function () {
  function value(td) {
    var t = td.textContent.trim();
    var m = t.replace(/[,\u00a0]/g, '').match(/^[-+]?\d*\.?\d+(e[-+]?\d+)?/i);
    if (!m) return null;
    var v = parseFloat(m[0]);
    if (/\bms\b/.test(t)) v *= 1000; else if (/MiB/.test(t)) v *= 1024; else if (/GiB/.test(t)) v *= 1048576;
    return v;
  }
  document.querySelectorAll('table').forEach(function (table) {
    var heads = table.querySelectorAll('thead th');
    heads.forEach(function (th, col) {
      th.title = 'sort by this column';
      th.addEventListener('click', function () {
        var dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
        heads.forEach(function (h) { delete h.dataset.dir; });
        th.dataset.dir = dir;
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = value(a.cells[col]), y = value(b.cells[col]);
          var r;
          if (x !== null && y !== null) r = x - y;
          else if (x !== null) r = -1; else if (y !== null) r = 1;
          else r = a.cells[col].textContent.localeCompare(b.cells[col].textContent);
          return dir === 'asc' ? r : -r;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.body.dataset.ready = 'yes';
})();
"#;

/// The page. `svgs`: each plot's file name and SVG text, put inline where the Markdown shows
/// it; `config`: the run's resolved `config.toml`; `out`: the run folder (its model files are
/// linked).
pub fn page(
    m: &Metrics,
    md: &str,
    svgs: &[(String, String)],
    config: Option<&str>,
    out: &Path,
) -> String {
    let body = body_html(md, svgs, "plots/");
    page_with(m, &body, config, out)
}

/// Markdown to HTML, each plot (`prefix` + file) inline in place of its `<img>`.
fn body_html(md: &str, svgs: &[(String, String)], prefix: &str) -> String {
    use pulldown_cmark::{html, Options, Parser};
    let mut body = String::new();
    html::push_html(&mut body, Parser::new_ext(md, Options::ENABLE_TABLES));
    for (file, svg) in svgs {
        let needle = format!("<img src=\"{prefix}{file}\" alt=\"");
        if let Some(start) = body.find(&needle) {
            let rest = &body[start + needle.len()..];
            let Some(alt_end) = rest.find('"') else {
                continue;
            };
            let caption = rest[..alt_end].to_string();
            let Some(tag_end) = rest.find("/>") else {
                continue;
            };
            let end = start + needle.len() + tag_end + 2;
            let svg_body = svg.trim_start_matches(|c| c != '<');
            let svg_body = match svg_body.find("<svg") {
                Some(i) => &svg_body[i..],
                None => svg_body,
            };
            let fig = format!(
                "<figure id=\"{}\">{svg_body}<figcaption>{caption} (<a href=\"{prefix}{file}\">{file}</a>)</figcaption></figure>",
                esc(file.trim_end_matches(".svg"))
            );
            body.replace_range(start..end, &fig);
        }
    }
    body
}

/// A page of `md` alone (`distillery compare`), its plots inline.
pub fn simple_page(title: &str, md: &str, svgs: &[(String, String)]) -> String {
    let body = body_html(md, svgs, "");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}<script>{SCRIPT}</script>\n</body>\n</html>\n",
        esc(title)
    )
}

fn page_with(m: &Metrics, body: &str, config: Option<&str>, out: &Path) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>distillery report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&m.experiment)
    );
    s.push_str("<nav><a href=\"#top\">table</a><a href=\"#plots\">plots</a><a href=\"#files\">model files</a><a href=\"#config\">config</a><a href=\"report.md\">report.md</a><a href=\"metrics.json\">metrics.json</a></nav>\n<div id=\"top\"></div>\n");
    s.push_str(&body.replacen("<h2>Plots</h2>", "<h2 id=\"plots\">Plots</h2>", 1));
    // The model files, linked.
    s.push_str("<h2 id=\"files\">Model files</h2>\n<table>\n<thead><tr><th>model</th><th>file</th><th>bytes on disk</th></tr></thead>\n<tbody>\n");
    for x in &m.models {
        for ext in ["safetensors", "safetensors.gz"] {
            let f = out.join("models").join(format!("{}.{ext}", x.name));
            if let Ok(meta) = std::fs::metadata(&f) {
                let rel = format!("models/{}.{ext}", x.name);
                let _ = writeln!(
                    s,
                    "<tr><td>{}</td><td><a href=\"{}\">{}</a></td><td>{}</td></tr>",
                    esc(&x.name),
                    esc(&rel),
                    esc(&rel),
                    meta.len()
                );
            }
        }
    }
    for e in &m.exports {
        let _ = writeln!(
            s,
            "<tr><td>{} ({})</td><td><a href=\"{}\">{}</a></td><td>{}</td></tr>",
            esc(&e.from),
            esc(&e.format),
            esc(&e.file),
            esc(&e.file),
            e.bytes
        );
    }
    s.push_str("</tbody>\n</table>\n");
    if let Some(c) = config {
        let _ = write!(
            s,
            "<h2 id=\"config\">The run's config (resolved)</h2>\n<details open><summary>config.toml</summary><pre>{}</pre></details>\n",
            esc(c)
        );
    }
    let _ = write!(
        s,
        "<p><small>distillery {} · seed {} · made from metrics.json; <code>distillery report DIR</code> makes it again.</small></p>\n<script>{SCRIPT}</script>\n</body>\n</html>\n",
        esc(&m.distillery_version),
        m.seed
    );
    s
}
