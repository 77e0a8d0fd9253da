//! What a model file records besides its weights: the quantization format and the compression
//! stage that produced the model.

use serde::{Deserialize, Serialize};

/// Numeric format of a model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// 32-bit float.
    F32,
    /// int8 weights and activations, integer inference.
    Int8,
    /// int8 weights (per channel), f32 compute.
    Int8Weights,
    /// Packed 4-bit weights (per group of inputs), f32 compute.
    Int4Weights,
    /// bf16 weights; the dense layers' products take bf16 operands with f32 sums.
    Bf16,
}

impl Precision {
    /// Short name for reports (`f32`, `int8`, `int4`).
    pub fn short(&self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 | Precision::Int8Weights => "int8",
            Precision::Int4Weights => "int4",
            Precision::Bf16 => "bf16",
        }
    }

    /// Name as written in configs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::Int8Weights => "int8-weights",
            Precision::Int4Weights => "int4-weights",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Per-tensor asymmetric `u8` quantization of an activation: `x ≈ scale · (q − zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActQuant {
    /// Step size.
    pub scale: f32,
    /// The `u8` code of 0.0.
    pub zero_point: u8,
}

impl ActQuant {
    /// From an observed range (widened to contain 0, so that zero is exact).
    pub fn from_range(lo: f32, hi: f32) -> ActQuant {
        let lo = lo.min(0.0);
        let hi = hi.max(0.0);
        let scale = if hi - lo > 1e-12 {
            (hi - lo) / 255.0
        } else {
            1.0
        };
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        ActQuant { scale, zero_point }
    }

    /// Quantizes one value (round half to even, as ONNX QuantizeLinear).
    #[inline]
    pub fn quantize(&self, v: f32, inv_scale: f32) -> u8 {
        ((v * inv_scale).round_ties_even() + self.zero_point as f32).clamp(0.0, 255.0) as u8
    }
}

/// What a quantized model file records besides its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantMeta {
    /// The format.
    pub precision: Precision,
    /// Calibration method (int8).
    #[serde(default)]
    pub calibration: Option<String>,
    /// Calibration samples used (int8).
    #[serde(default)]
    pub calibration_samples: Option<usize>,
    /// Inputs per scale (int4).
    #[serde(default)]
    pub group_size: Option<usize>,
    /// Quantization of each dense layer's input (int8).
    #[serde(default)]
    pub activations: Vec<ActQuant>,
}

/// Test scores of a stage's model before fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageScores {
    /// Accuracy (classification).
    pub accuracy: Option<f64>,
    /// Errors (classification).
    pub errors: Option<usize>,
    /// MSE in target units (regression).
    pub mse: Option<f64>,
}

/// What a pruning or quantization stage did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The model it started from.
    pub from: String,
    /// A one-line description (method, settings).
    pub method: String,
    /// Parameters of the starting model.
    pub params_before: usize,
    /// Fraction of weight entries that are zero (pruning).
    #[serde(default)]
    pub weight_sparsity: Option<f64>,
    /// Test scores right after pruning / post-training quantization, before fine-tuning.
    #[serde(default)]
    pub before: Option<StageScores>,
    /// Teacher of the fine-tuning (KD recovery or QAT), if any.
    #[serde(default)]
    pub teacher: Option<String>,
}
