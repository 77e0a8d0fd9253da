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

/// Inference for an MLP without the tensor machinery: per layer one GEMM (the same `gemm`
/// crate candle uses, multi-threaded for large products) into a buffer pre-filled with the bias,
/// then ReLU in place. `x` holds `rows` samples; returns `rows * outputs` values. Same
/// arithmetic as [`forward`] in eval mode (outputs agree to float rounding).
pub fn forward_eval_fused(model: &Model, x: &[f32], rows: usize) -> Result<Vec<f32>> {
    let layers = model.params.len() / 2;
    let mut h: Vec<f32> = x.to_vec();
    let mut width = model.spec.input_dim();
    let threads = rayon::current_num_threads();
    for l in 0..layers {
        let w = model.params[2 * l].1.as_tensor();
        let b = model.params[2 * l + 1].1.as_tensor();
        let (k, n) = w.dims2()?;
        if k != width {
            return Err(crate::error::Error::Other(format!(
                "layer {l}: weight has {k} inputs, activations {width}"
            )));
        }
        let mut out = vec![0f32; rows * n];
        with_slice(b, |bias| {
            for row in out.chunks_exact_mut(n) {
                row.copy_from_slice(bias);
            }
        })?;
        // Small products run on the calling thread: dispatching to the pool costs more than
        // it saves below about a million multiply-adds.
        let par = if threads > 1 && rows * k * n >= 1 << 20 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        with_slice(w, |wv| {
            // SAFETY: `out` is rows×n, `h` rows×k, `wv` k×n, all row-major and contiguous; the
            // strides passed describe exactly those shapes.
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    true,
                    h.as_ptr(),
                    1,
                    k as isize,
                    wv.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            }
        })?;
        if l + 1 < layers {
            if out.len() >= 1 << 16 && threads > 1 {
                use rayon::prelude::*;
                out.par_chunks_mut(1 << 14)
                    .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
            } else {
                out.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        h = out;
        width = n;
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ArchConfig, ArchKind};
    use crate::models::ModelSpec;
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
            },
            input_shape: vec![50],
            outputs: 7,
        };
        let m = Model::new(spec, &mut Rng::new(9)).unwrap();
        let mut rng = Rng::new(10);
        for rows in [1usize, 3, 64, 301] {
            let x: Vec<f32> = (0..rows * 50)
                .map(|_| rng.uniform_range(-2.0, 2.0))
                .collect();
            let t = Tensor::from_slice(&x, (rows, 50), &Device::Cpu).unwrap();
            let want = forward(&m, &t, Mode::Eval, None)
                .unwrap()
                .0
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = forward_eval_fused(&m, &x, rows).unwrap();
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "rows {rows}: {a} vs {b}"
                );
            }
        }
    }
}
