//! Models: a multi-layer perceptron ([`mlp`]) and a LeNet-style CNN ([`cnn`]), with named
//! parameters held as candle `Var`s, seeded initialisation and safetensors files that carry
//! everything needed to use the model alone (architecture, input shape, normalisation, class
//! names).

pub mod bag;
pub mod boost;
pub mod cnn;
pub mod fused;
pub mod meta;
pub mod mlp;
pub mod trees;

use crate::data::{Normalizer, TargetScale, Task};
use crate::error::{bad_field, Error, Result};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchKind {
    /// Multi-layer perceptron.
    Mlp,
    /// LeNet-style convolutional network.
    Cnn,
    /// Text: an embedding table over token ids (or hashed n-grams), mean-pooled over each
    /// text's ids, then dense layers (Model2Vec- and fastText-style students).
    EmbeddingBag,
    /// Gradient-boosted trees ([`boost`]): not trained by gradient steps through the loop but
    /// fitted in one go to the same objective.
    BoostedTrees,
    /// One decision tree, depth-limited, readable as rules.
    DecisionTree,
}

impl ArchKind {
    /// A tree model ([`trees::TreeEnsemble`]), not a network of parameters.
    pub fn is_tree(self) -> bool {
        matches!(self, ArchKind::BoostedTrees | ArchKind::DecisionTree)
    }
}

/// A model architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    /// `mlp` or `cnn`.
    pub kind: ArchKind,
    /// Widths of the hidden dense layers.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Dropout probability after each hidden layer during training.
    #[serde(default)]
    pub dropout: f32,
    /// Dropout probability on the input during training.
    #[serde(default)]
    pub input_dropout: f32,
    /// CNN: output channels of each conv + ReLU + 2×2 max-pool block.
    #[serde(default)]
    pub channels: Vec<usize>,
    /// CNN: square kernel size (odd; "same" padding).
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// Embedding bag: width of each token's embedding.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dim: usize,
    /// Embedding bag: rows of the embedding table. Set from the data's featurizer (its
    /// vocabulary or hash buckets); not written in experiment files.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vocab: usize,
    /// Trees on image data: treat each pixel as one feature (required, so that a tree model
    /// on images is asked for, never a surprise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flatten: bool,
    /// Trees: boosting rounds (default 100; a decision tree is one tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trees: Option<usize>,
    /// Trees: most leaves per tree (default 31; a decision tree: 2^depth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves: Option<usize>,
    /// Trees: most levels below the root (default: unlimited for boosted trees, 6 for a
    /// decision tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// Boosted trees: shrinkage of each tree (default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f32>,
    /// Trees: fewest training samples in a leaf (default 20 for boosted trees, 5 for a
    /// decision tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_leaf: Option<usize>,
    /// Boosted trees: L2 penalty λ on leaf values (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f32>,
    /// Boosted trees: fewest summed Hessians in a leaf (default 1e-3, LightGBM's
    /// `min_sum_hessian_in_leaf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_hessian: Option<f32>,
    /// Boosted trees: largest leaf value before shrinkage (XGBoost's `max_delta_step`; 0 for
    /// none; see `boost::DEFAULT_MAX_STEP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_step: Option<f32>,
    /// Trees: most bins per feature, 2 to 255 (default 255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins: Option<usize>,
    /// Boosted trees distilled for classification: fit the teacher's `"probabilities"` (softmax
    /// cross-entropy at temperature T, the default) or its `"logits"` (squared error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit_to: Option<boost::FitTo>,
}

impl ArchConfig {
    /// The tree settings with defaults filled in (LightGBM's for boosted trees).
    pub fn tree_settings(&self) -> boost::TreeSettings {
        let single = self.kind == ArchKind::DecisionTree;
        let depth = self.depth.or(single.then_some(6));
        boost::TreeSettings {
            kind: if single {
                boost::TreeKind::Single
            } else {
                boost::TreeKind::Boosted
            },
            trees: if single { 1 } else { self.trees.unwrap_or(100) },
            leaves: self.leaves.unwrap_or(if single {
                1usize << depth.unwrap_or(6).min(16)
            } else {
                31
            }),
            depth,
            learning_rate: if single {
                1.0
            } else {
                self.learning_rate.unwrap_or(0.1)
            },
            min_leaf: self.min_leaf.unwrap_or(if single { 5 } else { 20 }),
            l2: if single { 0.0 } else { self.l2.unwrap_or(0.0) },
            min_hessian: self.min_hessian.unwrap_or(boost::DEFAULT_MIN_HESSIAN),
            max_step: self.max_step.unwrap_or(boost::DEFAULT_MAX_STEP),
            bins: self.bins.unwrap_or(255),
            fit_to: self.fit_to.unwrap_or_default(),
        }
    }

    /// The same architecture with every tree default written out (what a model file records).
    pub fn resolved(&self) -> ArchConfig {
        if !self.kind.is_tree() {
            return self.clone();
        }
        let s = self.tree_settings();
        let single = self.kind == ArchKind::DecisionTree;
        ArchConfig {
            trees: (!single).then_some(s.trees),
            leaves: Some(s.leaves),
            depth: s.depth,
            learning_rate: (!single).then_some(s.learning_rate),
            min_leaf: Some(s.min_leaf),
            l2: (!single).then_some(s.l2),
            bins: Some(s.bins),
            ..self.clone()
        }
    }
}

impl Default for ArchConfig {
    /// An MLP with no hidden layer; every other field at its file default.
    fn default() -> Self {
        ArchConfig {
            kind: ArchKind::Mlp,
            hidden: Vec::new(),
            dropout: 0.0,
            input_dropout: 0.0,
            channels: Vec::new(),
            kernel: default_kernel(),
            dim: 0,
            vocab: 0,
            flatten: false,
            trees: None,
            leaves: None,
            depth: None,
            learning_rate: None,
            min_leaf: None,
            l2: None,
            min_hessian: None,
            max_step: None,
            bins: None,
            fit_to: None,
        }
    }
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn default_kernel() -> usize {
    5
}

/// Architecture plus the data shape it is built for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The architecture.
    pub arch: ArchConfig,
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
        match self.arch.kind {
            ArchKind::Mlp => Ok(mlp::param_shapes(self)),
            ArchKind::Cnn => cnn::param_shapes(self),
            ArchKind::EmbeddingBag => Ok(bag::param_shapes(self)),
            // A tree model's size is known only once it is fitted.
            ArchKind::BoostedTrees | ArchKind::DecisionTree => Ok(Vec::new()),
        }
    }

    /// A one-line description, e.g. `mlp 784-1200-1200-10`.
    pub fn describe(&self) -> String {
        let dims = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("-")
        };
        match self.arch.kind {
            ArchKind::Mlp => {
                let mut all = vec![self.input_dim()];
                all.extend(&self.arch.hidden);
                all.push(self.outputs);
                format!("mlp {}", dims(&all))
            }
            ArchKind::EmbeddingBag => {
                let mut all = vec![self.arch.dim];
                all.extend(&self.arch.hidden);
                all.push(self.outputs);
                format!(
                    "embedding bag {}×{} → mlp {}",
                    self.arch.vocab,
                    self.arch.dim,
                    dims(&all)
                )
            }
            ArchKind::BoostedTrees => {
                let s = self.arch.tree_settings();
                format!(
                    "boosted trees {}×{} leaves{}, {} → {}",
                    s.trees,
                    s.leaves,
                    s.depth.map(|d| format!(" depth ≤ {d}")).unwrap_or_default(),
                    self.input_dim(),
                    self.outputs
                )
            }
            ArchKind::DecisionTree => {
                let s = self.arch.tree_settings();
                format!(
                    "decision tree depth ≤ {}, ≤ {} leaves, {} → {}",
                    s.depth.unwrap_or(0),
                    s.leaves,
                    self.input_dim(),
                    self.outputs
                )
            }
            ArchKind::Cnn => format!(
                "cnn {} conv{}x{} [{}] fc [{}] → {}",
                dims(&self.input_shape),
                self.arch.kernel,
                self.arch.kernel,
                dims(&self.arch.channels),
                dims(&self.arch.hidden),
                self.outputs
            ),
        }
    }
}

impl ArchConfig {
    /// Checks the values; `p` is the table's path in the experiment file, for the messages, and
    /// `images` whether the data are images (a CNN needs them).
    pub fn check(&self, p: &str, images: bool, text: bool) -> Result<()> {
        let a = self;
        if a.hidden.contains(&0) {
            bad_field(
                &format!("{p}.hidden"),
                &format!("widths must be ≥ 1, got {:?}", a.hidden),
            )?;
        }
        for (f, v) in [("dropout", a.dropout), ("input_dropout", a.input_dropout)] {
            if !(0.0..1.0).contains(&v) {
                bad_field(
                    &format!("{p}.{f}"),
                    &format!("expected a probability in [0, 1), got {v}"),
                )?;
            }
        }
        let tree_fields = [
            ("trees", a.trees.is_some()),
            ("leaves", a.leaves.is_some()),
            ("depth", a.depth.is_some()),
            ("learning_rate", a.learning_rate.is_some()),
            ("min_leaf", a.min_leaf.is_some()),
            ("l2", a.l2.is_some()),
            ("min_hessian", a.min_hessian.is_some()),
            ("max_step", a.max_step.is_some()),
            ("bins", a.bins.is_some()),
            ("flatten", a.flatten),
            ("fit_to", a.fit_to.is_some()),
        ];
        if !a.kind.is_tree() {
            if let Some((f, _)) = tree_fields.iter().find(|(_, set)| *set) {
                bad_field(
                    &format!("{p}.{f}"),
                    "only for tree models (kind = \"boosted-trees\" or \"decision-tree\")",
                )?;
            }
        }
        match a.kind {
            ArchKind::BoostedTrees | ArchKind::DecisionTree => {
                for (f, set) in [
                    ("hidden", !a.hidden.is_empty()),
                    ("channels", !a.channels.is_empty()),
                    ("dropout", a.dropout != 0.0),
                    ("input_dropout", a.input_dropout != 0.0),
                    ("dim", a.dim != 0),
                ] {
                    if set {
                        bad_field(&format!("{p}.{f}"), "not a setting of a tree model")?;
                    }
                }
                if a.kind == ArchKind::DecisionTree {
                    for (f, set) in [
                        ("trees", a.trees.is_some()),
                        ("learning_rate", a.learning_rate.is_some()),
                        ("l2", a.l2.is_some()),
                        ("min_hessian", a.min_hessian.is_some()),
                        ("max_step", a.max_step.is_some()),
                        ("fit_to", a.fit_to.is_some()),
                    ] {
                        if set {
                            bad_field(
                                &format!("{p}.{f}"),
                                "a decision tree is one tree: use kind = \"boosted-trees\" for an ensemble",
                            )?;
                        }
                    }
                }
                if text {
                    bad_field(
                        &format!("{p}.kind"),
                        "text data need kind = \"embedding-bag\" (token ids are not features a tree can split)",
                    )?;
                }
                if images && !a.flatten {
                    bad_field(
                        &format!("{p}.flatten"),
                        "a tree model splits on single features; on image data set flatten = true to use each pixel as one",
                    )?;
                }
                if a.trees == Some(0) {
                    bad_field(&format!("{p}.trees"), "expected at least 1 tree, got 0")?;
                }
                if let Some(l) = a.leaves.filter(|&l| l < 2) {
                    bad_field(
                        &format!("{p}.leaves"),
                        &format!("expected at least 2, got {l}"),
                    )?;
                }
                if let Some(d) = a.depth.filter(|&d| d == 0 || d > 30) {
                    bad_field(&format!("{p}.depth"), &format!("expected 1 to 30, got {d}"))?;
                }
                if let Some(lr) = a
                    .learning_rate
                    .filter(|&v| !(v.is_finite() && v > 0.0 && v <= 1.0))
                {
                    bad_field(
                        &format!("{p}.learning_rate"),
                        &format!("expected a value in (0, 1], got {lr}"),
                    )?;
                }
                if a.min_leaf == Some(0) {
                    bad_field(&format!("{p}.min_leaf"), "expected at least 1, got 0")?;
                }
                if let Some(l2) = a.l2.filter(|&v| !(v.is_finite() && v >= 0.0)) {
                    bad_field(
                        &format!("{p}.l2"),
                        &format!("expected a finite value >= 0, got {l2}"),
                    )?;
                }
                for (f, v) in [("min_hessian", a.min_hessian), ("max_step", a.max_step)] {
                    if let Some(v) = v.filter(|&v| !(v.is_finite() && v >= 0.0)) {
                        bad_field(
                            &format!("{p}.{f}"),
                            &format!("expected a finite value >= 0, got {v}"),
                        )?;
                    }
                }
                if let Some(b) = a.bins.filter(|&b| !(2..=255).contains(&b)) {
                    bad_field(&format!("{p}.bins"), &format!("expected 2 to 255, got {b}"))?;
                }
            }
            ArchKind::Mlp => {
                if !a.channels.is_empty() {
                    bad_field(&format!("{p}.channels"), "only for kind = \"cnn\"")?;
                }
                if text {
                    bad_field(
                        &format!("{p}.kind"),
                        "text data need kind = \"embedding-bag\" (token ids are not features)",
                    )?;
                }
            }
            ArchKind::EmbeddingBag => {
                if !text {
                    bad_field(
                        &format!("{p}.kind"),
                        "an embedding bag needs text data (data.format = \"text\")",
                    )?;
                }
                if a.dim == 0 {
                    bad_field(
                        &format!("{p}.dim"),
                        "an embedding bag needs the width of its embeddings, e.g. dim = 64",
                    )?;
                }
                if !a.channels.is_empty() {
                    bad_field(&format!("{p}.channels"), "only for kind = \"cnn\"")?;
                }
            }
            ArchKind::Cnn => {
                if !images {
                    bad_field(
                    &format!("{p}.kind"),
                    "a CNN needs image data (IDX images, the digits, or CSV with data.image_shape)",
                )?;
                }
                if a.channels.is_empty() || a.channels.contains(&0) {
                    bad_field(
                        &format!("{p}.channels"),
                        &format!(
                            "a CNN needs at least one conv block with ≥ 1 channels, got {:?}",
                            a.channels
                        ),
                    )?;
                }
                if a.kernel == 0 || a.kernel.is_multiple_of(2) {
                    bad_field(
                        &format!("{p}.kernel"),
                        &format!("expected an odd kernel size ≥ 1, got {}", a.kernel),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// What a parameter is, known from the architecture rather than from its name, so that pruning
/// and quantization visit weights by kind.
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
}

impl ParamKind {
    /// A weight (pruned and quantized) rather than a bias (kept in f32).
    pub fn is_weight(self) -> bool {
        matches!(self, ParamKind::DenseWeight | ParamKind::ConvWeight)
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

    /// The kind of every parameter, in order: each conv block's weight and bias, then each
    /// dense layer's weight and bias.
    pub fn param_kinds(&self) -> Vec<ParamKind> {
        let blocks = match self.arch.kind {
            ArchKind::Cnn => self.arch.channels.len(),
            ArchKind::Mlp
            | ArchKind::EmbeddingBag
            | ArchKind::BoostedTrees
            | ArchKind::DecisionTree => 0,
        };
        let dense = self.arch.hidden.len() + 1;
        let mut kinds = Vec::with_capacity(2 * (blocks + dense) + 1);
        if self.arch.kind == ArchKind::EmbeddingBag {
            kinds.push(ParamKind::Embedding);
        }
        for _ in 0..blocks {
            kinds.extend([ParamKind::ConvWeight, ParamKind::Bias]);
        }
        for _ in 0..dense {
            kinds.extend([ParamKind::DenseWeight, ParamKind::Bias]);
        }
        kinds
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
}

/// A model: its spec and named parameters.
pub struct Model {
    /// Architecture and shapes.
    pub spec: ModelSpec,
    /// Parameters in a fixed order, with names like `fc0.weight`.
    pub params: Vec<(String, Var)>,
}

impl Model {
    /// A freshly initialised model (He-uniform weights, zero biases) from a seeded generator.
    pub fn new(spec: ModelSpec, rng: &mut Rng) -> Result<Model> {
        let shapes = spec.param_shapes()?;
        let mut params = Vec::with_capacity(shapes.len());
        for (name, shape) in shapes {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with(".bias") {
                vec![0.0; n]
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
            if l >= self.spec.arch.hidden.len() {
                return Err(Error::Input(format!(
                    "hint layer {l}: the model has {} hidden dense layers",
                    self.spec.arch.hidden.len()
                )));
            }
        }
        match self.spec.arch.kind {
            ArchKind::Mlp => mlp::forward(self, x, mode, layer),
            ArchKind::Cnn => cnn::forward(self, x, mode, layer),
            ArchKind::EmbeddingBag => bag::forward(self, x, mode, layer),
            ArchKind::BoostedTrees | ArchKind::DecisionTree => Err(Error::Input(
                "a tree model has no tensor forward pass".into(),
            )),
        }
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
        for chunk in x.chunks(batch.max(1) * d) {
            let b = chunk.len() / d;
            if self.spec.arch.kind == ArchKind::Mlp {
                out.extend(fused::forward_eval(self, chunk, b)?);
                continue;
            }
            if self.spec.arch.kind == ArchKind::EmbeddingBag {
                out.extend(bag::predict_rows(self, chunk, b)?);
                continue;
            }
            let t = Tensor::from_slice(chunk, (b, d), &Device::Cpu)?;
            let y = self.forward(&t, Mode::Eval)?;
            out.extend(y.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
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
    serde_json::from_str(&meta_json(bytes, file)?)
        .map_err(|e| Error::Input(format!("{file}: malformed distillery metadata: {e}")))
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
        let spec = |kind, channels: Vec<usize>| ModelSpec {
            arch: ArchConfig {
                kind,
                hidden: vec![8, 4],
                dropout: 0.0,
                input_dropout: 0.0,
                channels,
                kernel: 3,
                dim: 0,
                vocab: 0,
                ..Default::default()
            },
            input_shape: vec![1, 8, 8],
            outputs: 3,
        };
        use ParamKind::*;
        let mlp = Model::new(spec(ArchKind::Mlp, vec![]), &mut Rng::new(1)).unwrap();
        assert_eq!(
            mlp.param_kinds(),
            [DenseWeight, Bias, DenseWeight, Bias, DenseWeight, Bias]
        );
        let cnn = Model::new(spec(ArchKind::Cnn, vec![2, 3]), &mut Rng::new(1)).unwrap();
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
                Embedding => unreachable!("a CNN has no embedding table"),
            }
        }
        let dense = cnn.dense_layers();
        assert_eq!(dense.len(), 3);
        assert_eq!(dense[2].0.dims(), [4, 3]);
        assert_eq!(DenseWeight.channel_dims(&[8, 4]), (4, 8));
        assert_eq!(ConvWeight.channel_dims(&[3, 2, 3, 3]), (3, 18));
    }
}
