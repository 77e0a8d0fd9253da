//! Multi-layer perceptron: `Linear → ReLU → Dropout` per hidden layer, then a linear output.
//! Weights are `[in, out]` (the transpose of PyTorch's `Linear.weight`); parameters
//! `fc{i}.weight`, `fc{i}.bias`.

use super::{dropout, linear, Mode, Model, ModelSpec};
use crate::error::Result;
use candle_core::Tensor;

/// Parameter names and shapes.
pub fn param_shapes(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    dense_shapes(spec.input_dim(), &spec.arch.hidden, spec.outputs, "fc")
}

/// Shapes of a stack of dense layers `input → hidden… → outputs`.
pub(crate) fn dense_shapes(
    input: usize,
    hidden: &[usize],
    outputs: usize,
    prefix: &str,
) -> Vec<(String, Vec<usize>)> {
    let mut dims = vec![input];
    dims.extend_from_slice(hidden);
    dims.push(outputs);
    let mut out = Vec::new();
    for (i, w) in dims.windows(2).enumerate() {
        out.push((format!("{prefix}{i}.weight"), vec![w[0], w[1]]));
        out.push((format!("{prefix}{i}.bias"), vec![w[1]]));
    }
    out
}

/// Forward pass of the dense stack whose parameters start at `first` in `model.params`.
/// With `capture = Some(l)` also returns hidden layer `l`'s activations (after ReLU, before
/// dropout).
pub(crate) fn dense_forward(
    model: &Model,
    mut h: Tensor,
    first: usize,
    mut mode: Mode,
    capture: Option<usize>,
) -> Result<(Tensor, Option<Tensor>)> {
    let layers = (model.params.len() - first) / 2;
    let p = model.spec.arch.dropout;
    let mut captured = None;
    for l in 0..layers {
        let w = model.params[first + 2 * l].1.as_tensor();
        let b = model.params[first + 2 * l + 1].1.as_tensor();
        h = linear(&h, w, b)?;
        if l + 1 < layers {
            h = h.relu()?;
            if capture == Some(l) {
                captured = Some(h.clone());
            }
            h = dropout(&h, p, &mut mode)?;
        }
    }
    Ok((h, captured))
}

/// Forward pass; with `capture = Some(l)` also returns hidden layer `l`'s activations.
pub fn forward(
    model: &Model,
    x: &Tensor,
    mut mode: Mode,
    capture: Option<usize>,
) -> Result<(Tensor, Option<Tensor>)> {
    super::ensure_f32(x)?;
    let h = dropout(x, model.spec.arch.input_dropout, &mut mode)?;
    dense_forward(model, h, 0, mode, capture)
}
