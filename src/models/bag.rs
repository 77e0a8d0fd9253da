//! Embedding bag: the text students. Each input row holds a text's token ids (or hashed
//! n-gram ids) as f32, padded with -1; the model looks up each id's row of `embed.weight`
//! (`[vocab, dim]`), averages them over the text's ids, and runs the dense stack
//! `fc{i}` on the average (`dim → hidden… → outputs`), as Model2Vec (a static embedding,
//! mean-pooled) and fastText (an embedding bag of n-grams, then a linear classifier) do.

use super::graph::{Graph, Node, Value};
use super::{dropout, Family, Head, Input, Mode, Model, ModelSpec, ParamKind, Supports};
use crate::error::{bad_field, Result};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

/// `kind = "embedding-bag"`: the settings of a text student.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BagArch {
    /// Width of each token's embedding.
    #[serde(default)]
    pub dim: usize,
    /// Rows of the embedding table. Set from the data's featurizer (its vocabulary or hash
    /// buckets); not written in experiment files.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vocab: usize,
    /// Widths of the hidden dense layers after the pooled embedding.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Dropout probability after each hidden dense layer during training.
    #[serde(default)]
    pub dropout: f32,
    /// Dropout probability on the pooled embedding during training.
    #[serde(default)]
    pub input_dropout: f32,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl Family for BagArch {
    fn kind(&self) -> &'static str {
        "embedding-bag"
    }

    fn check(&self, p: &str, input: Input) -> Result<()> {
        if input != Input::Text {
            bad_field(
                &format!("{p}.kind"),
                "an embedding bag needs text data (data.format = \"text\")",
            )?;
        }
        if self.dim == 0 {
            bad_field(
                &format!("{p}.dim"),
                "an embedding bag needs the width of its embeddings, e.g. dim = 64",
            )?;
        }
        Ok(())
    }

    fn param_shapes(&self, spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>> {
        let mut out = vec![("embed.weight".to_string(), vec![self.vocab, self.dim])];
        out.extend(super::mlp::dense_shapes(
            self.dim,
            &self.hidden,
            spec.outputs,
            "fc",
        ));
        Ok(out)
    }

    fn param_kinds(&self, _spec: &ModelSpec) -> Vec<ParamKind> {
        let mut kinds = vec![ParamKind::Embedding];
        kinds.extend(super::mlp::dense_kinds(self.hidden.len()));
        kinds
    }

    fn describe(&self, spec: &ModelSpec) -> String {
        let mut all = vec![self.dim];
        all.extend(&self.hidden);
        all.push(spec.outputs);
        format!(
            "embedding bag {}×{} → mlp {}",
            self.vocab,
            self.dim,
            super::dims(&all)
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
        let h = pool(self, model, x)?;
        let h = dropout(&h, self.input_dropout, &mut mode)?;
        super::mlp::dense_forward(model, h, 1, self.dropout, mode, capture)
    }

    fn fused(&self, _spec: &ModelSpec) -> Option<super::fused::Plan> {
        None
    }

    fn predict_rows(&self, model: &Model, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        predict_rows(self, model, x, rows)
    }

    fn graph(&self, _model: &Model) -> Result<Graph> {
        let mut g = Graph::default();
        g.nodes.push(Node::EmbeddingMean {
            table: Value::Param(0),
        });
        g.dense_stack(1, self.hidden.len() + 1);
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

/// The mean of each row's embeddings: `[batch, width]` ids → `[batch, dim]`. Rows with no id
/// give zeros.
fn pool(arch: &BagArch, model: &Model, x: &Tensor) -> Result<Tensor> {
    super::ensure_f32(x)?;
    let (b, w) = x.dims2()?;
    let table = model.params[0].1.as_tensor();
    let vocab = arch.vocab;
    let mask = x.ge(0f64)?.to_dtype(DType::F32)?;
    let ids = x
        .clamp(0f32, (vocab.max(1) - 1) as f32)?
        .to_dtype(DType::U32)?
        .flatten_all()?;
    let e = table.index_select(&ids, 0)?.reshape((b, w, arch.dim))?;
    let summed = e.broadcast_mul(&mask.unsqueeze(D::Minus1)?)?.sum(1)?;
    let count = mask.sum_keepdim(1)?.clamp(1f32, f32::MAX)?;
    Ok(summed.broadcast_div(&count)?)
}

/// Inference without autograd for one batch of rows (`rows * width` ids): sums the table rows
/// of each text's ids directly, then runs the dense stack. Same numbers as the tensor forward pass up to
/// the order of the additions.
fn predict_rows(arch: &BagArch, model: &Model, x: &[f32], rows: usize) -> Result<Vec<f32>> {
    let w = model.spec.input_dim();
    let dim = arch.dim;
    let vocab = arch.vocab;
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
    let (y, _) = super::mlp::dense_forward(model, h, 1, arch.dropout, Mode::Eval, None)?;
    Ok(y.flatten_all()?.to_vec1::<f32>()?)
}
