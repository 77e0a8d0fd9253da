//! The BERT encoder's forward pass for inference, on the CPU, without candle's tensors: the
//! hot path of a BERT teacher (teacher inference is most of the cost of distilling from one).
//!
//! What it does differently from a padded, masked BERT forward pass written with candle's
//! tensor operations (the reference it is tested against, `tests` below, as Hugging Face's
//! `BertModel` computes it):
//! - **no padding**: the tokens of all texts in a batch are packed one after the other, the
//!   dense layers run once over all of them and attention runs per text and head on that text's
//!   own length (a padded batch spends its work on pad tokens and masks them out afterwards);
//! - **fused passes**: Q, K and V come from one GEMM; a residual is added by the GEMM itself
//!   (it accumulates into the hidden states), then bias and LayerNorm in one pass over each
//!   row; bias and GELU in one pass, with a vectorised `erf` (candle and libm evaluate it one
//!   element at a time);
//! - **attention** per (text, head) on the threads: `softmax(Q Kᵀ / √d) V` with Q, K and V read
//!   in place from the QKV buffer through strides, no transposed copies;
//! - element-wise kernels compiled for AVX-512, AVX2+FMA and plain x86-64/other targets, one
//!   picked at run time; the GEMMs are the `gemm` crate's (its AVX-512 kernels where the CPU
//!   has them).
//!
//! Only what sentence embeddings need is here: absolute positions, token type 0, the
//! activations BERT configs name (`gelu`, `gelu_new`/approximate, `relu`).

use crate::error::{Error, Result};
use crate::kernels::gemm::{matmul, matmul_with};
use crate::kernels::math::{self as kernels, Act};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use serde::Deserialize;

/// One encoder layer's weights, each matrix stored `[in, out]` row-major (the GEMM's right side).
struct Layer {
    qkv_w: Vec<f32>,
    qkv_b: Vec<f32>,
    out_w: Vec<f32>,
    out_b: Vec<f32>,
    ln1: (Vec<f32>, Vec<f32>),
    up_w: Vec<f32>,
    up_b: Vec<f32>,
    down_w: Vec<f32>,
    down_b: Vec<f32>,
    ln2: (Vec<f32>, Vec<f32>),
}

/// What a BERT `config.json` says that the encoder needs (Hugging Face's names; other keys
/// are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    /// Rows of the token embedding table.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// The feed-forward block's activation.
    pub hidden_act: HiddenAct,
    /// Rows of the position embedding table.
    pub max_position_embeddings: usize,
    /// Rows of the token type embedding table.
    pub type_vocab_size: usize,
    /// LayerNorm's ε.
    pub layer_norm_eps: f64,
    /// `bert`, or another BERT-family name (a possible prefix of the weights' names).
    #[serde(default)]
    pub model_type: Option<String>,
}

/// A BERT config's `hidden_act`: `gelu` (exact, through erf), `gelu_new` / `gelu_pytorch_tanh`
/// / `geluapproximate` (the tanh approximation), or `relu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum HiddenAct {
    /// GELU through erf.
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU's tanh approximation.
    #[serde(
        rename = "geluapproximate",
        alias = "gelu_new",
        alias = "gelu_pytorch_tanh"
    )]
    GeluApproximate,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
}

/// A BERT encoder's weights, laid out for [`NativeBert::forward`].
pub struct NativeBert {
    hidden: usize,
    heads: usize,
    inter: usize,
    eps: f32,
    act: Act,
    vocab: usize,
    max_pos: usize,
    word: Vec<f32>,
    pos: Vec<f32>,
    type0: Vec<f32>,
    emb_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
}

fn get(vb: &VarBuilder, shape: &[usize], name: &str) -> candle_core::Result<Vec<f32>> {
    vb.get(shape, name)?
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

/// A linear layer's weight (stored `[out, in]`) transposed to `[in, out]`, and its bias.
fn linear(vb: &VarBuilder, inp: usize, out: usize) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let w = get(vb, &[out, inp], "weight")?;
    let mut t = vec![0f32; inp * out];
    for o in 0..out {
        for i in 0..inp {
            t[i * out + o] = w[o * inp + i];
        }
    }
    Ok((t, get(vb, &[out], "bias")?))
}

/// A LayerNorm's scale and shift (`weight`/`bias`, or the older `gamma`/`beta`).
fn layer_norm(vb: &VarBuilder, n: usize) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    if vb.contains_tensor("weight") {
        Ok((get(vb, &[n], "weight")?, get(vb, &[n], "bias")?))
    } else {
        Ok((get(vb, &[n], "gamma")?, get(vb, &[n], "beta")?))
    }
}

impl NativeBert {
    /// The word-embedding table, `vocab × hidden` row-major.
    pub fn word_embeddings(&self) -> &[f32] {
        &self.word
    }

    /// Reads the weights of a BERT model from `vb` (names as Hugging Face writes them, with or
    /// without a `bert.` or `<model_type>.` prefix).
    pub fn load(vb: &VarBuilder, c: &Config) -> Result<NativeBert> {
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(Error::Input(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        let mut prefixes = vec![String::new(), "bert.".to_string()];
        if let Some(t) = &c.model_type {
            prefixes.push(format!("{t}."));
        }
        let prefix = prefixes
            .iter()
            .find(|p| vb.contains_tensor(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| {
                Error::Input(
                    "no tensor embeddings.word_embeddings.weight (with or without a bert. prefix)"
                        .into(),
                )
            })?;
        let vb = if prefix.is_empty() {
            vb.clone()
        } else {
            vb.pp(prefix.trim_end_matches('.'))
        };
        let h = c.hidden_size;
        let load = || -> candle_core::Result<NativeBert> {
            let e = vb.pp("embeddings");
            let word = get(&e.pp("word_embeddings"), &[c.vocab_size, h], "weight")?;
            let pos = get(
                &e.pp("position_embeddings"),
                &[c.max_position_embeddings, h],
                "weight",
            )?;
            let types = get(
                &e.pp("token_type_embeddings"),
                &[c.type_vocab_size, h],
                "weight",
            )?;
            let emb_ln = layer_norm(&e.pp("LayerNorm"), h)?;
            let mut layers = Vec::with_capacity(c.num_hidden_layers);
            for l in 0..c.num_hidden_layers {
                let v = vb.pp(format!("encoder.layer.{l}"));
                let a = v.pp("attention");
                let s = a.pp("self");
                let (q, qb) = linear(&s.pp("query"), h, h)?;
                let (k, kb) = linear(&s.pp("key"), h, h)?;
                let (vv, vbias) = linear(&s.pp("value"), h, h)?;
                let mut qkv_w = Vec::with_capacity(3 * h * h);
                for i in 0..h {
                    for m in [&q, &k, &vv] {
                        qkv_w.extend_from_slice(&m[i * h..(i + 1) * h]);
                    }
                }
                let qkv_b = [qb, kb, vbias].concat();
                let (out_w, out_b) = linear(&a.pp("output").pp("dense"), h, h)?;
                let ln1 = layer_norm(&a.pp("output").pp("LayerNorm"), h)?;
                let (up_w, up_b) =
                    linear(&v.pp("intermediate").pp("dense"), h, c.intermediate_size)?;
                let (down_w, down_b) = linear(&v.pp("output").pp("dense"), c.intermediate_size, h)?;
                let ln2 = layer_norm(&v.pp("output").pp("LayerNorm"), h)?;
                layers.push(Layer {
                    qkv_w,
                    qkv_b,
                    out_w,
                    out_b,
                    ln1,
                    up_w,
                    up_b,
                    down_w,
                    down_b,
                    ln2,
                });
            }
            Ok(NativeBert {
                hidden: h,
                heads: c.num_attention_heads,
                inter: c.intermediate_size,
                eps: c.layer_norm_eps as f32,
                act: match c.hidden_act {
                    HiddenAct::Gelu => Act::Gelu,
                    HiddenAct::GeluApproximate => Act::GeluTanh,
                    HiddenAct::Relu => Act::Relu,
                },
                vocab: c.vocab_size,
                max_pos: c.max_position_embeddings,
                word,
                pos,
                type0: types[..h].to_vec(),
                emb_ln,
                layers,
            })
        };
        load().map_err(|e| Error::Input(e.to_string()))
    }

    /// Floating-point operations of the products for one input of `t` tokens: per layer the
    /// Q, K, V, output, up and down projections and the two attention products.
    pub fn flops(&self, t: usize) -> f64 {
        let (h, i, t) = (self.hidden as f64, self.inter as f64, t as f64);
        self.layers.len() as f64 * (2.0 * t * (4.0 * h * h + 2.0 * h * i) + 4.0 * t * t * h)
    }

    /// The last hidden states of every token of every input, packed: `Σ len × hidden` values,
    /// input `i`'s tokens at rows `offsets[i]..offsets[i + 1]`.
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<(Vec<f32>, Vec<usize>)> {
        let h = self.hidden;
        let mut offsets = vec![0usize];
        for v in ids {
            if v.len() > self.max_pos {
                return Err(Error::Input(format!(
                    "an input of {} tokens; the model has {} positions",
                    v.len(),
                    self.max_pos
                )));
            }
            offsets.push(offsets.last().copied().unwrap_or(0) + v.len());
        }
        let t = *offsets.last().unwrap_or(&0);
        let mut x = vec![0f32; t * h];
        for (i, v) in ids.iter().enumerate() {
            for (p, &id) in v.iter().enumerate() {
                let id = id as usize;
                if id >= self.vocab {
                    return Err(Error::Input(format!(
                        "token id {id} outside the vocabulary of {}",
                        self.vocab
                    )));
                }
                let row = &mut x[(offsets[i] + p) * h..(offsets[i] + p + 1) * h];
                let (w, ps) = (
                    &self.word[id * h..(id + 1) * h],
                    &self.pos[p * h..(p + 1) * h],
                );
                for j in 0..h {
                    row[j] = w[j] + self.type0[j] + ps[j];
                }
            }
        }
        let zero = vec![0f32; h];
        kernels::bias_layer_norm(&mut x, &zero, &self.emb_ln.0, &self.emb_ln.1, self.eps);
        let mut qkv = vec![0f32; t * 3 * h];
        let mut ctx = vec![0f32; t * h];
        let mut up = vec![0f32; t * self.inter];
        for l in &self.layers {
            matmul(&mut qkv, t, 3 * h, h, false, &x, h, 1, &l.qkv_w, 3 * h, 1);
            kernels::add_bias(&mut qkv, &l.qkv_b);
            self.attention(&qkv, &offsets, &mut ctx);
            // x ← LayerNorm(x + ctx·W_o + b_o): the GEMM accumulates into x.
            matmul(&mut x, t, h, h, true, &ctx, h, 1, &l.out_w, h, 1);
            kernels::bias_layer_norm(&mut x, &l.out_b, &l.ln1.0, &l.ln1.1, self.eps);
            matmul(
                &mut up, t, self.inter, h, false, &x, h, 1, &l.up_w, self.inter, 1,
            );
            kernels::bias_act(&mut up, &l.up_b, self.act);
            matmul(
                &mut x, t, h, self.inter, true, &up, self.inter, 1, &l.down_w, h, 1,
            );
            kernels::bias_layer_norm(&mut x, &l.down_b, &l.ln2.0, &l.ln2.1, self.eps);
        }
        Ok((x, offsets))
    }

    /// `ctx ← softmax(Q Kᵀ/√d) V` for every input and head, Q, K, V read from `qkv` in place.
    fn attention(&self, qkv: &[f32], offsets: &[usize], ctx: &mut [f32]) {
        let h = self.hidden;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let items: Vec<(usize, usize)> = (0..offsets.len() - 1)
            .flat_map(|i| (0..self.heads).map(move |hd| (i, hd)))
            .filter(|&(i, _)| offsets[i + 1] > offsets[i])
            .collect();
        let one = |&(i, hd): &(usize, usize)| -> Vec<f32> {
            let (o, len) = (offsets[i], offsets[i + 1] - offsets[i]);
            let q = &qkv[o * 3 * h + hd * d..];
            let k = &qkv[o * 3 * h + h + hd * d..];
            let v = &qkv[o * 3 * h + 2 * h + hd * d..];
            let mut s = vec![0f32; len * len];
            // S = Q Kᵀ: Kᵀ[c][j] = K[j][c], so its row stride is 1 and its column stride 3h.
            matmul_with(
                gemm::Parallelism::None,
                &mut s,
                len,
                len,
                d,
                false,
                q,
                3 * h,
                1,
                k,
                1,
                3 * h,
            );
            for row in s.chunks_exact_mut(len) {
                kernels::softmax_scaled(row, scale);
            }
            let mut out = vec![0f32; len * d];
            matmul_with(
                gemm::Parallelism::None,
                &mut out,
                len,
                d,
                len,
                false,
                &s,
                len,
                1,
                v,
                3 * h,
                1,
            );
            out
        };
        let outs: Vec<Vec<f32>> = if rayon::current_num_threads() > 1 && items.len() > 1 {
            items.par_iter().map(one).collect()
        } else {
            items.iter().map(one).collect()
        };
        for (&(i, hd), out) in items.iter().zip(outs) {
            for (r, row) in out.chunks_exact(d).enumerate() {
                let at = (offsets[i] + r) * h + hd * d;
                ctx[at..at + d].copy_from_slice(row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use std::collections::HashMap;

    fn random(shape: &[usize], seed: &mut u64, scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn tiny(act: &str) -> (Config, HashMap<String, Tensor>) {
        let c: Config = serde_json::from_str(&format!(
            r#"{{"vocab_size": 50, "hidden_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 96, "hidden_act": "{act}",
            "hidden_dropout_prob": 0.0, "max_position_embeddings": 64, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
            "classifier_dropout": null, "model_type": "bert"}}"#
        ))
        .unwrap();
        let mut m = HashMap::new();
        let mut s = 7u64;
        let h = 48;
        let mut put = |name: String, shape: &[usize], scale: f32| {
            m.insert(name, random(shape, &mut s, scale));
        };
        put("embeddings.word_embeddings.weight".into(), &[50, h], 1.0);
        put(
            "embeddings.position_embeddings.weight".into(),
            &[64, h],
            0.5,
        );
        put(
            "embeddings.token_type_embeddings.weight".into(),
            &[2, h],
            0.5,
        );
        for l in 0..2 {
            let p = format!("encoder.layer.{l}.");
            for (n, i, o) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", h, 96),
                ("output.dense", 96, h),
            ] {
                put(format!("{p}{n}.weight"), &[o, i], 0.3);
                put(format!("{p}{n}.bias"), &[o], 0.1);
            }
            for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
                put(format!("{p}{n}.weight"), &[h], 1.0);
                put(format!("{p}{n}.bias"), &[h], 0.2);
            }
        }
        put("embeddings.LayerNorm.weight".into(), &[h], 1.0);
        put("embeddings.LayerNorm.bias".into(), &[h], 0.2);
        (c, m)
    }

    /// The reference: BERT's forward pass written plainly with candle's tensor operations on
    /// a padded batch, as Hugging Face's `BertModel` computes it (embeddings + LayerNorm; per
    /// layer, masked multi-head self-attention, dense + residual + LayerNorm, the activation's
    /// feed-forward block + residual + LayerNorm). Pad positions get a -10000 bias on their
    /// attention scores, as there.
    fn reference_forward(
        m: &HashMap<String, Tensor>,
        c: &Config,
        ids: &Tensor,
        mask: &Tensor,
    ) -> Tensor {
        let (b, len) = ids.dims2().unwrap();
        let h = c.hidden_size;
        let (heads, hd) = (c.num_attention_heads, h / c.num_attention_heads);
        let t = |n: &str| m[n].clone();
        let ln = |x: &Tensor, p: &str| -> Tensor {
            let mean = x.mean_keepdim(2).unwrap();
            let xc = x.broadcast_sub(&mean).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(2).unwrap();
            let xn = xc
                .broadcast_div(&(var + c.layer_norm_eps).unwrap().sqrt().unwrap())
                .unwrap();
            xn.broadcast_mul(&t(&format!("{p}.weight")))
                .unwrap()
                .broadcast_add(&t(&format!("{p}.bias")))
                .unwrap()
        };
        let lin = |x: &Tensor, p: &str| -> Tensor {
            x.broadcast_matmul(&t(&format!("{p}.weight")).t().unwrap())
                .unwrap()
                .broadcast_add(&t(&format!("{p}.bias")))
                .unwrap()
        };
        let word = t("embeddings.word_embeddings.weight")
            .index_select(&ids.flatten_all().unwrap(), 0)
            .unwrap()
            .reshape((b, len, h))
            .unwrap();
        let pos = t("embeddings.position_embeddings.weight")
            .narrow(0, 0, len)
            .unwrap();
        let typ = t("embeddings.token_type_embeddings.weight")
            .narrow(0, 0, 1)
            .unwrap();
        let x = word
            .broadcast_add(&pos)
            .unwrap()
            .broadcast_add(&typ)
            .unwrap();
        let mut x = ln(&x, "embeddings.LayerNorm");
        // [b, 1, 1, len]: 0 on real tokens, -10000 on padding.
        let bias = ((mask.to_dtype(DType::F32).unwrap() - 1.0).unwrap() * 10000.0)
            .unwrap()
            .reshape((b, 1, 1, len))
            .unwrap();
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let split = |y: Tensor| {
                y.reshape((b, len, heads, hd))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let q = split(lin(&x, &format!("{p}.attention.self.query")));
            let k = split(lin(&x, &format!("{p}.attention.self.key")));
            let v = split(lin(&x, &format!("{p}.attention.self.value")));
            let scores = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap();
            let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let ctx = probs
                .matmul(&v)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, len, h))
                .unwrap();
            let a = lin(&ctx, &format!("{p}.attention.output.dense"));
            x = ln(
                &(a + &x).unwrap(),
                &format!("{p}.attention.output.LayerNorm"),
            );
            let up = lin(&x, &format!("{p}.intermediate.dense"));
            let up = match c.hidden_act {
                HiddenAct::Gelu => up.gelu_erf().unwrap(),
                HiddenAct::GeluApproximate => up.gelu().unwrap(),
                HiddenAct::Relu => up.relu().unwrap(),
            };
            let down = lin(&up, &format!("{p}.output.dense"));
            x = ln(&(down + &x).unwrap(), &format!("{p}.output.LayerNorm"));
        }
        x
    }

    /// The packed, unpadded forward pass ≈ the padded, masked reference within 2e-5 on every
    /// hidden state of every real token, for inputs of unequal lengths (and one empty input),
    /// with each activation.
    #[test]
    fn native_bert_matches_the_reference_forward() {
        for act in ["gelu", "geluapproximate", "relu"] {
            let (c, m) = tiny(act);
            let vb = VarBuilder::from_tensors(m.clone(), DType::F32, &Device::Cpu);
            let native = NativeBert::load(&vb, &c).unwrap();
            let ids: Vec<Vec<u32>> = vec![
                (0..17).map(|i| (i * 7 % 50) as u32).collect(),
                vec![3, 9, 4],
                (0..40).map(|i| (i * 13 % 50) as u32).collect(),
                vec![1],
            ];
            let (got, off) = native.forward(&ids).unwrap();
            let len = 40;
            let mut flat = vec![0u32; ids.len() * len];
            let mut mask = vec![0u32; ids.len() * len];
            for (i, v) in ids.iter().enumerate() {
                flat[i * len..i * len + v.len()].copy_from_slice(v);
                mask[i * len..i * len + v.len()].fill(1);
            }
            let input = Tensor::from_vec(flat, (ids.len(), len), &Device::Cpu).unwrap();
            let mask = Tensor::from_vec(mask, (ids.len(), len), &Device::Cpu).unwrap();
            let want = reference_forward(&m, &c, &input, &mask)
                .to_vec3::<f32>()
                .unwrap();
            let mut worst = 0f32;
            for (i, v) in ids.iter().enumerate() {
                for p in 0..v.len() {
                    for j in 0..48 {
                        let a = got[(off[i] + p) * 48 + j];
                        worst = worst.max((a - want[i][p][j]).abs());
                    }
                }
            }
            assert!(worst < 2e-5, "{act}: worst difference {worst}");
            let (none, _) = native.forward(&[vec![]]).unwrap();
            assert!(none.is_empty());
        }
    }
}
