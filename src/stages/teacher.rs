//! `[[teacher]]`: a teacher distillery did not train, put in the store under its name so that
//! a `[[model]]`'s `distill.teacher` can name it. One of:
//! - `onnx = "file.onnx"`: any ONNX model — lowered onto our own MLP / CNN kernels when it is
//!   made of their operators, run in tract otherwise — over feature rows, images or a text
//!   run's token ids (`input_name`, `token_ids`);
//! - `bert = "folder"`: a Hugging Face BERT-family encoder (sentence-transformers layout), its
//!   embeddings of every text computed once and cached, with an optional classification
//!   `head` that distillery trains on the frozen embeddings;
//! - `outputs = "file"`: precomputed outputs, one row per sample of the data file (logits,
//!   probabilities, log-probabilities, or only the top-k log-probabilities);
//! - `mix = [{ teacher = "a", weight = 0.7 }, …]`: several teachers at once, their
//!   probabilities averaged with the weights (multi-teacher distillation).

use super::Stage;
use crate::data::Dataset;
use crate::error::{bad_field, Error, Result};
use crate::eval::{self, Scores};
use crate::models::{Arch, Model, ModelSpec};
use crate::store::{ModelMetrics, RunStore};
use crate::teachers::adapter::AdapterConfig;
use crate::teachers::bert::{BertEncoder, Pooling};
use crate::teachers::{cache, KnownTeacher, OnnxInput, OnnxTeacher, SplitOutputs, Teacher};
use crate::train::{self, Objective, TrainConfig, TrainJob};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One `[[teacher]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// The name students use in `distill.teacher`.
    pub name: String,
    /// An ONNX file whose input takes `[batch, features]` or a fixed per-sample shape such as
    /// `[batch, 1, 28, 28]` (weights may sit in an external-data file beside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<PathBuf>,
    /// ONNX: feed it `raw` feature values (default) or the run's `normalized` ones.
    #[serde(default, skip_serializing_if = "is_default")]
    pub input: OnnxInput,
    /// ONNX: the output that holds the logits (or values), by position (`1`) or name (`"logits"`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub output: crate::teachers::OnnxOutput,
    /// ONNX: the graph input the data feed, by name (`"input_ids"`), for a graph with several
    /// inputs; distillery fills an `attention_mask` and `token_type_ids` beside token ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_name: Option<String>,
    /// ONNX with an integer input (token ids of a text run): the padding's id and the ids put
    /// before and after each text (`{ pad = 0, cls = 101, sep = 102 }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<crate::teachers::TokenIds>,
    /// ONNX: a teacher from another domain, fed the run's raw samples mapped to its input
    /// (`{ resize = [20, 20], pad = 4, scale = 0.0625 }`, `{ columns = [...] }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterConfig>,
    /// ONNX: recalibrate the teacher's logits to this run's classes with the labels the
    /// training split has — a logistic regression on its standardised logits, early-stopped
    /// on the validation split — before it teaches. The teacher may then have another number
    /// of outputs than the data have classes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub calibrate: bool,
    /// A Hugging Face BERT-family folder: `config.json`, `model.safetensors`, `tokenizer.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bert: Option<PathBuf>,
    /// BERT: longest input in tokens (default: the folder's `max_seq_length`, else 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// BERT: `mean`, `cls`, or `auto` (what the folder's sentence-transformers files say).
    #[serde(default, skip_serializing_if = "is_default")]
    pub pooling: Pooling,
    /// BERT: L2-normalise the embeddings (default: when the folder's `modules.json` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// BERT: texts per forward pass.
    #[serde(default = "default_batch", skip_serializing_if = "is_default_batch")]
    pub batch_size: usize,
    /// BERT: a classification head trained on the frozen embeddings (the teacher's logits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadConfig>,
    /// BERT: fine-tune every layer of the encoder with a linear head on the run's labels
    /// before it teaches (`finetune = { epochs = 3, lr = 5e-5 }`); instead of `head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<crate::stages::finetune::FinetuneConfig>,
    /// Precomputed outputs: one row per sample of the data file, in its order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<PathBuf>,
    /// Precomputed outputs for the samples of `data.test_path`, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_outputs: Option<PathBuf>,
    /// What each row of `outputs` holds.
    #[serde(default, skip_serializing_if = "is_default")]
    pub outputs_kind: OutputsKind,
    /// Several teachers at once: their probabilities (values, for regression) averaged with
    /// these weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mix: Vec<MixMember>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn default_batch() -> usize {
    32
}
fn is_default_batch(v: &usize) -> bool {
    *v == default_batch()
}

/// A classification head on a frozen encoder's embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Hidden layer widths (none: logistic regression on the embeddings).
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Training settings.
    #[serde(default)]
    pub train: TrainConfig,
}

/// What the rows of a precomputed-outputs file hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OutputsKind {
    /// Logits (values, for regression), one per class.
    #[default]
    Logits,
    /// Probabilities, one per class, summing to 1.
    Probs,
    /// Log-probabilities, one per class.
    LogProbs,
    /// Only the k most likely classes: a JSON object per line mapping class names to
    /// log-probabilities; the remaining probability mass is spread evenly over the other
    /// classes.
    TopK,
}

/// One member of a `mix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixMember {
    /// An earlier `[[teacher]]` or `[[model]]`.
    pub teacher: String,
    /// Its weight (the weights are normalised to sum to 1).
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

impl TeacherConfig {
    /// Checks the table; `p` is its path for messages, `text` whether the data are texts,
    /// `arrays` whether they are arrays given in memory (then `outputs` and `test_outputs`
    /// name arrays, not files), `earlier` the teachers and models declared before it.
    pub fn check(&self, p: &str, text: bool, arrays: bool, earlier: &[&str]) -> Result<()> {
        let sources = [
            self.onnx.is_some(),
            self.bert.is_some(),
            self.outputs.is_some(),
            !self.mix.is_empty(),
        ];
        if sources.iter().filter(|&&s| s).count() != 1 {
            bad_field(
                p,
                "give exactly one teacher source: onnx = \"file.onnx\", bert = \"folder\", outputs = \"file\" or mix = [...]",
            )?;
        }
        for (f, path) in [
            ("onnx", &self.onnx),
            ("bert", &self.bert),
            ("outputs", &self.outputs),
            ("test_outputs", &self.test_outputs),
        ] {
            if let Some(path) = path {
                // With arrays, `outputs` names an array the caller gave, not a file.
                let named_array = arrays && f.contains("outputs");
                if !named_array && !path.exists() {
                    bad_field(
                        &format!("{p}.{f}"),
                        &format!("'{}' does not exist", path.display()),
                    )?;
                }
            }
        }
        if self.bert.is_none() {
            for (f, set) in [
                ("max_tokens", self.max_tokens.is_some()),
                ("pooling", self.pooling != Pooling::default()),
                ("normalize", self.normalize.is_some()),
                ("head", self.head.is_some()),
                ("finetune", self.finetune.is_some()),
                ("batch_size", self.batch_size != default_batch()),
            ] {
                if set {
                    bad_field(&format!("{p}.{f}"), "only for a bert teacher")?;
                }
            }
        } else if !text {
            bad_field(
                &format!("{p}.bert"),
                "a BERT teacher reads texts: use data.format = \"text\"",
            )?;
        }
        if self.onnx.is_none() {
            for (f, set) in [
                ("adapter", self.adapter.is_some()),
                ("calibrate", self.calibrate),
                ("input_name", self.input_name.is_some()),
                ("token_ids", self.token_ids.is_some()),
            ] {
                if set {
                    bad_field(&format!("{p}.{f}"), "only for an onnx teacher")?;
                }
            }
        }
        if let Some(a) = &self.adapter {
            a.check(&format!("{p}.adapter"))?;
            if self.input != OnnxInput::Raw {
                bad_field(
                    &format!("{p}.input"),
                    "a teacher with an adapter reads the raw values (the run's normalisation is not its own)",
                )?;
            }
        }
        if let Some(t) = &self.token_ids {
            for (f, v) in [("pad", Some(t.pad)), ("cls", t.cls), ("sep", t.sep)] {
                if v.is_some_and(|v| v < 0) {
                    bad_field(
                        &format!("{p}.token_ids.{f}"),
                        &format!("expected an id ≥ 0, got {}", v.unwrap_or_default()),
                    )?;
                }
            }
        }
        if self.onnx.is_some() && text && self.adapter.is_some() {
            bad_field(
                &format!("{p}.adapter"),
                "an adapter maps images or table columns; with text data the teacher reads token ids",
            )?;
        }
        if self.max_tokens == Some(0) || self.batch_size == 0 {
            bad_field(p, "max_tokens and batch_size must be at least 1")?;
        }
        if let Some(f) = &self.finetune {
            f.check(&format!("{p}.finetune"))?;
            if self.head.is_some() {
                bad_field(
                    &format!("{p}.head"),
                    "finetune trains its own linear head with the encoder: remove head",
                )?;
            }
        }
        if let Some(h) = &self.head {
            h.train.check(&format!("{p}.head.train"), false)?;
            if h.hidden.contains(&0) {
                bad_field(&format!("{p}.head.hidden"), "widths must be ≥ 1")?;
            }
        }
        if self.outputs.is_none()
            && (self.test_outputs.is_some() || self.outputs_kind != OutputsKind::default())
        {
            bad_field(
                &format!("{p}.outputs"),
                "test_outputs and outputs_kind go with outputs = \"file\"",
            )?;
        }
        for (i, m) in self.mix.iter().enumerate() {
            if !earlier.contains(&m.teacher.as_str()) {
                bad_field(
                    &format!("{p}.mix[{i}].teacher"),
                    &format!(
                        "'{}' is not a teacher or model declared before this one",
                        m.teacher
                    ),
                )?;
            }
            if !(m.weight.is_finite() && m.weight > 0.0) {
                bad_field(
                    &format!("{p}.mix[{i}].weight"),
                    &format!("expected a positive number, got {}", m.weight),
                )?;
            }
        }
        if self.mix.len() == 1 {
            bad_field(&format!("{p}.mix"), "a mix needs at least two teachers")?;
        }
        Ok(())
    }
}

/// The stage of one `[[teacher]]` table.
pub struct TeacherStage {
    /// Its settings.
    pub cfg: TeacherConfig,
}

impl Stage for TeacherStage {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn run(&self, store: &mut RunStore) -> Result<()> {
        let c = &self.cfg;
        if let Some(onnx) = &c.onnx {
            return onnx_teacher(c, onnx, store);
        }
        if let Some(dir) = &c.bert {
            return bert_teacher(c, dir, store);
        }
        if let Some(file) = &c.outputs {
            return precomputed_teacher(c, file, store);
        }
        mix_teacher(c, store)
    }
}

fn what_outputs(outputs: usize) -> &'static str {
    if outputs == 1 {
        "target (regression)"
    } else {
        "classes"
    }
}

/// Loads an ONNX teacher (with its adapter, if any) and checks it against the data: it runs on
/// one sample, and gives as many outputs as the data have classes (or any number, when it is
/// calibrated). Returns it and its outputs per sample. Called before any work starts
/// ([`preflight`]) and by the stage.
fn load_onnx(
    c: &TeacherConfig,
    onnx: &Path,
    splits: &crate::data::Splits,
) -> Result<(OnnxTeacher, usize)> {
    let d = splits.train.dim();
    let outputs = splits.train.outputs();
    let adapter = match &c.adapter {
        Some(a) => Some(a.build(
            &format!("teacher.{}.adapter", c.name),
            &splits.train.shape,
            &splits.train.features,
        )?),
        None => None,
    };
    let graph_dim = adapter.as_ref().map(|a| a.out_dim()).unwrap_or(d);
    let feed = crate::teachers::OnnxFeed {
        input_name: c.input_name.clone(),
        token_ids: c.token_ids.unwrap_or_default(),
    };
    let mut t = OnnxTeacher::load_fed(
        onnx,
        graph_dim,
        c.input,
        c.output.clone(),
        splits.normalizer.clone(),
        feed,
    )
    .map_err(|e| match &adapter {
        Some(a) => Error::Input(format!(
            "teacher.{}.adapter: it maps {}; {e}",
            c.name,
            a.describe()
        )),
        None => e,
    })?
    .with_target_scale(splits.target_scale);
    if let Some(a) = adapter {
        t = t.with_adapter(a);
    }
    if !splits.train.text.is_empty() && !t.takes_token_ids() {
        return Err(Error::Input(format!(
            "teacher.{}: {} takes float values, but the data are texts: an ONNX teacher of texts takes integer token ids (input_ids), from the same tokenizer as data.features",
            c.name,
            onnx.display()
        )));
    }
    if c.token_ids.is_some() && !t.takes_token_ids() {
        return Err(Error::Input(format!(
            "teacher.{}.token_ids: {} takes float values, not token ids",
            c.name,
            onnx.display()
        )));
    }
    let probe = t.predict_rows(&splits.train.x[..d], 1)?;
    if probe.len() != outputs && !c.calibrate {
        return Err(Error::Input(format!(
            "teacher.{}: {} gives {} outputs per sample, but the data have {outputs} {}{}",
            c.name,
            onnx.display(),
            probe.len(),
            what_outputs(outputs),
            if splits.train.outputs() > 1 {
                " (calibrate = true maps its outputs to the data's classes)"
            } else {
                ""
            }
        )));
    }
    Ok((t, probe.len()))
}

/// Checks, before any stage runs, what a teacher can only check against the data: an ONNX
/// teacher's adapter maps the samples to the graph's input, and its outputs fit the classes.
pub fn preflight(c: &TeacherConfig, splits: &crate::data::Splits) -> Result<()> {
    match &c.onnx {
        Some(onnx)
            if c.adapter.is_some()
                || c.calibrate
                || c.input_name.is_some()
                || c.token_ids.is_some()
                || !splits.train.text.is_empty() =>
        {
            load_onnx(c, onnx, splits).map(|_| ())
        }
        _ => Ok(()),
    }
}

fn onnx_teacher(c: &TeacherConfig, onnx: &Path, store: &mut RunStore) -> Result<()> {
    let splits = &store.splits;
    let d = splits.train.dim();
    let (t, t_outputs) = load_onnx(c, onnx, splits)?;
    let adapted = t
        .adapter()
        .map(|a| format!(", adapter {}", a.describe()))
        .unwrap_or_default();
    store.progress.say(&format!(
        "{}: ONNX teacher {} ({} inputs, {} outputs{adapted}; runs on {})",
        c.name,
        onnx.display(),
        d,
        t_outputs,
        t.runtime()
    ));
    if c.calibrate {
        return calibrated_teacher(c, onnx, t, t_outputs, &adapted, store);
    }
    let params = t.params();
    let architecture = format!("onnx {}{adapted}", onnx.display());
    let description = format!("ONNX file {}", onnx.display());
    record_onnx(c, onnx, t, params, architecture, description, store)
}

/// Measures an ONNX teacher (as it teaches: adapted, calibrated), records it with the file's
/// size — and an external-data file's beside it (`model.onnx.data`, as PyTorch names it) —
/// and puts it in the store.
fn record_onnx<T: Teacher + 'static>(
    c: &TeacherConfig,
    onnx: &Path,
    t: T,
    params: usize,
    architecture: String,
    description: String,
    store: &mut RunStore,
) -> Result<()> {
    let (scores, b1, b256) = store.measure(&t)?;
    let mut r = ModelMetrics::measured(&c.name, "teacher", &scores, b1, b256, description);
    r.architecture = architecture;
    let data = onnx.with_extension("onnx.data");
    r.file_bytes = [onnx, data.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    r.bytes = r.file_bytes as usize;
    r.params = params;
    store.record(r)?;
    store.add_teacher(&c.name, Box::new(t));
    Ok(())
}

/// `calibrate = true`: the teacher's logits on every split, a logistic regression on them
/// (standardised) fitted to the training split's labels (missing ones skipped) and
/// early-stopped on the validation split, then the calibrated teacher measured and put in the
/// store; the report gives the uncalibrated teacher's test accuracy beside it.
fn calibrated_teacher(
    c: &TeacherConfig,
    onnx: &Path,
    t: OnnxTeacher,
    t_outputs: usize,
    adapted: &str,
    store: &mut RunStore,
) -> Result<()> {
    let s = &store.splits;
    let d = s.train.dim();
    let logits = |data: &Dataset| crate::eval::predict_all(&t, &data.x, d, 512);
    let (tr, va) = (logits(&s.train)?, logits(&s.val)?);
    let raw = eval::score_outputs(&logits(&s.test)?, &s.test, None);
    let norm =
        crate::data::Normalizer::fit_rows(crate::data::NormalizeKind::PerFeature, &tr, t_outputs);
    let train_cfg = TrainConfig {
        epochs: 300,
        batch_size: 32,
        lr: 1e-2,
        patience: Some(30),
        ..TrainConfig::default()
    };
    train_cfg.check(&format!("teacher.{}.calibrate", c.name), false)?;
    let h = HeadConfig {
        hidden: Vec::new(),
        train: train_cfg,
    };
    let scaled = |mut v: Vec<f32>| {
        norm.apply(&mut v, t_outputs);
        crate::teachers::Rows::from(v)
    };
    store.progress.say(&format!(
        "{}: calibrating its {t_outputs} outputs to the {} classes on the {} labelled training samples (uncalibrated test accuracy {:.2}%)",
        c.name,
        s.train.outputs(),
        s.train.labelled(),
        100.0 * raw.accuracy.unwrap_or(0.0)
    ));
    let head = train_head(c, &h, t_outputs, &scaled(tr), &scaled(va), &norm, store)?;
    let params = t.params() + head.num_params();
    let ct = crate::teachers::Calibrated {
        inner: Box::new(t),
        norm,
        head,
    };
    let description = format!(
        "ONNX file {}, calibrated on the training labels (uncalibrated: {:.2}% test accuracy, {} errors)",
        onnx.display(),
        100.0 * raw.accuracy.unwrap_or(0.0),
        raw.errors.unwrap_or(0)
    );
    let architecture = format!("onnx {}{adapted} + calibration", onnx.display());
    record_onnx(c, onnx, ct, params, architecture, description, store)
}

/// The encoder's embeddings of one split's texts, from the cache or computed into it.
fn split_embeddings(
    enc: &BertEncoder,
    data: &Dataset,
    split: &str,
    c: &TeacherConfig,
    store: &RunStore,
) -> Result<crate::teachers::Rows> {
    let key = cache::key(
        &enc.digest,
        "embeddings",
        data.text.iter().map(|t| t.as_bytes()),
    );
    let texts: Vec<&str> = data.text.iter().map(|s| s.as_str()).collect();
    let (v, _) = cache::rows(
        &store.cache_dir(),
        &key,
        texts.len(),
        enc.hidden,
        (c.batch_size * 8).max(64),
        &format!("{} {split}", c.name),
        store.progress,
        |r| enc.embed(&texts[r], c.batch_size),
    )?;
    Ok(v)
}

fn bert_teacher(c: &TeacherConfig, dir: &Path, store: &mut RunStore) -> Result<()> {
    if store.splits.train.text.is_empty() {
        return Err(Error::Input(format!(
            "teacher.{}.bert: the data hold no texts; use data.format = \"text\"",
            c.name
        )));
    }
    let enc = BertEncoder::load(dir, c.max_tokens, c.pooling, c.normalize)?;
    store.progress.say(&format!(
        "{}: BERT encoder {} ({} parameters, {}-dim {:?} pooling{}, ≤ {} tokens)",
        c.name,
        dir.display(),
        enc.params,
        enc.hidden,
        enc.pooling,
        if enc.normalize { ", normalised" } else { "" },
        enc.max_tokens
    ));
    let (enc, tuned) = match &c.finetune {
        Some(f) => {
            let tuned = finetune_encoder(c, f, &enc, store)?;
            let e = BertEncoder::load(&tuned.dir, c.max_tokens, c.pooling, c.normalize)?;
            (e, Some(tuned))
        }
        None => (enc, None),
    };
    let s = &store.splits;
    let emb = SplitOutputs {
        cols: enc.hidden,
        train: split_embeddings(&enc, &s.train, "train", c, store)?,
        val: split_embeddings(&enc, &s.val, "val", c, store)?,
        test: Some(split_embeddings(&enc, &s.test, "test", c, store)?),
    };
    // The head reads standardised embeddings (per-feature statistics of the training split,
    // saved in the head's file).
    let norm = crate::data::Normalizer::fit_rows(
        crate::data::NormalizeKind::PerFeature,
        &emb.train,
        emb.cols,
    );
    // What the head reads: standardised embeddings (a head trained on frozen ones), or the
    // embeddings as they are (a head fine-tuned with the encoder).
    let head_norm = tuned.is_none().then(|| norm.clone());
    // With a head, the standardised embeddings of each split go to the cache too (streamed,
    // then mapped), so that the head trains and predicts without holding a split in memory.
    let (head, logits) = match (&c.head, &tuned) {
        (_, Some(t)) => {
            // The fine-tuned head reads the encoder's embeddings as they are.
            let m = Model::new(
                ModelSpec {
                    arch: Arch::mlp(Vec::new()),
                    input_shape: vec![emb.cols],
                    outputs: s.train.outputs(),
                },
                &mut crate::rng::Rng::new(0),
            )?;
            m.set_weights(&[t.head_w.clone(), t.head_b.clone()])?;
            let test = emb.test.clone().unwrap_or_default();
            let l = SplitOutputs {
                cols: m.spec.outputs,
                train: m.predict(&emb.train, 512)?.into(),
                val: m.predict(&emb.val, 512)?.into(),
                test: Some(m.predict(&test, 512)?.into()),
            };
            (Some(m), Some(l))
        }
        (Some(h), None) => {
            let (m, l) = frozen_head(c, h, &enc, &emb, &norm, store)?;
            (Some(m), Some(l))
        }
        (None, None) => (None, None),
    };
    // Test figures: the head's scores; embeddings alone have none to compare with labels.
    let scores = match &logits {
        Some(l) => eval::score_outputs(l.test.as_deref().unwrap_or(&[]), &s.test, None),
        None => Scores::default(),
    };
    let run = |texts: &[&str]| -> Result<()> {
        let ids = enc.tokenize(texts)?;
        let e = enc.embed_ids(&ids)?;
        if let Some(h) = &head {
            match &head_norm {
                Some(n) => {
                    let mut v = e;
                    n.apply(&mut v, enc.hidden);
                    h.predict(&v, 512)?
                }
                None => h.predict(&e, 512)?,
            };
        }
        Ok(())
    };
    let pick = |b: usize| -> Vec<&str> {
        (0..b)
            .map(|i| s.test.text[i % s.test.text.len()].as_str())
            .collect()
    };
    let (one, many) = (pick(1), pick(256));
    let cfg = store.eval_config();
    let b1 = eval::time_median(cfg, 2, || run(&one))?;
    let b256 = eval::time_median(cfg, 1, || run(&many))?;
    let r = bert_record(
        c,
        dir,
        &enc,
        head.as_ref(),
        tuned.as_ref(),
        &scores,
        (b1, b256),
    );
    store.record(r)?;
    let enc = Arc::new(enc);
    // With a head, and when the data are the teacher's own token ids, the teacher also runs on
    // new inputs: augmented views, fixed views, transfer texts.
    let same_tokens = matches!(
        &store.splits.featurizer,
        Some(crate::data::text::Featurizer::Tokenizer { json, .. })
            if crate::teachers::bert::text_digest(json) == enc.tokenizer_digest
    );
    if let (Some(h), true) = (&head, same_tokens) {
        let live = crate::teachers::bert::BertTeacher {
            encoder: enc.clone(),
            norm: head_norm,
            head: h.duplicate()?,
            specials: enc.specials()?,
        };
        store.add_teacher(&c.name, Box::new(live));
    }
    store.add_known(
        &c.name,
        KnownTeacher {
            logits,
            embeddings: Some(emb),
            encoder: Some(enc),
        },
    );
    Ok(())
}

/// The frozen encoder's head: trained on the standardised embeddings of each split (streamed
/// into the cache, then mapped, so that no split has to fit in memory); the head and its
/// outputs on every split.
fn frozen_head(
    c: &TeacherConfig,
    h: &HeadConfig,
    enc: &BertEncoder,
    emb: &SplitOutputs,
    norm: &crate::data::Normalizer,
    store: &RunStore,
) -> Result<(Model, SplitOutputs)> {
    let s = &store.splits;
    let fp = serde_json::to_string(norm).map_err(|e| Error::Other(e.to_string()))?;
    let std_rows = |data: &Dataset, e: &crate::teachers::Rows, split: &str| {
        let cols = emb.cols;
        let key = cache::key(
            &enc.digest,
            &format!("standardised embeddings {fp}"),
            data.text.iter().map(|t| t.as_bytes()),
        );
        cache::rows(
            &store.cache_dir(),
            &key,
            data.len(),
            cols,
            4096,
            &format!("{} {split} (standardised)", c.name),
            crate::progress::Progress::Quiet,
            |r| {
                let mut v = e[r.start * cols..r.end * cols].to_vec();
                norm.apply(&mut v, cols);
                Ok(v)
            },
        )
        .map(|(v, _)| v)
    };
    let test_emb = emb.test.clone().unwrap_or_default();
    let (tr, va, te) = (
        std_rows(&s.train, &emb.train, "train")?,
        std_rows(&s.val, &emb.val, "val")?,
        std_rows(&s.test, &test_emb, "test")?,
    );
    let m = train_head(c, h, emb.cols, &tr, &va, norm, store)?;
    let l = SplitOutputs {
        cols: m.spec.outputs,
        train: m.predict(&tr, 512)?.into(),
        val: m.predict(&va, 512)?.into(),
        test: Some(m.predict(&te, 512)?.into()),
    };
    Ok((m, l))
}

/// A BERT teacher's row in the report: its test scores (none without a head), latencies from
/// raw text, size with the head's, and the fine-tuning's record.
fn bert_record(
    c: &TeacherConfig,
    dir: &Path,
    enc: &BertEncoder,
    head: Option<&Model>,
    tuned: Option<&crate::stages::finetune::Finetuned>,
    scores: &Scores,
    (b1, b256): (f64, f64),
) -> ModelMetrics {
    let head_params = head.map(|h| h.num_params()).unwrap_or(0);
    let mut r = ModelMetrics::measured(
        &c.name,
        "teacher",
        scores,
        b1,
        b256,
        format!("BERT folder {}", dir.display()),
    );
    r.architecture = format!(
        "bert {} ({} → {}){}",
        dir.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        enc.max_tokens,
        enc.hidden,
        head.map(|h| format!(
            " + head {}{}",
            h.spec.describe(),
            if tuned.is_some() {
                ", fine-tuned end to end"
            } else {
                ""
            }
        ))
        .unwrap_or_default()
    );
    if let Some(t) = &tuned {
        r.training = Some(t.record.clone());
    }
    r.params = enc.params + head_params;
    r.bytes = enc.bytes as usize + 4 * head_params;
    r.file_bytes = enc.bytes + head.map(|_| 4 * head_params as u64).unwrap_or(0);
    if head.is_none() {
        r.accuracy = None;
        r.test_errors = None;
        r.f1 = None;
    }
    r
}

/// Fine-tunes the encoder and a linear head on the labelled training texts (or reads back a
/// finished fine-tuning), into `models/<name>-finetuned/`.
fn finetune_encoder(
    c: &TeacherConfig,
    f: &crate::stages::finetune::FinetuneConfig,
    enc: &BertEncoder,
    store: &RunStore,
) -> Result<crate::stages::finetune::Finetuned> {
    let s = &store.splits;
    let labelled = |d: &Dataset| -> Result<(Vec<Vec<u32>>, Vec<u32>)> {
        let crate::data::Targets::Classes { labels, .. } = &d.targets else {
            return Err(Error::Input(format!(
                "teacher.{}.finetune: fine-tuning needs class labels",
                c.name
            )));
        };
        let keep: Vec<usize> = (0..d.len())
            .filter(|&i| labels[i] != crate::data::MISSING)
            .collect();
        let texts: Vec<&str> = keep.iter().map(|&i| d.text[i].as_str()).collect();
        Ok((
            enc.tokenize(&texts)?,
            keep.iter().map(|&i| labels[i]).collect(),
        ))
    };
    let (tr_ids, tr_y) = labelled(&s.train)?;
    let (va_ids, va_y) = labelled(&s.val)?;
    if tr_ids.is_empty() || va_ids.is_empty() {
        return Err(Error::Input(format!(
            "teacher.{}.finetune: the training and validation splits need labelled texts",
            c.name
        )));
    }
    let tokens: usize = tr_ids.iter().map(|v| v.len()).sum();
    store.progress.say(&format!(
        "{}: fine-tuning every layer and a linear head on {} labelled texts ({} tokens, ≤ {} each) for {} epochs, batches of {}",
        c.name,
        tr_ids.len(),
        tokens,
        enc.max_tokens,
        f.epochs,
        f.batch_size
    ));
    crate::stages::finetune::finetune(crate::stages::finetune::FinetuneJob {
        name: &c.name,
        cfg: f,
        encoder: enc,
        train: (&tr_ids, &tr_y),
        val: (&va_ids, &va_y),
        classes: s.train.outputs(),
        out: store.models_dir().join(format!("{}-finetuned", c.name)),
        checkpoint: store.checkpoint_path(&c.name, "finetune"),
        seed: store.seed,
        progress: store.progress,
    })
}

/// Trains (or reads back) the classification head on the frozen embeddings.
fn train_head(
    c: &TeacherConfig,
    h: &HeadConfig,
    cols: usize,
    train_x: &crate::teachers::Rows,
    val_x: &crate::teachers::Rows,
    norm: &crate::data::Normalizer,
    store: &RunStore,
) -> Result<Model> {
    let s = &store.splits;
    let name = format!("{}-head", c.name);
    let file = store.model_path(&name);
    let spec = ModelSpec {
        arch: Arch::mlp(h.hidden.clone()),
        input_shape: vec![cols],
        outputs: s.train.outputs(),
    };
    if file.exists() {
        let (m, _) = crate::models::load_model(&file)?;
        if m.spec == spec {
            store.progress.say(&format!(
                "{name}: already trained ({}); skipping",
                file.display()
            ));
            return Ok(m);
        }
    }
    // Standardised already, and mapped from the cache: batches are read as training needs them.
    let train = Dataset::from_rows(train_x.clone(), vec![cols], s.train.targets.clone());
    let val = Dataset::from_rows(val_x.clone(), vec![cols], s.val.targets.clone());
    let model = Model::new(
        spec,
        &mut crate::rng::Rng::derive(store.seed, &format!("init/{name}")),
    )?;
    store.progress.say(&format!(
        "{name}: training a {} head on the frozen embeddings",
        model.spec.describe()
    ));
    let record = train::fit(
        &model,
        TrainJob {
            name: &name,
            cfg: &h.train,
            train: &train,
            val: &val,
            objective: Objective::supervised(),
            fill: 0.0,
            checkpoint: Some(store.checkpoint_path(&name, "ckpt")),
            seed: store.seed,
            progress: store.progress,
            hooks: Vec::new(),
        },
    )?;
    let mut meta = store.meta(
        &name,
        "teacher-head",
        &model.spec,
        serde_json::to_value(&record).map_err(|e| Error::Other(e.to_string()))?,
    );
    meta.text = None;
    meta.normalizer = norm.clone();
    crate::models::save_model(&file, &model, &meta)?;
    let _ = std::fs::remove_file(store.checkpoint_path(&name, "ckpt"));
    Ok(model)
}

/// Reads a precomputed-outputs file: CSV (a header row, then one numeric row per sample) or
/// JSON Lines (a JSON array per line; for `top-k`, an object mapping class names or indices to
/// log-probabilities). Returns logits (log-probabilities for probability kinds), `rows × k`.
pub fn read_outputs(
    path: &Path,
    kind: OutputsKind,
    classes: &[String],
    outputs: usize,
) -> Result<Vec<f32>> {
    let name = path.display().to_string();
    let bytes = crate::io::read_file(path)?;
    let data = crate::data::csv::maybe_gunzip(&bytes, &name, 4 << 30)?;
    let jsonl = name.trim_end_matches(".gz").ends_with(".jsonl");
    let mut out = Vec::new();
    let bad = |line: usize, what: String| Error::Input(format!("{name}:{line}: {what}"));
    let mut push_row = |row: Vec<f64>, line: usize| -> Result<()> {
        output_row(&row, kind, outputs, &mut out).map_err(|e| bad(line, e))
    };
    if jsonl {
        for (i, line) in data.split(|&b| b == b'\n').enumerate() {
            let n = i + 1;
            let line = std::str::from_utf8(line).map_err(|_| bad(n, "invalid UTF-8".into()))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(n, format!("not JSON: {e}")))?;
            let row = match (&v, kind) {
                (serde_json::Value::Object(map), OutputsKind::TopK) => {
                    top_k_row(map, classes, outputs).map_err(|e| bad(n, e))?
                }
                (serde_json::Value::Array(a), k) if k != OutputsKind::TopK => a
                    .iter()
                    .map(|x| {
                        x.as_f64()
                            .ok_or_else(|| bad(n, "a non-number in the array".into()))
                    })
                    .collect::<Result<Vec<_>>>()?,
                (_, OutputsKind::TopK) => {
                    return Err(bad(
                        n,
                        "expected an object mapping classes to log-probabilities".into(),
                    ))
                }
                _ => return Err(bad(n, "expected a JSON array of numbers".into())),
            };
            push_row(row, n)?;
        }
    } else {
        if kind == OutputsKind::TopK {
            return Err(Error::Input(format!(
                "{name}: top-k outputs are read from JSON Lines (.jsonl)"
            )));
        }
        let mut rdr = ::csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(&data[..]);
        for rec in rdr.records() {
            let rec = rec.map_err(|e| Error::Input(format!("{name}: {e}")))?;
            let n = rec.position().map(|p| p.line() as usize).unwrap_or(0);
            let row = rec
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    c.trim()
                        .parse::<f64>()
                        .map_err(|_| bad(n, format!("column {} holds '{c}', not a number", j + 1)))
                })
                .collect::<Result<Vec<_>>>()?;
            push_row(row, n)?;
        }
    }
    Ok(out)
}

/// A full row of log-probabilities from a top-k object: the given classes keep theirs, the
/// others share what probability is left evenly.
fn top_k_row(
    map: &serde_json::Map<String, serde_json::Value>,
    classes: &[String],
    outputs: usize,
) -> std::result::Result<Vec<f64>, String> {
    let mut row = vec![f64::NAN; outputs];
    let mut mass = 0f64;
    for (k, v) in map {
        let idx = classes
            .iter()
            .position(|c| c == k)
            .or_else(|| k.parse::<usize>().ok().filter(|&i| i < outputs))
            .ok_or_else(|| format!("'{k}' is not one of the classes {classes:?}"))?;
        let lp = v
            .as_f64()
            .ok_or_else(|| format!("the log-probability of '{k}' is not a number"))?;
        if lp > 1e-4 || !lp.is_finite() {
            return Err(format!(
                "the log-probability of '{k}' is {lp}; expected ≤ 0"
            ));
        }
        row[idx] = lp;
        mass += lp.exp();
    }
    let missing = row.iter().filter(|v| v.is_nan()).count();
    if mass > 1.0 + 1e-3 {
        return Err(format!("the probabilities sum to {mass:.4} > 1"));
    }
    let rest = ((1.0 - mass).max(1e-12) / missing.max(1) as f64).ln();
    Ok(row
        .into_iter()
        .map(|v| if v.is_nan() { rest } else { v })
        .collect())
}

/// One row of teacher outputs of the given kind, checked, appended to `out` as logits
/// (log-probabilities for the probability kinds).
fn output_row(
    row: &[f64],
    kind: OutputsKind,
    outputs: usize,
    out: &mut Vec<f32>,
) -> std::result::Result<(), String> {
    if row.len() != outputs {
        return Err(format!(
            "{} values, but the data have {outputs} {}",
            row.len(),
            what_outputs(outputs)
        ));
    }
    if let Some(i) = row.iter().position(|v| !v.is_finite()) {
        return Err(format!("value {} is not a finite number", i + 1));
    }
    match kind {
        OutputsKind::Logits => out.extend(row.iter().map(|&v| v as f32)),
        OutputsKind::LogProbs | OutputsKind::TopK => {
            if row.iter().any(|&v| v > 1e-4) {
                return Err("a log-probability above 0".into());
            }
            out.extend(row.iter().map(|&v| v as f32));
        }
        OutputsKind::Probs => {
            let sum: f64 = row.iter().sum();
            if row.iter().any(|&v| v < 0.0) || (sum - 1.0).abs() > 1e-3 {
                return Err(format!(
                    "probabilities must be ≥ 0 and sum to 1 (they sum to {sum:.4})"
                ));
            }
            out.extend(row.iter().map(|&v| v.max(1e-12).ln() as f32));
        }
    }
    Ok(())
}

/// Teacher outputs given as an array in memory (`data.format = "arrays"`), checked and
/// converted as a file's rows are; `what` names the array in messages.
fn array_outputs(
    values: &[f32],
    cols: usize,
    kind: OutputsKind,
    outputs: usize,
    what: &str,
) -> Result<Vec<f32>> {
    if kind == OutputsKind::TopK {
        return Err(Error::Input(format!(
            "{what}: top-k outputs are read from JSON Lines files; give an array of logits or probabilities"
        )));
    }
    if cols != outputs {
        return Err(Error::Input(format!(
            "{what}: {cols} columns, but the data have {outputs} {}",
            what_outputs(outputs)
        )));
    }
    let mut out = Vec::with_capacity(values.len());
    let mut row = Vec::with_capacity(outputs);
    for (i, r) in values.chunks_exact(outputs.max(1)).enumerate() {
        row.clear();
        row.extend(r.iter().map(|&v| v as f64));
        output_row(&row, kind, outputs, &mut out)
            .map_err(|e| Error::Input(format!("{what}: row {i}: {e}")))?;
    }
    Ok(out)
}

fn precomputed_teacher(c: &TeacherConfig, file: &Path, store: &mut RunStore) -> Result<()> {
    let s = &store.splits;
    let outputs = s.train.outputs();
    let classes = s.train.class_names().unwrap_or(&[]).to_vec();
    // Arrays given in memory (from Python), or a file.
    let given = match &store.arrays {
        Some(a) => {
            let key = file.display().to_string();
            let o = a.outputs.get(&key).ok_or_else(|| {
                Error::Input(format!(
                    "teacher.{}.outputs: no array named '{key}' was given",
                    c.name
                ))
            })?;
            let what = format!("teacher.{}.outputs", c.name);
            let tr = array_outputs(&o.train, o.cols, c.outputs_kind, outputs, &what)?;
            let te = o
                .test
                .as_ref()
                .map(|t| {
                    let w = format!("{what} (test)");
                    array_outputs(t, o.cols, c.outputs_kind, outputs, &w)
                })
                .transpose()?;
            Some((tr, te))
        }
        None => None,
    };
    let from_arrays = given.is_some();
    let (mut all, mut given_test) = match given {
        Some((tr, te)) => (tr, Some(te)),
        None => (read_outputs(file, c.outputs_kind, &classes, outputs)?, None),
    };
    // Regression values are in the target's units: standardise them as the targets are.
    if let Some(ts) = s.target_scale {
        for v in all
            .iter_mut()
            .chain(given_test.iter_mut().flatten().flatten())
        {
            *v = ts.forward(*v);
        }
    }
    let rows = all.len() / outputs.max(1);
    if rows != s.source_rows {
        return Err(Error::Input(if from_arrays {
            format!(
                "teacher.{}.outputs: {rows} rows, but the data arrays have {} samples; give one row per sample, in the same order",
                c.name, s.source_rows
            )
        } else {
            format!(
                "{}: {rows} rows, but the data file has {} samples; give one row per sample, in the data file's order",
                file.display(),
                s.source_rows
            )
        }));
    }
    let pick = |d: &Dataset| -> Vec<f32> {
        d.rows
            .iter()
            .flat_map(|&r| all[r * outputs..(r + 1) * outputs].iter().copied())
            .collect()
    };
    let test = match (&c.test_outputs, s.test_from_file) {
        (_, true) if given_test.is_some() => match given_test.flatten() {
            Some(v) if v.len() / outputs.max(1) != s.test.len() => {
                return Err(Error::Input(format!(
                    "teacher.{}.outputs (test): {} rows, but the test arrays have {} samples",
                    c.name,
                    v.len() / outputs.max(1),
                    s.test.len()
                )))
            }
            v => v,
        },
        (Some(t), true) => {
            let v = read_outputs(t, c.outputs_kind, &classes, outputs)?;
            if v.len() / outputs.max(1) != s.test.len() {
                return Err(Error::Input(format!(
                    "{}: {} rows, but the test file has {} samples",
                    t.display(),
                    v.len() / outputs.max(1),
                    s.test.len()
                )));
            }
            let mut v = v;
            if let Some(ts) = s.target_scale {
                v.iter_mut().for_each(|x| *x = ts.forward(*x));
            }
            Some(v)
        }
        (None, true) => None,
        (_, false) => Some(pick(&s.test)),
    };
    let known = SplitOutputs {
        cols: outputs,
        train: pick(&s.train).into(),
        val: pick(&s.val).into(),
        test: test.map(Into::into),
    };
    let what = if from_arrays {
        "outputs given from Python".to_string()
    } else {
        format!("outputs {}", file.display())
    };
    store.progress.say(&format!(
        "{}: precomputed {what} ({rows} rows of {outputs})",
        c.name
    ));
    record_known(c, store, &known, what)?;
    store.add_known(
        &c.name,
        KnownTeacher {
            logits: Some(known),
            ..Default::default()
        },
    );
    Ok(())
}

/// Records a teacher known only through its outputs: its test scores when it has test
/// outputs; no size or latency (it does not run here).
fn record_known(
    c: &TeacherConfig,
    store: &mut RunStore,
    known: &SplitOutputs,
    what: String,
) -> Result<()> {
    let s = &store.splits;
    let scores = match &known.test {
        Some(t) => eval::score_outputs(t, &s.test, s.target_scale.as_ref()),
        None => Scores::default(),
    };
    let mut r = ModelMetrics::measured(&c.name, "teacher", &scores, 0.0, 0.0, what.clone());
    r.architecture = what;
    // A mix is as large as its members together (precomputed outputs have no size).
    for m in &c.mix {
        if let Some(x) = store.records().iter().find(|x| x.name == m.teacher) {
            r.params += x.params;
            r.bytes += x.bytes;
            r.file_bytes += x.file_bytes;
        }
    }
    store.record(r)
}

fn mix_teacher(c: &TeacherConfig, store: &mut RunStore) -> Result<()> {
    let s = &store.splits;
    let outputs = s.train.outputs();
    let classification = s.train.class_names().is_some();
    let total: f32 = c.mix.iter().map(|m| m.weight).sum();
    let combine = |split: &str| -> Result<Option<Vec<f32>>> {
        let mut acc: Option<Vec<f64>> = None;
        for m in &c.mix {
            let w = (m.weight / total) as f64;
            let out = match store.teacher_outputs(&m.teacher, split) {
                Ok(o) => o,
                Err(_) if split == "test" => return Ok(None),
                Err(e) => return Err(e),
            };
            let part: Vec<f64> = if classification {
                crate::kernels::softmax::softmax_rows(&out, outputs, 1.0)
                    .into_iter()
                    .map(|p| p as f64 * w)
                    .collect()
            } else {
                out.iter().map(|&v| v as f64 * w).collect()
            };
            match &mut acc {
                None => acc = Some(part),
                Some(a) => a.iter_mut().zip(part).for_each(|(x, y)| *x += y),
            }
        }
        Ok(acc.map(|a| {
            a.into_iter()
                .map(|v| {
                    if classification {
                        v.max(1e-30).ln() as f32
                    } else {
                        v as f32
                    }
                })
                .collect()
        }))
    };
    let known = SplitOutputs {
        cols: outputs,
        train: combine("train")?.unwrap_or_default().into(),
        val: combine("val")?.unwrap_or_default().into(),
        test: combine("test")?.map(Into::into),
    };
    let names = c
        .mix
        .iter()
        .map(|m| format!("{} ×{:.2}", m.teacher, m.weight / total))
        .collect::<Vec<_>>()
        .join(" + ");
    store
        .progress
        .say(&format!("{}: a mix of teachers: {names}", c.name));
    record_known(c, store, &known, format!("mix {names}"))?;
    // When every member runs on features, so does the mix: it can then teach on augmented
    // views, synthetic and transfer samples, and fixed views.
    let shared = c
        .mix
        .iter()
        .map(|m| store.shared_teacher(&m.teacher))
        .collect::<Result<Option<Vec<_>>>>()?;
    let live = shared.map(|members| crate::teachers::Mix {
        members: members
            .into_iter()
            .zip(&c.mix)
            .map(|(t, m)| (t, m.weight / total))
            .collect(),
        outputs,
        regression: !classification,
    });
    // A static-embedding student of the mix starts from its (first) encoder's tokens.
    let encoder = c
        .mix
        .iter()
        .find_map(|m| store.known(&m.teacher).and_then(|k| k.encoder.clone()));
    store.add_known(
        &c.name,
        KnownTeacher {
            logits: Some(known.clone()),
            embeddings: None,
            encoder,
        },
    );
    if let Some(live) = live {
        // The mix run on the first training samples gives its precomputed outputs there.
        let train = &store.splits.train;
        let n = train.len().min(64);
        if n > 0 {
            use crate::teachers::Teacher;
            let got = live.predict_rows(&train.x[..n * train.dim()], n)?;
            let want = &known.train[..n * outputs];
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                .fold(0f32, f32::max);
            if worst > 1e-3 {
                return Err(Error::Other(format!(
                    "teacher.{}: the mix run on the training samples differs from its averaged outputs by {worst:e}",
                    c.name
                )));
            }
        }
        store.progress.say(&format!(
            "{}: every member runs on features, so the mix teaches on augmented views, synthetic and transfer samples too",
            c.name
        ));
        store.add_teacher(&c.name, Box::new(live));
    }
    Ok(())
}
