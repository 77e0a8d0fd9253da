//! Embedding bag: the text students. Each input row holds a text's token ids (or hashed
//! n-gram ids) as f32, padded with -1; the model looks up each id's row of `embed.weight`
//! (`[vocab, dim]`), averages them over the text's ids, and runs the dense stack
//! `fc{i}` on the average (`dim → hidden… → outputs`), as Model2Vec (a static embedding,
//! mean-pooled) and fastText (an embedding bag of n-grams, then a linear classifier) do.

use super::{dropout, Mode, Model, ModelSpec};
use crate::error::Result;
use candle_core::{DType, Tensor, D};

/// Parameter names and shapes: the table, then the dense stack.
pub fn param_shapes(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![(
        "embed.weight".to_string(),
        vec![spec.arch.vocab, spec.arch.dim],
    )];
    out.extend(super::mlp::dense_shapes(
        spec.arch.dim,
        &spec.arch.hidden,
        spec.outputs,
        "fc",
    ));
    out
}

/// The mean of each row's embeddings: `[batch, width]` ids → `[batch, dim]`. Rows with no id
/// give zeros.
pub fn pool(model: &Model, x: &Tensor) -> Result<Tensor> {
    super::ensure_f32(x)?;
    let (b, w) = x.dims2()?;
    let table = model.params[0].1.as_tensor();
    let vocab = model.spec.arch.vocab;
    let mask = x.ge(0f64)?.to_dtype(DType::F32)?;
    let ids = x
        .clamp(0f32, (vocab.max(1) - 1) as f32)?
        .to_dtype(DType::U32)?
        .flatten_all()?;
    let e = table
        .index_select(&ids, 0)?
        .reshape((b, w, model.spec.arch.dim))?;
    let summed = e.broadcast_mul(&mask.unsqueeze(D::Minus1)?)?.sum(1)?;
    let count = mask.sum_keepdim(1)?.clamp(1f32, f32::MAX)?;
    Ok(summed.broadcast_div(&count)?)
}

/// Forward pass; `capture = Some(l)` also returns hidden layer `l`'s activations.
pub fn forward(
    model: &Model,
    x: &Tensor,
    mut mode: Mode,
    capture: Option<usize>,
) -> Result<(Tensor, Option<Tensor>)> {
    let h = pool(model, x)?;
    let h = dropout(&h, model.spec.arch.input_dropout, &mut mode)?;
    super::mlp::dense_forward(model, h, 1, mode, capture)
}

/// Inference without autograd for one batch of rows (`rows * width` ids): sums the table rows
/// of each text's ids directly, then runs the dense stack. Same numbers as [`forward`] up to
/// the order of the additions.
pub fn predict_rows(model: &Model, x: &[f32], rows: usize) -> Result<Vec<f32>> {
    let w = model.spec.input_dim();
    let dim = model.spec.arch.dim;
    let vocab = model.spec.arch.vocab;
    let mut pooled = vec![0f32; rows * dim];
    super::with_slice(model.params[0].1.as_tensor(), |table| {
        for (r, out) in pooled.chunks_exact_mut(dim).enumerate() {
            let mut n = 0usize;
            for &id in &x[r * w..(r + 1) * w] {
                if id < 0.0 {
                    continue;
                }
                let i = (id as usize).min(vocab - 1);
                for (o, &t) in out.iter_mut().zip(&table[i * dim..(i + 1) * dim]) {
                    *o += t;
                }
                n += 1;
            }
            if n > 0 {
                let inv = 1.0 / n as f32;
                out.iter_mut().for_each(|o| *o *= inv);
            }
        }
    })?;
    let h = Tensor::from_vec(pooled, (rows, dim), &candle_core::Device::Cpu)?;
    let (y, _) = super::mlp::dense_forward(model, h, 1, Mode::Eval, None)?;
    Ok(y.flatten_all()?.to_vec1::<f32>()?)
}
