//! Anything that can teach: given a batch of inputs, produce outputs (logits, or values for
//! regression). Distillery's own models, an ensemble of them and models of any precision
//! implement [`Teacher`]; the training loop takes its live soft targets from one, evaluation
//! measures one, and outside teachers (an ONNX file, a transformer, precomputed outputs) plug in
//! by implementing it.

pub mod adapter;
pub mod bert;
pub mod cache;
pub mod lowered;
pub mod native;
pub use crate::data::Rows;

use crate::error::Result;
use crate::models::Model;
use candle_core::{Device, Tensor};

/// A source of outputs for inputs (already normalised as the run's data are).
pub trait Teacher {
    /// Outputs for a `[b, input_dim]` batch, row-major `b * outputs` values (logits or
    /// log-probabilities for classification, values for regression).
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>>;

    /// The same for `rows` inputs given as a row-major slice.
    fn predict_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let d = x.len() / rows.max(1);
        self.predict_batch(&Tensor::from_slice(x, (rows, d), &Device::Cpu)?)
    }

    /// Floating-point operations of its products per sample, when known (what running it on
    /// every training batch costs).
    fn flops_per_sample(&self) -> Option<f64> {
        None
    }
}

impl Teacher for Model {
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
        // The one dispatcher: the family's eval-mode path, as `Model::predict`.
        let rows = x.dim(0)?;
        crate::models::with_slice(x, |v| self.spec.arch.family().predict_rows(self, v, rows))?
    }

    fn predict_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.predict(x, rows.max(1))
    }

    fn flops_per_sample(&self) -> Option<f64> {
        self.spec
            .arch
            .family()
            .graph(self)
            .ok()
            .map(|g| g.flops(self))
    }
}

/// Averages its members: probabilities for classification (output: log of the mean
/// probability, so arg-max and cross-entropy work as for logits), values for regression.
pub struct Ensemble<'a> {
    /// The members.
    pub members: Vec<&'a Model>,
    /// Regression (average outputs) or classification (average probabilities).
    pub regression: bool,
}

impl Teacher for Ensemble<'_> {
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
        let outs = self
            .members
            .iter()
            .map(|m| m.predict_batch(x))
            .collect::<Result<Vec<_>>>()?;
        let classes = self.members.first().map(|m| m.spec.outputs).unwrap_or(1);
        Ok(ensemble_outputs(&outs, classes, self.regression))
    }

    fn flops_per_sample(&self) -> Option<f64> {
        self.members.iter().map(|m| m.flops_per_sample()).sum()
    }
}

/// A weighted mix of teachers that run on features (`[[teacher]] mix = [...]` whose members are
/// distillery models or ONNX teachers): the weighted mean of the members' probabilities, as a
/// log (classification), or of their values (regression) — what the mix's precomputed outputs
/// hold, here for inputs it has not seen (augmented views, synthetic or transfer samples).
pub struct Mix {
    /// The members and their weights (summing to 1).
    pub members: Vec<(std::sync::Arc<dyn Teacher>, f32)>,
    /// The number of outputs.
    pub outputs: usize,
    /// Average values rather than probabilities.
    pub regression: bool,
}

impl Teacher for Mix {
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
        let rows = x.dim(0)?;
        crate::models::with_slice(x, |v| self.predict_rows(v, rows))?
    }

    fn predict_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let mut acc = vec![0f64; rows * self.outputs];
        for (t, w) in &self.members {
            let out = t.predict_rows(x, rows)?;
            let part = if self.regression {
                out
            } else {
                crate::kernels::softmax::softmax_rows(&out, self.outputs, 1.0)
            };
            if part.len() != acc.len() {
                return Err(crate::error::Error::Input(format!(
                    "a mix of teachers: a member gave {} outputs for {rows} rows, expected {}",
                    part.len(),
                    acc.len()
                )));
            }
            acc.iter_mut()
                .zip(part)
                .for_each(|(a, p)| *a += p as f64 * *w as f64);
        }
        Ok(acc
            .into_iter()
            .map(|v| {
                if self.regression {
                    v as f32
                } else {
                    v.max(1e-30).ln() as f32
                }
            })
            .collect())
    }

    fn flops_per_sample(&self) -> Option<f64> {
        self.members.iter().map(|(t, _)| t.flops_per_sample()).sum()
    }
}

/// The ensemble's output from its members' outputs on the same rows: the mean (regression), or
/// the log of the mean probabilities (classification).
pub fn ensemble_outputs(outs: &[Vec<f32>], classes: usize, regression: bool) -> Vec<f32> {
    let refs: Vec<&[f32]> = outs.iter().map(|o| o.as_slice()).collect();
    if regression {
        return crate::losses::mutual::mean_outputs(&refs);
    }
    let p = crate::losses::mutual::peer_average(&refs, classes, 1.0);
    p.iter().map(|&v| v.max(1e-30).ln()).collect()
}

/// A teacher whose logits pass through a small model fitted on this run's labels (a
/// logistic regression on its standardised logits): a teacher from another domain, its
/// classes' scores recalibrated to the data it now teaches on, or mapped to another number of
/// classes.
pub struct Calibrated {
    /// The teacher.
    pub inner: Box<dyn Teacher>,
    /// Standardises the teacher's logits (fitted on the training split).
    pub norm: crate::data::Normalizer,
    /// Maps them to the run's classes.
    pub head: Model,
}

impl Teacher for Calibrated {
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
        let rows = x.dim(0)?;
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        self.predict_rows(&v, rows)
    }

    fn predict_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let mut z = self.inner.predict_rows(x, rows)?;
        let k = z.len() / rows.max(1);
        self.norm.apply(&mut z, k);
        self.head.predict(&z, rows.max(1))
    }

    fn flops_per_sample(&self) -> Option<f64> {
        Some(self.inner.flops_per_sample()? + self.head.flops_per_sample()?)
    }
}

/// What an ONNX teacher is fed: the run's normalised inputs, or the raw values (the normaliser
/// undone), as a model trained elsewhere on the raw features expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnnxInput {
    /// The raw feature values (default).
    #[default]
    Raw,
    /// The values as normalised for this run.
    Normalized,
}

/// How token ids (a text run's featurized rows: ids, then padding) become an integer input of an
/// ONNX graph: the padding's id, and ids put before and after each text's tokens (a BERT
/// export's `[CLS]` and `[SEP]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenIds {
    /// The id padding positions get (default 0).
    #[serde(default)]
    pub pad: i64,
    /// An id put before each text's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls: Option<i64>,
    /// An id put after each text's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sep: Option<i64>,
}

impl TokenIds {
    /// Positions a row gains.
    fn extra(&self) -> usize {
        usize::from(self.cls.is_some()) + usize::from(self.sep.is_some())
    }
}

/// Which graph input the data feed, and how integer inputs are filled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnnxFeed {
    /// The input the data feed, by name; `None`: the one input that is not an
    /// `attention_mask` or `token_type_ids`.
    pub input_name: Option<String>,
    /// Integer (token-id) inputs: padding and special ids.
    pub token_ids: TokenIds,
}

/// What distillery puts in a graph input besides the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Companion {
    /// The data themselves.
    Data,
    /// `attention_mask`: 1 on a token (special ids included), 0 on padding.
    Mask,
    /// `token_type_ids`: 0 everywhere.
    Zeros,
}

/// Which output of an ONNX graph holds the logits (or values): by position (`output = 1`) or
/// by name (`output = "logits"`, as `torch.onnx.export(output_names=…)` names them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnnxOutput {
    /// The output at this position.
    Index(usize),
    /// The output of this name.
    Name(String),
}

impl Default for OnnxOutput {
    fn default() -> Self {
        OnnxOutput::Index(0)
    }
}

impl From<usize> for OnnxOutput {
    fn from(i: usize) -> Self {
        OnnxOutput::Index(i)
    }
}

impl serde::Serialize for OnnxOutput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            OnnxOutput::Index(i) => s.serialize_u64(*i as u64),
            OnnxOutput::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> serde::Deserialize<'de> for OnnxOutput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Index(u64),
            Name(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Index(i) => OnnxOutput::Index(i as usize),
            Raw::Name(n) => OnnxOutput::Name(n),
        })
    }
}

/// A teacher in an ONNX file: a model trained and exported by PyTorch, TensorFlow or any tool,
/// lowered onto distillery's own model when its graph is made of the operators our kernels
/// have ([`lowered`]), run in pure Rust by tract otherwise. The data feed one input
/// (`OnnxFeed::input_name`, or the only one): `[batch, features]` or, as PyTorch exports image
/// models, `[batch, c, h, w]` (any fixed per-sample shape of `features` values, read from the
/// graph; only the batch axis may be dynamic), or integer token ids `[batch, tokens]` with an
/// `attention_mask` and `token_type_ids` beside them that distillery fills; weights may sit in
/// an external-data file beside it (`model.onnx.data`); one of its outputs, by position or
/// name, gives the logits (or values). A tract plan is built per batch size and kept.
pub struct OnnxTeacher {
    bytes: Vec<u8>,
    file: String,
    /// The folder external-data files are read from (the model file's).
    dir: Option<std::path::PathBuf>,
    input: OnnxInput,
    output: usize,
    normalizer: crate::data::Normalizer,
    /// Regression: the run's target scale, so that the teacher's values (in the target's
    /// units) become the standardised values students train on.
    target_scale: Option<crate::data::TargetScale>,
    dim: usize,
    /// A teacher from another domain: the run's raw samples mapped to its input.
    adapter: Option<adapter::Adapter>,
    /// One sample's shape as the graph's input declares it (`[dim]`, or `[c, h, w]`, …).
    sample_shape: Vec<usize>,
    /// Which input the data feed and how integer inputs are filled.
    feed: OnnxFeed,
    /// What each graph input gets, in the graph's order, with its element type.
    inputs: Vec<(Companion, tract_onnx::prelude::DatumType)>,
    params: usize,
    /// The graph lowered onto distillery's own model (the fused MLP / CNN passes), when it is
    /// made only of the operators `lowered` takes and agrees with tract on a probe batch.
    lowered: Option<lowered::Lowered>,
    /// What runs the graph, in words (the lowered model, or tract and why).
    runtime: String,
    plans: std::sync::Mutex<
        std::collections::HashMap<usize, std::sync::Arc<tract_onnx::prelude::TypedSimplePlan>>,
    >,
}

impl OnnxTeacher {
    /// Reads `path` and checks that it runs on one sample of `dim` features.
    pub fn load(
        path: &std::path::Path,
        dim: usize,
        input: OnnxInput,
        output: impl Into<OnnxOutput>,
        normalizer: crate::data::Normalizer,
    ) -> Result<OnnxTeacher> {
        Self::load_fed(path, dim, input, output, normalizer, OnnxFeed::default())
    }

    /// [`OnnxTeacher::load`] with the graph input chosen by name and integer inputs filled as
    /// `feed` says: a text run's token ids (its padding and special ids), an `attention_mask`
    /// and `token_type_ids` beside them filled by distillery.
    pub fn load_fed(
        path: &std::path::Path,
        dim: usize,
        input: OnnxInput,
        output: impl Into<OnnxOutput>,
        normalizer: crate::data::Normalizer,
        feed: OnnxFeed,
    ) -> Result<OnnxTeacher> {
        let bytes = crate::io::read_file(path)?;
        let dir = path
            .parent()
            .map(|d| {
                if d.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    d
                }
            })
            .map(|d| d.to_path_buf());
        Self::build(
            bytes,
            &path.display().to_string(),
            dir,
            dim,
            input,
            output.into(),
            normalizer,
            feed,
        )
    }

    /// A regression teacher: its values are in the target's units, and `scale` (the run's)
    /// standardises them as the run's targets are.
    pub fn with_target_scale(mut self, scale: Option<crate::data::TargetScale>) -> OnnxTeacher {
        self.target_scale = scale;
        self
    }

    /// The same from the bytes of an ONNX file (no external data); `file` names it in errors.
    pub fn from_bytes(
        bytes: Vec<u8>,
        file: &str,
        dim: usize,
        input: OnnxInput,
        output: impl Into<OnnxOutput>,
        normalizer: crate::data::Normalizer,
    ) -> Result<OnnxTeacher> {
        Self::build(
            bytes,
            file,
            None,
            dim,
            input,
            output.into(),
            normalizer,
            OnnxFeed::default(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        bytes: Vec<u8>,
        file: &str,
        dir: Option<std::path::PathBuf>,
        dim: usize,
        input: OnnxInput,
        output: OnnxOutput,
        normalizer: crate::data::Normalizer,
        feed: OnnxFeed,
    ) -> Result<OnnxTeacher> {
        let mut t = OnnxTeacher {
            bytes,
            file: file.to_string(),
            dir,
            input,
            output: 0,
            normalizer,
            target_scale: None,
            dim,
            adapter: None,
            sample_shape: vec![dim],
            feed,
            inputs: Vec::new(),
            params: 0,
            lowered: None,
            runtime: "tract".into(),
            plans: Default::default(),
        };
        let file = t.file.clone();
        crate::error::no_panic(&file, || {
            let model = t.model()?;
            t.inputs = t.inputs_of(&model)?;
            t.sample_shape = t.sample_shape_of(&model)?;
            t.output = t.output_index(&model, &output)?;
            t.plan(1)?;
            t.params = t.count_params()?;
            t.lower()
        })?;
        Ok(t)
    }

    /// Lowers the graph onto distillery's own model when it can (`lowered::lower`) and the
    /// result agrees with tract on a probe batch of 3 samples (each output within 1e-4 of the
    /// largest output's magnitude, or 1e-4); `DISTILLERY_ONNX_TRACT` set keeps tract.
    fn lower(&mut self) -> Result<()> {
        use tract_onnx::prelude::*;
        if std::env::var_os("DISTILLERY_ONNX_TRACT").is_some() {
            self.runtime = "tract (DISTILLERY_ONNX_TRACT)".into();
            return Ok(());
        }
        if self.inputs.len() != 1 || self.int_input() {
            self.runtime = "tract (not lowered: token ids or several inputs)".into();
            return Ok(());
        }
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut &self.bytes[..])
            .map_err(|e| crate::error::Error::Input(format!("{}: {e}", self.file)))?;
        let Some(graph) = proto.graph.as_ref() else {
            return Ok(());
        };
        let Some(output) = graph.output.get(self.output).map(|o| o.name.clone()) else {
            return Ok(());
        };
        let dir = self.dir.as_ref().and_then(|d| d.to_str());
        let lowered = match lowered::lower(graph, dir, &output, &self.sample_shape) {
            Ok(l) => l,
            Err(why) => {
                self.runtime = format!("tract (not lowered: {why})");
                return Ok(());
            }
        };
        let rows = 3;
        let width: usize = self.sample_shape.iter().product();
        let x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 * 2.0)
            .collect();
        let want = self.run_tract(&x, rows)?;
        let got = lowered.run(&x, rows)?;
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(
            if want.len() == got.len() {
                0f32
            } else {
                f32::INFINITY
            },
            f32::max,
        );
        if worst.is_finite() && worst <= 1e-4 * scale {
            self.runtime = format!("native {}", lowered.describe());
            self.lowered = Some(lowered);
        } else {
            self.runtime = format!(
                "tract (lowered as {} it differs from tract by {worst:.2e})",
                lowered.describe()
            );
        }
        Ok(())
    }

    /// What runs the graph, in words: `native mlp 64-128-64-10`, or `tract (…why…)`.
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// A teacher from another domain: `adapter` maps the run's raw samples (its `in_dim`
    /// values each) to this graph's input; the run's normaliser is undone first.
    pub fn with_adapter(mut self, adapter: adapter::Adapter) -> OnnxTeacher {
        self.adapter = Some(adapter);
        self
    }

    /// Its adapter, for a teacher from another domain.
    pub fn adapter(&self) -> Option<&adapter::Adapter> {
        self.adapter.as_ref()
    }

    /// One sample's shape as the graph's input should take it.
    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// Elements of the graph's floating-point constant tensors (its weights and biases).
    pub fn params(&self) -> usize {
        self.params
    }

    /// The graph, its external data (if any) read from the model file's folder.
    fn model(&self) -> Result<tract_onnx::prelude::InferenceModel> {
        use tract_onnx::prelude::*;
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            crate::error::Error::Input(format!("{}: {what}: {e}", self.file))
        };
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &self.bytes[..])
            .map_err(|e| bad("not an ONNX model tract can read", &e))?;
        let dir = self.dir.as_ref().and_then(|d| d.to_str());
        let parsed = onnx.parse(&proto, dir).map_err(|e| {
            let hint = if format!("{e:?}").contains("external")
                || format!("{e:?}").contains("No such file")
            {
                " (its weights are in an external-data file that is not beside it?)"
            } else {
                ""
            };
            bad(
                &format!("not an ONNX model tract can read{hint}"),
                &format!("{e:#}"),
            )
        })?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(bad(
                "inputs that are not defined",
                &format!("{:?}", parsed.unresolved_inputs),
            ));
        }
        Ok(parsed.model)
    }

    /// What each graph input gets: the data (the input named `feed.input_name`, or the one
    /// input that is not an `attention_mask` or `token_type_ids`), or a companion distillery
    /// fills; with its element type (integer inputs take token ids).
    fn inputs_of(
        &self,
        model: &tract_onnx::prelude::InferenceModel,
    ) -> Result<Vec<(Companion, tract_onnx::prelude::DatumType)>> {
        use tract_hir::infer::Factoid;
        use tract_onnx::prelude::DatumType;
        let bad = |m: String| crate::error::Error::Input(format!("{}: {m}", self.file));
        let outlets = model
            .input_outlets()
            .map_err(|e| bad(format!("its inputs: {e}")))?;
        let names: Vec<String> = outlets
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let data = match &self.feed.input_name {
            Some(n) => names.iter().position(|x| x == n).ok_or_else(|| {
                bad(format!(
                    "no input named '{n}'; the graph's inputs are {}",
                    names.join(", ")
                ))
            })?,
            None => {
                let free: Vec<usize> = (0..names.len())
                    .filter(|&i| !matches!(names[i].as_str(), "attention_mask" | "token_type_ids"))
                    .collect();
                match free.as_slice() {
                    [one] => *one,
                    _ => {
                        return Err(bad(format!(
                            "the graph has inputs {}; name the one the data feed with input_name (distillery fills attention_mask and token_type_ids)",
                            names.join(", ")
                        )))
                    }
                }
            }
        };
        let dt_of = |i: usize| {
            model
                .input_fact(i)
                .ok()
                .and_then(|f| f.datum_type.concretize())
                .unwrap_or(DatumType::F32)
        };
        let data_dt = dt_of(data);
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let dt = dt_of(i);
            let role = if i == data {
                Companion::Data
            } else {
                match name.as_str() {
                    "attention_mask" => Companion::Mask,
                    "token_type_ids" => Companion::Zeros,
                    _ => {
                        return Err(bad(format!(
                            "its input '{name}' is not one distillery can fill: the data feed '{}', and only attention_mask and token_type_ids may stand beside it",
                            names[data]
                        )))
                    }
                }
            };
            if !matches!(dt, DatumType::F32 | DatumType::I64 | DatumType::I32) {
                return Err(bad(format!(
                    "its input '{name}' takes {dt:?}; distillery feeds f32 values or i64 / i32 token ids"
                )));
            }
            if role != Companion::Data && !is_int(data_dt) {
                return Err(bad(format!(
                    "its input '{name}' goes with token ids, but '{}' takes float values",
                    names[data]
                )));
            }
            out.push((role, dt));
        }
        Ok(out)
    }

    /// The graph input the data feed.
    fn data_input(&self) -> usize {
        self.inputs
            .iter()
            .position(|(c, _)| *c == Companion::Data)
            .unwrap_or(0)
    }

    /// Whether the data feed an integer (token-id) input.
    pub fn takes_token_ids(&self) -> bool {
        self.int_input()
    }

    fn int_input(&self) -> bool {
        self.inputs
            .get(self.data_input())
            .is_some_and(|(_, dt)| is_int(*dt))
    }

    /// The per-sample shape the data input declares: `[dim]` for `[batch, features]`,
    /// `[c, h, w]` for an image model, when its dimensions multiply to the data's features;
    /// for token ids `[dim]` plus the special ids, the sequence axis fixed or not.
    fn sample_shape_of(&self, model: &tract_onnx::prelude::InferenceModel) -> Result<Vec<usize>> {
        use tract_hir::infer::Factoid;
        let tokens = self.int_input();
        let width = self.dim
            + if tokens {
                self.feed.token_ids.extra()
            } else {
                0
            };
        let fact = model
            .input_fact(self.data_input())
            .map_err(|e| crate::error::Error::Input(format!("{}: its input: {e}", self.file)))?;
        if fact.shape.is_open() {
            // Rank unknown: feed [batch, features].
            return Ok(vec![width]);
        }
        let dims: Vec<_> = fact.shape.dims().collect();
        if dims.len() < 2 {
            return Ok(vec![width]);
        }
        let shape_len = dims.len();
        if tokens && shape_len != 2 {
            return Err(crate::error::Error::Input(format!(
                "{}: its token-id input has {shape_len} axes; expected [batch, tokens]",
                self.file
            )));
        }
        let rest: Vec<Option<usize>> = dims[1..]
            .iter()
            .map(|d| {
                d.concretize()
                    .and_then(|v| v.to_i64().ok())
                    .map(|v| v as usize)
            })
            .collect();
        let known: Option<Vec<usize>> = rest.iter().copied().collect();
        match known {
            Some(dims) if dims.iter().product::<usize>() == width => Ok(dims),
            Some(dims) if tokens => Err(crate::error::Error::Input(format!(
                "{}: its input takes rows of {} token ids, but the data's rows have {} ({} with the special ids); export it with a dynamic sequence axis or set the featurizer's max_tokens",
                self.file,
                dims.iter().product::<usize>(),
                self.dim,
                width
            ))),
            Some(dims) => Err(crate::error::Error::Input(format!(
                "{}: its input takes samples of shape {dims:?} ({} values), but the data have {} features",
                self.file,
                dims.iter().product::<usize>(),
                self.dim
            ))),
            None if shape_len == 2 => Ok(vec![width]),
            None => Err(crate::error::Error::Input(format!(
                "{}: its input has {shape_len} axes whose sizes beyond the batch are not fixed; export it with fixed sample dimensions (only the batch axis dynamic)",
                self.file
            ))),
        }
    }

    /// The position of the output holding the logits.
    fn output_index(
        &self,
        model: &tract_onnx::prelude::InferenceModel,
        output: &OnnxOutput,
    ) -> Result<usize> {
        let outlets = model
            .output_outlets()
            .map_err(|e| crate::error::Error::Input(format!("{}: its outputs: {e}", self.file)))?;
        let names: Vec<String> = outlets
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        match output {
            OnnxOutput::Index(i) if *i < outlets.len() => Ok(*i),
            OnnxOutput::Index(i) => Err(crate::error::Error::Input(format!(
                "{}: output {i} requested, but the graph has {} output(s): {}",
                self.file,
                outlets.len(),
                names.join(", ")
            ))),
            OnnxOutput::Name(n) => names.iter().position(|x| x == n).ok_or_else(|| {
                crate::error::Error::Input(format!(
                    "{}: no output named '{n}'; the graph's outputs are {}",
                    self.file,
                    names.join(", ")
                ))
            }),
        }
    }

    /// Every graph input's fact at `rows` samples (companions take the data's shape).
    fn with_input_facts(
        &self,
        mut model: tract_onnx::prelude::InferenceModel,
        rows: usize,
    ) -> tract_onnx::prelude::TractResult<tract_onnx::prelude::InferenceModel> {
        use tract_onnx::prelude::*;
        let mut shape = vec![rows];
        shape.extend_from_slice(&self.sample_shape);
        for (i, (_, dt)) in self.inputs.iter().enumerate() {
            model = model.with_input_fact(i, InferenceFact::dt_shape(*dt, shape.clone()))?;
        }
        Ok(model)
    }

    fn count_params(&self) -> Result<usize> {
        use tract_onnx::prelude::*;
        let bad =
            |e: &dyn std::fmt::Display| crate::error::Error::Input(format!("{}: {e}", self.file));
        let typed = self
            .with_input_facts(self.model()?, 1)
            .map_err(|e| bad(&e))?
            .into_typed()
            .map_err(|e| bad(&e))?;
        Ok(typed
            .nodes()
            .iter()
            .filter_map(|n| n.op_as::<tract_onnx::tract_core::ops::konst::Const>())
            .filter(|c| c.val().datum_type().is_float())
            .map(|c| c.val().len())
            .sum())
    }

    fn plan(&self, rows: usize) -> Result<std::sync::Arc<tract_onnx::prelude::TypedSimplePlan>> {
        use tract_onnx::prelude::*;
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| crate::error::Error::Other("ONNX teacher: a thread panicked".into()))?;
        if let Some(p) = plans.get(&rows) {
            return Ok(p.clone());
        }
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            crate::error::Error::Input(format!("{}: {what}: {e}", self.file))
        };
        let plan = self
            .with_input_facts(self.model()?, rows)
            .map_err(|e| bad("its input cannot take [batch, features]", &e))?
            .into_optimized()
            .map_err(|e| {
                bad(
                    &format!(
                        "the graph does not fit inputs of shape {:?} (or uses an operator tract lacks)",
                        self.sample_shape
                    ),
                    &e,
                )
            })?
            .into_runnable()
            .map_err(|e| bad("cannot plan the graph", &e))?;
        plans.insert(rows, plan.clone());
        Ok(plan)
    }
}

/// Whether a graph input takes integers.
fn is_int(dt: tract_onnx::prelude::DatumType) -> bool {
    matches!(
        dt,
        tract_onnx::prelude::DatumType::I64 | tract_onnx::prelude::DatumType::I32
    )
}

impl OnnxTeacher {
    /// A text run's rows (token ids, then `data::text::PAD`) as the graph's ids — the special
    /// ids around each text's tokens, padding given its id — and the attention mask (1 on every
    /// id but padding). A value that is not a whole id is an error naming it.
    fn token_rows(&self, raw: &[f32], rows: usize) -> Result<(Vec<i64>, Vec<i64>)> {
        let tk = self.feed.token_ids;
        let width = self.dim + tk.extra();
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for (r, row) in raw.chunks_exact(self.dim).take(rows).enumerate() {
            let mut real: Vec<i64> = Vec::with_capacity(width);
            real.extend(tk.cls);
            for &v in row {
                if v == crate::data::text::PAD {
                    continue;
                }
                if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0) {
                    return Err(crate::error::Error::Input(format!(
                        "{}: its input takes integer token ids, but sample {r} holds {v}",
                        self.file
                    )));
                }
                real.push(v as i64);
            }
            real.extend(tk.sep);
            mask.extend(std::iter::repeat_n(1, real.len()));
            mask.extend(std::iter::repeat_n(0, width - real.len()));
            ids.extend(real.iter().copied());
            ids.extend(std::iter::repeat_n(tk.pad, width - real.len()));
        }
        Ok((ids, mask))
    }
}

impl Teacher for OnnxTeacher {
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
        let rows = x.dim(0)?;
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        self.predict_rows(&v, rows)
    }

    fn predict_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.outputs(x, rows, self.lowered.as_ref())
    }

    fn flops_per_sample(&self) -> Option<f64> {
        self.lowered.as_ref()?.model.flops_per_sample()
    }
}

impl OnnxTeacher {
    /// The same as [`Teacher::predict_rows`], always run by tract (what the lowered graph is
    /// checked against).
    pub fn predict_rows_in_tract(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.outputs(x, rows, None)
    }

    fn outputs(
        &self,
        x: &[f32],
        rows: usize,
        lowered: Option<&lowered::Lowered>,
    ) -> Result<Vec<f32>> {
        // The values as the graph takes them, copied only when they change (this runs on every
        // training batch of a live teacher).
        let raw: std::borrow::Cow<[f32]> = if let Some(a) = &self.adapter {
            // The run's raw values (a cross-domain teacher always reads raw values), mapped.
            let mut v = x.to_vec();
            self.normalizer.invert(&mut v, a.in_dim());
            a.apply(&v, rows).into()
        } else if self.input == OnnxInput::Raw && self.normalizer != crate::data::Normalizer::None {
            let mut v = x.to_vec();
            self.normalizer.invert(&mut v, self.dim);
            v.into()
        } else {
            x.into()
        };
        let out = match lowered {
            Some(l) => l.run(&raw, rows)?,
            None => self.run_tract(&raw, rows)?,
        };
        let ts = self.target_scale;
        Ok(match ts {
            Some(t) => out.into_iter().map(|v| t.forward(v)).collect(),
            None => out,
        })
    }
}

impl OnnxTeacher {
    /// The graph's chosen output for `rows` samples in its input layout, run by tract.
    fn run_tract(&self, raw: &[f32], rows: usize) -> Result<Vec<f32>> {
        use tract_onnx::prelude::*;
        let plan = self.plan(rows)?;
        let mut shape = vec![rows];
        shape.extend_from_slice(&self.sample_shape);
        let bad =
            |e: &dyn std::fmt::Display| crate::error::Error::Other(format!("{}: {e}", self.file));
        let mut feeds: TVec<TValue> = tvec!();
        if self.int_input() {
            let (ids, mask) = self.token_rows(raw, rows)?;
            for (role, dt) in &self.inputs {
                let v: Vec<i64> = match role {
                    Companion::Data => ids.clone(),
                    Companion::Mask => mask.clone(),
                    Companion::Zeros => vec![0; ids.len()],
                };
                let t: Tensor = tract_ndarray::ArrayD::from_shape_vec(shape.clone(), v)
                    .map_err(|e| bad(&e))?
                    .into();
                feeds.push(t.cast_to_dt(*dt).map_err(|e| bad(&e))?.into_owned().into());
            }
        } else {
            let input: Tensor = tract_ndarray::ArrayD::from_shape_vec(shape, raw.to_vec())
                .map_err(|e| bad(&e))?
                .into();
            feeds.push(input.into());
        }
        let out = plan.run(feeds).map_err(|e| {
            crate::error::Error::Input(format!("{}: running it failed: {e}", self.file))
        })?;
        let o = out.get(self.output).ok_or_else(|| {
            crate::error::Error::Input(format!(
                "{}: output {} requested, but the graph has {} output(s)",
                self.file,
                self.output,
                out.len()
            ))
        })?;
        Ok(o.to_plain_array_view::<f32>()
            .map_err(|e| {
                crate::error::Error::Input(format!("{}: output {}: {e}", self.file, self.output))
            })?
            .iter()
            .copied()
            .collect())
    }
}

/// A teacher's outputs on every sample of each split, computed once (a text encoder's, a
/// file of precomputed outputs, a weighted mix of teachers): students read them instead of
/// running the teacher. Rows follow the splits' sample order.
#[derive(Debug, Clone)]
pub struct SplitOutputs {
    /// Values per sample.
    pub cols: usize,
    /// Training split.
    pub train: Rows,
    /// Validation split.
    pub val: Rows,
    /// Test split, when the teacher has outputs for it.
    pub test: Option<Rows>,
}

/// What a teacher that is not a distillery model offers besides [`Teacher`].
#[derive(Default, Clone)]
pub struct KnownTeacher {
    /// Logits (log-probabilities for probability sources) per split: what logit
    /// distillation reads.
    pub logits: Option<SplitOutputs>,
    /// Sentence embeddings per split: what embedding distillation reads.
    pub embeddings: Option<SplitOutputs>,
    /// The encoder itself (a BERT teacher), for initialising a static-embedding student from
    /// its token embeddings.
    pub encoder: Option<std::sync::Arc<bert::BertEncoder>>,
}
