//! LeNet-style CNN (LeCun et al. 1998): blocks of `Conv(k×k, same padding) → ReLU → MaxPool 2×2`,
//! then dense hidden layers with ReLU and dropout, then a linear output.
//! Parameters `conv{i}.weight` `[c_out, c_in, k, k]`, `conv{i}.bias`, then `fc{j}.*`.

use super::graph::{Graph, Node, Value};
use super::{dropout, mlp, Family, Head, Input, Mode, Model, ModelSpec, ParamKind, Supports};
use crate::error::{bad_field, Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// `kind = "cnn"`: the settings of a LeNet-style CNN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnArch {
    /// Output channels of each conv + ReLU + 2×2 max-pool block.
    #[serde(default)]
    pub channels: Vec<usize>,
    /// Square kernel size (odd; "same" padding).
    #[serde(default = "default_kernel")]
    pub kernel: usize,
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

impl Family for CnnArch {
    fn kind(&self) -> &'static str {
        "cnn"
    }

    fn check(&self, p: &str, input: Input) -> Result<()> {
        if input != Input::Images {
            bad_field(
                &format!("{p}.kind"),
                "a CNN needs image data (IDX images, the digits, or CSV with data.image_shape)",
            )?;
        }
        if self.channels.is_empty() || self.channels.contains(&0) {
            bad_field(
                &format!("{p}.channels"),
                &format!(
                    "a CNN needs at least one conv block with ≥ 1 channels, got {:?}",
                    self.channels
                ),
            )?;
        }
        if self.kernel == 0 || self.kernel.is_multiple_of(2) {
            bad_field(
                &format!("{p}.kernel"),
                &format!("expected an odd kernel size ≥ 1, got {}", self.kernel),
            )?;
        }
        Ok(())
    }

    fn param_shapes(&self, spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>> {
        param_shapes(self, spec)
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
            "cnn {} conv{}x{} [{}] fc [{}] → {}",
            super::dims(&spec.input_shape),
            self.kernel,
            self.kernel,
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
        mode: Mode,
        capture: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        forward(self, model, x, mode, capture)
    }

    fn fused(&self, spec: &ModelSpec) -> Option<super::fused::Plan> {
        (self.kernel % 2 == 1 && spec.input_shape.len() == 3).then(|| super::fused::Plan {
            input_dropout: self.input_dropout,
            dropout: self.dropout,
            conv: Some(super::fused::ConvPlan {
                kernel: self.kernel,
                channels: self.channels.clone(),
            }),
        })
    }

    fn predict_rows(&self, model: &Model, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        if self.fused(&model.spec).is_some() {
            super::fused::forward_eval(model, x, rows)
        } else {
            model.predict_tensor(x, rows)
        }
    }

    fn graph(&self, model: &Model) -> Result<Graph> {
        let spec = &model.spec;
        conv_output(self, spec)?;
        let k = self.kernel;
        let mut g = Graph::default();
        g.nodes.push(Node::Reshape(spec.input_shape.clone()));
        for i in 0..self.channels.len() {
            g.nodes.push(Node::Conv {
                weight: Value::Param(2 * i),
                bias: Value::Param(2 * i + 1),
                kernel: vec![k, k],
                stride: 1,
                pad: k / 2,
            });
            g.nodes.push(Node::Relu);
            g.nodes.push(Node::MaxPool(vec![2, 2]));
        }
        g.nodes.push(Node::Flatten);
        g.dense_stack(2 * self.channels.len(), self.hidden.len() + 1);
        Ok(g)
    }

    fn supports(&self) -> Supports {
        Supports {
            prune: true,
            int8: false,
            weight_formats: true,
            split: false,
        }
    }

    fn tree_settings(&self) -> Option<super::boost::TreeSettings> {
        None
    }

    fn resized(&self, channels: &[usize], hidden: &[usize]) -> Option<super::Arch> {
        Some(super::Arch::Cnn(CnnArch {
            channels: channels.to_vec(),
            hidden: hidden.to_vec(),
            ..self.clone()
        }))
    }
}

/// Spatial size after the conv blocks, and the flattened feature count.
pub fn conv_output(arch: &CnnArch, spec: &ModelSpec) -> Result<(usize, usize, usize)> {
    let (c, mut h, mut w) = match spec.input_shape.as_slice() {
        [c, h, w] => (*c, *h, *w),
        s => {
            return Err(Error::Input(format!(
                "a CNN needs image inputs [channels, height, width]; the data have shape {s:?}"
            )))
        }
    };
    let mut ch = c;
    for (i, &co) in arch.channels.iter().enumerate() {
        if h < 2 || w < 2 {
            return Err(Error::Input(format!(
                "arch.channels: conv block {i} would pool a {h}×{w} feature map below 1×1; use fewer blocks for {}×{} inputs",
                spec.input_shape[1], spec.input_shape[2]
            )));
        }
        h /= 2;
        w /= 2;
        ch = co;
    }
    Ok((ch, h, w))
}

/// Parameter names and shapes.
fn param_shapes(arch: &CnnArch, spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>> {
    let (ch, h, w) = conv_output(arch, spec)?;
    let k = arch.kernel;
    let mut out = Vec::new();
    let mut c_in = spec.input_shape[0];
    for (i, &c_out) in arch.channels.iter().enumerate() {
        out.push((format!("conv{i}.weight"), vec![c_out, c_in, k, k]));
        out.push((format!("conv{i}.bias"), vec![c_out]));
        c_in = c_out;
    }
    out.extend(mlp::dense_shapes(
        ch * h * w,
        &arch.hidden,
        spec.outputs,
        "fc",
    ));
    Ok(out)
}

/// Forward pass; with `capture = Some(l)` also returns dense hidden layer `l`'s activations.
fn forward(
    arch: &CnnArch,
    model: &Model,
    x: &Tensor,
    mut mode: Mode,
    capture: Option<usize>,
) -> Result<(Tensor, Option<Tensor>)> {
    super::ensure_f32(x)?;
    let spec = &model.spec;
    let b = x.dim(0)?;
    let (c, h, w) = (
        spec.input_shape[0],
        spec.input_shape[1],
        spec.input_shape[2],
    );
    let mut t = dropout(x, arch.input_dropout, &mut mode)?.reshape((b, c, h, w))?;
    let pad = arch.kernel / 2;
    let blocks = arch.channels.len();
    for i in 0..blocks {
        let wt = model.params[2 * i].1.as_tensor();
        let bias = model.params[2 * i + 1].1.as_tensor();
        t = t.conv2d(wt, pad, 1, 1, 1)?;
        t = t.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)?;
        t = super::ops::max_pool2d(&t.relu()?, 2, 2)?;
    }
    let t = t.flatten_from(1)?;
    mlp::dense_forward(model, t, 2 * blocks, arch.dropout, mode, capture)
}
