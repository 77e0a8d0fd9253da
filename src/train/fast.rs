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

/// Whether the fast path can train this model (an MLP).
pub fn eligible(model: &Model) -> bool {
    model.spec.arch.kind == crate::config::ArchKind::Mlp
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
        let layers = model.params.len() / 2;
        let spec = &model.spec;
        self.acts.resize_with(layers, Vec::new);
        self.acts[0].clear();
        self.acts[0].extend_from_slice(x);
        let mut rng = rng;
        if let Some(r) = rng.as_deref_mut() {
            dropout_in_place(&mut self.acts[0], spec.arch.input_dropout, r);
        }
        for l in 0..layers {
            let (k, n) = model.params[2 * l].1.as_tensor().dims2()?;
            let mut out = if l + 1 < layers {
                std::mem::take(&mut self.acts[l + 1])
            } else {
                std::mem::take(&mut self.logits)
            };
            out.resize(rows * n, 0.0);
            with_param(model, 2 * l + 1, |b| {
                for row in out.chunks_exact_mut(n) {
                    row.copy_from_slice(b);
                }
            })?;
            let input = &self.acts[l];
            with_param(model, 2 * l, |w| {
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
        let layers = model.params.len() / 2;
        self.grads.resize_with(model.params.len(), Vec::new);
        let p = model.spec.arch.dropout;
        let keep = if p > 0.0 { 1.0 / (1.0 - p) } else { 1.0 };
        for l in (0..layers).rev() {
            let (k, n) = model.params[2 * l].1.as_tensor().dims2()?;
            let a = &self.acts[l];
            // dW = aᵀ · dz  ([k, rows] · [rows, n]).
            let gw = &mut self.grads[2 * l];
            gw.resize(k * n, 0.0);
            matmul(gw, k, n, rows, false, a, 1, k, &self.dz, n, 1);
            // db = Σ_rows dz.
            let gb = &mut self.grads[2 * l + 1];
            gb.clear();
            gb.resize(n, 0.0);
            for row in self.dz.chunks_exact(n) {
                for (g, d) in gb.iter_mut().zip(row) {
                    *g += d;
                }
            }
            if l == 0 {
                break;
            }
            // da = dz · Wᵀ, then through dropout and ReLU: dz_prev = da · keep where a > 0.
            self.da.resize(rows * k, 0.0);
            let dz = &self.dz;
            let da = &mut self.da;
            with_param(model, 2 * l, |w| {
                matmul(da, rows, k, n, false, dz, n, 1, w, 1, n)
            })?;
            let mut next = std::mem::take(&mut self.dz);
            next.resize(rows * k, 0.0);
            relu_dropout_grad(&mut next, &self.da, a, keep);
            self.dz = next;
        }
        Ok(())
    }
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
