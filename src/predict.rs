//! `distillery predict`: run a saved model (any precision) on raw inputs — an IDX images file,
//! a CSV file of feature columns, a PNG image, or a folder of PNG images — and return the
//! predicted class with its probabilities (or the regression value) for every input.
//!
//! Inputs are raw, as in the training files (pixel values 0–255 for images); the model file's
//! normalisation is applied here.

use crate::compress::AnyModel;
use crate::data::Task;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A batch of raw inputs and where each came from.
pub struct Inputs {
    /// `n * dim` raw feature values.
    pub x: Vec<f32>,
    /// One label per input (file name, or `file#row`).
    pub sources: Vec<String>,
}

/// One prediction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    /// Where the input came from.
    pub input: String,
    /// Predicted class name (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Class probabilities, in the model's class order (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<f32>>,
    /// Predicted value in the target's units (regression).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    /// A multi-task model: every head's prediction, by task name, in head order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A multi-task model's outputs on raw inputs (`x`: whole rows, the model's normalisation
/// applied here), `batch` rows at a time, one array per head in head order: class
/// probabilities (`rows × classes`), values in the target's units, or embedding vectors.
pub fn head_outputs(
    model: &AnyModel,
    x: &[f32],
    batch: usize,
) -> Result<Vec<(crate::models::TaskHead, Vec<f32>)>> {
    Ok(split_heads(model, &raw_outputs(model, x, batch)?))
}

/// The model's raw outputs on raw inputs `x` (whole rows; its normalisation applied here).
fn raw_outputs(model: &AnyModel, x: &[f32], batch: usize) -> Result<Vec<f32>> {
    let meta = &model.meta;
    let dim = meta.spec.input_dim();
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(Error::Input(format!(
            "inputs: {} values are not whole samples of shape {:?}",
            x.len(),
            meta.spec.input_shape
        )));
    }
    let mut x = x.to_vec();
    meta.normalizer.apply(&mut x, dim);
    model.predict(&x, batch)
}

/// A multi-task model's raw outputs split into its heads: softmax for class heads, the target
/// scale undone for value heads that learned the labels.
fn split_heads(model: &AnyModel, out: &[f32]) -> Vec<(crate::models::TaskHead, Vec<f32>)> {
    use crate::models::HeadKind;
    let meta = &model.meta;
    meta.heads
        .iter()
        .map(|h| {
            let mut v = crate::train::tasks::columns(out, meta.spec.outputs, &h.cols());
            match h.kind {
                HeadKind::Classes => {
                    let mut p = vec![0f32; h.outputs];
                    for row in v.chunks_exact_mut(h.outputs) {
                        crate::kernels::softmax::softmax_into(row, 1.0, &mut p);
                        row.copy_from_slice(&p);
                    }
                }
                HeadKind::Values if h.labels => {
                    // A further column's own scale, or the data's target scale.
                    let scale = if h.column.is_some() {
                        h.scale
                    } else {
                        meta.target_scale
                    };
                    if let Some(t) = scale {
                        v.iter_mut().for_each(|x| *x = t.inverse(*x));
                    }
                }
                _ => {}
            }
            (h.clone(), v)
        })
        .collect()
}

/// The class names of head `h` of a multi-task model.
fn head_classes(model: &AnyModel, h: &crate::models::TaskHead) -> Vec<String> {
    if let Some(c) = &h.classes {
        return c.clone();
    }
    match &model.meta.class_names {
        Some(n) if h.labels && h.column.is_none() && n.len() == h.outputs => n.clone(),
        _ => (0..h.outputs).map(|i| i.to_string()).collect(),
    }
}

fn ext(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Reads raw texts for a text model (a CSV file with a `text` column, or JSON Lines with a
/// `text` field) and featurizes them as the model's file says.
pub fn read_text_inputs(
    path: &Path,
    f: &crate::data::text::Featurizer,
    column: &str,
) -> Result<Inputs> {
    let name = path.display().to_string();
    let rows = crate::data::text::read_text_file(path, column, None)?;
    let f = f.clone().ready(&name)?;
    Ok(Inputs {
        x: f.featurize(&rows.texts)?,
        sources: rows.lines.iter().map(|l| format!("{name}:{l}")).collect(),
    })
}

/// Reads the inputs at `path` for a model taking `shape` inputs. `label` names a CSV column to
/// skip (the target column of a labelled file).
pub fn read_inputs(path: &Path, shape: &[usize], label: Option<&str>) -> Result<Inputs> {
    let dim: usize = shape.iter().product();
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| ext(p) == "png")
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Input(format!(
                "{}: the folder holds no .png images",
                path.display()
            )));
        }
        let mut x = Vec::with_capacity(files.len() * dim);
        let mut sources = Vec::new();
        for f in &files {
            x.extend(read_png(f, shape)?);
            sources.push(f.display().to_string());
        }
        return Ok(Inputs { x, sources });
    }
    if !path.exists() {
        return Err(Error::Input(format!(
            "{}: no such file or folder",
            path.display()
        )));
    }
    let name = path.display().to_string();
    let e = ext(path);
    let stem_ext = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if e == "png" {
        return Ok(Inputs {
            x: read_png(path, shape)?,
            sources: vec![name],
        });
    }
    if e == "csv" || stem_ext.ends_with(".csv.gz") {
        return read_feature_csv(path, dim, label);
    }
    // Otherwise IDX (raw or gzip).
    let a = crate::data::idx::read_idx(path)?;
    let n = a.dims.first().copied().unwrap_or(0);
    let per: usize = a.dims.iter().skip(1).product();
    if a.dims.len() < 2 || per != dim {
        return Err(Error::Input(format!(
            "{name}: IDX array of shape {:?} holds samples of {per} values, but the model takes inputs of shape {shape:?} ({dim} values)",
            a.dims
        )));
    }
    Ok(Inputs {
        x: a.data,
        sources: (0..n).map(|i| format!("{name}#{i}")).collect(),
    })
}

fn read_png(path: &Path, shape: &[usize]) -> Result<Vec<f32>> {
    let name = path.display().to_string();
    let bytes = crate::io::read_file(path)?;
    let mut dec = png::Decoder::new(std::io::Cursor::new(&bytes[..]));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec
        .read_info()
        .map_err(|e| Error::Input(format!("{name}: not a readable PNG image ({e})")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::Input(format!("{name}: PNG image too large")))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| Error::Input(format!("{name}: corrupt or truncated PNG image ({e})")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => 3,
    };
    let (c, eh, ew) = match shape {
        [c, h, w] => (*c, *h, *w),
        _ => {
            return Err(Error::Input(format!(
            "{name}: the model takes {shape:?} feature vectors, not images; give a CSV or IDX file"
        )))
        }
    };
    if (h, w) != (eh, ew) {
        return Err(Error::Input(format!(
            "{name}: image is {w}×{h} pixels, but the model takes {ew}×{eh} images"
        )));
    }
    let data = &buf[..info.buffer_size()];
    let mut out = Vec::with_capacity(c * h * w);
    if c == 1 {
        // Luminance (ITU-R BT.601) of colour images; alpha ignored.
        for px in data.chunks_exact(channels) {
            let v = if channels >= 3 {
                0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32
            } else {
                px[0] as f32
            };
            out.push(v);
        }
    } else if c == 3 && channels >= 3 {
        for ch in 0..3 {
            for px in data.chunks_exact(channels) {
                out.push(px[ch] as f32);
            }
        }
    } else {
        return Err(Error::Input(format!(
            "{name}: a {channels}-channel PNG cannot feed a model with {c} input channels"
        )));
    }
    Ok(out)
}

fn read_feature_csv(path: &Path, dim: usize, label: Option<&str>) -> Result<Inputs> {
    let name = path.display().to_string();
    let bytes = crate::compress::maybe_gunzip(crate::io::read_file(path)?, &name)?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(&bytes[..]);
    let header = rdr
        .headers()
        .map_err(|e| Error::Input(format!("{name}: unreadable CSV header ({e})")))?
        .clone();
    let skip = match label {
        Some(l) => Some(
            header
                .iter()
                .position(|h| h == l)
                .ok_or_else(|| Error::Input(format!("{name}: no column named '{l}' (--label)")))?,
        ),
        None => None,
    };
    let cols = header.len() - usize::from(skip.is_some());
    if cols != dim {
        let hint = if cols == dim + 1 {
            "; if one column is the label, name it with --label"
        } else {
            ""
        };
        return Err(Error::Input(format!(
            "{name}: {cols} feature columns, but the model takes {dim} features{hint}"
        )));
    }
    let mut x = Vec::new();
    let mut sources = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| Error::Input(format!("{name}:{line}: {e}")))?;
        for (j, f) in rec.iter().enumerate() {
            if Some(j) == skip {
                continue;
            }
            let v: f32 = f.trim().parse().map_err(|_| {
                Error::Input(format!(
                    "{name}:{line}: column '{}' holds '{f}', expected a number",
                    header.get(j).unwrap_or("?")
                ))
            })?;
            if !v.is_finite() {
                return Err(Error::Input(format!(
                    "{name}:{line}: column '{}' holds a non-finite value",
                    header.get(j).unwrap_or("?")
                )));
            }
            x.push(v);
        }
        sources.push(format!("{name}:{line}"));
    }
    if sources.is_empty() {
        return Err(Error::Input(format!("{name}: no data rows")));
    }
    Ok(Inputs { x, sources })
}

/// What a model says of raw inputs (`x`: whole rows, the model's normalisation applied here),
/// `batch` rows at a time: class probabilities (`rows × classes`) or values in the target's
/// units (`rows`).
pub fn probabilities(model: &AnyModel, x: &[f32], batch: usize) -> Result<Vec<f32>> {
    let meta = &model.meta;
    if !meta.heads.is_empty() {
        return Err(Error::Input(format!(
            "model '{}' has {} heads ({}): read them by name (head_outputs)",
            meta.name,
            meta.heads.len(),
            meta.heads
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut out = raw_outputs(model, x, batch)?;
    match meta.task {
        Task::Classification => {
            let c = meta.spec.outputs;
            let mut p = vec![0f32; c];
            for row in out.chunks_exact_mut(c) {
                crate::kernels::softmax::softmax_into(row, 1.0, &mut p);
                row.copy_from_slice(&p);
            }
        }
        Task::Regression => {
            if let Some(t) = meta.target_scale {
                for v in out.iter_mut() {
                    *v = t.inverse(*v);
                }
            }
        }
    }
    Ok(out)
}

/// Normalises `inputs` with the model's normaliser and predicts, `batch` rows at a time.
pub fn predict(model: &AnyModel, inputs: Inputs, batch: usize) -> Result<Vec<Prediction>> {
    let meta = &model.meta;
    let dim = meta.spec.input_dim();
    let mut x = inputs.x;
    if x.len() != inputs.sources.len() * dim {
        return Err(Error::Other("input buffer size mismatch".into()));
    }
    meta.normalizer.apply(&mut x, dim);
    let out = model.predict(&x, batch)?;
    let c = meta.spec.outputs;
    if !meta.heads.is_empty() {
        return Ok(head_predictions(model, inputs.sources, &out));
    }
    Ok(inputs
        .sources
        .into_iter()
        .zip(out.chunks_exact(c))
        .map(|(src, row)| match meta.task {
            Task::Classification => {
                let mut p = vec![0f32; row.len()];
                crate::kernels::softmax::softmax_into(row, 1.0, &mut p);
                let k = crate::eval::argmax(row);
                Prediction {
                    input: src,
                    class: Some(
                        meta.class_names
                            .as_ref()
                            .and_then(|n| n.get(k).cloned())
                            .unwrap_or_else(|| k.to_string()),
                    ),
                    probabilities: Some(p),
                    value: None,
                    tasks: None,
                }
            }
            Task::Regression => Prediction {
                input: src,
                class: None,
                probabilities: None,
                value: Some(
                    meta.target_scale
                        .map(|t| t.inverse(row[0]))
                        .unwrap_or(row[0]),
                ),
                tasks: None,
            },
        })
        .collect())
}

/// A multi-task model's predictions: per input, each head's class and probabilities, value
/// or embedding, by task name.
fn head_predictions(model: &AnyModel, sources: Vec<String>, out: &[f32]) -> Vec<Prediction> {
    use crate::models::HeadKind;
    use serde_json::{json, Value};
    let heads = split_heads(model, out);
    sources
        .into_iter()
        .enumerate()
        .map(|(i, src)| {
            let mut tasks = serde_json::Map::new();
            for (h, v) in &heads {
                let row = &v[i * h.outputs..(i + 1) * h.outputs];
                let entry: Value = match h.kind {
                    HeadKind::Classes => {
                        let k = crate::eval::argmax(row);
                        json!({"class": head_classes(model, h)[k], "probabilities": row})
                    }
                    HeadKind::Values => json!({"value": row[0]}),
                    HeadKind::Embedding => json!({"embedding": row}),
                };
                tasks.insert(h.name.clone(), entry);
            }
            Prediction {
                input: src,
                class: None,
                probabilities: None,
                value: None,
                tasks: Some(tasks),
            }
        })
        .collect()
}

/// A multi-task model's predictions as CSV: `input`, then per head `<task>.predicted` and
/// `<task>.p_<class>…` (class heads), `<task>.value`, or `<task>.0…` (embedding heads).
fn heads_csv(model: &AnyModel, preds: &[Prediction], q: &dyn Fn(&str) -> String) -> String {
    use crate::models::HeadKind;
    let mut s = String::from("input");
    for h in &model.meta.heads {
        match h.kind {
            HeadKind::Classes => {
                s.push_str(&format!(",{}.predicted", q(&h.name)));
                for c in head_classes(model, h) {
                    s.push_str(&format!(",{}", q(&format!("{}.p_{c}", h.name))));
                }
            }
            HeadKind::Values => s.push_str(&format!(",{}.value", q(&h.name))),
            HeadKind::Embedding => {
                for j in 0..h.outputs {
                    s.push_str(&format!(",{}.{j}", q(&h.name)));
                }
            }
        }
    }
    s.push('\n');
    let num = |v: &serde_json::Value| v.as_f64().map_or("NaN".to_string(), |x| format!("{x:.6}"));
    for p in preds {
        s.push_str(&q(&p.input));
        for h in &model.meta.heads {
            let Some(t) = p.tasks.as_ref().and_then(|t| t.get(&h.name)) else {
                continue;
            };
            if let Some(c) = t.get("class").and_then(|c| c.as_str()) {
                s.push_str(&format!(",{}", q(c)));
            }
            for key in ["probabilities", "embedding"] {
                for v in t.get(key).and_then(|v| v.as_array()).into_iter().flatten() {
                    s.push_str(&format!(",{}", num(v)));
                }
            }
            if let Some(v) = t.get("value") {
                s.push_str(&format!(",{}", num(v)));
            }
        }
        s.push('\n');
    }
    s
}

/// The predictions as CSV: `input,predicted,p_<class>…` or `input,value`; a multi-task
/// model's, one group of columns per head.
pub fn to_csv(model: &AnyModel, preds: &[Prediction]) -> String {
    let mut s = String::new();
    let q = |v: &str| {
        if v.contains([',', '"', '\n']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_string()
        }
    };
    if !model.meta.heads.is_empty() {
        return heads_csv(model, preds, &q);
    }
    match model.meta.task {
        Task::Classification => {
            let names: Vec<String> = model.meta.class_names.clone().unwrap_or_else(|| {
                (0..model.meta.spec.outputs)
                    .map(|i| i.to_string())
                    .collect()
            });
            s.push_str("input,predicted");
            for n in &names {
                s.push_str(&format!(",p_{}", q(n)));
            }
            s.push('\n');
            for p in preds {
                s.push_str(&format!(
                    "{},{}",
                    q(&p.input),
                    q(p.class.as_deref().unwrap_or(""))
                ));
                for v in p.probabilities.iter().flatten() {
                    s.push_str(&format!(",{v:.6}"));
                }
                s.push('\n');
            }
        }
        Task::Regression => {
            s.push_str("input,value\n");
            for p in preds {
                s.push_str(&format!(
                    "{},{}\n",
                    q(&p.input),
                    p.value.unwrap_or(f32::NAN)
                ));
            }
        }
    }
    s
}
