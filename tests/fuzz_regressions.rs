//! Replays every input the fuzzers kept (fuzz/corpus/<target>/) and every crash case found so far
//! (fuzz/regressions/<target>/) through the same entry points as the fuzz targets: each must
//! return Ok or a clean error, never panic.

use distillery::data::{
    csv::{parse_csv_bytes, CsvOptions},
    Task,
};
use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) {
            for e in rd.flatten() {
                if e.path().is_file() {
                    out.push((e.path(), std::fs::read(e.path()).unwrap()));
                }
            }
        }
    }
    out
}

#[test]
fn idx_inputs() {
    let all = inputs("idx");
    assert!(!all.is_empty());
    for (p, b) in all {
        let _ = distillery::data::idx::parse_idx(&b, &p.display().to_string());
    }
}

#[test]
fn csv_inputs() {
    for (p, b) in inputs("csv") {
        let Some((&mode, body)) = b.split_first() else {
            continue;
        };
        let opts = CsvOptions {
            label: "y".into(),
            task: if mode & 1 == 0 {
                Task::Classification
            } else {
                Task::Regression
            },
            image_shape: if mode & 2 == 0 {
                None
            } else {
                Some(vec![1, 2, 2])
            },
            extra: Vec::new(),
        };
        let _ = parse_csv_bytes(body, &p.display().to_string(), &opts, None);
    }
}

#[test]
fn config_inputs() {
    for (p, b) in inputs("config") {
        let Ok(text) = std::str::from_utf8(&b) else {
            continue;
        };
        let name = p.display().to_string();
        if let Ok(cfg) = distillery::config::load_str(text, &name, &[]) {
            let _ = cfg.validate();
        }
        let _ = distillery::config::load_str(text, &name, &["model.a.train.epochs=1".to_string()]);
    }
}

#[test]
fn model_inputs() {
    for (p, b) in inputs("model") {
        let _ = distillery::compress::load_any_bytes(&b, &p.display().to_string());
    }
}

#[test]
fn text_inputs() {
    let all = inputs("text");
    assert!(!all.is_empty());
    for (p, b) in all {
        let Some((&mode, body)) = b.split_first() else {
            continue;
        };
        let name = p.display().to_string();
        let label = if mode & 2 == 0 { Some("label") } else { None };
        let rows = if mode & 1 == 0 {
            distillery::data::text::parse_jsonl(body, &name, "text", label)
        } else {
            distillery::data::text::parse_text_csv(body, &name, "text", label)
        };
        if let Ok(rows) = rows {
            let f = distillery::data::text::Featurizer::Ngrams {
                buckets: 1 + (mode as usize) * 97,
                word_ngrams: 1 + (mode as usize % 3),
                min_char: (mode as usize) % 4,
                max_char: 5,
                max_tokens: 64,
            };
            assert_eq!(
                f.featurize(&rows.texts).unwrap().len(),
                rows.texts.len() * 64
            );
        }
    }
}

#[test]
fn onnx_teacher_inputs() {
    use distillery::teachers::{OnnxInput, OnnxTeacher, Teacher};
    let all = inputs("onnx");
    assert!(!all.is_empty());
    for (p, b) in all {
        if let Ok(t) = OnnxTeacher::from_bytes(
            b,
            &p.display().to_string(),
            64,
            OnnxInput::Raw,
            0,
            distillery::data::Normalizer::None,
        ) {
            let _ = t.predict_rows(&[0.5; 64], 1);
        }
    }
}
