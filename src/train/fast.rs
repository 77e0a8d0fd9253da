//! The MLP training step without candle's autograd: forward, the fused gradient of the whole
//! objective (cross-entropy / MSE plus soft-target terms, in one pass over the logits), and the
//! backward pass, all on reused buffers — one multi-threaded GEMM per product (the `gemm`
//! crate candle itself uses) and single passes for bias, ReLU, dropout and their gradients.
//!
//! It computes exactly the objective of the generic path (`train::fit` with candle autograd):
//! same dropout masks drawn from the same generator in the same order, same loss definitions;
//! results agree to float rounding (tested against autograd in `tests/losses.rs`).

use crate::error::Result;
use crate::models::Model;
use crate::rng::Rng;
use rayon::prelude::*;

/// A soft-target term of the objective for one batch.
pub struct SoftBatch<'a> {
    /// Targets for the batch rows: teacher logits (classification) or values (regression).
    pub targets: &'a [f32],
    /// Temperature T (classification).
    pub temperature: f32,
    /// Weight of the term.
    pub weight: f32,
}

/// Labels of one batch.
pub enum BatchLabels<'a> {
    /// Class indices.
    Classes(&'a [u32]),
    /// Regression targets (standardised).
    Values(&'a [f32]),
}

/// Buffers reused from step to step.
#[derive(Default)]
pub struct Workspace {
    /// Input of every dense layer (after ReLU and dropout); `acts[0]` is the input.
    acts: Vec<Vec<f32>>,
    /// The logits.
    pub logits: Vec<f32>,
    /// Gradients, one per parameter, in parameter order.
    pub grads: Vec<Vec<f32>>,
    dz: Vec<f32>,
    da: Vec<f32>,
    /// Per conv block: what the backward pass needs.
    conv: Vec<ConvCache>,
    /// Reused conv backward buffers (gradients of the conv output and of the im2col columns).
    dconv: Vec<f32>,
    dcols: Vec<f32>,
}

/// One conv block's saved state: im2col columns, ReLU output, pooling arg-max.
#[derive(Default)]
struct ConvCache {
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    /// im2col columns `[c_in·k·k, rows·h·w]`.
    cols: Vec<f32>,
    /// ReLU output `[c_out, rows·h·w]`.
    relu: Vec<f32>,
    /// For each pooled output, the index (within `h·w`) of the maximum.
    arg: Vec<u32>,
}

fn par() -> gemm::Parallelism {
    let t = rayon::current_num_threads();
    if t > 1 {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst[m×n] = (read ? dst : 0) + lhs · rhs` with explicit strides (row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    read: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(n == 0 || k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let p = if m * n * k >= 1 << 18 {
        par()
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index the strides describe inside the slices;
    // dst is row-major m×n and does not alias the inputs (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if read { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            p,
        )
    }
}

/// Reads a parameter's contiguous f32 storage.
fn with_param<R>(model: &Model, i: usize, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    crate::models::mlp::with_slice(model.params[i].1.as_tensor(), f)
}

/// Whether the fast path can train this model (an MLP, or a CNN: same-padded k×k convolutions
/// with ReLU and 2×2 max-pooling, then dense layers).
pub fn eligible(model: &Model) -> bool {
    use crate::config::ArchKind;
    match model.spec.arch.kind {
        ArchKind::Mlp => true,
        ArchKind::Cnn => model.spec.arch.kernel % 2 == 1 && model.spec.input_shape.len() == 3,
    }
}

fn conv_blocks(model: &Model) -> usize {
    if model.spec.arch.kind == crate::config::ArchKind::Cnn {
        model.spec.arch.channels.len()
    } else {
        0
    }
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
    /// Forward pass in training mode (dropout from `rng` when given) on `rows` samples;
    /// leaves the logits in `self.logits`.
    pub fn forward(
        &mut self,
        model: &Model,
        x: &[f32],
        rows: usize,
        rng: Option<&mut Rng>,
    ) -> Result<()> {
        let blocks = conv_blocks(model);
        let layers = model.params.len() / 2 - blocks;
        let spec = &model.spec;
        self.acts.resize_with(layers, Vec::new);
        self.acts[0].clear();
        self.acts[0].extend_from_slice(x);
        let mut rng = rng;
        if let Some(r) = rng.as_deref_mut() {
            dropout_in_place(&mut self.acts[0], spec.arch.input_dropout, r);
        }
        if blocks > 0 {
            let pooled = self.conv_forward(model, rows)?;
            self.acts[0] = pooled;
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
            with_param(model, pi, |w| {
                matmul(&mut out, rows, n, k, true, input, k, 1, w, n, 1)
            })?;
            if l + 1 < layers {
                relu_in_place(&mut out);
                if let Some(r) = rng.as_deref_mut() {
                    dropout_in_place(&mut out, spec.arch.dropout, r);
                }
                self.acts[l + 1] = out;
            } else {
                self.logits = out;
            }
        }
        Ok(())
    }

    /// The objective's value and its gradient with respect to the logits (into `self.dz`).
    pub fn loss_and_grad(
        &mut self,
        labels: &BatchLabels,
        label_weight: f32,
        soft: &[SoftBatch],
        classes: usize,
    ) -> Result<f64> {
        let z = &self.logits;
        let rows = z.len() / classes.max(1);
        self.dz.clear();
        self.dz.resize(z.len(), 0.0);
        let inv_b = 1.0 / rows.max(1) as f32;
        let mut loss = 0f64;
        match labels {
            BatchLabels::Classes(y) => {
                let mut q = vec![0f32; classes];
                for (r, (zr, dr)) in z
                    .chunks_exact(classes)
                    .zip(self.dz.chunks_exact_mut(classes))
                    .enumerate()
                {
                    let max = zr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    if label_weight != 0.0 {
                        let sum: f32 = zr.iter().map(|&v| (v - max).exp()).sum();
                        let lse = sum.ln();
                        let yi = y[r] as usize;
                        loss += label_weight as f64 * (lse - (zr[yi] - max)) as f64;
                        for c in 0..classes {
                            let p = (zr[c] - max - lse).exp();
                            let t = if c == yi { 1.0 } else { 0.0 };
                            dr[c] += label_weight * (p - t) * inv_b;
                        }
                    }
                    for s in soft {
                        if s.weight == 0.0 {
                            continue;
                        }
                        let t = s.temperature;
                        let tr = &s.targets[r * classes..(r + 1) * classes];
                        // Teacher: p = softmax(t/T) (in f64, as the generic path).
                        let tmax = tr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                        let tsum: f64 = tr.iter().map(|&v| (((v - tmax) / t) as f64).exp()).sum();
                        let tlse = tsum.ln();
                        // Student: log q = z/T − logsumexp(z/T).
                        let ssum: f32 = zr.iter().map(|&v| ((v - max) / t).exp()).sum();
                        let slse = ssum.ln();
                        let mut kl = 0f64;
                        for c in 0..classes {
                            let logp = (((tr[c] - tmax) / t) as f64 - tlse) as f32;
                            let p = logp.exp();
                            let logq = (zr[c] - max) / t - slse;
                            q[c] = logq.exp();
                            kl += (p * (logp - logq)) as f64;
                            dr[c] += s.weight * t * (q[c] - p) * inv_b;
                        }
                        loss += (s.weight * t * t) as f64 * kl;
                    }
                }
            }
            BatchLabels::Values(y) => {
                for (r, (&zr, dr)) in z.iter().zip(self.dz.iter_mut()).enumerate() {
                    if label_weight != 0.0 {
                        let d = zr - y[r];
                        loss += label_weight as f64 * (d * d) as f64;
                        *dr += label_weight * 2.0 * d * inv_b;
                    }
                    for s in soft {
                        let d = zr - s.targets[r];
                        loss += s.weight as f64 * (d * d) as f64;
                        *dr += s.weight * 2.0 * d * inv_b;
                    }
                }
            }
        }
        Ok(loss / rows.max(1) as f64)
    }

    /// Backward pass from `self.dz` into `self.grads` (parameter order).
    pub fn backward(&mut self, model: &Model, rows: usize) -> Result<()> {
        let blocks = conv_blocks(model);
        let layers = model.params.len() / 2 - blocks;
        let first = 2 * blocks;
        self.grads.resize_with(model.params.len(), Vec::new);
        let p = model.spec.arch.dropout;
        let keep = if p > 0.0 { 1.0 / (1.0 - p) } else { 1.0 };
        for l in (0..layers).rev() {
            let pi = first + 2 * l;
            let (k, n) = model.params[pi].1.as_tensor().dims2()?;
            let a = &self.acts[l];
            // dW = aᵀ · dz  ([k, rows] · [rows, n]).
            let gw = &mut self.grads[pi];
            gw.resize(k * n, 0.0);
            matmul(gw, k, n, rows, false, a, 1, k, &self.dz, n, 1);
            // db = Σ_rows dz.
            let gb = &mut self.grads[pi + 1];
            gb.clear();
            gb.resize(n, 0.0);
            for row in self.dz.chunks_exact(n) {
                for (g, d) in gb.iter_mut().zip(row) {
                    *g += d;
                }
            }
            if l == 0 && blocks == 0 {
                break;
            }
            // da = dz · Wᵀ, then through dropout and ReLU: dz_prev = da · keep where a > 0.
            self.da.resize(rows * k, 0.0);
            let dz = &self.dz;
            let da = &mut self.da;
            with_param(model, pi, |w| {
                matmul(da, rows, k, n, false, dz, n, 1, w, 1, n)
            })?;
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
    /// Conv blocks on `self.acts[0]` (`[rows, c, h, w]`); returns the flattened pooled output.
    /// Each block is one GEMM over the whole batch: `out[c_out, rows·h·w] = W[c_out, c·k·k] ·
    /// cols[c·k·k, rows·h·w]`.
    fn conv_forward(&mut self, model: &Model, rows: usize) -> Result<Vec<f32>> {
        let spec = &model.spec;
        let k = spec.arch.kernel;
        let (mut c, mut h, mut w) = (
            spec.input_shape[0],
            spec.input_shape[1],
            spec.input_shape[2],
        );
        let blocks = spec.arch.channels.len();
        self.conv.resize_with(blocks, ConvCache::default);
        let mut input = std::mem::take(&mut self.acts[0]);
        for (i, &c_out) in spec.arch.channels.iter().enumerate() {
            let hw = h * w;
            let n = rows * hw;
            let ckk = c * k * k;
            let (hp, wp) = (h / 2, w / 2);
            let pq = hp * wp;
            let cache = &mut self.conv[i];
            cache.c_in = c;
            cache.c_out = c_out;
            cache.h = h;
            cache.w = w;
            cache.cols.resize(ckk * n, 0.0);
            cache.relu.resize(c_out * n, 0.0);
            cache.arg.resize(rows * c_out * pq, 0);
            // im2col, one row (input channel, ky, kx) at a time across the batch.
            let p = (k / 2) as isize;
            cache
                .cols
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(r, row)| {
                    let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                    for b in 0..rows {
                        let x = &input[(b * c + ci) * hw..][..hw];
                        let dst = &mut row[b * hw..(b + 1) * hw];
                        for y in 0..h {
                            let sy = y as isize + ky as isize - p;
                            let d = &mut dst[y * w..(y + 1) * w];
                            if sy < 0 || sy >= h as isize {
                                d.iter_mut().for_each(|v| *v = 0.0);
                                continue;
                            }
                            let src = &x[sy as usize * w..][..w];
                            // Output columns whose source column lies inside the image.
                            let (lo, hi) = valid_range(w, kx, p);
                            d[..lo].iter_mut().for_each(|v| *v = 0.0);
                            d[hi..].iter_mut().for_each(|v| *v = 0.0);
                            let off = lo as isize + kx as isize - p;
                            d[lo..hi].copy_from_slice(&src[off as usize..off as usize + (hi - lo)]);
                        }
                    }
                });
            let out = &mut cache.relu;
            with_param(model, 2 * i + 1, |bias| {
                for (o, row) in out.chunks_exact_mut(n).enumerate() {
                    row.iter_mut().for_each(|v| *v = bias[o]);
                }
            })?;
            let cols = &cache.cols;
            with_param(model, 2 * i, |wt| {
                matmul(out, c_out, n, ckk, true, wt, ckk, 1, cols, n, 1)
            })?;
            relu_in_place(out);
            // 2×2 max-pool, stride 2 (floor), first maximum on ties; into [rows, c_out, pq].
            let mut pooled = vec![0f32; rows * c_out * pq];
            let out = &cache.relu;
            pooled
                .par_chunks_mut(c_out * pq)
                .zip(cache.arg.par_chunks_mut(c_out * pq))
                .enumerate()
                .for_each(|(b, (pool, arg))| {
                    for o in 0..c_out {
                        let plane = &out[o * n + b * hw..][..hw];
                        for py in 0..hp {
                            for px in 0..wp {
                                let mut best = (2 * py) * w + 2 * px;
                                for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                                    let j = (2 * py + dy) * w + 2 * px + dx;
                                    if plane[j] > plane[best] {
                                        best = j;
                                    }
                                }
                                let q = o * pq + py * wp + px;
                                pool[q] = plane[best];
                                arg[q] = best as u32;
                            }
                        }
                    }
                });
            input = pooled;
            c = c_out;
            h = hp;
            w = wp;
        }
        Ok(input)
    }

    /// Backward through the conv blocks from the gradient of the pooled features.
    fn conv_backward(&mut self, model: &Model, rows: usize, dpool: Vec<f32>) -> Result<()> {
        let k = model.spec.arch.kernel;
        let mut grad = dpool;
        for i in (0..self.conv.len()).rev() {
            let cache = &self.conv[i];
            let (c_in, c_out, h, w) = (cache.c_in, cache.c_out, cache.h, cache.w);
            let (hw, ckk) = (h * w, c_in * k * k);
            let n = rows * hw;
            let pq = (h / 2) * (w / 2);
            // Un-pool and ReLU into [c_out, rows·hw]: the gradient reaches each window's
            // maximum when it was positive.
            let mut dconv = std::mem::take(&mut self.dconv);
            dconv.clear();
            dconv.resize(c_out * n, 0.0);
            dconv.par_chunks_mut(n).enumerate().for_each(|(o, d)| {
                for b in 0..rows {
                    for q in 0..pq {
                        let src = (b * c_out + o) * pq + q;
                        let j = b * hw + cache.arg[src] as usize;
                        if cache.relu[o * n + j] > 0.0 {
                            d[j] += grad[src];
                        }
                    }
                }
            });
            // dW = dconv · colsᵀ, db = Σ dconv. The reduction runs over all rows·h·w
            // positions while the output is tiny, so it is split over positions (one partial
            // product per thread, summed) rather than over the output.
            let threads = rayon::current_num_threads().max(1);
            let span = n.div_ceil(threads);
            let partials: Vec<Vec<f32>> = (0..threads)
                .into_par_iter()
                .map(|t| {
                    let (a, b) = ((t * span).min(n), ((t + 1) * span).min(n));
                    let mut g = vec![0f32; c_out * ckk];
                    if b > a {
                        // SAFETY: g is [c_out, ckk]; lhs dconv[:, a..b] (row stride n) is
                        // [c_out, b−a]; rhs colsᵀ over positions a..b is [b−a, ckk] (cols is
                        // [ckk, n], row stride n). All indices stay inside the buffers.
                        unsafe {
                            gemm::gemm(
                                c_out,
                                ckk,
                                b - a,
                                g.as_mut_ptr(),
                                1,
                                ckk as isize,
                                false,
                                dconv.as_ptr().add(a),
                                1,
                                n as isize,
                                cache.cols.as_ptr().add(a),
                                n as isize,
                                1,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            )
                        }
                    }
                    g
                })
                .collect();
            let mut gw = vec![0f32; c_out * ckk];
            for part in &partials {
                gw.iter_mut().zip(part).for_each(|(x, y)| *x += y);
            }
            let gb: Vec<f32> = dconv.chunks_exact(n).map(|r| r.iter().sum()).collect();
            self.grads[2 * i] = gw;
            self.grads[2 * i + 1] = gb;
            if i == 0 {
                self.dconv = dconv;
                break;
            }
            // dcols = Wᵀ · dconv (fully overwritten), then col2im into the previous block's
            // pooled output.
            let mut dcols = std::mem::take(&mut self.dcols);
            dcols.resize(ckk * n, 0.0);
            with_param(model, 2 * i, |wt| {
                matmul(&mut dcols, ckk, n, c_out, false, wt, 1, ckk, &dconv, n, 1)
            })?;
            let mut dx = vec![0f32; rows * c_in * hw];
            let p = (k / 2) as isize;
            dx.par_chunks_mut(c_in * hw)
                .enumerate()
                .for_each(|(b, dxb)| {
                    for ci in 0..c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let r = (ci * k + ky) * k + kx;
                                let row = &dcols[r * n + b * hw..][..hw];
                                for y in 0..h {
                                    let sy = y as isize + ky as isize - p;
                                    if sy < 0 || sy >= h as isize {
                                        continue;
                                    }
                                    let dst = &mut dxb[ci * hw + sy as usize * w..][..w];
                                    let (lo, hi) = valid_range(w, kx, p);
                                    let off = (lo as isize + kx as isize - p) as usize;
                                    for (a, b) in dst[off..off + (hi - lo)]
                                        .iter_mut()
                                        .zip(&row[y * w + lo..y * w + hi])
                                    {
                                        *a += b;
                                    }
                                }
                            }
                        }
                    }
                });
            grad = dx;
            self.dconv = dconv;
            self.dcols = dcols;
        }
        Ok(())
    }
}

/// The output columns `lo..hi` of a same-padded row whose source column `x + kx − p` lies in
/// `0..w`.
fn valid_range(w: usize, kx: usize, p: isize) -> (usize, usize) {
    let shift = kx as isize - p;
    let lo = (-shift).clamp(0, w as isize) as usize;
    let hi = (w as isize - shift).clamp(0, w as isize) as usize;
    (lo, hi.max(lo))
}

fn relu_in_place(v: &mut [f32]) {
    if v.len() >= 1 << 16 && rayon::current_num_threads() > 1 {
        v.par_chunks_mut(1 << 14)
            .for_each(|c| c.iter_mut().for_each(|x| *x = x.max(0.0)));
    } else {
        v.iter_mut().for_each(|x| *x = x.max(0.0));
    }
}

/// `out = da · keep` where the layer's output `a` (after ReLU and dropout) is positive, else 0.
fn relu_dropout_grad(out: &mut [f32], da: &[f32], a: &[f32], keep: f32) {
    let f = |(o, (d, x)): (&mut f32, (&f32, &f32))| *o = if *x > 0.0 { d * keep } else { 0.0 };
    if out.len() >= 1 << 16 && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(1 << 14)
            .zip(da.par_chunks(1 << 14).zip(a.par_chunks(1 << 14)))
            .for_each(|(o, (d, x))| o.iter_mut().zip(d.iter().zip(x)).for_each(f));
    } else {
        out.iter_mut().zip(da.iter().zip(a)).for_each(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ArchConfig, ArchKind};
    use crate::losses;
    use crate::models::{Mode, ModelSpec};
    use candle_core::{Device, Tensor};

    fn model(dropout: f32, outputs: usize) -> Model {
        let spec = ModelSpec {
            arch: ArchConfig {
                kind: ArchKind::Mlp,
                hidden: vec![40, 24],
                dropout,
                input_dropout: dropout / 2.0,
                channels: vec![],
                kernel: 5,
            },
            input_shape: vec![30],
            outputs,
        };
        Model::new(spec, &mut Rng::new(4)).unwrap()
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
                        },
                        SoftBatch {
                            targets: &t2,
                            temperature: 2.0,
                            weight: 0.1,
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
    use crate::config::{ArchConfig, ArchKind};
    use crate::losses;
    use crate::models::{Mode, ModelSpec};
    use candle_core::{Device, Tensor};

    fn cnn(shape: &[usize], channels: Vec<usize>, dropout: f32) -> Model {
        let spec = ModelSpec {
            arch: ArchConfig {
                kind: ArchKind::Cnn,
                hidden: vec![10],
                dropout,
                input_dropout: dropout / 2.0,
                channels,
                kernel: 3,
            },
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

    /// The CNN fast path against the definition: the forward pass and loss equal candle's (with
    /// dropout, same masks); dense gradients equal candle autograd's; conv gradients equal
    /// central finite differences of the loss. (candle's own max-pool backward multiplies the
    /// gradient by the fraction of maxima in each window — 1/4 for a unique maximum — so it is
    /// not a reference for conv layers.)
    #[test]
    fn fast_cnn_step_matches_the_definition() {
        let mut r = Rng::new(8);
        for (shape, channels, dropout) in [
            (vec![2usize, 6, 7], vec![3usize, 4], 0.0f32),
            (vec![1, 9, 8], vec![5], 0.3),
        ] {
            let m = cnn(&shape, channels, dropout);
            let d: usize = shape.iter().product();
            let rows = 9;
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
            let blocks = m.spec.arch.channels.len();
            for (i, (name, var)) in m.params.iter().enumerate() {
                if i >= 2 * blocks {
                    let g = grads
                        .get(var.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    let scale = g.iter().fold(0f32, |a, &b| a.max(b.abs())).max(1e-6);
                    for (a, b) in analytic[i].iter().zip(&g) {
                        assert!((a - b).abs() <= 1e-4 * scale, "{name}: {a} vs {b}");
                    }
                    continue;
                }
                // Central differences on every entry of the conv parameter.
                let scale = analytic[i]
                    .iter()
                    .fold(0f32, |a, &b| a.max(b.abs()))
                    .max(1e-6);
                let base = m.weights().unwrap();
                let eps = 1e-3f32;
                let mut ok = 0;
                for j in 0..base[i].len() {
                    let mut w = base.clone();
                    w[i][j] += eps;
                    m.set_weights(&w).unwrap();
                    let up = run(&mut Workspace::default());
                    w[i][j] -= 2.0 * eps;
                    m.set_weights(&w).unwrap();
                    let down = run(&mut Workspace::default());
                    m.set_weights(&base).unwrap();
                    let fd = ((up - down) / (2.0 * eps as f64)) as f32;
                    if (fd - analytic[i][j]).abs() <= 0.02 * scale {
                        ok += 1;
                    }
                }
                assert!(
                    ok as f64 >= 0.95 * base[i].len() as f64,
                    "{shape:?} {name}: {ok} of {} entries agree with finite differences",
                    base[i].len()
                );
            }
        }
    }
}
