//! `[[quantize]]`: int8 post-training quantization with integer inference (calibrated
//! activation ranges), weight-only int8 or int4, and optional quantization-aware training from
//! the post-training ranges.

use super::prune::{recover_objective, sample_rows, stage_scores, RecoverConfig};
use super::Stage;
use crate::compress::quant::{self, Precision};
use crate::compress::{self, AnyModel, Body, StageRecord};
use crate::error::{bad_field, Error, Result};
use crate::store::RunStore;
use crate::train::{self, TrainJob};
use serde::{Deserialize, Serialize};

/// One quantization stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeConfig {
    /// Name of the quantized model.
    pub name: String,
    /// The f32 model to quantize (a `[[model]]`, a final student, or a pruning stage).
    pub from: String,
    /// `int8` (integer inference, MLPs), `int8-weights` or `int4-weights` (weight-only), or
    /// `bf16` (bf16 weights and products).
    pub precision: crate::compress::quant::Precision,
    /// Activation range calibration for int8: `minmax` or `percentile`.
    #[serde(default = "default_calibration")]
    pub calibration: crate::compress::quant::Calibration,
    /// Percentile for `calibration = "percentile"`, in (50, 100].
    #[serde(default = "default_percentile")]
    pub percentile: f64,
    /// Training samples used for calibration.
    #[serde(default = "super::prune::default_calibration_samples")]
    pub calibration_samples: usize,
    /// Inputs per scale for int4.
    #[serde(default = "default_group_size")]
    pub group_size: usize,
    /// Quantization-aware fine-tuning (int8) before conversion.
    #[serde(default)]
    pub qat: Option<RecoverConfig>,
}

impl QuantizeConfig {
    /// Checks the table's own fields: the name, a precision other than f32, the calibration
    /// settings, quantization-aware training only for int8. Whether `from` names an earlier
    /// float model and whether its family supports the precision are the experiment's checks.
    pub fn check(&self, images: bool) -> Result<()> {
        let p = format!("quantize.{}", self.name);
        crate::io::check_name("quantize.name", &self.name)?;
        if self.precision == Precision::F32 {
            bad_field(
                &format!("{p}.precision"),
                "expected \"int8\", \"int8-weights\", \"int4-weights\" or \"bf16\"",
            )?;
        }
        if self.calibration_samples == 0 {
            bad_field(
                &format!("{p}.calibration_samples"),
                "the calibration set must hold at least 1 sample",
            )?;
        }
        if !(self.percentile > 50.0 && self.percentile <= 100.0) {
            bad_field(
                &format!("{p}.percentile"),
                &format!(
                    "expected a percentile in (50, 100], got {}",
                    self.percentile
                ),
            )?;
        }
        if self.group_size == 0 {
            bad_field(&format!("{p}.group_size"), "must be at least 1")?;
        }
        if let Some(q) = &self.qat {
            if self.precision != Precision::Int8 {
                bad_field(
                    &format!("{p}.qat"),
                    "quantization-aware training is for precision = \"int8\"",
                )?;
            }
            q.check(&format!("{p}.qat"), images)?;
        }
        Ok(())
    }
}

fn default_percentile() -> f64 {
    99.99
}

fn default_group_size() -> usize {
    32
}

fn default_calibration() -> crate::compress::quant::Calibration {
    crate::compress::quant::Calibration::Minmax
}

/// The stage of one `[[quantize]]` table.
pub struct QuantizeStage {
    /// Its settings.
    pub cfg: QuantizeConfig,
    /// The `[[model]]` table of the multi-task model it quantizes (directly or through earlier
    /// stages), whose tasks train it quantization-aware.
    pub tasks: Option<crate::stages::model::ModelConfig>,
}

impl Stage for QuantizeStage {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn run(&self, store: &mut RunStore) -> Result<()> {
        let st = &self.cfg;
        let file = store.quantized_path(&st.name);
        store.finish_or_make(&st.name, "quantized", file.clone(), "quantized", |store| {
        let splits = &store.splits;
        let (src, src_meta) = store.float(&st.from)?;
        let calib = sample_rows(splits, st.calibration_samples);
        let calib_arg = Some((calib, st.calibration, st.percentile));
        let mut src_meta = src_meta.clone();
        src_meta.name = st.name.clone();
        src_meta.role = "quantized".into();
        src_meta.compression = None;
        src_meta.training = serde_json::Value::Null;
        let ptq = compress::quantize(src, &src_meta, st.precision, calib_arg, st.group_size)?;
        let mut method = match st.precision {
            Precision::Int8 => format!(
                "int8 post-training ({} calibration, {} samples; per-channel weights, per-tensor u8 activations)",
                match st.calibration {
                    quant::Calibration::Minmax => "min/max".to_string(),
                    quant::Calibration::Percentile => format!("{}th-percentile", st.percentile),
                },
                calib.len() / splits.train.dim().max(1)
            ),
            Precision::Int8Weights => "int8 weight-only (per-channel), f32 compute".into(),
            Precision::Int4Weights => format!(
                "int4 weight-only (groups of {}), f32 compute",
                st.group_size
            ),
            Precision::Bf16 => "bf16 weights; bf16 products with f32 sums".into(),
            Precision::F32 => "f32".into(),
        };
        let mut record = StageRecord {
            from: st.from.clone(),
            method: String::new(),
            params_before: src.num_params(),
            weight_sparsity: None,
            before: None,
            teacher: None,
        };
        let any = match &st.qat {
            None => ptq,
            Some(r) => {
                // Quantization-aware training from the PTQ ranges, then conversion with the
                // same activation quantizers the training saw.
                record.before = Some(stage_scores(&ptq, &src_meta.heads, store)?);
                record.teacher = r.teacher.clone();
                let acts = ptq
                    .meta
                    .quantization
                    .as_ref()
                    .map(|q| q.activations.clone())
                    .unwrap_or_default();
                let model = src.duplicate()?;
                let objective = recover_objective(r, self.tasks.as_ref(), store)?;
                store.progress.say(&format!(
                    "{}: quantization-aware training for {} epochs{}",
                    st.name,
                    r.train.epochs,
                    r.teacher
                        .as_ref()
                        .map(|t| format!(" with {t}'s soft targets"))
                        .unwrap_or_default()
                ));
                let ckpt = store.checkpoint_path(&st.name, "qat.ckpt");
                let rec = train::fit(
                    &model,
                    TrainJob {
                        name: &st.name,
                        cfg: &r.train,
                        train: &splits.train,
                        val: &splits.val,
                        objective,
                        fill: splits.normalizer.zero_value(),
                        checkpoint: Some(ckpt.clone()),
                        seed: store.seed,
                        progress: store.progress,
                        hooks: vec![Box::new(quant::FakeQuantization { acts: acts.clone() })],
                    },
                )?;
                let _ = std::fs::remove_file(&ckpt);
                let q = quant::to_int8(&model, &acts)?;
                let mut meta = ptq.meta.clone();
                meta.training =
                    serde_json::to_value(&rec).map_err(|e| Error::Other(e.to_string()))?;
                method = format!("{method}, then quantization-aware training");
                AnyModel {
                    body: Body::Int8(q),
                    meta,
                }
            }
        };
        record.method = method;
        let mut any = any;
        any.meta.compression = Some(record);
        store.progress.say(&format!(
            "{}: {}",
            st.name,
            any.meta
                .compression
                .as_ref()
                .map(|c| c.method.as_str())
                .unwrap_or("")
        ));
        any.save(&file)?;
            Ok(any)
        })
    }
}
