//! Optimizers with fused, in-place parameter updates.
//!
//! candle-nn's AdamW builds about fifteen temporary tensors per parameter per step, each a
//! separate single-threaded pass over memory. Here one pass per parameter reads the gradient
//! and updates the weight and both moment buffers in place (a candle in-place custom op), split
//! across threads for large tensors.

use super::{OptimizerKind, TrainConfig};
use crate::error::{Error, Result};
use crate::kernels::optim::{update_chunk, Rule, StepParams, BETA1, BETA2};
use crate::models::Model;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout};
use rayon::prelude::*;
use std::cell::RefCell;

/// Elements per parallel chunk; smaller tensors are updated on the calling thread.
const CHUNK: usize = 1 << 15;

/// Optimizer state: per-parameter first (and second) moment buffers and the step count.
pub struct Optimizer {
    kind: OptimizerKind,
    momentum: f32,
    weight_decay: f32,
    /// Number of steps taken.
    pub step: u64,
    /// First moments (Adam) or momentum buffers (SGD), one per parameter.
    pub m: Vec<Vec<f32>>,
    /// Second moments (Adam); empty vectors for SGD.
    pub v: Vec<Vec<f32>>,
}

struct FusedUpdate<'a> {
    p: StepParams,
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
}

fn f32_slice<'s>(s: &'s CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'s [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(candle_core::Error::Msg(format!(
            "fused optimizer: {what} must be a contiguous f32 tensor"
        ))),
    }
}

/// The parameter's f32 values, mutable, checked contiguous.
fn param_slice<'s>(dst: &'s mut CpuStorage, l: &Layout) -> candle_core::Result<&'s mut [f32]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("fused optimizer: parameter must be contiguous".into())
    })?;
    match dst {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => Err(candle_core::Error::Msg(
            "fused optimizer: parameter must be f32".into(),
        )),
    }
}

impl InplaceOp2 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "fused-optimizer-step"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let g = f32_slice(gs, gl, "gradient")?;
        let w = param_slice(dst, dst_l)?;
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        apply_update(self.p, w, g, &mut m, &mut v)
    }
}

/// One fused update of `w` from gradient `g`, split across threads for large tensors.
fn apply_update(
    sp: StepParams,
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) -> candle_core::Result<()> {
    if w.len() != g.len() || m.len() != w.len() {
        return Err(candle_core::Error::Msg(
            "fused optimizer: size mismatch".into(),
        ));
    }
    if w.len() < 2 * CHUNK {
        update_chunk(sp, w, g, m, v);
    } else if v.is_empty() {
        w.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .for_each(|((w, g), m)| update_chunk(sp, w, g, m, &mut []));
    } else {
        w.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((w, g), m), v)| update_chunk(sp, w, g, m, v));
    }
    Ok(())
}

/// The same update with the gradient given as a slice (the fast MLP path).
struct SliceUpdate<'a> {
    p: StepParams,
    g: &'a [f32],
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
}

impl InplaceOp1 for SliceUpdate<'_> {
    fn name(&self) -> &'static str {
        "fused-optimizer-step"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout) -> candle_core::Result<()> {
        let w = param_slice(dst, dst_l)?;
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        apply_update(self.p, w, self.g, &mut m, &mut v)
    }
}

/// Scales each column of a row-major `[rows, cols]` matrix (one unit's incoming weights) whose
/// L2 norm exceeds `c` back to norm `c`.
struct MaxNorm {
    c: f32,
    cols: usize,
}

impl InplaceOp1 for MaxNorm {
    fn name(&self) -> &'static str {
        "max-norm"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout) -> candle_core::Result<()> {
        let w = param_slice(dst, dst_l)?;
        max_norm_columns(w, self.cols, self.c);
        Ok(())
    }
}

/// [`MaxNorm`] on a slice: the columns' squared norms summed row by row (in f64), then the
/// long columns scaled.
pub fn max_norm_columns(w: &mut [f32], cols: usize, c: f32) {
    let mut sq = vec![0f64; cols];
    for row in w.chunks_exact(cols) {
        for (s, &v) in sq.iter_mut().zip(row) {
            *s += (v as f64) * (v as f64);
        }
    }
    let scale: Vec<f32> = sq
        .iter()
        .map(|&s| {
            let n = s.sqrt();
            if n > c as f64 {
                (c as f64 / n) as f32
            } else {
                1.0
            }
        })
        .collect();
    if scale.iter().all(|&f| f == 1.0) {
        return;
    }
    for row in w.chunks_exact_mut(cols) {
        for (v, &f) in row.iter_mut().zip(&scale) {
            *v *= f;
        }
    }
}

/// The max-norm constraint on every dense weight matrix of `model` (`[in, out]`: each output
/// unit's incoming weights, a column, kept at L2 norm ≤ `c`).
pub fn constrain_max_norm(model: &Model, c: f32) -> Result<()> {
    let kinds = model.param_kinds();
    for (i, (name, var)) in model.params.iter().enumerate() {
        if kinds.get(i) != Some(&crate::models::ParamKind::DenseWeight) {
            continue;
        }
        let dims = var.dims();
        if dims.len() != 2 {
            continue;
        }
        var.as_tensor()
            .inplace_op1(&MaxNorm { c, cols: dims[1] })
            .map_err(|e| Error::Other(format!("max-norm on {name}: {e}")))?;
    }
    Ok(())
}

impl Optimizer {
    /// A fresh optimizer for parameters of the given sizes.
    pub fn new(cfg: &TrainConfig, sizes: &[usize]) -> Optimizer {
        let adam = cfg.optimizer != OptimizerKind::Sgd;
        Optimizer {
            kind: cfg.optimizer,
            momentum: cfg.momentum as f32,
            weight_decay: cfg.weight_decay as f32,
            step: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes
                .iter()
                .map(|&n| if adam { vec![0.0; n] } else { Vec::new() })
                .collect(),
        }
    }

    fn next_params(&mut self, lr: f64) -> StepParams {
        self.step += 1;
        let t = self.step as i32;
        StepParams {
            rule: match self.kind {
                OptimizerKind::Adam => Rule::Adam,
                OptimizerKind::Adamw => Rule::AdamW,
                OptimizerKind::Sgd => Rule::Sgd,
            },
            lr: lr as f32,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            bc1: 1.0 - BETA1.powi(t),
            bc2: 1.0 - BETA2.powi(t),
            first_step: self.step == 1,
        }
    }

    /// Applies one update with gradients given as slices, one per parameter in order.
    pub fn step_slices<G: AsRef<[f32]>>(
        &mut self,
        model: &Model,
        grads: &[G],
        lr: f64,
    ) -> Result<()> {
        if grads.len() != model.params.len() {
            return Err(Error::Other(format!(
                "{} gradients for {} parameters",
                grads.len(),
                model.params.len()
            )));
        }
        let sp = self.next_params(lr);
        let kinds = model.param_kinds();
        for (i, (name, var)) in model.params.iter().enumerate() {
            if kinds.get(i).is_some_and(|k| !k.is_trained()) {
                continue;
            }
            let op = SliceUpdate {
                p: sp,
                g: grads[i].as_ref(),
                m: RefCell::new(&mut self.m[i][..]),
                v: RefCell::new(&mut self.v[i][..]),
            };
            var.as_tensor()
                .inplace_op1(&op)
                .map_err(|e| Error::Other(format!("optimizer step on {name}: {e}")))?;
        }
        Ok(())
    }

    /// Applies one update to variables outside a [`Model`] (a fine-tuned encoder): variable
    /// `i` (this optimizer's parameter `i`) with learning rate `lrs[i]`, decayed when
    /// `decays[i]`, its gradient in `grads` multiplied by `scale` (a clipped norm). Variables
    /// without a gradient are left alone.
    pub fn step_vars(
        &mut self,
        vars: &[candle_core::Var],
        lrs: &[f64],
        decays: &[bool],
        grads: &GradStore,
        scale: f32,
    ) -> Result<()> {
        if vars.len() != self.m.len() || lrs.len() != vars.len() || decays.len() != vars.len() {
            return Err(Error::Other(format!(
                "{} variables, {} learning rates, {} decay flags for an optimizer of {}",
                vars.len(),
                lrs.len(),
                decays.len(),
                self.m.len()
            )));
        }
        let base = self.next_params(1.0);
        for (i, var) in vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = if scale != 1.0 {
                (g * scale as f64)?
            } else {
                g.clone()
            };
            let mut sp = base;
            sp.lr = lrs[i] as f32;
            if !decays[i] {
                sp.weight_decay = 0.0;
            }
            self.update(i, var, &g, sp, &format!("variable {i}"))?;
        }
        Ok(())
    }

    /// Parameter `i` (`var`) updated in place from gradient `g`.
    fn update(
        &mut self,
        i: usize,
        var: &candle_core::Var,
        g: &candle_core::Tensor,
        sp: StepParams,
        name: &str,
    ) -> Result<()> {
        let g = if g.is_contiguous() {
            g.clone()
        } else {
            g.contiguous()?
        };
        let op = FusedUpdate {
            p: sp,
            m: RefCell::new(&mut self.m[i][..]),
            v: RefCell::new(&mut self.v[i][..]),
        };
        var.as_tensor()
            .inplace_op2(&g, &op)
            .map_err(|e| Error::Other(format!("optimizer step on {name}: {e}")))
    }

    /// Applies one update with learning rate `lr` to every parameter of `model` that has a
    /// gradient in `grads`.
    pub fn step(&mut self, model: &Model, grads: &GradStore, lr: f64) -> Result<()> {
        let sp = self.next_params(lr);
        let kinds = model.param_kinds();
        for (i, (name, var)) in model.params.iter().enumerate() {
            if kinds.get(i).is_some_and(|k| !k.is_trained()) {
                continue;
            }
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            self.update(i, var, g, sp, name)?;
        }
        Ok(())
    }
}

/// Learning rate at `epoch` (0-based) under the configured schedule.
pub fn learning_rate(cfg: &TrainConfig, epoch: usize) -> f64 {
    use super::ScheduleKind::*;
    // Linear warm-up over the first `warmup_epochs` (lr · (e + 1) / w), then the schedule over
    // the epochs that remain, as if they were all.
    let w = cfg.warmup_epochs;
    if epoch < w {
        return cfg.lr * (epoch + 1) as f64 / w as f64;
    }
    let (epoch, epochs) = (epoch - w, cfg.epochs.saturating_sub(w));
    match cfg.schedule {
        Constant => cfg.lr,
        Step => cfg.lr * cfg.gamma.powi((epoch / cfg.step_size.max(1)) as i32),
        Cosine => {
            // As PyTorch's CosineAnnealingLR with T_max = epochs: min_lr is reached after the
            // last epoch, so every epoch trains with a non-zero rate.
            let t = epoch as f64 / epochs.max(1) as f64;
            cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Max-norm scales exactly the columns longer than c back to c and leaves the others, and on
    /// a model touches the dense weight matrices only (not biases).
    #[test]
    fn max_norm_scales_long_columns_only() {
        // Columns: (3, 4) norm 5, (0.3, 0.4) norm 0.5, (−6, 8) norm 10.
        let mut w = vec![3.0f32, 0.3, -6.0, 4.0, 0.4, 8.0];
        max_norm_columns(&mut w, 3, 2.0);
        let want = [1.2f32, 0.3, -1.2, 1.6, 0.4, 1.6];
        for (a, b) in w.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        let spec = crate::models::ModelSpec {
            arch: crate::models::Arch::Mlp(crate::models::mlp::MlpArch {
                hidden: vec![5],
                ..Default::default()
            }),
            input_shape: vec![4],
            outputs: 3,
        };
        let m = Model::new(spec, &mut crate::rng::Rng::new(1)).unwrap();
        let big: Vec<Vec<f32>> = m
            .weights()
            .unwrap()
            .iter()
            .map(|v| v.iter().map(|x| x * 100.0 + 7.0).collect())
            .collect();
        m.set_weights(&big).unwrap();
        constrain_max_norm(&m, 1.5).unwrap();
        let after = m.weights().unwrap();
        for ((name, var), (a, b)) in m.params.iter().zip(after.iter().zip(&big)) {
            if name.ends_with(".bias") {
                assert_eq!(a, b, "{name} changed");
                continue;
            }
            let cols = var.dims()[1];
            for c in 0..cols {
                let n: f32 = a
                    .iter()
                    .skip(c)
                    .step_by(cols)
                    .map(|v| v * v)
                    .sum::<f32>()
                    .sqrt();
                assert!((n - 1.5).abs() < 1e-4, "{name} column {c}: norm {n}");
            }
        }
    }

    #[test]
    fn warm_up_then_cosine() {
        let cfg = TrainConfig {
            epochs: 6,
            lr: 1.0,
            warmup_epochs: 2,
            schedule: crate::train::ScheduleKind::Cosine,
            ..TrainConfig::default()
        };
        let lr: Vec<f64> = (0..6).map(|e| learning_rate(&cfg, e)).collect();
        assert_eq!(&lr[..3], &[0.5, 1.0, 1.0]);
        // Then the cosine over the 4 epochs that remain: 1, (1 + cos(π/4))/2, ½, …
        assert!((lr[3] - 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())).abs() < 1e-12);
        assert!((lr[4] - 0.5).abs() < 1e-12);
        // Without warm-up, the schedule is as before.
        let plain = TrainConfig {
            warmup_epochs: 0,
            ..cfg
        };
        assert_eq!(learning_rate(&plain, 0), 1.0);
    }
}
