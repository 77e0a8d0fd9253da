//! Models: one file per family — a multi-layer perceptron ([`mlp`]), a LeNet-style CNN
//! ([`cnn`]), a residual CNN with batch normalisation ([`resnet`]), a 1-D CNN for sequences
//! ([`conv1d`]), an embedding bag for text ([`bag`]) and tree models ([`trees`], fitted by
//! [`boost`]) — each answering the [`Family`] trait, registered once in [`Arch`]. Parameters
//! are candle `Var`s, initialised from a seed; a safetensors file carries everything needed to
//! use the model alone (architecture, input shape, normalisation, class names).

pub mod bag;
pub mod boost;
pub mod cnn;
pub mod conv1d;
pub mod fused;
pub mod graph;
pub mod meta;
pub mod mlp;
pub mod ops;
pub mod resnet;
pub mod trees;

use crate::data::{Normalizer, TargetScale, Task};
use crate::error::{bad_field, Error, Result};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// A model's architecture: the family, chosen by `kind` in the experiment file, and that
/// family's own settings (unknown keys are rejected with the line).
///
/// Adding a family: a file with its settings type and its [`Family`] implementation, a
/// variant here, and one arm in [`Arch::family`] and [`Arch::family_mut`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Arch {
    /// Multi-layer perceptron.
    Mlp(mlp::MlpArch),
    /// LeNet-style convolutional network.
    Cnn(cnn::CnnArch),
    /// Residual CNN with batch normalisation.
    Resnet(resnet::ResnetArch),
    /// 1-D convolutional network for sequences and signals.
    Conv1d(conv1d::Conv1dArch),
    /// Text: an embedding table over token ids (or hashed n-grams), mean-pooled over each
    /// text's ids, then dense layers (Model2Vec- and fastText-style students).
    EmbeddingBag(bag::BagArch),
    /// Gradient-boosted trees ([`boost`]): not trained by gradient steps through the loop but
    /// fitted in one go to the same objective.
    BoostedTrees(trees::BoostedArch),
    /// One decision tree, depth-limited, readable as rules.
    DecisionTree(trees::SingleTreeArch),
}

/// The `kind`s of [`Arch`], as written in experiment files.
pub const KINDS: [&str; 7] = [
    "mlp",
    "cnn",
    "resnet",
    "conv1d",
    "embedding-bag",
    "boosted-trees",
    "decision-tree",
];

impl<'de> Deserialize<'de> for Arch {
    /// Reads `kind`, then the rest as that family's settings (unknown keys refused, with a
    /// word on the family that has them when another does).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Arch, D::Error> {
        use serde::de::Error as _;
        let mut v = serde_json::Value::deserialize(d)?;
        let map = v.as_object_mut().ok_or_else(|| {
            D::Error::custom("expected a table such as { kind = \"mlp\", hidden = [64] }")
        })?;
        let kind = match map.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "kind: expected one of {KINDS:?}, got {other}"
                )))
            }
            None => return Err(D::Error::missing_field("kind")),
        };
        let tree = |k: &str| k == "boosted-trees" || k == "decision-tree";
        const TREE_ONLY: [&str; 11] = [
            "flatten",
            "trees",
            "leaves",
            "depth",
            "learning_rate",
            "min_leaf",
            "l2",
            "min_hessian",
            "max_step",
            "bins",
            "fit_to",
        ];
        for key in map.keys() {
            if tree(&kind)
                && [
                    "hidden",
                    "dropout",
                    "input_dropout",
                    "channels",
                    "kernel",
                    "dim",
                ]
                .contains(&key.as_str())
            {
                return Err(D::Error::custom(format!(
                    "`{key}` is not a setting of a tree model (kind = \"{kind}\")"
                )));
            }
            if !tree(&kind) && TREE_ONLY.contains(&key.as_str()) {
                return Err(D::Error::custom(format!(
                    "`{key}` is only for tree models (kind = \"boosted-trees\" or \"decision-tree\"), not kind = \"{kind}\""
                )));
            }
        }
        fn read<T: serde::de::DeserializeOwned, E: serde::de::Error>(
            kind: &str,
            v: serde_json::Value,
        ) -> std::result::Result<T, E> {
            serde_json::from_value(v).map_err(|e| E::custom(format!("kind = \"{kind}\": {e}")))
        }
        Ok(match kind.as_str() {
            "mlp" => Arch::Mlp(read(&kind, v)?),
            "cnn" => Arch::Cnn(read(&kind, v)?),
            "resnet" => Arch::Resnet(read(&kind, v)?),
            "conv1d" => Arch::Conv1d(read(&kind, v)?),
            "embedding-bag" => Arch::EmbeddingBag(read(&kind, v)?),
            "boosted-trees" => Arch::BoostedTrees(read(&kind, v)?),
            "decision-tree" => Arch::DecisionTree(read(&kind, v)?),
            other => return Err(D::Error::unknown_variant(other, &KINDS)),
        })
    }
}

/// The settings a neural family shares: dense hidden widths and dropout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Head<'a> {
    /// Widths of the hidden dense layers.
    pub hidden: &'a [usize],
    /// Dropout after each hidden layer during training.
    pub dropout: f32,
    /// Dropout on the input during training.
    pub input_dropout: f32,
}

/// What the data give a model: feature rows, images (`[c, h, w]`), or token ids of texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Numeric feature rows (a sequence is a row, read left to right).
    Features,
    /// Images `[channels, height, width]`.
    Images,
    /// Texts as token ids.
    Text,
}

impl Input {
    /// From what the data are: images, texts, or (neither) feature rows.
    pub fn of(images: bool, text: bool) -> Input {
        if text {
            Input::Text
        } else if images {
            Input::Images
        } else {
            Input::Features
        }
    }
}

/// What a family can go through besides training, distillation, saving, loading, prediction and
/// ONNX export (which every family does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supports {
    /// `[[prune]]`: structured pruning of hidden units and conv channels.
    pub prune: bool,
    /// `precision = "int8"`: integer inference.
    pub int8: bool,
    /// `precision = "int8-weights"`, `"int4-weights"` and `"bf16"`: weights stored small.
    pub weight_formats: bool,
    /// `init = "split"`: cut into sub-models along the hidden units.
    pub split: bool,
}

/// Everything the rest of the crate asks of a model family. Each family implements it in its
/// own file; nothing outside that file decides by the family's name.
pub trait Family {
    /// The `kind` written in experiment files.
    fn kind(&self) -> &'static str;
    /// Checks the settings against the data; `p` is the table's path, for the messages.
    fn check(&self, p: &str, input: Input) -> Result<()>;
    /// The (name, shape) of every parameter, in order (none for a tree model: its size is
    /// known once it is fitted).
    fn param_shapes(&self, spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>>;
    /// The kind of every parameter, in the order of [`Family::param_shapes`].
    fn param_kinds(&self, spec: &ModelSpec) -> Vec<ParamKind>;
    /// A one-line description, e.g. `mlp 784-1200-1200-10`.
    fn describe(&self, spec: &ModelSpec) -> String;
    /// The dense hidden widths and dropout, for a neural family (hint layers, sub-models).
    fn head(&self) -> Option<Head<'_>>;
    /// The tensor forward pass (autograd in training); with `capture = Some(l)` also returns
    /// dense hidden layer `l`'s activations.
    fn forward(
        &self,
        model: &Model,
        x: &Tensor,
        mode: Mode,
        capture: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)>;
    /// The fused CPU passes' plan ([`fused`]: training steps and inference without autograd),
    /// when the family has one.
    fn fused(&self, spec: &ModelSpec) -> Option<fused::Plan>;
    /// Eval-mode outputs of `rows` rows: the one dispatcher for prediction and teaching.
    fn predict_rows(&self, model: &Model, x: &[f32], rows: usize) -> Result<Vec<f32>>;
    /// The eval-mode computation as a graph of standard operations (what ONNX export writes).
    fn graph(&self, model: &Model) -> Result<graph::Graph>;
    /// What the family supports besides training and export.
    fn supports(&self) -> Supports;
    /// The same architecture with other conv widths and dense hidden widths, for a family that
    /// structured pruning cuts ([`Supports::prune`]).
    fn resized(&self, channels: &[usize], hidden: &[usize]) -> Option<Arch>;
    /// Tree settings with defaults filled in, for a tree model.
    fn tree_settings(&self) -> Option<boost::TreeSettings>;
}

impl Arch {
    /// The family's answers.
    pub fn family(&self) -> &dyn Family {
        match self {
            Arch::Mlp(a) => a,
            Arch::Cnn(a) => a,
            Arch::Resnet(a) => a,
            Arch::Conv1d(a) => a,
            Arch::EmbeddingBag(a) => a,
            Arch::BoostedTrees(a) => a,
            Arch::DecisionTree(a) => a,
        }
    }

    /// An MLP with these hidden widths and no dropout.
    pub fn mlp(hidden: Vec<usize>) -> Arch {
        Arch::Mlp(mlp::MlpArch {
            hidden,
            ..Default::default()
        })
    }

    /// A tree model ([`trees::TreeEnsemble`]), not a network of parameters.
    pub fn is_tree(&self) -> bool {
        self.family().tree_settings().is_some()
    }

    /// The `kind` as written in experiment files.
    pub fn kind(&self) -> &'static str {
        self.family().kind()
    }

    /// Dense hidden widths (empty for a tree model).
    pub fn hidden(&self) -> &[usize] {
        self.family().head().map_or(&[], |h| h.hidden)
    }

    /// The tree settings with defaults filled in (LightGBM's for boosted trees).
    pub fn tree_settings(&self) -> Option<boost::TreeSettings> {
        self.family().tree_settings()
    }

    /// The same architecture with every tree default written out (what a model file records).
    pub fn resolved(&self) -> Arch {
        match self {
            Arch::BoostedTrees(a) => Arch::BoostedTrees(a.resolved()),
            Arch::DecisionTree(a) => Arch::DecisionTree(a.resolved()),
            other => other.clone(),
        }
    }

    /// A tree model's `fit_to`, when the file sets it.
    pub fn fit_to(&self) -> Option<boost::FitTo> {
        match self {
            Arch::BoostedTrees(a) => a.0.fit_to,
            Arch::DecisionTree(a) => a.0.fit_to,
            _ => None,
        }
    }

    /// The same model made cheap for `--quick` smoke runs: boosted trees keep at most 5 trees.
    pub fn make_quick(&mut self) {
        if let Arch::BoostedTrees(a) = self {
            a.0.trees = Some(a.0.trees.unwrap_or(100).min(5));
        }
    }

    /// The vocabulary of the data's featurizer, for a family that embeds token ids.
    pub fn set_vocab(&mut self, vocab: usize) {
        if let Arch::EmbeddingBag(a) = self {
            a.vocab = vocab;
        }
    }

    /// Checks the values; `p` is the table's path in the experiment file, for the messages.
    pub fn check(&self, p: &str, input: Input) -> Result<()> {
        if let Some(h) = self.family().head() {
            if h.hidden.contains(&0) {
                bad_field(
                    &format!("{p}.hidden"),
                    &format!("widths must be ≥ 1, got {:?}", h.hidden),
                )?;
            }
            for (f, v) in [("dropout", h.dropout), ("input_dropout", h.input_dropout)] {
                if !(0.0..1.0).contains(&v) {
                    bad_field(
                        &format!("{p}.{f}"),
                        &format!("expected a probability in [0, 1), got {v}"),
                    )?;
                }
            }
            if input == Input::Text && !matches!(self, Arch::EmbeddingBag(_)) {
                bad_field(
                    &format!("{p}.kind"),
                    "text data need kind = \"embedding-bag\" (token ids are not features)",
                )?;
            }
        }
        self.family().check(p, input)
    }
}

/// Model files written before each family had its own settings recorded every family's fields;
/// drops those that another family owns when they hold the old defaults, so the files still load.
fn strip_legacy_arch_fields(meta: &mut serde_json::Value) {
    let Some(arch) = meta
        .get_mut("spec")
        .and_then(|s| s.get_mut("arch"))
        .and_then(|a| a.as_object_mut())
    else {
        return;
    };
    let kind = arch.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let own: &[&str] = match kind {
        "mlp" => &["hidden", "dropout", "input_dropout"],
        "cnn" => &["hidden", "dropout", "input_dropout", "channels", "kernel"],
        "embedding-bag" => &["hidden", "dropout", "input_dropout", "dim", "vocab"],
        _ => return,
    };
    let empty = |v: &serde_json::Value| match v {
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Number(n) => n.as_f64() == Some(0.0) || n.as_f64() == Some(5.0),
        serde_json::Value::Bool(b) => !b,
        serde_json::Value::Null => true,
        _ => false,
    };
    arch.retain(|k, v| k == "kind" || own.contains(&k.as_str()) || !empty(v));
}

/// Architecture plus the data shape it is built for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The architecture.
    pub arch: Arch,
    /// Per-sample input shape: `[d]` or `[c, h, w]`.
    pub input_shape: Vec<usize>,
    /// Number of outputs (classes, or 1 for regression).
    pub outputs: usize,
}

impl ModelSpec {
    /// Input features per sample.
    pub fn input_dim(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// The (name, shape) of every parameter, in order.
    pub fn param_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        self.arch.family().param_shapes(self)
    }

    /// A one-line description, e.g. `mlp 784-1200-1200-10`.
    pub fn describe(&self) -> String {
        self.arch.family().describe(self)
    }

    /// What the family supports besides training and export.
    pub fn supports(&self) -> Supports {
        self.arch.family().supports()
    }
}

/// `a-b-c` for a list of sizes.
pub(crate) fn dims(v: &[usize]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("-")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A dense layer's weight, stored `[in, out]`.
    DenseWeight,
    /// A convolution's weight, `[c_out, c_in, k, k]`.
    ConvWeight,
    /// A bias.
    Bias,
    /// An embedding table `[vocab, dim]` (one row per token; no bias follows it).
    Embedding,
    /// A batch normalisation's scale γ (starts at 1; its shift β is a [`ParamKind::Bias`]).
    NormScale,
    /// A batch normalisation's running mean: state, not trained (starts at 0).
    RunningMean,
    /// A batch normalisation's running variance: state, not trained (starts at 1).
    RunningVar,
}

impl ParamKind {
    /// A weight (pruned and quantized) rather than a bias (kept in f32).
    pub fn is_weight(self) -> bool {
        matches!(self, ParamKind::DenseWeight | ParamKind::ConvWeight)
    }

    /// Trained by the optimizer (running statistics are not: the forward pass keeps them).
    pub fn is_trained(self) -> bool {
        !matches!(self, ParamKind::RunningMean | ParamKind::RunningVar)
    }

    /// The value a new model's parameter of this kind starts from, for those that do not start
    /// random.
    pub fn initial(self) -> Option<f32> {
        match self {
            ParamKind::Bias | ParamKind::RunningMean => Some(0.0),
            ParamKind::NormScale | ParamKind::RunningVar => Some(1.0),
            ParamKind::DenseWeight | ParamKind::ConvWeight | ParamKind::Embedding => None,
        }
    }

    /// `(channels, inputs)` of a weight of this kind seen channel-major: a dense `[in, out]`
    /// weight has `out` channels, a conv weight `c_out`; a bias is one row.
    pub fn channel_dims(self, shape: &[usize]) -> (usize, usize) {
        let n: usize = shape.iter().product();
        match self {
            ParamKind::DenseWeight => (shape[1], shape[0]),
            _ => {
                let rows = shape.first().copied().unwrap_or(1);
                (rows, n / rows.max(1))
            }
        }
    }
}

/// One layer's parameters: their positions in [`Model::params`], found from the architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerParams {
    /// [`ParamKind::ConvWeight`] or [`ParamKind::DenseWeight`].
    pub kind: ParamKind,
    /// Index of the weight.
    pub weight: usize,
    /// Index of the bias.
    pub bias: usize,
}

impl ModelSpec {
    /// Every layer with a weight, in order (conv blocks, then dense layers), with the
    /// positions of its weight and bias.
    pub fn layers(&self) -> Vec<LayerParams> {
        let kinds = self.param_kinds();
        kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_weight())
            .map(|(i, &kind)| LayerParams {
                kind,
                weight: i,
                // Each weight is followed by its bias (see `param_kinds`).
                bias: i + 1,
            })
            .collect()
    }

    /// The kind of every parameter, in order (the family's answer).
    pub fn param_kinds(&self) -> Vec<ParamKind> {
        self.arch.family().param_kinds(self)
    }
}

/// Train mode draws dropout masks from the given generator; eval mode is deterministic.
pub enum Mode<'a> {
    /// Inference: no dropout.
    Eval,
    /// Training: dropout active, masks drawn from this generator.
    Train(&'a mut Rng),
}

/// Everything a model file carries besides its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Model name.
    pub name: String,
    /// Role in the experiment that produced it.
    pub role: String,
    /// Architecture and shapes.
    pub spec: ModelSpec,
    /// Task.
    pub task: Task,
    /// Class names (classification).
    #[serde(default)]
    pub class_names: Option<Vec<String>>,
    /// Feature normalisation to apply to raw inputs.
    pub normalizer: Normalizer,
    /// Regression target scaling (outputs are standardised; map back with this).
    #[serde(default)]
    pub target_scale: Option<TargetScale>,
    /// Free-form training record (curves, best epoch, ...).
    #[serde(default)]
    pub training: serde_json::Value,
    /// Quantization format and parameters (absent for f32 models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<meta::QuantMeta>,
    /// The pruning or quantization stage that produced the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<meta::StageRecord>,
    /// Text models: how raw texts become the model's input ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<crate::data::text::Featurizer>,
    /// A multi-task model's heads, in column order (empty for one task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<TaskHead>,
}

/// One head of a multi-task model: a block of the model's outputs (the trunk is shared; the
/// head is its columns of the last layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskHead {
    /// The task's name (an output's name in predictions and exports).
    pub name: String,
    /// Its first column of the model's outputs.
    pub start: usize,
    /// Its width.
    pub outputs: usize,
    /// What its outputs are.
    pub kind: HeadKind,
    /// The teacher it learned from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// Whether it learned the data's labels (its values are then in the target's units once
    /// the model's target scale is undone; its classes are the model's class names).
    pub labels: bool,
    /// The further target column it learned (`data.targets`), if not the data's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// A head of a further class column: its class names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// A head of a further value column: its scale (outputs are standardised; undo with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<crate::data::TargetScale>,
}

/// What a head's outputs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// Class scores (logits).
    Classes,
    /// Regression values.
    Values,
    /// An embedding vector.
    Embedding,
}

impl TaskHead {
    /// Its columns of the model's outputs.
    pub fn cols(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.outputs
    }
}

/// A model: its spec and named parameters.
pub struct Model {
    /// Architecture and shapes.
    pub spec: ModelSpec,
    /// Parameters in a fixed order, with names like `fc0.weight`.
    pub params: Vec<(String, Var)>,
}

impl Model {
    /// A freshly initialised model (He-uniform weights, zero biases, unit normalisation
    /// scales) from a seeded generator.
    pub fn new(spec: ModelSpec, rng: &mut Rng) -> Result<Model> {
        let shapes = spec.param_shapes()?;
        let kinds = spec.param_kinds();
        let mut params = Vec::with_capacity(shapes.len());
        for ((name, shape), kind) in shapes.into_iter().zip(kinds) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if let Some(v) = kind.initial() {
                vec![v; n]
            } else {
                // Dense weights are [in, out]; conv weights [c_out, c_in, k, k].
                let fan_in: usize = if shape.len() == 2 {
                    shape[0]
                } else {
                    shape[1..].iter().product()
                };
                let bound = (6.0 / fan_in as f32).sqrt();
                (0..n).map(|_| rng.uniform_range(-bound, bound)).collect()
            };
            let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
            params.push((name, Var::from_tensor(&t)?));
        }
        Ok(Model { spec, params })
    }

    /// Builds a model from named weight arrays, checking every shape.
    pub fn from_weights(
        spec: ModelSpec,
        weights: &HashMap<String, (Vec<usize>, Vec<f32>)>,
        file: &str,
    ) -> Result<Model> {
        let mut params = Vec::new();
        for (name, shape) in spec.param_shapes()? {
            let (s, v) = weights.get(&name).ok_or_else(|| {
                Error::Input(format!(
                    "{file}: missing tensor '{name}' (expected shape {shape:?})"
                ))
            })?;
            if *s != shape {
                return Err(Error::Input(format!(
                    "{file}: tensor '{name}' has shape {s:?}, expected {shape:?}"
                )));
            }
            if let Some(p) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Input(format!(
                    "{file}: tensor '{name}' holds a non-finite value at index {p}"
                )));
            }
            let t = Tensor::from_vec(v.clone(), shape, &Device::Cpu)?;
            params.push((name, Var::from_tensor(&t)?));
        }
        Ok(Model { spec, params })
    }

    /// Forward pass on a `[batch, input_dim]` tensor; returns `[batch, outputs]`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(self.forward_hidden(x, mode, None)?.0)
    }

    /// Forward pass that also returns the activations of dense hidden layer `layer`
    /// (0-based, after ReLU) when asked; used for hint (FitNets) losses.
    pub fn forward_hidden(
        &self,
        x: &Tensor,
        mode: Mode,
        layer: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if let Some(l) = layer {
            let hidden = self.spec.arch.hidden().len();
            if l >= hidden {
                return Err(Error::Input(format!(
                    "hint layer {l}: the model has {hidden} hidden dense layers"
                )));
            }
        }
        self.spec.arch.family().forward(self, x, mode, layer)
    }

    /// The parameter tensor named `name`.
    pub fn param(&self, name: &str) -> Result<&Tensor> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_tensor())
            .ok_or_else(|| Error::Other(format!("no parameter named {name}")))
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Size of the weights in bytes (f32).
    pub fn bytes(&self) -> usize {
        self.num_params() * 4
    }

    /// The weights as flat vectors, in parameter order.
    pub fn weights(&self) -> Result<Vec<Vec<f32>>> {
        self.params
            .iter()
            .map(|(_, v)| Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
            .collect()
    }

    /// Overwrites the weights (same order and sizes as [`Model::weights`]).
    pub fn set_weights(&self, w: &[Vec<f32>]) -> Result<()> {
        for ((_, var), data) in self.params.iter().zip(w) {
            let t = Tensor::from_slice(data, var.shape(), &Device::Cpu)?;
            var.set(&t)?;
        }
        Ok(())
    }

    /// A deep copy.
    pub fn duplicate(&self) -> Result<Model> {
        let params = self
            .params
            .iter()
            .map(|(n, v)| Ok((n.clone(), Var::from_tensor(&v.as_tensor().copy()?)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            spec: self.spec.clone(),
            params,
        })
    }

    /// The kind of every parameter, in order.
    pub fn param_kinds(&self) -> Vec<ParamKind> {
        self.spec.param_kinds()
    }

    /// `(weight [in, out], bias [out])` of every dense layer, in order, found by kind.
    pub fn dense_layers(&self) -> Vec<(&Tensor, &Tensor)> {
        let kinds = self.param_kinds();
        (0..self.params.len().saturating_sub(1))
            .filter(|&i| kinds.get(i) == Some(&ParamKind::DenseWeight))
            .map(|i| {
                (
                    self.params[i].1.as_tensor(),
                    self.params[i + 1].1.as_tensor(),
                )
            })
            .collect()
    }

    /// Runs the model over `x` (`n * input_dim` values) in eval mode, in batches; returns
    /// `n * outputs` values.
    pub fn predict(&self, x: &[f32], batch: usize) -> Result<Vec<f32>> {
        let d = self.spec.input_dim();
        let mut out = Vec::with_capacity(x.len() / d * self.spec.outputs);
        let family = self.spec.arch.family();
        for chunk in x.chunks(batch.max(1) * d) {
            out.extend(family.predict_rows(self, chunk, chunk.len() / d)?);
        }
        Ok(out)
    }

    /// Eval-mode outputs of `rows` rows through the tensor forward pass (the families without
    /// a faster path).
    pub fn predict_tensor(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let t = Tensor::from_slice(x, (rows, self.spec.input_dim()), &Device::Cpu)?;
        let y = self.forward(&t, Mode::Eval)?;
        Ok(y.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// Builds a dropout mask `[rows, cols]` of 0 and 1/(1-p).
pub fn dropout(x: &Tensor, p: f32, mode: &mut Mode) -> Result<Tensor> {
    match mode {
        Mode::Train(rng) if p > 0.0 => {
            let keep = 1.0 / (1.0 - p);
            let n = x.elem_count();
            let mask: Vec<f32> = (0..n)
                .map(|_| if rng.uniform() < p { 0.0 } else { keep })
                .collect();
            let m = Tensor::from_vec(mask, x.shape(), x.device())?;
            Ok(x.mul(&m)?)
        }
        _ => Ok(x.clone()),
    }
}

/// `x · W + b` for an `[in, out]` weight (stored input-major so that both the forward GEMM
/// and the weight gradient `xᵀ · dy` are contiguous, with no transposed copies).
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(w)?.broadcast_add(b)?)
}

/// The safetensors metadata key holding distillery's JSON.
pub const META_KEY: &str = "distillery";

/// Serialises a model and its metadata to safetensors bytes. `extra` tensors (optimizer
/// state, best weights) are stored beside the parameters under their own names.
pub fn to_safetensors(
    model: &Model,
    meta_json: &str,
    extra: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<Vec<u8>> {
    let mut all: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, var) in &model.params {
        let v = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        all.push((name.clone(), var.dims().to_vec(), v));
    }
    all.extend(extra.iter().cloned());
    tensors_to_safetensors(&all, meta_json)
}

/// Serialises typed tensors and distillery metadata to safetensors bytes.
pub fn write_safetensors(
    tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)],
    meta_json: &str,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Other(format!("safetensors: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut md = HashMap::new();
    md.insert(META_KEY.to_string(), meta_json.to_string());
    safetensors::serialize(views, Some(md)).map_err(|e| Error::Other(format!("safetensors: {e}")))
}

/// Serialises named f32 tensors and distillery metadata to safetensors bytes.
pub fn tensors_to_safetensors(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    meta_json: &str,
) -> Result<Vec<u8>> {
    let typed: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, v)| {
            (
                name.clone(),
                safetensors::Dtype::F32,
                shape.clone(),
                f32_bytes(v),
            )
        })
        .collect();
    write_safetensors(&typed, meta_json)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(v.len() * 4);
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

/// The tensors and metadata string of a safetensors file.
pub struct RawModelFile {
    /// Tensors by name: shape and values.
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// distillery's metadata JSON.
    pub meta_json: String,
}

/// The raw metadata JSON of a distillery model file.
fn meta_json(bytes: &[u8], file: &str) -> Result<String> {
    let (_, md) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
        Error::Input(format!(
            "{file}: not a valid safetensors model file ({e}); the file may be truncated or corrupt"
        ))
    })?;
    md.metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY).cloned())
        .ok_or_else(|| {
            Error::Input(format!(
                "{file}: safetensors file without distillery metadata (not written by distillery)"
            ))
        })
}

/// The distillery metadata of a model file (any precision).
pub fn read_meta(bytes: &[u8], file: &str) -> Result<ModelMeta> {
    let bad =
        |e: serde_json::Error| Error::Input(format!("{file}: malformed distillery metadata: {e}"));
    let mut v: serde_json::Value = serde_json::from_str(&meta_json(bytes, file)?).map_err(bad)?;
    strip_legacy_arch_fields(&mut v);
    serde_json::from_value(v).map_err(bad)
}

/// Parses safetensors bytes written by distillery; every failure names the file.
pub fn parse_safetensors(bytes: &[u8], file: &str) -> Result<RawModelFile> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        Error::Input(format!("{file}: not a valid safetensors model file ({e}); the file may be truncated or corrupt"))
    })?;
    let meta_json = meta_json(bytes, file)?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::Input(format!(
                "{file}: tensor '{name}' has dtype {:?}, expected F32",
                view.dtype()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(name, (view.shape().to_vec(), data));
    }
    Ok(RawModelFile { tensors, meta_json })
}

/// Saves a model file atomically.
pub fn save_model(path: &Path, model: &Model, meta: &ModelMeta) -> Result<()> {
    let json = serde_json::to_string(meta).map_err(|e| Error::Other(e.to_string()))?;
    let bytes = to_safetensors(model, &json, &[])?;
    crate::io::write_atomic(path, &bytes)
}

/// The error for a quantized model file where an f32 model is needed.
pub fn quantized_refusal(file: &str, precision: &str) -> Error {
    Error::Input(format!(
        "{file}: a quantized ({precision}) model; it can be evaluated, exported and used by `predict`, but not trained further or used as a teacher — use the f32 model it was made from"
    ))
}

/// Loads an f32 model file written by [`save_model`] (quantized files are refused here; read
/// them with [`crate::compress::load_any`]).
pub fn load_model(path: &Path) -> Result<(Model, ModelMeta)> {
    let bytes = read_model_file(path)?;
    load_model_bytes(&bytes, &path.display().to_string())
}

/// Loads a model from the bytes of a model file; `file` names it in errors.
pub fn load_model_bytes(bytes: &[u8], file: &str) -> Result<(Model, ModelMeta)> {
    let file = file.to_string();
    if let Ok(m) = read_meta(bytes, &file) {
        if let Some(q) = &m.quantization {
            return Err(quantized_refusal(&file, q.precision.as_str()));
        }
    }
    let raw = parse_safetensors(bytes, &file)?;
    let meta: ModelMeta = serde_json::from_str(&raw.meta_json)
        .map_err(|e| Error::Input(format!("{file}: malformed distillery metadata: {e}")))?;
    let model = Model::from_weights(meta.spec.clone(), &raw.tensors, &file)?;
    Ok((model, meta))
}

/// Checks that `spec` fits data of `input_shape` with `outputs` outputs.
pub fn check_fits(
    spec: &ModelSpec,
    input_shape: &[usize],
    outputs: usize,
    what: &str,
) -> Result<()> {
    if spec.input_dim() != input_shape.iter().product::<usize>() {
        return Err(Error::Input(format!(
            "{what}: the model takes inputs of shape {:?} but the data have shape {input_shape:?}",
            spec.input_shape
        )));
    }
    if spec.outputs != outputs {
        return Err(Error::Input(format!(
            "{what}: the model has {} outputs but the data have {outputs} {}",
            spec.outputs,
            if outputs == 1 { "target" } else { "classes" }
        )));
    }
    Ok(())
}

/// Tensor of `dtype` f32 check helper.
pub(crate) fn ensure_f32(t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::Other(format!(
            "expected f32 tensor, got {:?}",
            t.dtype()
        )));
    }
    Ok(())
}

/// Largest decompressed model file accepted (guards against gzip bombs).
const MAX_MODEL_BYTES: u64 = 8 << 30;

/// Reads a model file, gunzipping it when it is compressed.
pub fn read_model_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = crate::io::read_file(path)?;
    maybe_gunzip(bytes, &path.display().to_string())
}

/// Gunzips `bytes` when they start with the gzip magic.
pub fn maybe_gunzip(bytes: Vec<u8>, file: &str) -> Result<Vec<u8>> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .take(MAX_MODEL_BYTES)
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::Input(format!(
                    "{file}: corrupt or truncated gzip-compressed model file ({e})"
                ))
            })?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// A contiguous f32 view of a CPU tensor's storage (no copy).
pub(crate) fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| crate::error::Error::Other("parameter tensor is not contiguous".into()))?;
    match &*storage {
        candle_core::Storage::Cpu(cs) => Ok(f(&cs.as_slice::<f32>()?[start..end])),
        _ => Err(crate::error::Error::Other(
            "the fused MLP paths run on the CPU".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_kinds_come_from_the_architecture() {
        let spec = |arch| ModelSpec {
            arch,
            input_shape: vec![1, 8, 8],
            outputs: 3,
        };
        use ParamKind::*;
        let mlp = Model::new(spec(Arch::mlp(vec![8, 4])), &mut Rng::new(1)).unwrap();
        assert_eq!(
            mlp.param_kinds(),
            [DenseWeight, Bias, DenseWeight, Bias, DenseWeight, Bias]
        );
        let cnn = Model::new(
            spec(Arch::Cnn(cnn::CnnArch {
                channels: vec![2, 3],
                kernel: 3,
                hidden: vec![8, 4],
                dropout: 0.0,
                input_dropout: 0.0,
            })),
            &mut Rng::new(1),
        )
        .unwrap();
        let kinds = cnn.param_kinds();
        assert_eq!(kinds.len(), cnn.params.len());
        assert_eq!(&kinds[..4], [ConvWeight, Bias, ConvWeight, Bias]);
        // The kinds agree with the shapes and names the families give.
        for (k, (name, var)) in kinds.iter().zip(&cnn.params) {
            let rank = var.dims().len();
            match k {
                ConvWeight => assert!(rank == 4 && name.starts_with("conv")),
                DenseWeight => assert!(rank == 2 && name.starts_with("fc")),
                Bias => assert!(rank == 1 && name.ends_with("bias")),
                other => panic!("a CNN has no {other:?}"),
            }
        }
        let dense = cnn.dense_layers();
        assert_eq!(dense.len(), 3);
        assert_eq!(dense[2].0.dims(), [4, 3]);
        assert_eq!(DenseWeight.channel_dims(&[8, 4]), (4, 8));
        assert_eq!(ConvWeight.channel_dims(&[3, 2, 3, 3]), (3, 18));
    }

    /// Autograd through every differentiable family's forward (candle's ops and ours in
    /// [`ops`]) agrees with central differences, coordinate by coordinate: L = Σ forward(x) ⊙ r,
    /// up to 8 coordinates of every parameter tensor, ε = 1e-3 (or 1e-4 … 1e-2: a step can
    /// straddle a ReLU kink, a smaller one drowns in f32 rounding). Tolerance 10% relative:
    /// a batch-normalised net's finite differences wander by a few percent (every
    /// pre-activation of a channel moves together), and the bugs this guards against were off
    /// by 2× to 16× or in sign (candle's max-pool and conv1d / strided-conv backward, see
    /// [`ops`]). Biases are randomised so that no pre-activation sits exactly on a kink.
    #[test]
    fn gradients_agree_with_finite_differences() {
        let cases: Vec<(serde_json::Value, Vec<usize>)> = vec![
            (
                serde_json::json!({"kind": "mlp", "hidden": [6, 5]}),
                vec![7],
            ),
            (
                serde_json::json!({"kind": "cnn", "channels": [3, 4], "kernel": 3, "hidden": [5]}),
                vec![1, 8, 8],
            ),
            (
                serde_json::json!({"kind": "conv1d", "channels": [3, 4], "kernel": 5, "pool": 2, "hidden": [5]}),
                vec![20],
            ),
            (
                serde_json::json!({"kind": "conv1d", "channels": [3], "kernel": 3, "stride": 2, "pool": 1, "hidden": []}),
                vec![2, 11],
            ),
            (
                serde_json::json!({"kind": "resnet", "channels": [3, 4], "blocks": 1, "hidden": [5]}),
                vec![1, 4, 4],
            ),
            (
                serde_json::json!({"kind": "resnet", "channels": [2, 3, 4], "blocks": 2, "hidden": []}),
                vec![2, 5, 5],
            ),
        ];
        for (arch, input_shape) in cases {
            let arch: Arch = serde_json::from_value(arch.clone()).unwrap();
            let spec = ModelSpec {
                arch,
                input_shape: input_shape.clone(),
                outputs: 3,
            };
            let mut rng = Rng::new(7);
            let model = Model::new(spec, &mut rng).unwrap();
            // Biases start at zero, and a pre-activation that is exactly zero (a conv over a
            // dead region) sits on ReLU's kink, where candle takes the slope 1 and central
            // differences see ½: small random biases keep every pre-activation off it.
            for (var, kind) in model.params.iter().map(|p| &p.1).zip(model.param_kinds()) {
                if kind == ParamKind::Bias {
                    let v: Vec<f32> = (0..var.elem_count()).map(|_| 0.1 * rng.normal()).collect();
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                }
            }
            let d: usize = input_shape.iter().product();
            let b = 4;
            let x: Vec<f32> = (0..b * d).map(|_| rng.normal()).collect();
            let x = Tensor::from_vec(x, (b, d), &Device::Cpu).unwrap();
            let r: Vec<f32> = (0..b * 3).map(|_| rng.normal()).collect();
            let r = Tensor::from_vec(r, (b, 3), &Device::Cpu).unwrap();
            // Training mode (batch statistics for batch norm; no dropout is configured): the
            // only mode anything differentiates.
            {
                let loss = |m: &Model| -> Tensor {
                    m.forward(&x, Mode::Train(&mut Rng::new(1)))
                        .unwrap()
                        .mul(&r)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                };
                let grads = loss(&model).backward().unwrap();
                let eps = 1e-3f32;
                for (name, var) in &model.params {
                    let Some(g) = grads.get(var.as_tensor()) else {
                        continue;
                    };
                    let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let theta = var
                        .as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    let shape = var.shape().clone();
                    let n = theta.len();
                    for _ in 0..n.min(8) {
                        let i = rng.below(n);
                        let at = |d: f32| -> f32 {
                            let mut p = theta.clone();
                            p[i] += d;
                            var.set(&Tensor::from_vec(p, &shape, &Device::Cpu).unwrap())
                                .unwrap();
                            loss(&model).to_scalar().unwrap()
                        };
                        // Two step sizes: ε = 1e-3 suffers f32 rounding (batch norm over
                        // four samples), 1e-2 the odd kink; agreeing at either one passes.
                        let analytic = g[i];
                        let close = |e: f32| {
                            let numeric = (at(e) - at(-e)) / (2.0 * e);
                            let scale = analytic.abs().max(numeric.abs()).max(0.05);
                            ((analytic - numeric).abs() <= 0.1 * scale, numeric)
                        };
                        let (ok, numeric) = close(eps);
                        assert!(
                            ok || [0.1, 0.3, 3.0, 10.0].iter().any(|m| close(m * eps).0),
                            "{} {name}[{i}]: autograd {analytic} vs finite \
                             differences {numeric}",
                            model.spec.arch.kind()
                        );
                    }
                    var.set(&Tensor::from_vec(theta, &shape, &Device::Cpu).unwrap())
                        .unwrap();
                }
            }
        }
    }
}
