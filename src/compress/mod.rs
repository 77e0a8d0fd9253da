//! Compression after distillation: pruning ([`prune`]), quantization ([`quant`]) with integer
//! kernels ([`crate::kernels::int8`]), and [`AnyModel`], which loads, runs and saves a model file of any
//! precision.
//!
//! File format: a safetensors file with distillery's metadata (see [`crate::models`]). f32
//! models hold `name → F32` tensors. Quantized models record `quantization` in the metadata and
//! hold, for int8, `fc{l}.weight_q` (I8, `[out, in]`), `fc{l}.weight_scale` (F32, `[out]`) and
//! `fc{l}.bias` (F32); for weight-only formats, `{param}.q` (I8, `[channels, inputs]`) or
//! `{param}.q4` (U8, two 4-bit codes per byte, low nibble first, code − 8), `{param}.scale`, and
//! biases under their own names. Quantized files are written gzip-compressed
//! (`*.safetensors.gz`); `distillery export --format safetensors` writes the plain file.

pub mod onnx;
pub mod prune;
pub mod quant;

pub use crate::models::meta::{StageRecord, StageScores};
pub use crate::models::{maybe_gunzip, read_model_file};

use crate::error::{Error, Result};
use crate::eval::Predictor;
use crate::models::{Model, ModelMeta};
use candle_core::{Device, Tensor, Var};
use quant::{Int8Layer, Int8Mlp, Precision, QuantMeta, StoredWeight};
use safetensors::Dtype;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// What runs inference.
pub enum Body {
    /// An f32 model.
    Float(Model),
    /// Integer inference.
    Int8(Int8Mlp),
    /// Weight-only quantized: stored codes, and the dequantized f32 model that runs.
    WeightOnly {
        /// The stored tensors, in parameter order.
        stored: Vec<StoredWeight>,
        /// Dequantized model.
        model: Model,
        /// bf16: the dense weights packed once for the bf16 products (MLPs and CNNs' dense
        /// layers); `None` for the other formats, which compute in f32.
        packed: Option<std::sync::Arc<[crate::kernels::bf16::PackedRhs]>>,
    },
    /// Boosted trees or a decision tree.
    Trees(crate::models::trees::TreeEnsemble),
}

/// A model of any precision with its metadata.
pub struct AnyModel {
    /// The network.
    pub body: Body,
    /// Metadata (spec, normalisation, classes, quantization).
    pub meta: ModelMeta,
}

impl AnyModel {
    /// Wraps an f32 model.
    pub fn float(model: Model, meta: ModelMeta) -> AnyModel {
        AnyModel {
            body: Body::Float(model),
            meta,
        }
    }

    /// The weights' precision.
    pub fn precision(&self) -> Precision {
        self.meta
            .quantization
            .as_ref()
            .map(|q| q.precision)
            .unwrap_or(Precision::F32)
    }

    /// Parameters (weights and biases).
    pub fn num_params(&self) -> usize {
        match &self.body {
            Body::Float(m) | Body::WeightOnly { model: m, .. } => m.num_params(),
            Body::Int8(q) => q.num_params(),
            Body::Trees(t) => t.num_params(),
        }
    }

    /// Bytes of the stored weights.
    pub fn bytes(&self) -> usize {
        match &self.body {
            Body::Float(m) => m.bytes(),
            Body::WeightOnly { stored, .. } => stored.iter().map(|s| s.bytes()).sum(),
            Body::Int8(q) => q.bytes(),
            Body::Trees(t) => t.bytes(),
        }
    }

    /// The f32 model (dequantized for weight-only formats); `None` for int8.
    pub fn float_model(&self) -> Option<&Model> {
        match &self.body {
            Body::Float(m) | Body::WeightOnly { model: m, .. } => Some(m),
            Body::Int8(_) | Body::Trees(_) => None,
        }
    }

    /// Outputs for `x` (`n * input_dim` normalised values), in batches.
    pub fn predict(&self, x: &[f32], batch: usize) -> Result<Vec<f32>> {
        match &self.body {
            Body::WeightOnly {
                model: m,
                packed: Some(p),
                ..
            } => {
                let d = self.meta.spec.input_dim();
                let mut out = Vec::new();
                for chunk in x.chunks(batch.max(1) * d) {
                    out.extend(crate::models::fused::forward_eval_bf16(
                        m,
                        chunk,
                        chunk.len() / d,
                        p,
                    )?);
                }
                Ok(out)
            }
            Body::Float(m) | Body::WeightOnly { model: m, .. } => m.predict(x, batch),
            Body::Int8(q) => {
                let d = self.meta.spec.input_dim();
                let mut out = Vec::new();
                for chunk in x.chunks(batch.max(1) * d) {
                    out.extend(q.forward(chunk, chunk.len() / d));
                }
                Ok(out)
            }
            Body::Trees(t) => {
                let d = t.inputs;
                Ok(t.predict(x, x.len() / d.max(1)))
            }
        }
    }

    /// The model file's bytes (plain safetensors).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut t: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        match &self.body {
            Body::Float(m) => {
                for (name, var) in &m.params {
                    let v = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                    t.push((name.clone(), Dtype::F32, var.dims().to_vec(), f32b(&v)));
                }
            }
            Body::Int8(q) => {
                for (l, layer) in q.layers.iter().enumerate() {
                    t.push((
                        format!("fc{l}.weight_q"),
                        Dtype::I8,
                        vec![layer.n_out, layer.n_in],
                        layer.w_q.iter().map(|&c| c as u8).collect(),
                    ));
                    t.push((
                        format!("fc{l}.weight_scale"),
                        Dtype::F32,
                        vec![layer.n_out],
                        f32b(&layer.w_scale),
                    ));
                    t.push((
                        format!("fc{l}.bias"),
                        Dtype::F32,
                        vec![layer.n_out],
                        f32b(&layer.bias),
                    ));
                }
            }
            Body::Trees(tr) => return crate::models::trees::file_bytes(tr, &self.meta),
            Body::WeightOnly { stored, model, .. } => {
                for (((name, var), s), kind) in
                    model.params.iter().zip(stored).zip(model.param_kinds())
                {
                    let shape = var.dims().to_vec();
                    let (rows, _) = kind.channel_dims(&shape);
                    match s {
                        StoredWeight::F32(v) => t.push((name.clone(), Dtype::F32, shape, f32b(v))),
                        StoredWeight::I8 { q, scales } => {
                            t.push((
                                format!("{name}.q"),
                                Dtype::I8,
                                vec![rows, q.len() / rows],
                                q.iter().map(|&c| c as u8).collect(),
                            ));
                            t.push((
                                format!("{name}.scale"),
                                Dtype::F32,
                                vec![rows],
                                f32b(scales),
                            ));
                        }
                        StoredWeight::Bf16(bits) => t.push((
                            name.clone(),
                            Dtype::BF16,
                            shape,
                            bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
                        )),
                        StoredWeight::I4 { packed, scales } => {
                            t.push((
                                format!("{name}.q4"),
                                Dtype::U8,
                                vec![rows, packed.len() / rows],
                                packed.clone(),
                            ));
                            t.push((
                                format!("{name}.scale"),
                                Dtype::F32,
                                vec![rows, scales.len() / rows],
                                f32b(scales),
                            ));
                        }
                    }
                }
            }
        }
        let json = serde_json::to_string(&self.meta).map_err(|e| Error::Other(e.to_string()))?;
        write_safetensors(&t, &json)
    }

    /// Saves atomically: f32 models as plain safetensors, quantized models gzip-compressed.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_safetensors()?;
        if self.precision() == Precision::F32 {
            crate::io::write_atomic(path, &bytes)
        } else {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(&bytes)
                .and_then(|_| enc.finish())
                .map_err(|e| Error::Other(format!("gzip: {e}")))
                .and_then(|gz| crate::io::write_atomic(path, &gz))
        }
    }
}

impl Predictor for AnyModel {
    fn flops_per_sample(&self) -> Option<f64> {
        match &self.body {
            Body::Float(m) | Body::WeightOnly { model: m, .. } => m.flops_per_sample(),
            // Integer products, or tree walks: no floating-point count to give.
            Body::Int8(_) | Body::Trees(_) => None,
        }
    }

    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
        match &self.body {
            Body::WeightOnly {
                model: m,
                packed: Some(p),
                ..
            } => {
                let rows = x.dim(0)?;
                crate::models::with_slice(x, |v| {
                    crate::models::fused::forward_eval_bf16(m, v, rows, p)
                })?
            }
            Body::Float(m) | Body::WeightOnly { model: m, .. } => m.predict_batch(x),
            Body::Int8(q) => {
                let rows = x.dim(0)?;
                let v = x.flatten_all()?.to_vec1::<f32>()?;
                Ok(q.forward(&v, rows))
            }
            Body::Trees(t) => {
                let rows = x.dim(0)?;
                let v = x.flatten_all()?.to_vec1::<f32>()?;
                Ok(t.predict(&v, rows))
            }
        }
    }
}

pub use crate::models::write_safetensors;

/// The dense weights packed for bf16 inference, for the bf16 format on a family the fused
/// path runs.
fn bf16_packed(
    model: &Model,
    precision: Precision,
) -> Result<Option<std::sync::Arc<[crate::kernels::bf16::PackedRhs]>>> {
    if precision != Precision::Bf16 || !crate::models::fused::eligible(model) {
        return Ok(None);
    }
    Ok(Some(crate::models::fused::pack_bf16(model)?))
}

/// Loads a model file of any precision.
pub fn load_any(path: &Path) -> Result<AnyModel> {
    let bytes = read_model_file(path)?;
    load_any_bytes(&bytes, &path.display().to_string())
}

type RawTensors = HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// Loads a model of any precision from (uncompressed) bytes; `file` names it in errors.
pub fn load_any_bytes(bytes: &[u8], file: &str) -> Result<AnyModel> {
    let meta = crate::models::read_meta(bytes, file)?;
    if meta.spec.arch.is_tree() {
        let trees = crate::models::trees::from_file_bytes(bytes, &meta, file)?;
        return Ok(AnyModel {
            body: Body::Trees(trees),
            meta,
        });
    }
    let Some(qm) = meta.quantization.clone() else {
        let (model, meta) = crate::models::load_model_bytes(bytes, file)?;
        return Ok(AnyModel::float(model, meta));
    };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        Error::Input(format!(
            "{file}: not a valid safetensors model file ({e}); the file may be truncated or corrupt"
        ))
    })?;
    let raw: RawTensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let get = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<&Vec<u8>> {
        let (d, s, b) = raw.get(name).ok_or_else(|| {
            Error::Input(format!(
                "{file}: missing tensor '{name}' (expected {dtype:?} {shape:?})"
            ))
        })?;
        if *d != dtype || s.as_slice() != shape {
            return Err(Error::Input(format!(
                "{file}: tensor '{name}' is {d:?} {s:?}, expected {dtype:?} {shape:?}"
            )));
        }
        Ok(b)
    };
    let as_f32 = |b: &[u8], name: &str| -> Result<Vec<f32>> {
        let v: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(p) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::Input(format!(
                "{file}: tensor '{name}' holds a non-finite value at index {p}"
            )));
        }
        Ok(v)
    };
    let shapes = meta.spec.param_shapes()?;
    match qm.precision {
        Precision::F32 => Err(Error::Input(format!(
            "{file}: quantization.precision = f32 is not a quantized format"
        ))),
        Precision::Int8 => {
            let n = shapes.len() / 2;
            if qm.activations.len() != n {
                return Err(Error::Input(format!(
                    "{file}: {} activation quantizers in the metadata for {n} dense layers",
                    qm.activations.len()
                )));
            }
            let mut layers = Vec::new();
            for l in 0..n {
                let (_, ws) = &shapes[2 * l];
                if ws.len() != 2 {
                    return Err(Error::Input(format!("{file}: int8 models must be MLPs")));
                }
                let (ni, no) = (ws[0], ws[1]);
                let q: Vec<i8> = get(&format!("fc{l}.weight_q"), Dtype::I8, &[no, ni])?
                    .iter()
                    .map(|&b| b as i8)
                    .collect();
                let sn = format!("fc{l}.weight_scale");
                let s = as_f32(get(&sn, Dtype::F32, &[no])?, &sn)?;
                let bn = format!("fc{l}.bias");
                let b = as_f32(get(&bn, Dtype::F32, &[no])?, &bn)?;
                let a = qm.activations[l];
                if !(a.scale.is_finite() && a.scale > 0.0) {
                    return Err(Error::Input(format!(
                        "{file}: layer {l} has activation scale {}, expected a positive number",
                        a.scale
                    )));
                }
                layers.push(Int8Layer::new(ni, no, q, s, b, a));
            }
            Ok(AnyModel {
                body: Body::Int8(Int8Mlp {
                    layers,
                    kernel: crate::kernels::int8::Kernel::detect(),
                }),
                meta,
            })
        }
        Precision::Int8Weights | Precision::Int4Weights | Precision::Bf16 => {
            let group = qm.group_size.unwrap_or(32).max(1);
            let mut stored = Vec::new();
            let mut params = Vec::new();
            for ((name, shape), kind) in shapes.iter().zip(meta.spec.param_kinds()) {
                if !kind.is_weight() {
                    let v = as_f32(get(name, Dtype::F32, shape)?, name)?;
                    params.push((
                        name.clone(),
                        Tensor::from_vec(v.clone(), shape.clone(), &Device::Cpu)?,
                    ));
                    stored.push(StoredWeight::F32(v));
                    continue;
                }
                if qm.precision == Precision::Bf16 {
                    let bits: Vec<u16> = get(name, Dtype::BF16, shape)?
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    let v: Vec<f32> = bits
                        .iter()
                        .map(|&b| crate::kernels::bf16::widen(b))
                        .collect();
                    if let Some(p) = v.iter().position(|x| !x.is_finite()) {
                        return Err(Error::Input(format!(
                            "{file}: tensor '{name}' holds a non-finite value at index {p}"
                        )));
                    }
                    params.push((
                        name.clone(),
                        Tensor::from_vec(v, shape.clone(), &Device::Cpu)?,
                    ));
                    stored.push(StoredWeight::Bf16(bits));
                    continue;
                }
                let (rows, cols) = kind.channel_dims(shape);
                let sn = format!("{name}.scale");
                let (back, sw) = if qm.precision == Precision::Int8Weights {
                    let q: Vec<i8> = get(&format!("{name}.q"), Dtype::I8, &[rows, cols])?
                        .iter()
                        .map(|&b| b as i8)
                        .collect();
                    let scales = as_f32(get(&sn, Dtype::F32, &[rows])?, &sn)?;
                    let back: Vec<f32> = q
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| c as f32 * scales[i / cols])
                        .collect();
                    (back, StoredWeight::I8 { q, scales })
                } else {
                    let groups = cols.div_ceil(group);
                    let packed =
                        get(&format!("{name}.q4"), Dtype::U8, &[rows, cols.div_ceil(2)])?.clone();
                    let scales = as_f32(get(&sn, Dtype::F32, &[rows, groups])?, &sn)?;
                    let back = quant::dequantize_rows_i4(&packed, &scales, rows, cols, group);
                    (back, StoredWeight::I4 { packed, scales })
                };
                let v = quant::from_channel_major(kind, shape, &back);
                params.push((
                    name.clone(),
                    Tensor::from_vec(v, shape.clone(), &Device::Cpu)?,
                ));
                stored.push(sw);
            }
            let params = params
                .into_iter()
                .map(|(n, t)| Ok((n, Var::from_tensor(&t)?)))
                .collect::<Result<Vec<_>>>()?;
            let model = Model {
                spec: meta.spec.clone(),
                params,
            };
            let packed = bf16_packed(&model, qm.precision)?;
            Ok(AnyModel {
                body: Body::WeightOnly {
                    stored,
                    model,
                    packed,
                },
                meta,
            })
        }
    }
}

/// Builds the quantized form of `model`.
pub fn quantize(
    model: &Model,
    meta: &ModelMeta,
    precision: Precision,
    calib: Option<(&[f32], quant::Calibration, f64)>,
    group_size: usize,
) -> Result<AnyModel> {
    let mut meta = meta.clone();
    match precision {
        Precision::F32 => Ok(AnyModel::float(model.duplicate()?, meta)),
        Precision::Int8 => {
            quant::check_int8_arch(&model.spec)?;
            let (x, method, pct) = calib.ok_or_else(|| {
                Error::Input("int8 quantization needs calibration samples".into())
            })?;
            let acts = quant::calibrate(model, x, method, pct)?;
            let q = quant::to_int8(model, &acts)?;
            meta.quantization = Some(QuantMeta {
                precision,
                calibration: Some(match method {
                    quant::Calibration::Minmax => "minmax".into(),
                    quant::Calibration::Percentile => format!("percentile {pct}"),
                }),
                calibration_samples: Some(x.len() / model.spec.input_dim().max(1)),
                group_size: None,
                activations: acts,
            });
            Ok(AnyModel {
                body: Body::Int8(q),
                meta,
            })
        }
        Precision::Int8Weights | Precision::Int4Weights | Precision::Bf16 => {
            let (stored, deq) = quant::weight_only(model, precision, group_size)?;
            meta.quantization = Some(QuantMeta {
                precision,
                calibration: None,
                calibration_samples: None,
                group_size: (precision == Precision::Int4Weights).then_some(group_size),
                activations: Vec::new(),
            });
            let packed = bf16_packed(&deq, precision)?;
            Ok(AnyModel {
                body: Body::WeightOnly {
                    stored,
                    model: deq,
                    packed,
                },
                meta,
            })
        }
    }
}
