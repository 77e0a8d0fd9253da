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

pub use crate::kernels::int8::ActQuant;

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
