//! LeNet-style CNN (LeCun et al. 1998): blocks of `Conv(k×k, same padding) → ReLU → MaxPool 2×2`,
//! then dense hidden layers with ReLU and dropout, then a linear output.
//! Parameters `conv{i}.weight` `[c_out, c_in, k, k]`, `conv{i}.bias`, then `fc{j}.*`.

use super::{dropout, mlp, Mode, Model, ModelSpec};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Spatial size after the conv blocks, and the flattened feature count.
pub fn conv_output(spec: &ModelSpec) -> Result<(usize, usize, usize)> {
    let (c, mut h, mut w) = match spec.input_shape.as_slice() {
        [c, h, w] => (*c, *h, *w),
        s => {
            return Err(Error::Input(format!(
                "a CNN needs image inputs [channels, height, width]; the data have shape {s:?}"
            )))
        }
    };
    let mut ch = c;
    for (i, &co) in spec.arch.channels.iter().enumerate() {
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
pub fn param_shapes(spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>> {
    let (ch, h, w) = conv_output(spec)?;
    let k = spec.arch.kernel;
    let mut out = Vec::new();
    let mut c_in = spec.input_shape[0];
    for (i, &c_out) in spec.arch.channels.iter().enumerate() {
        out.push((format!("conv{i}.weight"), vec![c_out, c_in, k, k]));
        out.push((format!("conv{i}.bias"), vec![c_out]));
        c_in = c_out;
    }
    out.extend(mlp::dense_shapes(
        ch * h * w,
        &spec.arch.hidden,
        spec.outputs,
        "fc",
    ));
    Ok(out)
}

/// Forward pass; with `capture = Some(l)` also returns dense hidden layer `l`'s activations.
pub fn forward(
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
    let mut t = dropout(x, spec.arch.input_dropout, &mut mode)?.reshape((b, c, h, w))?;
    let pad = spec.arch.kernel / 2;
    let blocks = spec.arch.channels.len();
    for i in 0..blocks {
        let wt = model.params[2 * i].1.as_tensor();
        let bias = model.params[2 * i + 1].1.as_tensor();
        t = t.conv2d(wt, pad, 1, 1, 1)?;
        t = t.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)?;
        t = t.relu()?.max_pool2d(2)?;
    }
    let t = t.flatten_from(1)?;
    mlp::dense_forward(model, t, 2 * blocks, mode, capture)
}
