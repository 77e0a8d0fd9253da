//! Quantization: post-training int8 with integer inference, weight-only int8 and int4, and the
//! fake-quantized forward pass used for quantization-aware training.
//!
//! **int8** (MLPs): weights symmetric per output channel (`w ≈ s_w[o] · q`, `q ∈ [-127, 127]`),
//! the input of every dense layer asymmetric per tensor as `u8` (`x ≈ s_x · (q − z)`), calibrated
//! on training samples (min/max or a percentile). Inference multiplies `u8 × i8` and
//! accumulates in `i32` ([`crate::kernels::int8`]), then one fused pass per layer applies the
//! zero-point correction, the scales, the bias and ReLU, and requantizes straight into the next
//! layer's `u8` input — floats only in that epilogue, never a dequantized weight matrix.
//!
//! **int8-weights / int4-weights** (any model): weights stored as `i8` per channel, or as packed
//! 4-bit values with one scale per group of `group_size` inputs; they are dequantized once at
//! load time, so they save disk and download size, not compute.

use crate::error::{Error, Result};
use crate::kernels::int8::{gemm_u8i8, quantize_row, requantize_row, Kernel, PackedI8};
use crate::models::ParamKind;
use crate::models::{Mode, Model};
use crate::train::StepHook;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::models::meta::{ActQuant, Precision, QuantMeta};

/// How activation ranges are calibrated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Calibration {
    /// The observed minimum and maximum.
    Minmax,
    /// The `p`-th and `(100 − p)`-th percentiles (clips outliers).
    Percentile,
}

/// Symmetric int8 quantization of each row of `w` (`rows × cols`): `(codes, scales)`.
pub fn quantize_rows_i8(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let m = row.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let s = if m > 0.0 { m / 127.0 } else { 1.0 };
        scales[r] = s;
        let inv = 1.0 / s;
        for (c, &v) in row.iter().enumerate() {
            q[r * cols + c] = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
    (q, scales)
}

/// Symmetric int4 quantization of each row in groups of `group` columns: codes in [-7, 7]
/// packed two per byte (low nibble first, offset by 8), and one scale per group.
pub fn quantize_rows_i4(w: &[f32], rows: usize, cols: usize, group: usize) -> (Vec<u8>, Vec<f32>) {
    let groups = cols.div_ceil(group);
    let per_row = cols.div_ceil(2);
    let mut packed = vec![0x88u8; rows * per_row];
    let mut scales = vec![0f32; rows * groups];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        for g in 0..groups {
            let part = &row[g * group..((g + 1) * group).min(cols)];
            let m = part.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let s = if m > 0.0 { m / 7.0 } else { 1.0 };
            scales[r * groups + g] = s;
            for (j, &v) in part.iter().enumerate() {
                let c = g * group + j;
                let code = ((v / s).round_ties_even().clamp(-7.0, 7.0) as i32 + 8) as u8;
                let byte = &mut packed[r * per_row + c / 2];
                if c.is_multiple_of(2) {
                    *byte = (*byte & 0xF0) | code;
                } else {
                    *byte = (*byte & 0x0F) | (code << 4);
                }
            }
        }
    }
    (packed, scales)
}

/// Inverse of [`quantize_rows_i4`].
pub fn dequantize_rows_i4(
    packed: &[u8],
    scales: &[f32],
    rows: usize,
    cols: usize,
    group: usize,
) -> Vec<f32> {
    let groups = cols.div_ceil(group);
    let per_row = cols.div_ceil(2);
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let b = packed[r * per_row + c / 2];
            let code = if c.is_multiple_of(2) {
                b & 0x0F
            } else {
                b >> 4
            } as i32
                - 8;
            out[r * cols + c] = code as f32 * scales[r * groups + c / group];
        }
    }
    out
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

/// A parameter seen as `channels × inputs` (dense `[in, out]` weights are transposed; conv
/// `[c_out, c_in, k, k]` weights are already channel-major). Returns `(rows, cols, data)`.
pub fn channel_major(kind: ParamKind, shape: &[usize], v: &[f32]) -> (usize, usize, Vec<f32>) {
    let (rows, cols) = kind.channel_dims(shape);
    if kind == ParamKind::DenseWeight {
        (rows, cols, transpose(v, cols, rows))
    } else {
        (rows, cols, v.to_vec())
    }
}

/// Inverse of [`channel_major`].
pub fn from_channel_major(kind: ParamKind, shape: &[usize], t: &[f32]) -> Vec<f32> {
    if kind == ParamKind::DenseWeight {
        let (rows, cols) = kind.channel_dims(shape);
        transpose(t, rows, cols)
    } else {
        t.to_vec()
    }
}

/// One dense layer of an int8 model.
#[derive(Debug, Clone)]
pub struct Int8Layer {
    /// Inputs.
    pub n_in: usize,
    /// Outputs.
    pub n_out: usize,
    /// Weight codes `[n_out, n_in]`.
    pub w_q: Vec<i8>,
    /// Per-output-channel weight scales.
    pub w_scale: Vec<f32>,
    /// Bias (f32).
    pub bias: Vec<f32>,
    /// Quantization of this layer's input.
    pub input: ActQuant,
    packed: PackedI8,
    /// `s_x · s_w[o]`.
    mult: Vec<f32>,
    /// `b[o] − z_x · s_x · s_w[o] · Σ_i q[o, i]`: the bias with the zero-point correction folded in.
    bias_eff: Vec<f32>,
}

impl Int8Layer {
    /// Builds a layer from its quantized parts.
    pub fn new(
        n_in: usize,
        n_out: usize,
        w_q: Vec<i8>,
        w_scale: Vec<f32>,
        bias: Vec<f32>,
        input: ActQuant,
    ) -> Int8Layer {
        let packed = PackedI8::pack(&w_q, n_out, n_in);
        let mult: Vec<f32> = w_scale.iter().map(|s| s * input.scale).collect();
        let bias_eff = (0..n_out)
            .map(|o| bias[o] - input.zero_point as f32 * mult[o] * packed.row_sums[o] as f32)
            .collect();
        Int8Layer {
            n_in,
            n_out,
            w_q,
            w_scale,
            bias,
            input,
            packed,
            mult,
            bias_eff,
        }
    }

    /// Bytes of the stored weights (codes, scales, bias, activation parameters).
    pub fn bytes(&self) -> usize {
        self.w_q.len() + 4 * self.w_scale.len() + 4 * self.bias.len() + 5
    }
}

/// An MLP whose inference runs in integer arithmetic.
#[derive(Debug, Clone)]
pub struct Int8Mlp {
    /// Dense layers in order; every one but the last is followed by ReLU.
    pub layers: Vec<Int8Layer>,
    /// The GEMM implementation.
    pub kernel: Kernel,
}

impl Int8Mlp {
    /// Parameters (weights and biases).
    pub fn num_params(&self) -> usize {
        self.layers.iter().map(|l| l.w_q.len() + l.bias.len()).sum()
    }

    /// Bytes of all stored weights.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes()).sum()
    }

    /// Outputs per sample.
    pub fn outputs(&self) -> usize {
        self.layers.last().map(|l| l.n_out).unwrap_or(0)
    }

    /// Forward pass on `rows` normalised samples (`rows * n_in` values); returns the logits.
    /// Large batches are split across the thread pool.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let d = self.layers[0].n_in;
        let c = self.outputs();
        let mut out = vec![0f32; rows * c];
        let threads = rayon::current_num_threads().max(1);
        if rows >= 32 && threads > 1 {
            let chunk = rows.div_ceil(threads).div_ceil(4) * 4;
            out.par_chunks_mut(chunk * c)
                .zip(x.par_chunks(chunk * d))
                .for_each(|(o, xi)| self.forward_serial(xi, xi.len() / d, o));
        } else {
            self.forward_serial(x, rows, &mut out);
        }
        out
    }

    /// Single-threaded forward pass into `out`.
    pub fn forward_serial(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let first = &self.layers[0];
        let kp = first.packed.k_padded();
        let mut act = vec![0u8; rows * kp];
        for r in 0..rows {
            quantize_row(
                &x[r * first.n_in..(r + 1) * first.n_in],
                first.input,
                &mut act[r * kp..r * kp + first.n_in],
            );
        }
        let mut acc: Vec<i32> = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let np = layer.packed.n_padded();
            acc.resize(rows * np, 0);
            gemm_u8i8(self.kernel, &act, rows, &layer.packed, &mut acc);
            match self.layers.get(l + 1) {
                Some(next) => {
                    // Requantize straight into the next layer's u8 input; ReLU is the clamp at
                    // the zero point.
                    let kn = next.packed.k_padded();
                    let mut nact = vec![0u8; rows * kn];
                    for r in 0..rows {
                        requantize_row(
                            &acc[r * np..r * np + layer.n_out],
                            &layer.mult,
                            &layer.bias_eff,
                            next.input,
                            &mut nact[r * kn..r * kn + layer.n_out],
                        );
                    }
                    act = nact;
                }
                None => {
                    for r in 0..rows {
                        let a = &acc[r * np..r * np + layer.n_out];
                        let dst = &mut out[r * layer.n_out..(r + 1) * layer.n_out];
                        for o in 0..layer.n_out {
                            dst[o] = a[o] as f32 * layer.mult[o] + layer.bias_eff[o];
                        }
                    }
                }
            }
        }
    }
}

/// The inputs of every dense layer of an MLP on a batch, computed in f32: `[x, relu(h1), …]`.
pub fn dense_inputs(model: &Model, x: &[f32], rows: usize) -> Result<Vec<Vec<f32>>> {
    let d = model.spec.input_dim();
    let mut h = Tensor::from_slice(x, (rows, d), &Device::Cpu)?;
    let dense = model.dense_layers();
    let layers = dense.len();
    let mut out = Vec::with_capacity(layers);
    for (l, (w, b)) in dense.into_iter().enumerate() {
        out.push(h.flatten_all()?.to_vec1::<f32>()?);
        h = h.matmul(w)?.broadcast_add(b)?;
        if l + 1 < layers {
            h = h.relu()?;
        }
    }
    Ok(out)
}

fn quantile(v: &mut [f32], q: f64) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    let (_, x, _) = v.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    *x
}

/// Calibrates the input quantization of every dense layer on `samples` rows of `x`.
pub fn calibrate(
    model: &Model,
    x: &[f32],
    method: Calibration,
    percentile: f64,
) -> Result<Vec<ActQuant>> {
    let d = model.spec.input_dim();
    let rows = x.len() / d.max(1);
    if rows == 0 {
        return Err(Error::Input(
            "calibration: the calibration set holds zero samples; set calibration_samples ≥ 1 and give training data"
                .into(),
        ));
    }
    let mut lo = Vec::new();
    let mut hi = Vec::new();
    let mut all: Vec<Vec<f32>> = Vec::new();
    for chunk in x.chunks(512 * d) {
        let ins = dense_inputs(model, chunk, chunk.len() / d)?;
        if lo.is_empty() {
            lo = vec![f32::INFINITY; ins.len()];
            hi = vec![f32::NEG_INFINITY; ins.len()];
            all = vec![Vec::new(); ins.len()];
        }
        for (l, v) in ins.into_iter().enumerate() {
            for &a in &v {
                lo[l] = lo[l].min(a);
                hi[l] = hi[l].max(a);
            }
            if method == Calibration::Percentile {
                all[l].extend(v);
            }
        }
    }
    Ok((0..lo.len())
        .map(|l| match method {
            Calibration::Minmax => ActQuant::from_range(lo[l], hi[l]),
            Calibration::Percentile => {
                let p = percentile / 100.0;
                let a = quantile(&mut all[l], 1.0 - p);
                let b = quantile(&mut all[l], p);
                ActQuant::from_range(a, b)
            }
        })
        .collect())
}

/// Integer inference covers MLPs; CNNs take the weight-only formats.
pub fn check_int8_arch(spec: &crate::models::ModelSpec) -> Result<()> {
    if !spec.supports().int8 {
        return Err(Error::Input(format!(
            "precision = \"int8\" (integer inference) supports MLPs; {} is not one — use precision = \"int8-weights\" or \"int4-weights\"",
            spec.describe()
        )));
    }
    Ok(())
}

/// Converts an f32 MLP to an integer model with the given activation quantization.
pub fn to_int8(model: &Model, acts: &[ActQuant]) -> Result<Int8Mlp> {
    check_int8_arch(&model.spec)?;
    let dense = model.dense_layers();
    let n_layers = dense.len();
    if acts.len() != n_layers {
        return Err(Error::Other(format!(
            "{} activation quantizers for {n_layers} layers",
            acts.len()
        )));
    }
    let mut layers = Vec::new();
    for (&act, (wv, bv)) in acts.iter().zip(dense) {
        let shape = wv.dims().to_vec();
        let v = wv.flatten_all()?.to_vec1::<f32>()?;
        let (rows, cols, t) = channel_major(ParamKind::DenseWeight, &shape, &v);
        let (q, s) = quantize_rows_i8(&t, rows, cols);
        let bias = bv.flatten_all()?.to_vec1::<f32>()?;
        layers.push(Int8Layer::new(cols, rows, q, s, bias, act));
    }
    Ok(Int8Mlp {
        layers,
        kernel: Kernel::detect(),
    })
}

/// One weight tensor of a weight-only quantized model.
#[derive(Debug, Clone)]
pub enum StoredWeight {
    /// Kept in f32 (biases).
    F32(Vec<f32>),
    /// int8 codes `[rows, cols]` (channel-major) and one scale per row.
    I8 {
        /// Codes.
        q: Vec<i8>,
        /// Row scales.
        scales: Vec<f32>,
    },
    /// bf16 values (rounded to nearest even), in the parameter's own layout.
    Bf16(Vec<u16>),
    /// Packed int4 codes and one scale per group.
    I4 {
        /// Two codes per byte.
        packed: Vec<u8>,
        /// Group scales `[rows, groups]`.
        scales: Vec<f32>,
    },
}

impl StoredWeight {
    /// Bytes stored.
    pub fn bytes(&self) -> usize {
        match self {
            StoredWeight::F32(v) => 4 * v.len(),
            StoredWeight::I8 { q, scales } => q.len() + 4 * scales.len(),
            StoredWeight::I4 { packed, scales } => packed.len() + 4 * scales.len(),
            StoredWeight::Bf16(v) => 2 * v.len(),
        }
    }
}

/// Quantizes every weight of `model` (weight-only); returns the stored tensors and the model
/// with dequantized weights (what inference runs).
pub fn weight_only(
    model: &Model,
    precision: Precision,
    group: usize,
) -> Result<(Vec<StoredWeight>, Model)> {
    let deq = model.duplicate()?;
    let mut stored = Vec::new();
    let mut new_w = Vec::new();
    for (kind, (_, var)) in model.param_kinds().into_iter().zip(&model.params) {
        let v = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        if !kind.is_weight() {
            stored.push(StoredWeight::F32(v.clone()));
            new_w.push(v);
            continue;
        }
        if precision == Precision::Bf16 {
            let bits: Vec<u16> = v
                .iter()
                .map(|&x| crate::kernels::bf16::round_bits(x) as u16)
                .collect();
            new_w.push(
                bits.iter()
                    .map(|&b| crate::kernels::bf16::widen(b))
                    .collect(),
            );
            stored.push(StoredWeight::Bf16(bits));
            continue;
        }
        let shape = var.dims().to_vec();
        let (rows, cols, t) = channel_major(kind, &shape, &v);
        let (sw, back) = match precision {
            Precision::Int8Weights => {
                let (q, scales) = quantize_rows_i8(&t, rows, cols);
                let back: Vec<f32> = q
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| c as f32 * scales[i / cols])
                    .collect();
                (StoredWeight::I8 { q, scales }, back)
            }
            Precision::Int4Weights => {
                let (packed, scales) = quantize_rows_i4(&t, rows, cols, group);
                let back = dequantize_rows_i4(&packed, &scales, rows, cols, group);
                (StoredWeight::I4 { packed, scales }, back)
            }
            p => {
                return Err(Error::Other(format!(
                    "weight_only: {} is not a weight-only format",
                    p.as_str()
                )))
            }
        };
        new_w.push(from_channel_major(kind, &shape, &back));
        stored.push(sw);
    }
    deq.set_weights(&new_w)?;
    Ok((stored, deq))
}

/// Fake-quantizes a tensor with straight-through gradients: forward value `dq(q(x))`,
/// gradient of the identity.
fn straight_through(x: &Tensor, dq: &Tensor) -> Result<Tensor> {
    Ok((x + (dq - x)?.detach())?)
}

/// The forward pass of quantization-aware training: every dense layer's input is fake-quantized
/// with its calibrated `u8` quantizer, every weight per output channel to int8, so the loss
/// sees the rounding the integer model will make; gradients pass straight through.
pub fn qat_forward(model: &Model, x: &Tensor, acts: &[ActQuant], mut mode: Mode) -> Result<Tensor> {
    let layers = model.params.len() / 2;
    let head = model.spec.arch.family().head();
    if acts.len() != layers || !model.spec.supports().int8 || head.is_none() {
        return Err(Error::Input(format!(
            "quantization-aware training needs an MLP and one activation quantizer per dense layer ({} for {layers})",
            acts.len()
        )));
    }
    let head = head.ok_or_else(|| Error::Other("an MLP has a dense head".into()))?;
    let p = head.dropout;
    let mut h = crate::models::dropout(x, head.input_dropout, &mut mode)?;
    let dense = model.dense_layers();
    for (l, (&a, (w, b))) in acts.iter().zip(dense).enumerate() {
        let z = a.zero_point as f64;
        let q = ((&h / a.scale as f64)?.round()? + z)?.clamp(0f32, 255f32)?;
        let dq = ((q - z)? * a.scale as f64)?;
        let hq = straight_through(&h, &dq)?;
        let s = (w.detach().abs()?.max_keepdim(0)? / 127.0)?.clamp(1e-12f32, f32::MAX)?;
        let wq = w.broadcast_div(&s)?.round()?.clamp(-127f32, 127f32)?;
        let wq = straight_through(w, &wq.broadcast_mul(&s)?)?;
        h = hq.matmul(&wq)?.broadcast_add(b)?;
        if l + 1 < layers {
            h = h.relu()?;
            h = crate::models::dropout(&h, p, &mut mode)?;
        }
    }
    Ok(h)
}

/// Quantization-aware training as a hook: the forward pass fake-quantizes activations with these
/// quantizers (one per dense layer) and weights per channel to int8, with straight-through
/// gradients.
pub struct FakeQuantization {
    /// One activation quantizer per dense layer.
    pub acts: Vec<ActQuant>,
}

impl StepHook for FakeQuantization {
    fn replaces_forward(&self) -> bool {
        true
    }

    fn forward(&self, model: &Model, x: &Tensor, mode: Mode) -> Result<Tensor> {
        qat_forward(model, x, &self.acts, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_round_trip_is_within_half_a_step() {
        let w: Vec<f32> = (0..70)
            .map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5)
            .collect();
        let (p, s) = quantize_rows_i4(&w, 2, 35, 8);
        let back = dequantize_rows_i4(&p, &s, 2, 35, 8);
        for (i, (a, b)) in w.iter().zip(&back).enumerate() {
            let step = s[(i / 35) * 5 + (i % 35) / 8];
            assert!((a - b).abs() <= step / 2.0 + 1e-6, "{i}: {a} vs {b}");
        }
    }
}
