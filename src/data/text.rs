//! Text as data: a CSV file (with a header row) or a JSON Lines file holding a text column
//! and a label column, and the featurizers that turn each text into a padded row of token
//! ids for the text students.
//!
//! Limits, as the README says: a line (a CSV record or a JSON line) may hold up to 16 MiB; a
//! text longer than [`MAX_TEXT_BYTES`] is cut there at a character boundary (a featurizer
//! reads at most a few thousand tokens anyway); an empty or all-blank text, invalid UTF-8, a
//! missing column and a missing label are errors that name the file and line.

use super::{Dataset, Targets};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Longest line accepted.
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// Longest text kept; longer texts are cut here at a character boundary.
pub const MAX_TEXT_BYTES: usize = 64 << 10;
/// Largest file accepted, after decompression.
const MAX_FILE_BYTES: u64 = 4 << 30;
/// The padding id in a featurized row (ids are stored as f32, exact below 2^24).
pub const PAD: f32 = -1.0;
/// Largest id a featurizer may produce (f32 holds integers exactly up to 2^24).
pub const MAX_VOCAB: usize = 1 << 24;

/// Texts and their labels, as read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TextRows {
    /// One text per sample.
    pub texts: Vec<String>,
    /// One label per sample, as written in the file (empty when no label column was asked).
    pub labels: Vec<String>,
    /// The line each sample starts on (1-based).
    pub lines: Vec<usize>,
}

/// Reads a text data file: JSON Lines when its name ends in `.jsonl` or `.ndjson` (before
/// any `.gz`), else CSV with a header row. Gzip is detected from the magic bytes.
pub fn read_text_file(
    path: &Path,
    text_column: &str,
    label_column: Option<&str>,
) -> Result<TextRows> {
    let bytes = crate::io::read_file(path)?;
    let name = path.display().to_string();
    let data = super::csv::maybe_gunzip(&bytes, &name, MAX_FILE_BYTES)?;
    let stem = name.trim_end_matches(".gz");
    if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") {
        parse_jsonl(&data, &name, text_column, label_column)
    } else {
        parse_text_csv(&data, &name, text_column, label_column)
    }
}

fn clean_text(raw: &str, name: &str, line: usize, col: &str) -> Result<String> {
    if raw.trim().is_empty() {
        return Err(Error::Input(format!(
            "{name}:{line}: column '{col}' is empty; every sample needs a non-blank text"
        )));
    }
    let mut end = raw.len().min(MAX_TEXT_BYTES);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    Ok(raw[..end].to_string())
}

/// Parses JSON Lines: one object per line with string field `text_column` and a string or
/// number field `label_column`. Blank lines are skipped.
pub fn parse_jsonl(
    data: &[u8],
    name: &str,
    text_column: &str,
    label_column: Option<&str>,
) -> Result<TextRows> {
    let mut rows = TextRows::default();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if line.len() > MAX_LINE_BYTES {
            return Err(Error::Input(format!(
                "{name}:{n}: line of {} bytes; distillery reads lines of up to {MAX_LINE_BYTES} bytes",
                line.len()
            )));
        }
        let line = std::str::from_utf8(line).map_err(|e| {
            Error::Input(format!(
                "{name}:{n}: invalid UTF-8 at byte {}",
                e.valid_up_to()
            ))
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Input(format!("{name}:{n}: not a JSON object: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Input(format!("{name}:{n}: expected a JSON object")))?;
        let text = match obj.get(text_column) {
            Some(serde_json::Value::String(s)) => clean_text(s, name, n, text_column)?,
            Some(_) => {
                return Err(Error::Input(format!(
                    "{name}:{n}: field '{text_column}' is not a string"
                )))
            }
            None => {
                return Err(Error::Input(format!(
                    "{name}:{n}: no field '{text_column}' (the text column)"
                )))
            }
        };
        if let Some(label_column) = label_column {
            let label = match obj.get(label_column) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
                Some(serde_json::Value::Number(x)) => x.to_string(),
                Some(serde_json::Value::Bool(b)) => b.to_string(),
                _ => {
                    return Err(Error::Input(format!(
                        "{name}:{n}: no label in field '{label_column}' (a non-empty string or a number)"
                    )))
                }
            };
            rows.labels.push(label);
        }
        rows.texts.push(text);
        rows.lines.push(n);
    }
    if rows.texts.is_empty() {
        return Err(Error::Input(format!("{name}: no samples")));
    }
    Ok(rows)
}

/// Parses CSV with a header row naming `text_column` and `label_column`.
pub fn parse_text_csv(
    data: &[u8],
    name: &str,
    text_column: &str,
    label_column: Option<&str>,
) -> Result<TextRows> {
    let mut rdr = ::csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(data);
    let headers = rdr
        .byte_headers()
        .map_err(|e| Error::Input(format!("{name}:1: cannot read the header row: {e}")))?
        .clone();
    let find = |col: &str, what: &str| {
        headers
            .iter()
            .position(|h| h == col.as_bytes())
            .ok_or_else(|| {
                Error::Input(format!(
                    "{name}:1: no column '{col}' ({what}); the header has {}",
                    headers
                        .iter()
                        .map(|h| format!("'{}'", String::from_utf8_lossy(h)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    };
    let ti = find(text_column, "the text column")?;
    let li = label_column
        .map(|l| find(l, "the label column").map(|i| (i, l)))
        .transpose()?;
    let mut rows = TextRows::default();
    for rec in rdr.byte_records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            Error::Input(format!("{name}:{line}: {e}"))
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        if rec.as_slice().len() > MAX_LINE_BYTES {
            return Err(Error::Input(format!(
                "{name}:{line}: record of {} bytes; distillery reads records of up to {MAX_LINE_BYTES} bytes",
                rec.as_slice().len()
            )));
        }
        let field = |i: usize, col: &str| -> Result<&str> {
            std::str::from_utf8(&rec[i]).map_err(|e| {
                Error::Input(format!(
                    "{name}:{line}: column '{col}' holds invalid UTF-8 at byte {}",
                    e.valid_up_to()
                ))
            })
        };
        let text = clean_text(field(ti, text_column)?, name, line, text_column)?;
        if let Some((li, label_column)) = li {
            let label = field(li, label_column)?.trim();
            if label.is_empty() {
                return Err(Error::Input(format!(
                    "{name}:{line}: column '{label_column}' (the label) is empty"
                )));
            }
            rows.labels.push(label.to_string());
        }
        rows.texts.push(text);
        rows.lines.push(line);
    }
    if rows.texts.is_empty() {
        return Err(Error::Input(format!("{name}: no samples")));
    }
    Ok(rows)
}

/// Class targets from string labels: classes sorted (numerically when every label is a
/// number), or mapped through `classes` (a training file's) when given.
pub fn class_targets(labels: &[String], classes: Option<&[String]>, name: &str) -> Result<Targets> {
    let names: Vec<String> = match classes {
        Some(c) => c.to_vec(),
        None => {
            let mut u: Vec<String> = labels.to_vec();
            u.sort();
            u.dedup();
            if u.iter().all(|s| s.parse::<f64>().is_ok()) {
                u.sort_by(|a, b| {
                    a.parse::<f64>()
                        .unwrap_or(0.0)
                        .total_cmp(&b.parse::<f64>().unwrap_or(0.0))
                });
            }
            u
        }
    };
    if names.len() < 2 {
        return Err(Error::Input(format!(
            "{name}: {} class(es) in the label column; classification needs at least 2",
            names.len()
        )));
    }
    let idx: std::collections::HashMap<&str, u32> = names
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i as u32))
        .collect();
    let labels = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            idx.get(l.as_str()).copied().ok_or_else(|| {
                Error::Input(format!(
                    "{name}: sample {}: label '{l}' is not one of the training classes {names:?}",
                    i + 1
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Targets::Classes { labels, names })
}

/// How texts become token ids, as written in the experiment file (`[data.features]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FeaturesConfig {
    /// fastText-style hashed word and character n-grams.
    Ngrams {
        /// Hash buckets (the embedding table's rows).
        #[serde(default = "default_buckets")]
        buckets: usize,
        /// Word n-grams up to this length (1 = words only).
        #[serde(default = "default_word_ngrams")]
        word_ngrams: usize,
        /// Shortest character n-gram (0 = none).
        #[serde(default = "default_min_char")]
        min_char: usize,
        /// Longest character n-gram.
        #[serde(default = "default_max_char")]
        max_char: usize,
        /// Most ids kept per text (the first ones).
        #[serde(default = "default_max_ids")]
        max_tokens: usize,
    },
    /// The WordPiece (or any) tokenizer of a Hugging Face `tokenizer.json`, without its special
    /// tokens: the static-embedding (Model2Vec-style) student's input.
    Tokenizer {
        /// The `tokenizer.json` file.
        path: std::path::PathBuf,
        /// Most tokens kept per text (the first ones).
        #[serde(default = "default_max_tokens")]
        max_tokens: usize,
    },
}

fn default_buckets() -> usize {
    1 << 15
}
fn default_word_ngrams() -> usize {
    2
}
fn default_min_char() -> usize {
    3
}
fn default_max_char() -> usize {
    5
}
fn default_max_ids() -> usize {
    1024
}
fn default_max_tokens() -> usize {
    256
}

impl FeaturesConfig {
    /// Checks the values; `p` is the table's path for messages.
    pub fn check(&self, p: &str) -> Result<()> {
        match self {
            FeaturesConfig::Ngrams {
                buckets,
                word_ngrams,
                min_char,
                max_char,
                max_tokens,
            } => {
                if !(1..=MAX_VOCAB).contains(buckets) {
                    crate::error::bad_field(
                        &format!("{p}.buckets"),
                        &format!("expected 1 to {MAX_VOCAB}, got {buckets}"),
                    )?;
                }
                if !(1..=5).contains(word_ngrams) {
                    crate::error::bad_field(
                        &format!("{p}.word_ngrams"),
                        &format!("expected 1 to 5, got {word_ngrams}"),
                    )?;
                }
                if *min_char > 0 && (min_char > max_char || *max_char > 10) {
                    crate::error::bad_field(
                        &format!("{p}.max_char"),
                        &format!(
                            "expected min_char ≤ max_char ≤ 10 (min_char = 0 turns character n-grams off), got {min_char} and {max_char}"
                        ),
                    )?;
                }
                if *max_tokens == 0 {
                    crate::error::bad_field(&format!("{p}.max_tokens"), "expected ≥ 1, got 0")?;
                }
            }
            FeaturesConfig::Tokenizer { max_tokens, .. } => {
                if *max_tokens == 0 {
                    crate::error::bad_field(&format!("{p}.max_tokens"), "expected ≥ 1, got 0")?;
                }
            }
        }
        Ok(())
    }
}

/// A featurizer ready to run, and what a model file carries to featurize raw text alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Featurizer {
    /// Hashed n-grams (see [`FeaturesConfig::Ngrams`]).
    Ngrams {
        /// Hash buckets.
        buckets: usize,
        /// Word n-grams up to this length.
        word_ngrams: usize,
        /// Shortest character n-gram (0 = none).
        min_char: usize,
        /// Longest character n-gram.
        max_char: usize,
        /// Most ids per text.
        max_tokens: usize,
    },
    /// A Hugging Face tokenizer, carried whole (its JSON) so that a model file stands alone.
    Tokenizer {
        /// The tokenizer's JSON.
        json: String,
        /// Vocabulary size (ids are below it).
        vocab: usize,
        /// Most tokens per text.
        max_tokens: usize,
        /// The loaded tokenizer.
        #[serde(skip)]
        loaded: Option<std::sync::Arc<tokenizers::Tokenizer>>,
        /// Its fast path for ASCII text, when it is a BERT WordPiece tokenizer.
        #[serde(skip)]
        fast: Option<std::sync::Arc<super::wordpiece::FastWordPiece>>,
    },
}

impl PartialEq for Featurizer {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Featurizer::Ngrams {
                    buckets: a,
                    word_ngrams: b,
                    min_char: c,
                    max_char: d,
                    max_tokens: e,
                },
                Featurizer::Ngrams {
                    buckets: a2,
                    word_ngrams: b2,
                    min_char: c2,
                    max_char: d2,
                    max_tokens: e2,
                },
            ) => (a, b, c, d, e) == (a2, b2, c2, d2, e2),
            (
                Featurizer::Tokenizer {
                    json: a,
                    max_tokens: b,
                    ..
                },
                Featurizer::Tokenizer {
                    json: a2,
                    max_tokens: b2,
                    ..
                },
            ) => (a, b) == (a2, b2),
            _ => false,
        }
    }
}

/// A tokenizer from its JSON, with the padding and truncation a tokenizer.json may carry
/// switched off (all-MiniLM-L6-v2's pads every text to 128 [PAD] tokens and cuts it there):
/// distillery batches without padding and truncates where the caller says. Left on, [PAD]
/// tokens would be read as part of every text.
fn tokenizer_from_json(json: &str) -> std::result::Result<tokenizers::Tokenizer, String> {
    let mut tok = tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| e.to_string())?;
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| e.to_string())?;
    Ok(tok)
}

/// Loads a Hugging Face `tokenizer.json` (padding and truncation off), with a one-line error
/// naming the file.
pub fn load_tokenizer(path: &Path) -> Result<(tokenizers::Tokenizer, String)> {
    let bytes = crate::io::read_file(path)?;
    let json = String::from_utf8(bytes)
        .map_err(|_| Error::Input(format!("{}: not UTF-8 text", path.display())))?;
    let tok = tokenizer_from_json(&json).map_err(|e| {
        Error::Input(format!(
            "{}: not a Hugging Face tokenizer.json: {e}",
            path.display()
        ))
    })?;
    Ok((tok, json))
}

/// The first `n` token ids of `text` (no special tokens). A long text is first tokenized only
/// up to the last whitespace before `16 n` bytes: when that prefix already gives `n` tokens they
/// are the whole text's first `n` (the cut falls between words, and BERT's normalisation,
/// pre-tokenisation and WordPiece work word by word), so a long email costs what its beginning
/// costs. Otherwise the whole text is tokenized.
pub fn first_tokens(tok: &tokenizers::Tokenizer, text: &str, n: usize) -> Result<Vec<u32>> {
    let encode = |t: &str| {
        tok.encode_fast(t, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Input(format!("tokenizer: {e}")))
    };
    let budget = n.saturating_mul(16);
    if text.len() > budget {
        let mut cut = budget;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(ws) = text[..cut].rfind(char::is_whitespace) {
            let mut ids = encode(&text[..ws])?;
            if ids.len() >= n {
                ids.truncate(n);
                return Ok(ids);
            }
        }
    }
    let mut ids = encode(text)?;
    ids.truncate(n);
    Ok(ids)
}

impl Featurizer {
    /// The featurizer the config describes (loading its tokenizer).
    pub fn from_config(c: &FeaturesConfig) -> Result<Featurizer> {
        Ok(match c {
            FeaturesConfig::Ngrams {
                buckets,
                word_ngrams,
                min_char,
                max_char,
                max_tokens,
            } => Featurizer::Ngrams {
                buckets: *buckets,
                word_ngrams: *word_ngrams,
                min_char: *min_char,
                max_char: *max_char,
                max_tokens: *max_tokens,
            },
            FeaturesConfig::Tokenizer { path, max_tokens } => {
                let (tok, json) = load_tokenizer(path)?;
                let vocab = tok.get_vocab_size(true);
                if vocab == 0 || vocab > MAX_VOCAB {
                    return Err(Error::Input(format!(
                        "{}: vocabulary of {vocab} tokens; expected 1 to {MAX_VOCAB}",
                        path.display()
                    )));
                }
                Featurizer::Tokenizer {
                    vocab,
                    max_tokens: *max_tokens,
                    fast: super::wordpiece::FastWordPiece::from_json(&json)
                        .map(std::sync::Arc::new),
                    json,
                    loaded: Some(std::sync::Arc::new(tok)),
                }
            }
        })
    }

    /// Loads the tokenizer of a featurizer read from a model file.
    pub fn ready(mut self, file: &str) -> Result<Featurizer> {
        if let Featurizer::Tokenizer {
            json, loaded, fast, ..
        } = &mut self
        {
            if fast.is_none() {
                *fast = super::wordpiece::FastWordPiece::from_json(json).map(std::sync::Arc::new);
            }
            if loaded.is_none() {
                let tok = tokenizer_from_json(json).map_err(|e| {
                    Error::Input(format!(
                        "{file}: the tokenizer it carries does not load: {e}"
                    ))
                })?;
                *loaded = Some(std::sync::Arc::new(tok));
            }
        }
        Ok(self)
    }

    /// Ids per text (the width of a featurized row).
    pub fn width(&self) -> usize {
        match self {
            Featurizer::Ngrams { max_tokens, .. } | Featurizer::Tokenizer { max_tokens, .. } => {
                *max_tokens
            }
        }
    }

    /// Rows of the embedding table: buckets or vocabulary size.
    pub fn vocab(&self) -> usize {
        match self {
            Featurizer::Ngrams { buckets, .. } => *buckets,
            Featurizer::Tokenizer { vocab, .. } => *vocab,
        }
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        match self {
            Featurizer::Ngrams {
                buckets,
                word_ngrams,
                min_char,
                max_char,
                max_tokens,
            } => {
                let chars = if *min_char == 0 {
                    String::new()
                } else {
                    format!(" + char {min_char}–{max_char}-grams")
                };
                format!(
                    "hashed word 1–{word_ngrams}-grams{chars} → {buckets} buckets, ≤ {max_tokens} per text"
                )
            }
            Featurizer::Tokenizer {
                vocab, max_tokens, ..
            } => format!("tokenizer ({vocab} tokens), ≤ {max_tokens} per text"),
        }
    }

    /// Appends the ids of `text` to `out`, padded with [`PAD`] to [`Featurizer::width`].
    pub fn featurize_into(&self, text: &str, out: &mut Vec<f32>) -> Result<()> {
        let start = out.len();
        let width = self.width();
        match self {
            Featurizer::Ngrams {
                buckets,
                word_ngrams,
                min_char,
                max_char,
                ..
            } => ngram_ids(
                text,
                *buckets as u64,
                *word_ngrams,
                *min_char,
                *max_char,
                width,
                out,
            ),
            Featurizer::Tokenizer { loaded, fast, .. } => {
                let mut ids = Vec::with_capacity(width);
                // The fast path where it gives the tokenizer's own ids, else the tokenizer.
                if !fast
                    .as_ref()
                    .is_some_and(|f| f.first_ids(text, width, &mut ids))
                {
                    let tok = loaded
                        .as_ref()
                        .ok_or_else(|| Error::Other("tokenizer not loaded".into()))?;
                    ids = first_tokens(tok, text, width)?;
                }
                out.extend(ids.iter().map(|&i| i as f32));
            }
        }
        out.resize(start + width, PAD);
        Ok(())
    }

    /// Featurizes many texts over all cores; `n * width` values.
    pub fn featurize(&self, texts: &[String]) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        let w = self.width();
        let parts = texts
            .par_chunks(64)
            .map(|chunk| {
                let mut out = Vec::with_capacity(chunk.len() * w);
                for t in chunk {
                    self.featurize_into(t, &mut out)?;
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(parts.concat())
    }
}

/// FNV-1a, 64 bits: a fixed hash so that ids are the same on every machine and version.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0x1f;
            h = h.wrapping_mul(0x100000001b3);
        }
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// fastText-style features: lower-cased words (runs of letters and digits), word n-grams up to
/// `word_ngrams`, and the character n-grams of each word wrapped in `<` `>`; each hashed into
/// `buckets`. Word features come first, then character features, so that the first
/// `width` ids keep every word of a long text before its character n-grams.
fn ngram_ids(
    text: &str,
    buckets: u64,
    word_ngrams: usize,
    min_char: usize,
    max_char: usize,
    width: usize,
    out: &mut Vec<f32>,
) {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let start = out.len();
    let full = |out: &Vec<f32>| out.len() - start >= width;
    for i in 0..words.len() {
        for n in 1..=word_ngrams {
            if i + n > words.len() {
                break;
            }
            if full(out) {
                return;
            }
            let parts: Vec<&[u8]> = words[i..i + n].iter().map(|w| w.as_bytes()).collect();
            out.push((fnv1a(&parts) % buckets) as f32);
        }
    }
    if min_char == 0 {
        return;
    }
    let mut buf: Vec<char> = Vec::new();
    let mut s = String::new();
    for w in &words {
        buf.clear();
        buf.push('<');
        buf.extend(w.chars());
        buf.push('>');
        for n in min_char..=max_char {
            if n > buf.len() {
                break;
            }
            for j in 0..=buf.len() - n {
                if full(out) {
                    return;
                }
                s.clear();
                s.extend(&buf[j..j + n]);
                out.push((fnv1a(&[b"#c", s.as_bytes()]) % buckets) as f32);
            }
        }
    }
}

/// Builds a data set from texts, their featurized rows and targets.
pub fn text_dataset(rows: TextRows, targets: Targets, f: &Featurizer) -> Result<Dataset> {
    let x = f.featurize(&rows.texts)?;
    let n = rows.texts.len();
    Ok(Dataset {
        x: x.into(),
        shape: vec![f.width()],
        targets,
        text: rows.texts,
        rows: (0..n).collect(),
        features: Vec::new(),
        extra: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_csv_read_the_same_rows() {
        let j = b"{\"text\": \"hello world\", \"label\": \"ham\"}\n\n{\"text\": \"buy now\", \"label\": 1}\n";
        let r = parse_jsonl(j, "t.jsonl", "text", Some("label")).unwrap();
        assert_eq!(r.texts, vec!["hello world", "buy now"]);
        assert_eq!(r.labels, vec!["ham", "1"]);
        let c = b"label,text\nham,\"hello, world\"\nspam,buy now\n";
        let r = parse_text_csv(c, "t.csv", "text", Some("label")).unwrap();
        assert_eq!(r.texts, vec!["hello, world", "buy now"]);
    }

    #[test]
    fn bad_text_files_name_the_line() {
        let e = parse_jsonl(
            b"{\"text\": \"a\", \"label\": 1}\n{\"text\": \" \", \"label\": 1}\n",
            "t.jsonl",
            "text",
            Some("label"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("t.jsonl:2") && e.contains("empty"), "{e}");
        let e = parse_jsonl(b"{\"text\": \"a\"}\n", "t.jsonl", "text", Some("label"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.jsonl:1") && e.contains("label"), "{e}");
        let e = parse_text_csv(b"text,label\n\xff\xfe,1\n", "t.csv", "text", Some("label"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.csv:2") && e.contains("UTF-8"), "{e}");
        let e = parse_text_csv(b"body,label\nx,1\n", "t.csv", "text", Some("label"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no column 'text'"), "{e}");
        let e = parse_jsonl(b"[1,2]\n", "t.jsonl", "text", Some("label"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("JSON object"), "{e}");
    }

    #[test]
    fn long_texts_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_TEXT_BYTES); // 2 bytes each
        let line = format!("{{\"text\": \"{long}\", \"label\": 0}}\n");
        let r = parse_jsonl(line.as_bytes(), "t.jsonl", "text", Some("label")).unwrap();
        assert!(r.texts[0].len() <= MAX_TEXT_BYTES);
        assert!(r.texts[0].chars().all(|c| c == 'é'));
    }

    #[test]
    fn ngram_ids_are_stable_and_padded() {
        let f = Featurizer::Ngrams {
            buckets: 1000,
            word_ngrams: 2,
            min_char: 3,
            max_char: 4,
            max_tokens: 64,
        };
        let mut a = Vec::new();
        f.featurize_into("Hello, World!", &mut a).unwrap();
        let mut b = Vec::new();
        f.featurize_into("hello world", &mut b).unwrap();
        assert_eq!(a, b, "case and punctuation do not change the ids");
        assert_eq!(a.len(), 64);
        // words 2 + bigram 1 + char 3-grams (5 + 5) + 4-grams (4 + 4) = 21 ids, then padding.
        assert_eq!(a.iter().filter(|&&v| v != PAD).count(), 21);
        assert!(a.iter().all(|&v| v == PAD || (0.0..1000.0).contains(&v)));
        let mut c = Vec::new();
        f.featurize_into("world hello", &mut c).unwrap();
        assert_ne!(a, c, "the bigram depends on the order");
    }
}
