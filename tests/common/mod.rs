//! Helpers for the end-to-end tests: run the real binary and inspect its output folder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_distillery"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs distillery with `args` from the repository root.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("failed to start the distillery binary")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn metrics(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("metrics.json")).expect("metrics.json missing");
    serde_json::from_str(&text).expect("metrics.json is not valid JSON")
}

/// The metrics without timing figures (latency, seconds), which differ between runs, or what
/// depends on the CPU (the int8 kernel chosen).
/// Writes `toml` as `dir/<name>.toml`, runs it quietly into `dir/<name>` and returns that
/// folder and its metrics; the run must succeed.
#[allow(dead_code)]
pub fn run_toml(dir: &Path, name: &str, toml: &str) -> (PathBuf, serde_json::Value) {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, toml).unwrap();
    let out = dir.join(name);
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    let m = metrics(&out);
    (out, m)
}

pub fn metrics_without_timings(out: &Path) -> serde_json::Value {
    let mut m = metrics(out);
    strip(&mut m);
    m
}

fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            o.retain(|k, _| {
                !(k.starts_with("latency")
                    || k.contains("seconds")
                    || k == "vs_teacher"
                    || k == "file_bytes"
                    || k == "source"
                    || k == "resumed_from_epoch"
                    // The int8 kernel picked at run time depends on the CPU.
                    || k == "kernel")
            });
            for (_, x) in o.iter_mut() {
                strip(x);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

/// When DISTILLERY_CATALOGUE is set to a file path, appends `| case | message |` to it: the
/// bad-input catalogue in docs/bad-input.md is generated from exactly what the tests observe
/// (`DISTILLERY_CATALOGUE=/tmp/cat.md cargo test --test bad_input --test submodels`).
pub fn catalogue(case: &str, message: &str) {
    let Some(path) = std::env::var_os("DISTILLERY_CATALOGUE") else {
        return;
    };
    // Drop the random temporary-folder part of paths.
    let mut msg = message.trim().to_string();
    while let Some(i) = msg.find("/tmp/.tmp") {
        let rest = &msg[i + 9..];
        let end = rest.find('/').map(|j| i + 9 + j + 1).unwrap_or(msg.len());
        msg.replace_range(i..end, "");
    }
    // Test threads are named after their test function.
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let file = if test.starts_with("submodel") || test.starts_with("shard") {
        "tests/submodels.rs"
    } else {
        "tests/bad_input.rs"
    };
    let line = format!(
        "| {case} | `{}` | `{file}::{test}` |\n",
        msg.replace('|', "\\|").replace('`', "'")
    );
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Asserts `|a − b| ≤ tol`.
pub fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "got {a}, expected {b} (tol {tol})");
}

/// The gradient of `loss` with respect to `var`, flattened.
pub fn grad_of(loss: &candle_core::Tensor, var: &candle_core::Var) -> Vec<f32> {
    let grads = loss.backward().unwrap();
    grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// The embedded digits, normalised, and the normaliser.
pub fn digits_normalised() -> (distillery::data::Dataset, distillery::data::Normalizer) {
    use distillery::data::{self, NormalizeKind, Normalizer};
    let mut d = data::embedded_digits().unwrap();
    let norm = Normalizer::fit(NormalizeKind::Global, &d);
    let dim = d.dim();
    norm.apply(&mut d.x, dim);
    (d, norm)
}

/// The two families the compression and export tests build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum ArchKind {
    /// `kind = "mlp"`.
    Mlp,
    /// `kind = "cnn"` with 3×3 kernels.
    Cnn,
    /// `kind = "resnet"`, one block per stage of the given widths.
    Resnet,
    /// `kind = "conv1d"` reading each 64-pixel row as a sequence, kernel 3.
    Conv1d,
}

/// The architecture of `kind` with these dense and conv widths, no dropout.
#[allow(dead_code)]
pub fn arch(kind: ArchKind, hidden: Vec<usize>, channels: Vec<usize>) -> distillery::models::Arch {
    use distillery::models::{
        cnn::CnnArch, conv1d::Conv1dArch, mlp::MlpArch, resnet::ResnetArch, Arch,
    };
    match kind {
        ArchKind::Mlp => Arch::Mlp(MlpArch {
            hidden,
            ..Default::default()
        }),
        ArchKind::Cnn => Arch::Cnn(CnnArch {
            channels,
            kernel: 3,
            hidden,
            dropout: 0.0,
            input_dropout: 0.0,
        }),
        ArchKind::Resnet => Arch::Resnet(ResnetArch {
            channels,
            blocks: 1,
            hidden,
            dropout: 0.0,
            input_dropout: 0.0,
        }),
        ArchKind::Conv1d => Arch::Conv1d(Conv1dArch {
            channels,
            kernel: 3,
            stride: 1,
            pool: 2,
            hidden,
            dropout: 0.0,
            input_dropout: 0.0,
        }),
    }
}

/// A digits classifier of the given family, trained for `epochs` on the normalised digits, with
/// metadata as a run would save it; also returns the normalised data.
pub fn trained_digits_model(
    kind: ArchKind,
    hidden: Vec<usize>,
    channels: Vec<usize>,
    epochs: usize,
    seed: u64,
) -> (
    distillery::models::Model,
    distillery::models::ModelMeta,
    distillery::data::Dataset,
) {
    trained_digits_model_at(
        kind,
        hidden,
        channels,
        epochs,
        seed,
        distillery::kernels::bf16::MatmulPrecision::F32,
    )
}

/// [`trained_digits_model`] with the training step's products at `precision`.
pub fn trained_digits_model_at(
    kind: ArchKind,
    hidden: Vec<usize>,
    channels: Vec<usize>,
    epochs: usize,
    seed: u64,
    precision: distillery::kernels::bf16::MatmulPrecision,
) -> (
    distillery::models::Model,
    distillery::models::ModelMeta,
    distillery::data::Dataset,
) {
    use distillery::models::{Model, ModelMeta, ModelSpec};
    let (d, norm) = digits_normalised();
    let spec = ModelSpec {
        arch: arch(kind, hidden, channels),
        input_shape: if kind == ArchKind::Conv1d {
            vec![64]
        } else {
            vec![1, 8, 8]
        },
        outputs: 10,
    };
    let m = Model::new(spec.clone(), &mut distillery::rng::Rng::new(seed)).unwrap();
    let cfg = distillery::config::TrainConfig {
        epochs,
        lr: 2e-3,
        precision,
        ..Default::default()
    };
    distillery::train::fit(
        &m,
        distillery::train::TrainJob {
            name: "m",
            cfg: &cfg,
            train: &d,
            val: &d,
            objective: distillery::train::Objective::supervised(),
            fill: norm.zero_value(),
            checkpoint: None,
            seed,
            progress: distillery::progress::Progress::Quiet,
            hooks: Vec::new(),
        },
    )
    .unwrap();
    let meta = ModelMeta {
        name: "m".into(),
        role: "student".into(),
        spec,
        task: distillery::data::Task::Classification,
        class_names: Some((0..10).map(|i| i.to_string()).collect()),
        normalizer: norm,
        target_scale: None,
        training: serde_json::Value::Null,
        quantization: None,
        compression: None,
        text: None,
        heads: Vec::new(),
    };
    (m, meta, d)
}

/// Compares `actual` (metrics without timings) with the committed fixture
/// `tests/fixtures/<name>.json`, recorded before the redesign. Numbers may differ by a relative
/// 1e-4 (float rounding on another CPU's kernels); anything else must be equal. With
/// `DISTILLERY_BLESS=1` the fixture is (re)written instead — only ever on purpose, when a change
/// is meant to move the figures, and said so in the commit.
pub fn assert_matches_fixture(name: &str, actual: &serde_json::Value) {
    let path = repo().join("tests/fixtures").join(format!("{name}.json"));
    if std::env::var_os("DISTILLERY_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(actual).unwrap()).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (record it with DISTILLERY_BLESS=1)",
            path.display()
        )
    });
    let mut expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    strip(&mut expected);
    let mut diffs = Vec::new();
    json_diff("", &expected, actual, &mut diffs);
    assert!(
        diffs.is_empty(),
        "{name}: {} difference(s) from {}:\n{}",
        diffs.len(),
        path.display(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn json_diff(at: &str, e: &serde_json::Value, a: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            // An export's largest difference from its runtime is float rounding itself (1e-7
            // scale, moved by summation order): equal to within 1e-5 absolute.
            let slack = if at.ends_with("max_abs_diff") {
                1e-5
            } else {
                1e-9
            };
            if (x - y).abs() > 1e-4 * x.abs().max(y.abs()) + slack {
                out.push(format!("{at}: expected {x}, got {y}"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => json_diff(&format!("{at}.{k}"), v, w, out),
                    None => out.push(format!("{at}.{k}: missing")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{at}.{k}: not in the fixture"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                json_diff(&format!("{at}[{i}]"), v, w, out);
            }
        }
        _ if e == a => {}
        _ => out.push(format!("{at}: expected {e}, got {a}")),
    }
}

/// The tiny BERT of `bench/reference/tiny_bert.py`: 2 layers, hidden 32, 4 heads, intermediate
/// 64, 26 WordPiece tokens; every weight a fixed formula of its name and position. Writes
/// `config.json`, `model.safetensors`, `tokenizer.json`, and sentence-transformers' pooling
/// files (mean pooling, normalised) into `dir`.
pub const TINY_VOCAB: [&str; 26] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog",
    "ran", "free", "money", "now", "click", "here", "meeting", "at", "noon", "##s", "##ing", "win",
    "prize", ".",
];

pub fn tiny_bert_value(name: &str, i: usize) -> f32 {
    let h = name.bytes().map(|b| b as u32).sum::<u32>() % 97;
    let v = 0.1 * (0.37 * i as f64 + 0.11 * h as f64).sin();
    (if name.contains("LayerNorm.weight") {
        1.0 + v
    } else {
        v
    }) as f32
}

pub fn tiny_bert_tensors() -> Vec<(String, Vec<usize>)> {
    let (v, h, f, p) = (TINY_VOCAB.len(), 32, 64, 64);
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![v, h]),
        ("embeddings.position_embeddings.weight".into(), vec![p, h]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..2 {
        let pre = format!("encoder.layer.{l}");
        for (n, s) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![f, h]),
            ("intermediate.dense.bias", vec![f]),
            ("output.dense.weight", vec![h, f]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            t.push((format!("{pre}.{n}"), s));
        }
    }
    t
}

pub fn tiny_tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = TINY_VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), serde_json::json!(i)))
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
    .to_string()
}

pub fn write_tiny_bert(dir: &Path) {
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": TINY_VOCAB.len(),
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 64,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "position_embedding_type": "absolute"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tiny_tokenizer_json()).unwrap();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tiny_bert_tensors()
        .into_iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            let bytes = (0..count)
                .flat_map(|i| tiny_bert_value(&n, i).to_le_bytes())
                .collect();
            (n, s, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
}
