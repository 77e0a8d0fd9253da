//! Multi-layer perceptron: `Linear → ReLU → Dropout` per hidden layer, then a linear output.
//! Weights are `[in, out]` (the transpose of PyTorch's `Linear.weight`); parameters
//! `fc{i}.weight`, `fc{i}.bias`.

use super::graph::Graph;
use super::{dropout, linear, Family, Head, Input, Mode, Model, ModelSpec, ParamKind, Supports};
use crate::error::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// `kind = "mlp"`: the settings of a multi-layer perceptron.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpArch {
    /// Widths of the hidden dense layers.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Dropout probability after each hidden layer during training.
    #[serde(default)]
    pub dropout: f32,
    /// Dropout probability on the input during training.
    #[serde(default)]
    pub input_dropout: f32,
}

impl Family for MlpArch {
    fn kind(&self) -> &'static str {
        "mlp"
    }

    fn check(&self, _p: &str, _input: Input) -> Result<()> {
        // Widths, dropout and text data: `Arch::check`, for every family with a head.
        Ok(())
    }

    fn param_shapes(&self, spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>> {
        Ok(dense_shapes(
            spec.input_dim(),
            &self.hidden,
            spec.outputs,
            "fc",
        ))
    }

    fn param_kinds(&self, _spec: &ModelSpec) -> Vec<ParamKind> {
        dense_kinds(self.hidden.len())
    }

    fn describe(&self, spec: &ModelSpec) -> String {
        let mut all = vec![spec.input_dim()];
        all.extend(&self.hidden);
        all.push(spec.outputs);
        format!("mlp {}", super::dims(&all))
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
        let h = dropout(x, self.input_dropout, &mut mode)?;
        dense_forward(model, h, 0, self.dropout, mode, capture)
    }

    fn fused(&self, _spec: &ModelSpec) -> Option<super::fused::Plan> {
        Some(super::fused::Plan {
            input_dropout: self.input_dropout,
            dropout: self.dropout,
            conv: None,
        })
    }

    fn predict_rows(&self, model: &Model, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        super::fused::forward_eval(model, x, rows)
    }

    fn graph(&self, _model: &Model) -> Result<Graph> {
        let mut g = Graph::default();
        g.dense_stack(0, self.hidden.len() + 1);
        Ok(g)
    }

    fn supports(&self) -> Supports {
        Supports {
            prune: true,
            int8: true,
            weight_formats: true,
            split: true,
        }
    }

    fn tree_settings(&self) -> Option<super::boost::TreeSettings> {
        None
    }

    fn resized(&self, _channels: &[usize], hidden: &[usize]) -> Option<super::Arch> {
        Some(super::Arch::Mlp(MlpArch {
            hidden: hidden.to_vec(),
            ..self.clone()
        }))
    }
}

/// Kinds of a dense stack with `hidden` hidden layers: weight and bias per layer.
pub(crate) fn dense_kinds(hidden: usize) -> Vec<ParamKind> {
    (0..=hidden)
        .flat_map(|_| [ParamKind::DenseWeight, ParamKind::Bias])
        .collect()
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
    p: f32,
    mut mode: Mode,
    capture: Option<usize>,
) -> Result<(Tensor, Option<Tensor>)> {
    let layers = (model.params.len() - first) / 2;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Arch, ModelSpec};
    use crate::rng::Rng;
    use candle_core::Device;

    #[test]
    fn fused_inference_matches_the_tensor_forward() {
        let spec = ModelSpec {
            arch: Arch::Mlp(MlpArch {
                hidden: vec![300, 70],
                dropout: 0.5,
                input_dropout: 0.2,
            }),
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
                arch: Arch::Cnn(crate::models::cnn::CnnArch {
                    hidden: vec![20],
                    dropout: 0.5,
                    input_dropout: 0.1,
                    channels,
                    kernel,
                }),
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
