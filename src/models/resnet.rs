//! Residual CNN with batch normalisation (He et al. 2016, "Deep residual learning", the CIFAR
//! form): a 3×3 stem, then stages of basic blocks — `conv3×3 → BN → ReLU → conv3×3 → BN`,
//! plus the block's input (through a strided 1×1 conv and BN where the width or size
//! changes), then ReLU — each stage after the first halving the size; global average pooling,
//! then dense layers. Batch normalisation (Ioffe & Szegedy 2015) normalises with the batch's
//! statistics in training and keeps running ones (momentum 0.1, ε 1e-5, as PyTorch) for
//! inference, where export folds it into the convolution before it.
//!
//! Parameters, per conv + BN unit `u`: `u.conv.weight` `[c_out, c_in, k, k]` (no bias),
//! `u.bn.weight` (γ), `u.bn.bias` (β), `u.bn.running_mean`, `u.bn.running_var`; then `fc{j}.*`.

use super::graph::{Graph, Node, Value};
use super::{dropout, mlp, Family, Head, Input, Mode, Model, ModelSpec, ParamKind, Supports};
use crate::error::{bad_field, Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Batch normalisation's ε, added to the variance (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// Weight of the newest batch in the running statistics (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;
/// Parameters of one conv + BN unit.
const UNIT: usize = 5;

/// `kind = "resnet"`: the settings of a residual CNN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResnetArch {
    /// Width of each stage (the stem has the first); each stage after the first halves the
    /// image's height and width.
    #[serde(default = "default_channels")]
    pub channels: Vec<usize>,
    /// Residual blocks per stage (two 3×3 convolutions each).
    #[serde(default = "one")]
    pub blocks: usize,
    /// Widths of the hidden dense layers after the pooling.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Dropout probability after each hidden dense layer during training.
    #[serde(default)]
    pub dropout: f32,
    /// Dropout probability on the input during training.
    #[serde(default)]
    pub input_dropout: f32,
}

fn default_channels() -> Vec<usize> {
    vec![16, 32, 64]
}

fn one() -> usize {
    1
}

/// One convolution with its batch normalisation.
#[derive(Debug, Clone, Copy)]
struct Unit {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    /// Index of its conv weight in the parameters.
    first: usize,
}

/// One basic block: two units, and a projection of the input when the shape changes.
#[derive(Debug, Clone, Copy)]
struct Block {
    conv1: Unit,
    conv2: Unit,
    projection: Option<Unit>,
}

/// The network's layout: the stem, the blocks, and where the dense layers start.
struct Layout {
    stem: Unit,
    blocks: Vec<(String, Block)>,
    dense_first: usize,
    width: usize,
}

impl ResnetArch {
    fn layout(&self, spec: &ModelSpec) -> Result<Layout> {
        let c = match spec.input_shape.as_slice() {
            [c, _, _] => *c,
            s => {
                return Err(Error::Input(format!(
                    "a residual CNN needs image inputs [channels, height, width]; the data have shape {s:?}"
                )))
            }
        };
        let mut next = 0usize;
        let mut unit = |c_in: usize, c_out: usize, kernel: usize, stride: usize| {
            let u = Unit {
                c_in,
                c_out,
                kernel,
                stride,
                first: next,
            };
            next += UNIT;
            u
        };
        let width0 = self.channels.first().copied().unwrap_or(1);
        let stem = unit(c, width0, 3, 1);
        let mut blocks = Vec::new();
        let mut c_in = width0;
        for (s, &w) in self.channels.iter().enumerate() {
            for b in 0..self.blocks {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let conv1 = unit(c_in, w, 3, stride);
                let conv2 = unit(w, w, 3, 1);
                let projection = (stride != 1 || c_in != w).then(|| unit(c_in, w, 1, stride));
                blocks.push((
                    format!("s{s}b{b}"),
                    Block {
                        conv1,
                        conv2,
                        projection,
                    },
                ));
                c_in = w;
            }
        }
        Ok(Layout {
            stem,
            blocks,
            dense_first: next,
            width: c_in,
        })
    }

    /// Conv + BN (+ nothing else) in the tensor pass; in training, normalises with the batch's
    /// statistics and updates the running ones.
    fn unit_forward(model: &Model, u: Unit, x: &Tensor, train: bool) -> Result<Tensor> {
        let p = |i: usize| model.params[u.first + i].1.as_tensor();
        let y = super::ops::conv2d(x, p(0), u.kernel / 2, u.stride)?;
        let shape = (1, u.c_out, 1, 1);
        if train {
            let (out, mean, var) = super::ops::batch_norm_train(&y, p(1), p(2), BN_EPS)?;
            let n = y.elem_count() / u.c_out;
            let unbiased = n as f32 / (n.max(2) - 1) as f32;
            let keep = |i: usize, batch: &[f32], scale: f32| -> Result<()> {
                let var = &model.params[u.first + i].1;
                let old = var.as_tensor().to_vec1::<f32>()?;
                let m = BN_MOMENTUM as f32;
                let new: Vec<f32> = old
                    .iter()
                    .zip(batch)
                    .map(|(&o, &b)| o * (1.0 - m) + b * scale * m)
                    .collect();
                var.set(&Tensor::from_vec(new, u.c_out, y.device())?)?;
                Ok(())
            };
            keep(3, &mean, 1.0)?;
            keep(4, &var, unbiased)?;
            return Ok(out);
        }
        let (mean, var) = (p(3).reshape(shape)?, p(4).reshape(shape)?);
        let inv = (var + BN_EPS)?.sqrt()?.recip()?;
        let scale = p(1).reshape(shape)?.broadcast_mul(&inv)?;
        Ok(y.broadcast_sub(&mean)?
            .broadcast_mul(&scale)?
            .broadcast_add(&p(2).reshape(shape)?)?)
    }

    /// The unit's eval-mode convolution with its normalisation folded in: weight and bias.
    fn folded(model: &Model, u: Unit) -> Result<(Value, Value)> {
        let v = |i: usize| -> Result<Vec<f32>> {
            Ok(model.params[u.first + i]
                .1
                .as_tensor()
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let (w, gamma, beta, mean, var) = (v(0)?, v(1)?, v(2)?, v(3)?, v(4)?);
        let per = w.len() / u.c_out;
        let mut wf = w;
        let mut bf = vec![0f32; u.c_out];
        for o in 0..u.c_out {
            let s = gamma[o] / (var[o] as f64 + BN_EPS).sqrt() as f32;
            wf[o * per..(o + 1) * per].iter_mut().for_each(|x| *x *= s);
            bf[o] = beta[o] - mean[o] * s;
        }
        Ok((
            Value::Owned {
                shape: vec![u.c_out, u.c_in, u.kernel, u.kernel],
                data: wf,
            },
            Value::Owned {
                shape: vec![u.c_out],
                data: bf,
            },
        ))
    }

    fn conv_node(model: &Model, u: Unit) -> Result<Node> {
        let (weight, bias) = Self::folded(model, u)?;
        Ok(Node::Conv {
            weight,
            bias,
            kernel: vec![u.kernel, u.kernel],
            stride: u.stride,
            pad: u.kernel / 2,
        })
    }
}

impl Family for ResnetArch {
    fn kind(&self) -> &'static str {
        "resnet"
    }

    fn check(&self, p: &str, input: Input) -> Result<()> {
        if input != Input::Images {
            bad_field(
                &format!("{p}.kind"),
                "a residual CNN needs image data (IDX images, the digits, or CSV with data.image_shape)",
            )?;
        }
        if self.channels.is_empty() || self.channels.contains(&0) {
            bad_field(
                &format!("{p}.channels"),
                &format!(
                    "expected the width of at least one stage, all ≥ 1, got {:?}",
                    self.channels
                ),
            )?;
        }
        if self.blocks == 0 {
            bad_field(&format!("{p}.blocks"), "expected at least 1, got 0")?;
        }
        Ok(())
    }

    fn param_shapes(&self, spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>> {
        let l = self.layout(spec)?;
        let mut out = Vec::new();
        let mut unit = |name: &str, u: Unit| {
            out.push((
                format!("{name}.conv.weight"),
                vec![u.c_out, u.c_in, u.kernel, u.kernel],
            ));
            for t in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{name}.bn.{t}"), vec![u.c_out]));
            }
        };
        unit("stem", l.stem);
        for (name, b) in &l.blocks {
            unit(&format!("{name}.conv1"), b.conv1);
            unit(&format!("{name}.conv2"), b.conv2);
            if let Some(pr) = b.projection {
                unit(&format!("{name}.shortcut"), pr);
            }
        }
        out.extend(mlp::dense_shapes(l.width, &self.hidden, spec.outputs, "fc"));
        Ok(out)
    }

    fn param_kinds(&self, spec: &ModelSpec) -> Vec<ParamKind> {
        let units = self.layout(spec).map_or(0, |l| l.dense_first / UNIT);
        let mut kinds: Vec<ParamKind> = (0..units)
            .flat_map(|_| {
                [
                    ParamKind::ConvWeight,
                    ParamKind::NormScale,
                    ParamKind::Bias,
                    ParamKind::RunningMean,
                    ParamKind::RunningVar,
                ]
            })
            .collect();
        kinds.extend(mlp::dense_kinds(self.hidden.len()));
        kinds
    }

    fn describe(&self, spec: &ModelSpec) -> String {
        format!(
            "resnet {} stages [{}] × {} block{} fc [{}] → {}",
            super::dims(&spec.input_shape),
            super::dims(&self.channels),
            self.blocks,
            if self.blocks == 1 { "" } else { "s" },
            super::dims(&self.hidden),
            spec.outputs
        )
    }

    fn head(&self) -> Option<Head<'_>> {
        Some(Head {
            hidden: &self.hidden,
            dropout: self.dropout,
            input_dropout: self.input_dropout,
        })
    }

    fn forward(
        &self,
        model: &Model,
        x: &Tensor,
        mut mode: Mode,
        capture: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        super::ensure_f32(x)?;
        let l = self.layout(&model.spec)?;
        let train = matches!(mode, Mode::Train(_));
        let (c, h, w) = match model.spec.input_shape.as_slice() {
            [c, h, w] => (*c, *h, *w),
            _ => unreachable_shape()?,
        };
        let b = x.dim(0)?;
        let t = dropout(x, self.input_dropout, &mut mode)?.reshape((b, c, h, w))?;
        let mut t = Self::unit_forward(model, l.stem, &t, train)?.relu()?;
        for (_, blk) in &l.blocks {
            let y = Self::unit_forward(model, blk.conv1, &t, train)?.relu()?;
            let y = Self::unit_forward(model, blk.conv2, &y, train)?;
            let skip = match blk.projection {
                Some(pr) => Self::unit_forward(model, pr, &t, train)?,
                None => t,
            };
            t = (y + skip)?.relu()?;
        }
        let t = t.mean((2, 3))?;
        mlp::dense_forward(model, t, l.dense_first, self.dropout, mode, capture)
    }

    fn fused(&self, _spec: &ModelSpec) -> Option<super::fused::Plan> {
        None
    }

    fn predict_rows(&self, model: &Model, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        model.predict_tensor(x, rows)
    }

    fn graph(&self, model: &Model) -> Result<Graph> {
        let l = self.layout(&model.spec)?;
        let mut g = Graph::default();
        g.nodes.push(Node::Reshape(model.spec.input_shape.clone()));
        g.nodes.push(Self::conv_node(model, l.stem)?);
        g.nodes.push(Node::Relu);
        for (_, blk) in &l.blocks {
            g.nodes.push(Node::Save(0));
            g.nodes.push(Self::conv_node(model, blk.conv1)?);
            g.nodes.push(Node::Relu);
            g.nodes.push(Self::conv_node(model, blk.conv2)?);
            let projection = match blk.projection {
                Some(pr) => Some(Box::new(Self::conv_node(model, pr)?)),
                None => None,
            };
            g.nodes.push(Node::AddSaved {
                slot: 0,
                projection,
            });
            g.nodes.push(Node::Relu);
        }
        g.nodes.push(Node::GlobalAvgPool);
        g.dense_stack(l.dense_first, self.hidden.len() + 1);
        Ok(g)
    }

    fn supports(&self) -> Supports {
        Supports {
            prune: false,
            int8: false,
            weight_formats: false,
            split: false,
        }
    }

    fn tree_settings(&self) -> Option<super::boost::TreeSettings> {
        None
    }

    fn resized(&self, _channels: &[usize], _hidden: &[usize]) -> Option<super::Arch> {
        None
    }
}

fn unreachable_shape<T>() -> Result<T> {
    Err(Error::Input(
        "a residual CNN needs image inputs [channels, height, width]".into(),
    ))
}
