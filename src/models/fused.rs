//! The MLP and CNN forward and backward passes without candle's autograd (the objective's
//! gradient with respect to the logits comes from `train::objective`), used for training and
//! for inference, all on reused buffers — one multi-threaded GEMM per product (the `gemm`
//! crate candle itself uses) and single passes for bias, ReLU, dropout and their gradients.
//!
//! It computes exactly the objective of the generic path (`train::fit` with candle autograd):
//! same dropout masks drawn from the same generator in the same order, same loss definitions;
//! results agree to float rounding (tested against autograd in `tests/losses.rs`).

use crate::error::Result;
use crate::kernels::bf16::{self, MatmulPrecision, PackedRhs};
use crate::kernels::conv::{self, ConvGeom};
use crate::kernels::elementwise::{add_into, relu_dropout_grad, relu_in_place};
use crate::kernels::gemm::{gemv, matmul, matmul_rows_split, matmul_with};
use crate::models::Model;
use crate::rng::Rng;
use rayon::prelude::*;

/// Buffers reused from step to step.
#[derive(Default)]
pub struct Workspace {
    /// Input of every dense layer (after ReLU and dropout); `acts[0]` is the input.
    acts: Vec<Vec<f32>>,
    /// The logits.
    pub logits: Vec<f32>,
    /// Gradients, one per parameter, in parameter order.
    pub grads: Vec<Vec<f32>>,
    /// The gradient of the objective with respect to the logits.
    pub(crate) dz: Vec<f32>,
    da: Vec<f32>,
    /// Per conv block: what the backward pass needs.
    conv: Vec<ConvCache>,
    /// The input of the first conv block (after input dropout).
    conv_input: Vec<f32>,
    /// Per-chunk conv scratch.
    scratch: Vec<ConvScratch>,
    /// The precision of the dense layers' products ([`crate::kernels::bf16`]).
    pub precision: MatmulPrecision,
    /// Dense weights packed once for bf16 inference ([`pack_bf16`]); empty while training,
    /// where the weights change every step.
    packed: std::sync::Arc<[PackedRhs]>,
}

/// One conv block's saved state: its geometry, pooled output (after ReLU) and pooling
/// arg-max (wide-grid index within the image's channel plane).
#[derive(Default)]
struct ConvCache {
    g: ConvGeom,
    /// `[rows, c_out, h/2 · w/2]`.
    pooled: Vec<f32>,
    arg: Vec<u32>,
}

/// The conv blocks split a batch into at most this many chunks of consecutive images, a number
/// fixed by the batch size alone (not by the thread count), so that per-chunk gradient sums,
/// added in chunk order, give the same bits on any machine.
const CONV_CHUNKS: usize = 16;

/// Per-chunk scratch for the conv blocks (sized for the largest block).
#[derive(Default)]
struct ConvScratch {
    xpad: Vec<f32>,
    cols: Vec<f32>,
    out: Vec<f32>,
    dcols: Vec<f32>,
    /// Gradient of the padded input image (col2im target).
    dxpad: Vec<f32>,
    /// Gradient sums of this chunk: weights `[c_out, ckk]`, biases `[c_out]`.
    gw: Vec<f32>,
    gb: Vec<f32>,
    /// One pooled row, channels last (inference).
    row: Vec<f32>,
}

impl ConvScratch {
    fn prepare(&mut self, g: &ConvGeom) {
        // Zeroed: the padding border must read as zero, and the slack as finite.
        self.xpad.clear();
        self.xpad.resize(g.padded(), 0.0);
        self.cols.resize(g.ckk() * g.l(), 0.0);
        self.out.resize(g.c_out * g.l(), 0.0);
    }
}

/// `model`'s dense weights packed once for bf16 inference ([`Workspace::with_packed`]).
pub fn pack_bf16(model: &Model) -> Result<std::sync::Arc<[PackedRhs]>> {
    let blocks = conv_blocks(&plan_of(model)?);
    let layers = model.params.len() / 2 - blocks;
    (0..layers)
        .map(|l| {
            let pi = 2 * blocks + 2 * l;
            let (k, n) = model.params[pi].1.as_tensor().dims2()?;
            with_param(model, pi, |w| PackedRhs::new(w, k, n))
        })
        .collect()
}

/// Reads a parameter's contiguous f32 storage.
fn with_param<R>(model: &Model, i: usize, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    super::with_slice(model.params[i].1.as_tensor(), f)
}

/// What the fused passes need of an architecture: a family that has them says so through
/// [`super::Family::fused`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Dropout on the input during training.
    pub input_dropout: f32,
    /// Dropout after each hidden dense layer during training.
    pub dropout: f32,
    /// Conv blocks before the dense layers (same-padded k×k convolutions, ReLU, 2×2 max-pool).
    pub conv: Option<ConvPlan>,
}

/// The conv blocks of a [`Plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConvPlan {
    /// Square, odd kernel size.
    pub kernel: usize,
    /// Output channels of each block.
    pub channels: Vec<usize>,
}

/// The model's plan, when its family has fused passes.
pub fn plan(model: &Model) -> Option<Plan> {
    model.spec.arch.family().fused(&model.spec)
}

/// Whether the fast path can train this model (its family has a [`Plan`]).
pub fn eligible(model: &Model) -> bool {
    plan(model).is_some()
}

/// The model's plan, or an error naming the architecture.
fn plan_of(model: &Model) -> Result<Plan> {
    plan(model).ok_or_else(|| {
        crate::error::Error::Other(format!("{} has no fused passes", model.spec.describe()))
    })
}

fn conv_blocks(plan: &Plan) -> usize {
    plan.conv.as_ref().map_or(0, |c| c.channels.len())
}

/// Applies a dropout mask drawn from `rng` (one uniform per element, row-major, as
/// [`crate::models::dropout`]): zero with probability `p`, else scaled by `1/(1−p)`.
fn dropout_in_place(v: &mut [f32], p: f32, rng: &mut Rng) {
    if p <= 0.0 {
        return;
    }
    let keep = 1.0 / (1.0 - p);
    for x in v.iter_mut() {
        *x = if rng.uniform() < p { 0.0 } else { *x * keep };
    }
}

impl Workspace {
    /// A workspace whose dense products run at `precision`.
    pub fn with_precision(precision: MatmulPrecision) -> Workspace {
        Workspace {
            precision,
            ..Default::default()
        }
    }

    /// A bf16 workspace for inference with the model whose dense weights `packed` holds
    /// ([`pack_bf16`]).
    pub fn with_packed(packed: std::sync::Arc<[PackedRhs]>) -> Workspace {
        Workspace {
            precision: MatmulPrecision::Bf16,
            packed,
            ..Default::default()
        }
    }

    /// Forward pass in training mode (dropout from `rng` when given) on `rows` samples;
    /// leaves the logits in `self.logits`.
    pub fn forward(
        &mut self,
        model: &Model,
        x: &[f32],
        rows: usize,
        rng: Option<&mut Rng>,
    ) -> Result<()> {
        let plan = plan_of(model)?;
        let blocks = conv_blocks(&plan);
        let layers = model.params.len() / 2 - blocks;
        self.acts.resize_with(layers, Vec::new);
        // The input (after input dropout) goes to the first dense layer, or to the conv blocks,
        // whose last pooled output then feeds the first dense layer.
        let input = if blocks > 0 {
            &mut self.conv_input
        } else {
            &mut self.acts[0]
        };
        input.clear();
        input.extend_from_slice(x);
        let mut rng = rng;
        // Inference (no dropout stream): products may split their rows over the threads.
        let eval = rng.is_none();
        if let Some(r) = rng.as_deref_mut() {
            dropout_in_place(input, plan.input_dropout, r);
        }
        if blocks > 0 && eval {
            self.conv_eval(model, &plan, rows)?;
            self.acts[0].clear();
            self.acts[0].extend_from_slice(&self.conv[blocks - 1].pooled);
        } else if blocks > 0 {
            self.conv_forward(model, &plan, rows)?;
            self.acts[0].clear();
            self.acts[0].extend_from_slice(&self.conv[blocks - 1].pooled);
        }
        let first = 2 * blocks;
        for l in 0..layers {
            let pi = first + 2 * l;
            let (k, n) = model.params[pi].1.as_tensor().dims2()?;
            let mut out = if l + 1 < layers {
                std::mem::take(&mut self.acts[l + 1])
            } else {
                std::mem::take(&mut self.logits)
            };
            out.resize(rows * n, 0.0);
            with_param(model, pi + 1, |b| {
                for row in out.chunks_exact_mut(n) {
                    row.copy_from_slice(b);
                }
            })?;
            let input = &self.acts[l];
            match (self.precision, self.packed.get(l)) {
                (MatmulPrecision::Bf16, Some(p)) if p.dims() == (k, n) => {
                    bf16::matmul_packed(&mut out, rows, true, input, k, 1, p)
                }
                (MatmulPrecision::Bf16, _) => with_param(model, pi, |w| {
                    bf16::matmul(&mut out, rows, n, k, true, input, k, 1, w, n, 1)
                })?,
                (MatmulPrecision::F32, _) => with_param(model, pi, |w| {
                    if rows == 1 {
                        gemv(&mut out, n, k, input, w)
                    } else if eval {
                        matmul_rows_split(&mut out, rows, n, k, input, w)
                    } else {
                        matmul(&mut out, rows, n, k, true, input, k, 1, w, n, 1)
                    }
                })?,
            }
            if l + 1 < layers {
                relu_in_place(&mut out);
                if let Some(r) = rng.as_deref_mut() {
                    dropout_in_place(&mut out, plan.dropout, r);
                }
                self.acts[l + 1] = out;
            } else {
                self.logits = out;
            }
        }
        Ok(())
    }
    /// Backward pass from `self.dz` into `self.grads` (parameter order).
    pub fn backward(&mut self, model: &Model, rows: usize) -> Result<()> {
        let plan = plan_of(model)?;
        let blocks = conv_blocks(&plan);
        let layers = model.params.len() / 2 - blocks;
        let first = 2 * blocks;
        self.grads.resize_with(model.params.len(), Vec::new);
        let p = plan.dropout;
        let keep = if p > 0.0 { 1.0 / (1.0 - p) } else { 1.0 };
        crate::kernels::elementwise::flush_tiny(&mut self.dz);
        for l in (0..layers).rev() {
            let pi = first + 2 * l;
            let (k, n) = model.params[pi].1.as_tensor().dims2()?;
            let a = &self.acts[l];
            // dW = aᵀ · dz  ([k, rows] · [rows, n]).
            let gw = &mut self.grads[pi];
            gw.resize(k * n, 0.0);
            let mm = match self.precision {
                MatmulPrecision::F32 => matmul,
                MatmulPrecision::Bf16 => bf16::matmul,
            };
            mm(gw, k, n, rows, false, a, 1, k, &self.dz, n, 1);
            // db = Σ_rows dz.
            let gb = &mut self.grads[pi + 1];
            gb.clear();
            gb.resize(n, 0.0);
            for row in self.dz.chunks_exact(n) {
                add_into(gb, row);
            }
            if l == 0 && blocks == 0 {
                break;
            }
            // da = dz · Wᵀ, then through dropout and ReLU: dz_prev = da · keep where a > 0.
            self.da.resize(rows * k, 0.0);
            let dz = &self.dz;
            let da = &mut self.da;
            with_param(model, pi, |w| mm(da, rows, k, n, false, dz, n, 1, w, 1, n))?;
            if l == 0 {
                // The gradient with respect to the pooled conv features.
                let dpool = std::mem::take(&mut self.da);
                self.conv_backward(model, rows, dpool)?;
                break;
            }
            let mut next = std::mem::take(&mut self.dz);
            next.resize(rows * k, 0.0);
            relu_dropout_grad(&mut next, &self.da, a, keep);
            self.dz = next;
        }
        Ok(())
    }
}

impl Workspace {
    /// Walks the conv blocks for `rows` images: per block `i`, its geometry, its input (the
    /// batch, or the block before's pooled output), its cache with `pooled` sized, the
    /// per-chunk scratch and the chunk span (a fixed split of the batch: [`CONV_CHUNKS`]).
    fn each_conv_block(
        &mut self,
        model: &Model,
        plan: &Plan,
        rows: usize,
        mut block: impl FnMut(
            usize,
            ConvGeom,
            &[f32],
            &mut ConvCache,
            &mut [ConvScratch],
            usize,
        ) -> Result<()>,
    ) -> Result<()> {
        let spec = &model.spec;
        let Some(cp) = &plan.conv else {
            return Ok(());
        };
        let (mut c, mut h, mut w) = (
            spec.input_shape[0],
            spec.input_shape[1],
            spec.input_shape[2],
        );
        self.conv.resize_with(cp.channels.len(), ConvCache::default);
        let span = rows.div_ceil(rows.clamp(1, CONV_CHUNKS)).max(1);
        self.scratch
            .resize_with(rows.div_ceil(span), ConvScratch::default);
        for (i, &c_out) in cp.channels.iter().enumerate() {
            let g = ConvGeom::new(c, c_out, h, w, cp.kernel);
            let (done, rest) = self.conv.split_at_mut(i);
            let input: &[f32] = if i == 0 {
                &self.conv_input
            } else {
                &done[i - 1].pooled
            };
            let cache = &mut rest[0];
            cache.g = g;
            cache.pooled.resize(rows * g.out_size(), 0.0);
            block(i, g, input, cache, &mut self.scratch, span)?;
            c = c_out;
            h /= 2;
            w /= 2;
        }
        Ok(())
    }

    /// Conv blocks on `self.conv_input` (`[rows, c, h, w]`), leaving each block's pooled output
    /// (flattened, `[rows, c_out · h/2 · w/2]`) in its cache. Images are processed in fixed chunks in
    /// parallel; per image and block: pad, im2col (long copies), one GEMM
    /// `out[c_out, h·wp] = W[c_out, c·k·k] · cols[c·k·k, h·wp]` on bias-prefilled scratch, and
    /// one pass for max-pool and ReLU. Everything an image touches stays in cache.
    fn conv_forward(&mut self, model: &Model, plan: &Plan, rows: usize) -> Result<()> {
        self.each_conv_block(model, plan, rows, |i, g, input, cache, scratch, span| {
            let os = g.out_size();
            cache.arg.resize(rows * os, 0);
            let (l, ckk, c_out) = (g.l(), g.ckk(), g.c_out);
            with_param(model, 2 * i + 1, |bias| {
                with_param(model, 2 * i, |wt| {
                    scratch
                        .par_iter_mut()
                        .zip(cache.pooled.par_chunks_mut(span * os))
                        .zip(cache.arg.par_chunks_mut(span * os))
                        .enumerate()
                        .for_each(|(chunk, ((s, pooled), arg))| {
                            s.prepare(&g);
                            for t in 0..pooled.len() / os {
                                let b = chunk * span + t;
                                g.pad(&input[b * g.in_size()..][..g.in_size()], &mut s.xpad);
                                g.im2col(&s.xpad, &mut s.cols);
                                for (o, row) in s.out.chunks_exact_mut(l).enumerate() {
                                    row.fill(bias[o]);
                                }
                                matmul_with(
                                    gemm::Parallelism::None,
                                    &mut s.out,
                                    c_out,
                                    l,
                                    ckk,
                                    true,
                                    wt,
                                    ckk,
                                    1,
                                    &s.cols,
                                    l,
                                    1,
                                );
                                g.pool(
                                    &s.out,
                                    &mut pooled[t * os..][..os],
                                    &mut arg[t * os..][..os],
                                );
                            }
                        })
                })
            })?
        })
    }

    /// Conv blocks for inference: as [`Workspace::conv_forward`], but each block runs the direct
    /// kernel ([`conv::direct`]: channels-last padded image, register tiles, no im2col) on
    /// weights repacked once per call, and keeps no pooling arg-max. Between blocks the pooled
    /// maps stay channels last; the last block's are channels first, the order the dense layer
    /// (and an ONNX `Flatten`) reads. Images are split into the same fixed chunks, in parallel.
    fn conv_eval(&mut self, model: &Model, plan: &Plan, rows: usize) -> Result<()> {
        let blocks = conv_blocks(plan);
        self.each_conv_block(model, plan, rows, |i, g, input, cache, scratch, span| {
            let os = g.out_size();
            cache.arg.clear();
            let (wt, bias) = with_param(model, 2 * i + 1, |b| {
                with_param(model, 2 * i, |wt| conv::pack_direct(&g, wt, b))
            })??;
            let out_len = g.direct_positions() * g.direct_channels();
            let isz = g.in_size();
            scratch
                .par_iter_mut()
                .zip(cache.pooled.par_chunks_mut(span * os))
                .enumerate()
                .for_each(|(chunk, (s, pooled))| {
                    s.xpad.clear();
                    s.xpad.resize(g.direct_padded(), 0.0);
                    s.out.resize(out_len, 0.0);
                    for (t, img) in pooled.chunks_exact_mut(os).enumerate() {
                        let b = chunk * span + t;
                        g.pad_channels_last(&input[b * isz..][..isz], &mut s.xpad, i > 0);
                        conv::direct(&g, &s.xpad, &wt, &bias, &mut s.out);
                        let cl = i + 1 < blocks;
                        g.pool_channels_last(&s.out, g.direct_channels(), img, &mut s.row, cl);
                    }
                });
            Ok(())
        })
    }

    /// Backward through the conv blocks from the gradient of the pooled features. Per image and
    /// block: un-pool (the gradient reaches each window's maximum when it was positive) into
    /// the wide grid, im2col again, `dW += dconv · colsᵀ`, and for all but the first block
    /// `dcols = Wᵀ · dconv` and col2im. Weight and bias gradients are summed per chunk, then
    /// over chunks in order.
    fn conv_backward(&mut self, model: &Model, rows: usize, dpool: Vec<f32>) -> Result<()> {
        let mut grad = dpool;
        let span = rows.div_ceil(rows.clamp(1, CONV_CHUNKS)).max(1);
        let chunks = rows.div_ceil(span);
        for i in (0..self.conv.len()).rev() {
            let g = self.conv[i].g;
            let input: &[f32] = if i == 0 {
                &self.conv_input
            } else {
                &self.conv[i - 1].pooled
            };
            let cache = &self.conv[i];
            let need_dx = i > 0;
            let (l, ckk, os, pq, c_out) = (g.l(), g.ckk(), g.out_size(), g.pq(), g.c_out);
            let mut dx = vec![0f32; if need_dx { rows * g.in_size() } else { 0 }];
            let mut parts: Vec<&mut [f32]> = if need_dx {
                dx.chunks_mut(span * g.in_size()).collect()
            } else {
                (0..chunks).map(|_| &mut [][..]).collect()
            };
            let grad_ref = &grad;
            with_param(model, 2 * i, |wt| {
                self.scratch[..chunks]
                    .par_iter_mut()
                    .zip(parts.par_iter_mut())
                    .enumerate()
                    .for_each(|(chunk, (s, dxp))| {
                        s.prepare(&g);
                        s.gw.clear();
                        s.gw.resize(c_out * ckk, 0.0);
                        s.gb.clear();
                        s.gb.resize(c_out, 0.0);
                        if need_dx {
                            s.dcols.resize(ckk * l, 0.0);
                        }
                        let images = (rows - chunk * span).min(span);
                        for t in 0..images {
                            let b = chunk * span + t;
                            let pooled = &cache.pooled[b * os..][..os];
                            let arg = &cache.arg[b * os..][..os];
                            let gr = &grad_ref[b * os..][..os];
                            s.out.fill(0.0);
                            for o in 0..c_out {
                                let plane = &mut s.out[o * l..][..l];
                                let mut sum = 0f32;
                                for q in o * pq..(o + 1) * pq {
                                    // Branch-free: about half of the maxima are positive.
                                    let v = if pooled[q] > 0.0 { gr[q] } else { 0.0 };
                                    plane[arg[q] as usize] = v;
                                    sum += v;
                                }
                                s.gb[o] += sum;
                            }
                            g.pad(&input[b * g.in_size()..][..g.in_size()], &mut s.xpad);
                            g.im2col(&s.xpad, &mut s.cols);
                            // dW[c_out, ckk] += dconv[c_out, l] · colsᵀ[l, ckk].
                            matmul_with(
                                gemm::Parallelism::None,
                                &mut s.gw,
                                c_out,
                                ckk,
                                l,
                                true,
                                &s.out,
                                l,
                                1,
                                &s.cols,
                                1,
                                l,
                            );
                            if !need_dx {
                                continue;
                            }
                            // dcols[ckk, l] = Wᵀ[ckk, c_out] · dconv[c_out, l].
                            matmul_with(
                                gemm::Parallelism::None,
                                &mut s.dcols,
                                ckk,
                                l,
                                c_out,
                                false,
                                wt,
                                1,
                                ckk,
                                &s.out,
                                l,
                                1,
                            );
                            s.dxpad.clear();
                            s.dxpad.resize(g.padded(), 0.0);
                            g.col2im(&s.dcols, &mut s.dxpad);
                            let (p, h, w) = (g.k / 2, g.h, g.w);
                            for ci in 0..g.c_in {
                                for y in 0..h {
                                    dxp[t * g.in_size() + (ci * h + y) * w..][..w].copy_from_slice(
                                        &s.dxpad[ci * g.plane() + (y + p) * g.wp + p..][..w],
                                    );
                                }
                            }
                        }
                    })
            })?;
            drop(parts);
            let parts = &self.scratch[..chunks];
            sum_into(
                &mut self.grads[2 * i],
                c_out * ckk,
                parts.iter().map(|s| &s.gw[..]),
            );
            sum_into(
                &mut self.grads[2 * i + 1],
                c_out,
                parts.iter().map(|s| &s.gb[..]),
            );
            grad = dx;
        }
        Ok(())
    }
}

/// `dst = Σ parts` (each of length `len`), added in order, reusing `dst`'s buffer.
fn sum_into<'a>(dst: &mut Vec<f32>, len: usize, parts: impl Iterator<Item = &'a [f32]>) {
    dst.clear();
    dst.resize(len, 0.0);
    for part in parts {
        add_into(dst, part);
    }
}

/// Inference for an MLP, or a CNN the fast path takes ([`eligible`]), without
/// the tensor machinery: the forward pass of the autograd-free
/// training step ([`Workspace::forward`]) without dropout. `x` holds `rows`
/// samples; returns `rows * outputs` values. Same arithmetic as [`super::mlp::forward`] in eval
/// mode or [`super::cnn::forward`] (outputs agree to float rounding).
///
/// An MLP with enough rows for every thread (32 each) takes one block of rows per thread
/// through the whole network, each block's products single-threaded
/// ([`crate::kernels::gemm::serial`]): no thread waits for another between layers, which is
/// what small networks lose most to. Each output is the same sum of the same products as
/// with the rows together; only where the rows together would have been one multi-threaded
/// product may the `gemm` crate's blocking round differently in the last bits (measured:
/// ~1e-8 relative in the committed configs' metrics).
pub fn forward_eval(model: &Model, x: &[f32], rows: usize) -> Result<Vec<f32>> {
    let t = rayon::current_num_threads();
    let d = model.spec.input_dim();
    if t > 1 && rows >= 32 * t && conv_blocks(&plan_of(model)?) == 0 && x.len() == rows * d {
        let per = rows.div_ceil(t);
        let parts = x
            .par_chunks(per * d)
            .map(|c| {
                crate::kernels::gemm::serial(|| {
                    let mut ws = Workspace::default();
                    ws.forward(model, c, c.len() / d, None)?;
                    Ok(ws.logits)
                })
            })
            .collect::<Result<Vec<Vec<f32>>>>()?;
        return Ok(parts.concat());
    }
    let mut ws = Workspace::default();
    ws.forward(model, x, rows, None)?;
    Ok(ws.logits)
}

/// [`forward_eval`] with bf16 products on weights packed once
/// ([`pack_bf16`]).
pub fn forward_eval_bf16(
    model: &Model,
    x: &[f32],
    rows: usize,
    packed: &std::sync::Arc<[crate::kernels::bf16::PackedRhs]>,
) -> Result<Vec<f32>> {
    let mut ws = Workspace::with_packed(packed.clone());
    ws.forward(model, x, rows, None)?;
    Ok(ws.logits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses;
    use crate::models::{Arch, Mode, ModelSpec};
    use crate::train::objective::{BatchLabels, SoftBatch};
    use candle_core::{Device, Tensor};

    fn model(dropout: f32, outputs: usize) -> Model {
        let spec = ModelSpec {
            arch: Arch::Mlp(crate::models::mlp::MlpArch {
                hidden: vec![40, 24],
                dropout,
                input_dropout: dropout / 2.0,
            }),
            input_shape: vec![30],
            outputs,
        };
        Model::new(spec, &mut Rng::new(4)).unwrap()
    }

    /// Inference in one block of rows per thread through the whole network gives every row
    /// the same bits as one pass over all rows (each product single-threaded), for row counts
    /// that split evenly and not; so does the rows' pass under the default threading (these
    /// products are too small to be threaded).
    #[test]
    fn row_blocks_per_thread_give_the_same_bits() {
        let m = model(0.0, 7);
        let mut r = Rng::new(5);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for rows in [96, 301] {
            let x: Vec<f32> = (0..rows * 30).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let split = pool.install(|| forward_eval(&m, &x, rows)).unwrap();
            let whole = crate::kernels::gemm::serial(|| {
                let mut ws = Workspace::default();
                ws.forward(&m, &x, rows, None).map(|_| ws.logits)
            })
            .unwrap();
            let threaded = {
                let mut ws = Workspace::default();
                ws.forward(&m, &x, rows, None).map(|_| ws.logits)
            }
            .unwrap();
            assert_eq!(split, whole, "{rows} rows");
            assert_eq!(split, threaded, "{rows} rows");
        }
    }

    /// A training step at bf16 against the same step at f32 (no dropout, so both see the same
    /// network). The logits and the last layer's gradients agree to what rounding the
    /// products' operands to 8 significant bits allows (1% of the largest value; cosine
    /// above 0.9999). Earlier layers' gradients also pass through ReLU masks, and a unit whose
    /// pre-activation lies within rounding of zero flips between the two: there the bound is a
    /// cosine above 0.99. bf16 inference with packed weights gives the training forward's bf16
    /// logits exactly.
    #[test]
    fn bf16_step_tracks_the_f32_step() {
        let m = model(0.0, 10);
        let mut r = Rng::new(21);
        let rows = 67;
        let x: Vec<f32> = (0..rows * 30).map(|_| r.uniform_range(-1.0, 1.0)).collect();
        let y: Vec<u32> = (0..rows).map(|_| r.below(10) as u32).collect();
        let run = |ws: &mut Workspace| {
            ws.forward(&m, &x, rows, None).unwrap();
            let logits = ws.logits.clone();
            ws.loss_and_grad(&BatchLabels::Classes(&y), 1.0, &[], 10)
                .unwrap();
            ws.backward(&m, rows).unwrap();
            (logits, ws.grads.clone())
        };
        let (l32, g32) = run(&mut Workspace::default());
        let (l16, g16) = run(&mut Workspace::with_precision(MatmulPrecision::Bf16));
        let close = |a: &[f32], b: &[f32], max_rel: f32, min_cos: f64, what: &str| {
            let top = a.iter().fold(0f32, |s, v| s.max(v.abs()));
            let diff = a.iter().zip(b).fold(0f32, |s, (p, q)| s.max((p - q).abs()));
            assert!(
                diff <= max_rel * top,
                "{what}: {diff} against largest {top}"
            );
            let dot: f64 = a.iter().zip(b).map(|(p, q)| (p * q) as f64).sum();
            let na: f64 = a.iter().map(|p| (p * p) as f64).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|p| (p * p) as f64).sum::<f64>().sqrt();
            assert!(
                dot / (na * nb) > min_cos,
                "{what}: cosine {}",
                dot / (na * nb)
            );
        };
        assert_ne!(l32, l16, "bf16 rounding changes the logits");
        close(&l32, &l16, 0.01, 0.9999, "logits");
        let last = g32.len() - 2;
        for (i, (a, b)) in g32.iter().zip(&g16).enumerate() {
            if i >= last {
                close(a, b, 0.01, 0.9999, &format!("gradient {i}"));
            } else {
                close(a, b, f32::INFINITY, 0.99, &format!("gradient {i}"));
            }
        }
        let packed = pack_bf16(&m).unwrap();
        let mut ws = Workspace::with_packed(packed);
        ws.forward(&m, &x, rows, None).unwrap();
        assert_eq!(ws.logits, l16);
    }

    /// The fast path's loss and every gradient against candle autograd on the same objective,
    /// with the same dropout masks (same generator state).
    #[test]
    fn fast_step_matches_autograd() {
        let rows = 17;
        let mut r = Rng::new(5);
        for (dropout, classes) in [(0.0, 6), (0.3, 6), (0.0, 1), (0.25, 1)] {
            let m = model(dropout, classes);
            let x: Vec<f32> = (0..rows * 30).map(|_| r.uniform_range(-1.5, 1.5)).collect();
            let t1: Vec<f32> = (0..rows * classes)
                .map(|_| r.uniform_range(-3.0, 3.0))
                .collect();
            let t2: Vec<f32> = (0..rows * classes)
                .map(|_| r.uniform_range(-2.0, 2.0))
                .collect();
            let y: Vec<u32> = (0..rows).map(|_| r.below(classes) as u32).collect();
            let yv: Vec<f32> = (0..rows).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            // Autograd.
            let xt = Tensor::from_slice(&x, (rows, 30), &Device::Cpu).unwrap();
            let mut rng_a = Rng::new(77);
            let z = m.forward(&xt, Mode::Train(&mut rng_a)).unwrap();
            let loss = if classes > 1 {
                let yt = Tensor::from_slice(&y, rows, &Device::Cpu).unwrap();
                let ce = (losses::cross_entropy(&z, &yt).unwrap() * 0.2).unwrap();
                let k1 = (losses::soft_target_loss(&z, &t1, 4.0).unwrap() * 0.7).unwrap();
                let k2 = (losses::soft_target_loss(&z, &t2, 2.0).unwrap() * 0.1).unwrap();
                ((ce + k1).unwrap() + k2).unwrap()
            } else {
                let yt = Tensor::from_slice(&yv, (rows, 1), &Device::Cpu).unwrap();
                let tt = Tensor::from_slice(&t1, (rows, 1), &Device::Cpu).unwrap();
                let a = (losses::mse(&z, &yt).unwrap() * 0.4).unwrap();
                let b = (losses::mse(&z, &tt).unwrap() * 0.6).unwrap();
                (a + b).unwrap()
            };
            let want_loss = loss.to_scalar::<f32>().unwrap() as f64;
            let grads = loss.backward().unwrap();
            // Fast path.
            let mut ws = Workspace::default();
            let mut rng_b = Rng::new(77);
            ws.forward(&m, &x, rows, Some(&mut rng_b)).unwrap();
            let (labels, soft, lw) = if classes > 1 {
                (
                    BatchLabels::Classes(&y),
                    vec![
                        SoftBatch {
                            targets: &t1,
                            temperature: 4.0,
                            weight: 0.7,
                            loss: crate::losses::SoftLoss::Kd,
                        },
                        SoftBatch {
                            targets: &t2,
                            temperature: 2.0,
                            weight: 0.1,
                            loss: crate::losses::SoftLoss::Kd,
                        },
                    ],
                    0.2,
                )
            } else {
                (
                    BatchLabels::Values(&yv),
                    vec![SoftBatch {
                        targets: &t1,
                        temperature: 1.0,
                        weight: 0.6,
                        loss: crate::losses::SoftLoss::Kd,
                    }],
                    0.4,
                )
            };
            let got_loss = ws.loss_and_grad(&labels, lw, &soft, classes).unwrap();
            assert!(
                (got_loss - want_loss).abs() < 1e-5 * (1.0 + want_loss.abs()),
                "dropout {dropout}, classes {classes}: loss {got_loss} vs {want_loss}"
            );
            ws.backward(&m, rows).unwrap();
            for (i, (name, var)) in m.params.iter().enumerate() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let scale = g.iter().fold(0f32, |a, &b| a.max(b.abs())).max(1e-6);
                for (a, b) in ws.grads[i].iter().zip(&g) {
                    assert!(
                        (a - b).abs() <= 1e-4 * scale,
                        "dropout {dropout}, classes {classes}, {name}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod cnn_tests {
    use super::*;
    use crate::losses;
    use crate::models::{Arch, Mode, ModelSpec};
    use crate::train::objective::{BatchLabels, SoftBatch};
    use candle_core::{Device, Tensor};

    fn cnn(shape: &[usize], channels: Vec<usize>, dropout: f32) -> Model {
        let spec = ModelSpec {
            arch: Arch::Cnn(crate::models::cnn::CnnArch {
                hidden: vec![10],
                dropout,
                input_dropout: dropout / 2.0,
                channels,
                kernel: 3,
            }),
            input_shape: shape.to_vec(),
            outputs: 5,
        };
        let m = Model::new(spec, &mut Rng::new(3)).unwrap();
        // Non-zero biases, so that no ReLU input sits exactly on its kink.
        let mut r = Rng::new(4);
        let w: Vec<Vec<f32>> = m
            .params
            .iter()
            .zip(m.weights().unwrap())
            .map(|((n, _), v)| {
                if n.ends_with(".bias") {
                    v.iter().map(|_| r.uniform_range(-0.2, 0.2)).collect()
                } else {
                    v
                }
            })
            .collect();
        m.set_weights(&w).unwrap();
        m
    }

    /// Inference through the direct conv kernel (channels last between blocks) equals candle's
    /// forward on the tensor model, for one, two and three conv blocks, one input channel and
    /// three, odd image sizes, and a batch split over the threads' chunks.
    #[test]
    fn cnn_inference_matches_the_tensor_forward() {
        for (shape, channels, rows) in [
            (vec![1, 12, 12], vec![6], 5),
            (vec![3, 13, 11], vec![20, 8], 37),
            (vec![2, 16, 16], vec![16, 32, 17], 3),
        ] {
            let m = cnn(&shape, channels, 0.0);
            let d: usize = shape.iter().product();
            let mut r = Rng::new(9);
            let x: Vec<f32> = (0..rows * d).map(|_| r.normal()).collect();
            let want = m.predict_tensor(&x, rows).unwrap();
            let got = forward_eval(&m, &x, rows).unwrap();
            let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * scale, "{shape:?}: {a} vs {b}");
            }
        }
    }

    /// The CNN fast path against the definition: the forward pass and loss equal candle's (with
    /// dropout, same masks), and every gradient, conv layers included, equals autograd's through
    /// the tensor forward (whose max-pool is `ops::max_pool2d`; candle's own max-pool backward
    /// is wrong, see `models::ops`).
    #[test]
    fn fast_cnn_step_matches_the_definition() {
        let mut r = Rng::new(8);
        for (shape, channels, dropout) in [
            (vec![2usize, 6, 7], vec![3usize, 4], 0.0f32),
            (vec![1, 9, 8], vec![5], 0.3),
        ] {
            let m = cnn(&shape, channels, dropout);
            let d: usize = shape.iter().product();
            // 9 rows: one image per chunk; 20 rows: two per chunk, one chunk short.
            let rows = if dropout > 0.0 { 20 } else { 9 };
            let x: Vec<f32> = (0..rows * d).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let t: Vec<f32> = (0..rows * 5).map(|_| r.uniform_range(-2.0, 2.0)).collect();
            let y: Vec<u32> = (0..rows).map(|_| r.below(5) as u32).collect();
            let xt = Tensor::from_slice(&x, (rows, d), &Device::Cpu).unwrap();
            let mut ra = Rng::new(21);
            let z = m.forward(&xt, Mode::Train(&mut ra)).unwrap();
            let yt = Tensor::from_slice(&y, rows, &Device::Cpu).unwrap();
            let loss = ((losses::cross_entropy(&z, &yt).unwrap() * 0.3).unwrap()
                + (losses::soft_target_loss(&z, &t, 3.0).unwrap() * 0.7).unwrap())
            .unwrap();
            let want = loss.to_scalar::<f32>().unwrap() as f64;
            let grads = loss.backward().unwrap();
            let soft = [SoftBatch {
                targets: &t,
                temperature: 3.0,
                weight: 0.7,
                loss: crate::losses::SoftLoss::Kd,
            }];
            let run = |ws: &mut Workspace| -> f64 {
                let mut rb = Rng::new(21);
                ws.forward(&m, &x, rows, Some(&mut rb)).unwrap();
                ws.loss_and_grad(&BatchLabels::Classes(&y), 0.3, &soft, 5)
                    .unwrap()
            };
            let mut ws = Workspace::default();
            let got = run(&mut ws);
            assert!(
                (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                "{got} vs {want}"
            );
            ws.backward(&m, rows).unwrap();
            let analytic = ws.grads.clone();
            for (i, (name, var)) in m.params.iter().enumerate() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let scale = g.iter().fold(0f32, |a, &b| a.max(b.abs())).max(1e-6);
                for (a, b) in analytic[i].iter().zip(&g) {
                    assert!(
                        (a - b).abs() <= 1e-4 * scale,
                        "{shape:?} {name}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
