//! 1-D CNN for sequences and signals: blocks of `Conv1d(k, same padding, stride s) → ReLU →
//! MaxPool(p)`, then dense hidden layers with ReLU and dropout, then a linear output — the
//! shape of the CNN in MNIST-1D (Greydanus 2020, "Scaling down deep learning", which reaches
//! 94% where an MLP reaches 68%). A feature row of length `L` is one channel of `L` steps.
//! Parameters `conv{i}.weight` `[c_out, c_in, k]`, `conv{i}.bias`, then `fc{j}.*`.

use super::graph::{Graph, Node, Value};
use super::{dropout, mlp, Family, Head, Input, Mode, Model, ModelSpec, ParamKind, Supports};
use crate::error::{bad_field, Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// `kind = "conv1d"`: the settings of a 1-D CNN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1dArch {
    /// Output channels of each conv block.
    #[serde(default)]
    pub channels: Vec<usize>,
    /// Kernel length (odd; "same" padding).
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// Stride of each convolution (default 1).
    #[serde(default = "one")]
    pub stride: usize,
    /// Max-pooling window (and stride) after each block; 1 for none (default 2).
    #[serde(default = "two")]
    pub pool: usize,
    /// Widths of the hidden dense layers after the conv blocks.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Dropout probability after each hidden dense layer during training.
    #[serde(default)]
    pub dropout: f32,
    /// Dropout probability on the input during training.
    #[serde(default)]
    pub input_dropout: f32,
}

fn default_kernel() -> usize {
    5
}

fn one() -> usize {
    1
}

fn two() -> usize {
    2
}

impl Conv1dArch {
    /// `(channels, length)` of a sample.
    fn input(spec: &ModelSpec) -> Result<(usize, usize)> {
        match spec.input_shape.as_slice() {
            [l] => Ok((1, *l)),
            [c, l] => Ok((*c, *l)),
            s => Err(Error::Input(format!(
                "a 1-D CNN reads feature rows (one channel) or [channels, length] samples; the data have shape {s:?}"
            ))),
        }
    }

    /// The length after each block, checked to stay ≥ 1.
    fn lengths(&self, spec: &ModelSpec) -> Result<Vec<usize>> {
        let (_, mut l) = Self::input(spec)?;
        let mut out = Vec::with_capacity(self.channels.len());
        for i in 0..self.channels.len() {
            // "Same" padding: ⌈l / stride⌉ positions, then ⌊· / pool⌋.
            let conv = l.div_ceil(self.stride);
            let pooled = conv / self.pool;
            if pooled == 0 {
                return Err(Error::Input(format!(
                    "arch.channels: conv block {i} would shrink a sequence of {l} steps to nothing (stride {}, pool {}); use fewer blocks for sequences of {}",
                    self.stride,
                    self.pool,
                    Self::input(spec)?.1
                )));
            }
            l = pooled;
            out.push(l);
        }
        Ok(out)
    }
}

impl Family for Conv1dArch {
    fn kind(&self) -> &'static str {
        "conv1d"
    }

    fn check(&self, p: &str, input: Input) -> Result<()> {
        if input != Input::Features {
            bad_field(
                &format!("{p}.kind"),
                "a 1-D CNN reads each feature row as a sequence (CSV or arrays, not images or text)",
            )?;
        }
        if self.channels.is_empty() || self.channels.contains(&0) {
            bad_field(
                &format!("{p}.channels"),
                &format!(
                    "a 1-D CNN needs at least one conv block with ≥ 1 channels, got {:?}",
                    self.channels
                ),
            )?;
        }
        if self.kernel == 0 || self.kernel.is_multiple_of(2) {
            bad_field(
                &format!("{p}.kernel"),
                &format!("expected an odd kernel length ≥ 1, got {}", self.kernel),
            )?;
        }
        for (f, v) in [("stride", self.stride), ("pool", self.pool)] {
            if v == 0 {
                bad_field(&format!("{p}.{f}"), "expected at least 1, got 0")?;
            }
        }
        Ok(())
    }

    fn param_shapes(&self, spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>> {
        let (mut c_in, _) = Self::input(spec)?;
        let last = *self.lengths(spec)?.last().unwrap_or(&0);
        let mut out = Vec::new();
        for (i, &c_out) in self.channels.iter().enumerate() {
            out.push((format!("conv{i}.weight"), vec![c_out, c_in, self.kernel]));
            out.push((format!("conv{i}.bias"), vec![c_out]));
            c_in = c_out;
        }
        out.extend(mlp::dense_shapes(
            c_in * last,
            &self.hidden,
            spec.outputs,
            "fc",
        ));
        Ok(out)
    }

    fn param_kinds(&self, _spec: &ModelSpec) -> Vec<ParamKind> {
        let mut kinds: Vec<ParamKind> = (0..self.channels.len())
            .flat_map(|_| [ParamKind::ConvWeight, ParamKind::Bias])
            .collect();
        kinds.extend(mlp::dense_kinds(self.hidden.len()));
        kinds
    }

    fn describe(&self, spec: &ModelSpec) -> String {
        format!(
            "conv1d {} k{}{}{} [{}] fc [{}] → {}",
            super::dims(&spec.input_shape),
            self.kernel,
            if self.stride > 1 {
                format!(" stride {}", self.stride)
            } else {
                String::new()
            },
            if self.pool > 1 {
                format!(" pool {}", self.pool)
            } else {
                String::new()
            },
            super::dims(&self.channels),
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
        let (c, l) = Self::input(&model.spec)?;
        let b = x.dim(0)?;
        let train = matches!(mode, Mode::Train(_));
        let mut t = dropout(x, self.input_dropout, &mut mode)?.reshape((b, c, l))?;
        let pad = self.kernel / 2;
        for i in 0..self.channels.len() {
            let w = model.params[2 * i].1.as_tensor();
            let bias = model.params[2 * i + 1].1.as_tensor();
            t = super::ops::conv1d(&t, w, pad, self.stride, train)?;
            t = t
                .broadcast_add(&bias.reshape((1, bias.dim(0)?, 1))?)?
                .relu()?;
            if self.pool > 1 {
                let (b, c, l) = t.dims3()?;
                t = super::ops::max_pool2d(&t.reshape((b, c, 1, l))?, 1, self.pool)?;
                let l = t.dim(3)?;
                t = t.reshape((b, c, l))?;
            }
        }
        let t = t.flatten_from(1)?;
        mlp::dense_forward(
            model,
            t,
            2 * self.channels.len(),
            self.dropout,
            mode,
            capture,
        )
    }

    fn fused(&self, _spec: &ModelSpec) -> Option<super::fused::Plan> {
        None
    }

    fn predict_rows(&self, model: &Model, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        model.predict_tensor(x, rows)
    }

    fn graph(&self, model: &Model) -> Result<Graph> {
        let (c, l) = Self::input(&model.spec)?;
        let mut g = Graph::default();
        g.nodes.push(Node::Reshape(vec![c, l]));
        for i in 0..self.channels.len() {
            g.nodes.push(Node::Conv {
                weight: Value::Param(2 * i),
                bias: Value::Param(2 * i + 1),
                kernel: vec![self.kernel],
                stride: self.stride,
                pad: self.kernel / 2,
            });
            g.nodes.push(Node::Relu);
            if self.pool > 1 {
                g.nodes.push(Node::MaxPool(vec![self.pool]));
            }
        }
        g.nodes.push(Node::Flatten);
        g.dense_stack(2 * self.channels.len(), self.hidden.len() + 1);
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
