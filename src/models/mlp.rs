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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelSpec;
    use crate::models::{ArchConfig, ArchKind};
    use crate::rng::Rng;
    use candle_core::Device;

    #[test]
    fn fused_inference_matches_the_tensor_forward() {
        let spec = ModelSpec {
            arch: ArchConfig {
                kind: ArchKind::Mlp,
                hidden: vec![300, 70],
                dropout: 0.5,
                input_dropout: 0.2,
                channels: vec![],
                kernel: 5,
                dim: 0,
                vocab: 0,
                ..Default::default()
            },
            input_shape: vec![50],
            outputs: 7,
        };
        let m = Model::new(spec, &mut Rng::new(9)).unwrap();
        let mut rng = Rng::new(10);
        for rows in [1usize, 3, 64, 301] {
            assert_fused_matches(&m, rows, &mut rng, "mlp");
        }
    }

    /// The fused forward of `rows` random samples against [`Model::forward`] in eval mode, to
    /// 1e-5 of the largest output (at least 1).
    fn assert_fused_matches(m: &Model, rows: usize, rng: &mut Rng, what: &str) {
        let d: usize = m.spec.input_shape.iter().product();
        let x: Vec<f32> = (0..rows * d)
            .map(|_| rng.uniform_range(-2.0, 2.0))
            .collect();
        let t = Tensor::from_slice(&x, (rows, d), &Device::Cpu).unwrap();
        let want = m
            .forward(&t, Mode::Eval)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got = crate::models::fused::forward_eval(m, &x, rows).unwrap();
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1f32, |a, &b| a.max(b.abs()));
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-5 * scale,
                "{what}, rows {rows}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn fused_cnn_inference_matches_the_tensor_forward() {
        // Odd sizes (floor pooling), two blocks, 3×3 and 5×5 kernels, several channels in.
        for (shape, channels, kernel) in [
            (vec![1usize, 28, 28], vec![6usize, 16], 5usize),
            (vec![3, 9, 11], vec![4, 5], 3),
        ] {
            let spec = ModelSpec {
                arch: ArchConfig {
                    kind: ArchKind::Cnn,
                    hidden: vec![20],
                    dropout: 0.5,
                    input_dropout: 0.1,
                    channels,
                    kernel,
                    dim: 0,
                    vocab: 0,
                    ..Default::default()
                },
                input_shape: shape.clone(),
                outputs: 4,
            };
            let m = Model::new(spec, &mut Rng::new(2)).unwrap();
            assert!(crate::models::fused::eligible(&m));
            assert!(crate::models::fused::forward_eval(&m, &[], 0)
                .unwrap()
                .is_empty());
            let mut rng = Rng::new(3);
            for rows in [1usize, 5, 37] {
                assert_fused_matches(&m, rows, &mut rng, &format!("{shape:?}"));
            }
        }
    }
}
