//! `distillery bench`: named workloads timed like `trtexec` times an engine, so a user can size
//! a job. Training workloads report samples per second; inference reports median and p90
//! latency; every workload reports the process's peak resident memory.
//!
//! The workloads mirror `bench/reference/bench.py` (PyTorch) exactly: the same shapes, batch
//! size, optimizer and distillation loss on synthetic MNIST-shaped data.

use crate::config::{Arch, TrainConfig};
use crate::error::{Error, Result};
use crate::eval::median;
use crate::models::{self, Model, ModelSpec};
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// A workload's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchResult {
    /// Workload name.
    pub workload: String,
    /// Timed steps (training) or calls (inference).
    pub steps: usize,
    /// Training throughput.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_per_s: Option<f64>,
    /// Median latency of one call (inference at batch 1), microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us_p50: Option<f64>,
    /// 90th percentile latency (inference at batch 1), microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us_p90: Option<f64>,
    /// Median latency at batch 256, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us_p50_b256: Option<f64>,
    /// 90th percentile latency at batch 256, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us_p90_b256: Option<f64>,
    /// Achieved GFLOP/s (GEMM workload, or training at 6 FLOPs per weight per sample).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// Peak resident set size of the process, bytes.
    pub peak_rss_bytes: u64,
    /// The CPU it ran on (`model name` in /proc/cpuinfo).
    #[serde(default)]
    pub cpu: String,
    /// The instruction sets detected that distillery's kernels can use.
    #[serde(default)]
    pub isa: Vec<String>,
    /// The kernel path the workload took.
    #[serde(default)]
    pub kernel: String,
    /// Test accuracy of the fitted model (tree workloads: equal accuracy is part of the
    /// comparison).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Seconds per fit (tree training).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit_seconds: Option<f64>,
    /// Batch-256 inference's rate on the model's products (`infer*`): 2 FLOPs (int8: integer
    /// operations) per weight per sample, over the median batch-256 latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops_b256: Option<f64>,
    /// The machine's own 1024³ product rate in the same precision, measured in the same run
    /// (`infer*`): `kernels::gemm` (f32), `kernels::bf16` on bf16 operands, `kernels::int8`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemm_gflops: Option<f64>,
    /// `gflops_b256 / gemm_gflops`: how close batch-256 inference runs to the product rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemm_fraction_b256: Option<f64>,
    /// The collectives' times by message size (`collectives`, under `mpirun`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collectives: Vec<CollectiveTiming>,
}

/// Median times of the collectives distillery uses, for one message size.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CollectiveTiming {
    /// Ranks.
    pub ranks: usize,
    /// Bytes of the buffer each rank holds (f32 values × 4).
    pub bytes: usize,
    /// Median seconds of [`crate::dist::Comm::sum_in_rank_order`] (the data-parallel gradient
    /// sum) on that buffer.
    pub sum_seconds: f64,
    /// Median seconds of an all-gather in which every rank sends that many bytes (the sub-model
    /// groups' exchanges).
    pub all_gather_seconds: f64,
}

/// The CPU's model name (Linux), or the architecture.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The instruction sets detected that the GEMM and distillery's kernels choose between.
pub fn isa() -> Vec<String> {
    #[allow(unused_mut)]
    let mut v: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let mut add = |name: &str, on: bool| {
            if on {
                v.push(name.to_string());
            }
        };
        for name in crate::kernels::Cpu::detect().names() {
            add(name, true);
        }
        // AMX detection is unstable in std: read the kernel's flags instead.
        let amx = std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| c.split_whitespace().any(|w| w == "amx_tile"))
            .unwrap_or(false);
        add("amx-tile", amx);
    }
    v
}

/// The kernel path of a workload on this CPU.
fn kernel_path(workload: &str, isa: &[String]) -> String {
    let has = |f: &str| isa.iter().any(|x| x == f);
    let gemm = if has("avx512f") {
        "gemm crate AVX-512 (x86-v4)"
    } else if has("avx2") && has("fma") {
        "gemm crate AVX2+FMA"
    } else {
        "gemm crate portable"
    };
    // The batch-1 GEMV, the element-wise passes and the optimizer ([`crate::kernels`]).
    let own = format!("own kernels {}", crate::kernels::level_name());
    match workload {
        "gemm" => format!("candle matmul → {gemm}"),
        "infer-int8" => format!(
            "int8 {} (batch 256), {own} (batch 1)",
            crate::kernels::int8::Kernel::detect().name()
        ),
        "bert-teacher" | "bert-corpus" => format!(
            "native BERT: {gemm}, element-wise {}",
            crate::kernels::level_name()
        ),
        // The teacher says what runs it (`onnx_workload`).
        "onnx-teacher" | "onnx-teacher-cnn" => String::new(),
        "gemm-bf16" => format!("own bf16 GEMM: {}", crate::kernels::bf16::path()),
        "train-mlp-bf16" | "train-student-bf16" | "train-cnn-bf16" | "infer-bf16" => format!(
            "dense products: own bf16 GEMM {}; {gemm} for the rest, {own}",
            crate::kernels::bf16::path()
        ),
        "train-trees" | "infer-trees" => format!(
            "own histogram GBDT, {} rayon threads",
            rayon::current_num_threads()
        ),
        _ => format!("{gemm}, {own}"),
    }
}

/// Runs `f` until at least a second has passed and at least `calls` calls were made (20 for
/// the short workloads; fewer where one call takes seconds): both sides of a comparison are
/// timed at their steady state (thread pools up, caches and allocator warm).
fn warm_up(calls: usize, mut f: impl FnMut() -> Result<()>) -> Result<()> {
    let t0 = Instant::now();
    let mut n = 0;
    while n < calls || t0.elapsed().as_secs_f64() < 1.0 {
        f()?;
        n += 1;
    }
    Ok(())
}

/// The workloads.
pub const WORKLOADS: &[&str] = &[
    "train-mlp",
    "train-student",
    "train-cnn",
    "infer",
    "infer-int8",
    "gemm",
    "train-mlp-bf16",
    "train-student-bf16",
    "train-cnn-bf16",
    "infer-bf16",
    "gemm-bf16",
    "bert-teacher",
    "bert-corpus",
    "onnx-teacher",
    "onnx-teacher-cnn",
    "train-trees",
    "infer-trees",
    "collectives",
];

/// The tree workloads' data: UCI letter recognition, rows in file order, the first
/// `TREE_TRAIN` for training and the rest for testing (`bench/reference/trees.py` reads the
/// same), raw feature values.
const TREE_DATA: &str = "data/uci/letterrecognition.csv.gz";
const TREE_TRAIN: usize = 16_000;

/// The tree workloads' model: LightGBM's defaults with 100 rounds of 31 leaves.
fn tree_settings() -> crate::models::boost::TreeSettings {
    crate::models::boost::TreeSettings::boosted_defaults()
}

/// Letter recognition split for the tree workloads: (train x, train labels, test x, test
/// labels, features, classes).
#[allow(clippy::type_complexity)]
fn tree_data() -> Result<(Vec<f32>, Vec<u32>, Vec<f32>, Vec<u32>, usize, usize)> {
    let opts = crate::data::csv::CsvOptions {
        label: "lettr".into(),
        task: crate::data::Task::Classification,
        image_shape: None,
        extra: Vec::new(),
    };
    let data = crate::data::csv::read_csv(Path::new(TREE_DATA), &opts, None)?;
    let (d, n) = (data.dim(), data.len());
    let crate::data::Targets::Classes { labels, names } = &data.targets else {
        return Err(Error::Other("letter data: expected classes".into()));
    };
    let cut = TREE_TRAIN.min(n);
    Ok((
        data.x[..cut * d].to_vec(),
        labels[..cut].to_vec(),
        data.x[cut * d..].to_vec(),
        labels[cut..].to_vec(),
        d,
        names.len(),
    ))
}

fn fit_letter_trees(
    x: &[f32],
    y: &[u32],
    d: usize,
    k: usize,
) -> Result<crate::models::trees::TreeEnsemble> {
    use crate::models::boost::{fit, FitData, Labels};
    let data = FitData {
        x,
        rows: y.len(),
        inputs: d,
        labels: Labels::Classes {
            labels: y,
            classes: k,
        },
        label_weight: 1.0,
        soft: None,
    };
    Ok(fit(&tree_settings(), &data, None, None, &mut |_| {})?.ensemble)
}

fn tree_accuracy(t: &crate::models::trees::TreeEnsemble, x: &[f32], y: &[u32]) -> f64 {
    let out = t.predict(x, y.len());
    let right = out
        .chunks_exact(t.outputs)
        .zip(y)
        .filter(|(z, &c)| crate::eval::argmax(z) == c as usize)
        .count();
    right as f64 / y.len().max(1) as f64
}

/// Fits 100 rounds of 31-leaf trees on letter recognition `steps` times: the median seconds
/// per fit, and training rows per second.
fn train_trees_workload(steps: usize) -> Result<BenchResult> {
    let (x, y, tx, ty, d, k) = tree_data()?;
    let mut last = fit_letter_trees(&x, &y, d, k)?; // warm-up (thread pool, allocator)
    let mut t = Vec::new();
    for _ in 0..steps {
        let t0 = Instant::now();
        last = fit_letter_trees(&x, &y, d, k)?;
        t.push(t0.elapsed().as_secs_f64());
    }
    let m = median(&mut t);
    Ok(BenchResult {
        workload: "train-trees".into(),
        steps,
        samples_per_s: Some(y.len() as f64 / m),
        fit_seconds: Some(m),
        accuracy: Some(tree_accuracy(&last, &tx, &ty)),
        peak_rss_bytes: peak_rss_bytes(),
        ..Default::default()
    })
}

/// Prediction of the fitted letter model at batch 1 and 256 (raw scores, as LightGBM's
/// `raw_score=True`).
fn infer_trees_workload(steps: usize) -> Result<BenchResult> {
    let (x, y, tx, ty, d, k) = tree_data()?;
    let model = fit_letter_trees(&x, &y, d, k)?;
    let n = ty.len();
    let timed = |b: usize| -> Result<(f64, f64)> {
        let rows = |i: usize| {
            let s = (i * b) % (n - b + 1);
            &tx[s * d..(s + b) * d]
        };
        let mut i = 0;
        warm_up(20, || {
            std::hint::black_box(model.predict(rows(i), b));
            i += 1;
            Ok(())
        })?;
        let mut ts = Vec::with_capacity(steps);
        for j in 0..steps {
            let xb = rows(j);
            let t0 = Instant::now();
            std::hint::black_box(model.predict(xb, b));
            ts.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        Ok((median(&mut ts.clone()), percentile(&mut ts, 0.9)))
    };
    let (p50, p90) = timed(1)?;
    let (q50, q90) = timed(256)?;
    Ok(BenchResult {
        workload: "infer-trees".into(),
        steps,
        latency_us_p50: Some(p50),
        latency_us_p90: Some(p90),
        latency_us_p50_b256: Some(q50),
        latency_us_p90_b256: Some(q90),
        accuracy: Some(tree_accuracy(&model, &tx, &ty)),
        peak_rss_bytes: peak_rss_bytes(),
        ..Default::default()
    })
}

/// Emails of the `bert-corpus` workload: the first `BERT_CORPUS` of the committed SpamAssassin
/// file, read the same way by `bench/reference/bench.py`.
pub const BERT_CORPUS: usize = 256;

/// The BERT teacher workload's input: `BERT_BATCH` texts of `BERT_TOKENS` tokens each
/// (`[CLS]`, ids drawn from the vocabulary, `[SEP]`), the same in `bench/reference/bench.py`.
pub const BERT_TOKENS: usize = 128;
/// Texts per forward pass in the BERT teacher workload.
pub const BERT_BATCH: usize = 32;

/// Token ids of the BERT workload: row `r`, position `j` holds
/// `1000 + (r * 7919 + j * 104729) % 20000` between `[CLS]` (101) and `[SEP]` (102).
pub fn bert_bench_ids(rows: usize, len: usize) -> Vec<Vec<u32>> {
    (0..rows)
        .map(|r| {
            let mut v = vec![101u32];
            v.extend((1..len - 1).map(|j| 1000 + ((r * 7919 + j * 104729) % 20000) as u32));
            v.push(102);
            v
        })
        .collect()
}

/// Texts per second of the BERT teacher in `dir` (all-MiniLM-L6-v2 by default) on fixed-length
/// inputs: tokenized already, so the figure is the encoder's forward pass and pooling.
fn bert_workload(dir: Option<&Path>, steps: usize) -> Result<BenchResult> {
    let dir = dir.unwrap_or(Path::new("models/all-MiniLM-L6-v2"));
    let enc = crate::teachers::bert::BertEncoder::load(
        dir,
        Some(BERT_TOKENS),
        crate::teachers::bert::Pooling::Auto,
        None,
    )?;
    let ids = bert_bench_ids(BERT_BATCH, BERT_TOKENS);
    // Warm up by time (at least 1 s and 2 calls), as the reference does.
    warm_up(2, || enc.embed_ids(&ids).map(|_| ()))?;
    let mut t = Vec::new();
    for _ in 0..steps {
        let t0 = Instant::now();
        enc.embed_ids(&ids)?;
        t.push(t0.elapsed().as_secs_f64());
    }
    let m = median(&mut t);
    Ok(BenchResult {
        workload: "bert-teacher".into(),
        steps,
        samples_per_s: Some(BERT_BATCH as f64 / m),
        latency_us_p50: None,
        latency_us_p90: None,
        latency_us_p50_b256: None,
        latency_us_p90_b256: None,
        gflops: None,
        peak_rss_bytes: peak_rss_bytes(),
        ..Default::default()
    })
}

/// The first `n` texts of the committed SpamAssassin file (`data/text/spam-assassin.jsonl.gz`).
pub fn corpus_texts(n: usize) -> Result<Vec<String>> {
    let path = Path::new("data/text/spam-assassin.jsonl.gz");
    let raw = crate::io::read_file(path)?;
    let bytes = crate::data::csv::maybe_gunzip(&raw, &path.display().to_string(), 1 << 30)?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
            v["text"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Input(format!("{}: a line without text", path.display())))
        })
        .collect()
}

/// Texts per second of the BERT teacher (all-MiniLM-L6-v2 by default, its own 256-token limit)
/// embedding real emails of every length, tokenizing included, in batches of `BERT_BATCH`:
/// what computing a teacher's cache costs.
fn bert_corpus_workload(dir: Option<&Path>, steps: usize) -> Result<BenchResult> {
    let dir = dir.unwrap_or(Path::new("models/all-MiniLM-L6-v2"));
    let enc = crate::teachers::bert::BertEncoder::load(
        dir,
        None,
        crate::teachers::bert::Pooling::Auto,
        None,
    )?;
    let texts = corpus_texts(BERT_CORPUS)?;
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    warm_up(1, || enc.embed(&refs, BERT_BATCH).map(|_| ()))?;
    let mut t = Vec::new();
    for _ in 0..steps {
        let t0 = Instant::now();
        enc.embed(&refs, BERT_BATCH)?;
        t.push(t0.elapsed().as_secs_f64());
    }
    let m = median(&mut t);
    Ok(BenchResult {
        workload: "bert-corpus".into(),
        steps,
        samples_per_s: Some(texts.len() as f64 / m),
        peak_rss_bytes: peak_rss_bytes(),
        ..Default::default()
    })
}

/// Latency of an ONNX teacher (the committed PyTorch-made digits MLP, or the MNIST CNN, by
/// default) at batch 1 and 256, run as a teacher runs it: lowered onto our kernels when it can
/// be, in tract otherwise (`DISTILLERY_ONNX_TRACT` forces tract); `kernel` says which.
fn onnx_workload(workload: &str, file: Option<&Path>, steps: usize) -> Result<BenchResult> {
    use crate::teachers::Teacher;
    // The PyTorch-made digits MLP (64-128-64-10), or the MNIST CNN of the cross-domain
    // showcase (784 raw pixels, two 5×5 conv blocks, a dense layer).
    let (default, dim) = match workload {
        "onnx-teacher-cnn" => ("data/teachers/mnist-cnn.onnx", 784),
        _ => ("data/teachers/digits-torch-mlp.onnx", 64),
    };
    let file = file.unwrap_or(Path::new(default));
    let t = crate::teachers::OnnxTeacher::load(
        file,
        dim,
        crate::teachers::OnnxInput::Raw,
        0,
        crate::data::Normalizer::None,
    )?;
    let timed = |b: usize| -> Result<(f64, f64)> {
        let x: Vec<f32> = (0..b * dim).map(|i| (i % 17) as f32).collect();
        warm_up(5, || t.predict_rows(&x, b).map(|_| ()))?;
        let mut ts = Vec::new();
        for _ in 0..steps {
            let t0 = Instant::now();
            t.predict_rows(&x, b)?;
            ts.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        Ok((percentile(&mut ts.clone(), 0.5), percentile(&mut ts, 0.9)))
    };
    let (p50, p90) = timed(1)?;
    let (q50, q90) = timed(256)?;
    Ok(BenchResult {
        workload: workload.into(),
        steps,
        samples_per_s: None,
        latency_us_p50: Some(p50),
        latency_us_p90: Some(p90),
        latency_us_p50_b256: Some(q50),
        latency_us_p90_b256: Some(q90),
        gflops: None,
        peak_rss_bytes: peak_rss_bytes(),
        kernel: t.runtime().to_string(),
        ..Default::default()
    })
}

/// The machine's own 1024×1024×1024 product rate in a precision, GFLOP/s (int8: giga integer
/// operations), the median of `reps` products after warm-up: what batch-256 inference is
/// measured against (`gemm_fraction_b256`).
fn own_gemm_rate(to: Option<crate::compress::quant::Precision>, reps: usize) -> f64 {
    use crate::compress::quant::Precision;
    use crate::kernels::{bf16, gemm, int8};
    let n = 1024usize;
    let mut rng = Rng::new(4);
    let mut go: Box<dyn FnMut()> = match to {
        Some(Precision::Bf16) => {
            let mut bits = || -> Vec<u16> {
                (0..n * n)
                    .map(|_| bf16::round_bits(rng.uniform()) as u16)
                    .collect()
            };
            let (a, b) = (bits(), bits());
            let mut c = vec![0f32; n * n];
            Box::new(move || bf16::matmul_bits(&mut c, n, n, n, false, &a, &b))
        }
        Some(Precision::Int8) => {
            let w: Vec<i8> = (0..n * n)
                .map(|_| (rng.below(255) as i32 - 127) as i8)
                .collect();
            let packed = int8::PackedI8::pack(&w, n, n);
            let x: Vec<u8> = (0..n * packed.k_padded())
                .map(|_| rng.below(256) as u8)
                .collect();
            let mut out = vec![0i32; n * packed.n_padded()];
            let kernel = int8::Kernel::detect();
            Box::new(move || int8::gemm_u8i8(kernel, &x, n, &packed, &mut out))
        }
        _ => {
            let a: Vec<f32> = (0..n * n).map(|_| rng.uniform()).collect();
            let b: Vec<f32> = (0..n * n).map(|_| rng.uniform()).collect();
            let mut c = vec![0f32; n * n];
            Box::new(move || gemm::matmul(&mut c, n, n, n, false, &a, n, 1, &b, n, 1))
        }
    };
    let _ = warm_up(5, || {
        go();
        Ok(())
    });
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            go();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    2.0 * (n * n * n) as f64 / median(&mut t) / 1e9
}

/// Peak resident set size (VmHWM) of this process in bytes; 0 where /proc is unavailable.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let idx = ((v.len() - 1) as f64 * p).round() as usize;
    v[idx]
}

fn mlp_spec(hidden: &[usize]) -> ModelSpec {
    ModelSpec {
        arch: Arch::mlp(hidden.to_vec()),
        input_shape: vec![1, 28, 28],
        outputs: 10,
    }
}

fn lenet_spec() -> ModelSpec {
    ModelSpec {
        arch: Arch::Cnn(crate::models::cnn::CnnArch {
            hidden: vec![120, 84],
            dropout: 0.0,
            input_dropout: 0.0,
            channels: vec![6, 16],
            kernel: 5,
        }),
        input_shape: vec![1, 28, 28],
        outputs: 10,
    }
}

/// Multiply-accumulates per sample of the dense and conv layers (the family's graph,
/// [`crate::models::graph::Graph::flops`], halved).
fn macs_per_sample(m: &Model) -> f64 {
    use crate::teachers::Teacher;
    m.flops_per_sample().unwrap_or(0.0) / 2.0
}

/// One training workload: batch 128, Adam (lr 1e-3), loss 0.9·T²·KL(teacher ‖ student) at
/// T = 4 plus 0.1·CE, with fixed synthetic teacher logits.
fn train_workload(
    name: &str,
    spec: ModelSpec,
    steps: usize,
    precision: crate::kernels::bf16::MatmulPrecision,
) -> Result<BenchResult> {
    let batch = 128usize;
    let d = spec.input_dim();
    let mut rng = Rng::new(1);
    let model = Model::new(spec, &mut rng)?;
    let cfg = TrainConfig {
        lr: 1e-3,
        ..TrainConfig::default()
    };
    // A pool of 8 synthetic batches, cycled, so data generation is not timed.
    // Inputs, labels and the one soft term's targets.
    type Batch = (Vec<f32>, Vec<u32>, Vec<Vec<f32>>);
    let pool: Vec<Batch> = (0..8)
        .map(|_| {
            let x: Vec<f32> = (0..batch * d).map(|_| rng.uniform()).collect();
            let y: Vec<u32> = (0..batch).map(|_| rng.below(10) as u32).collect();
            let t: Vec<f32> = (0..batch * 10)
                .map(|_| rng.uniform_range(-3.0, 3.0))
                .collect();
            (x, y, vec![t])
        })
        .collect();
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    // The training loop's own step (`train::Stepper`): the fused path where the family has
    // one, candle autograd otherwise.
    let cfg = TrainConfig { precision, ..cfg };
    let none = crate::data::Dataset::new(
        Vec::new(),
        vec![d],
        crate::data::Targets::Values(Vec::new()),
    );
    let mut stepper = crate::train::Stepper::new(
        &model,
        crate::train::TrainJob {
            name,
            cfg: &cfg,
            train: &none,
            val: &none,
            objective: crate::train::Objective {
                label_weight: 0.1,
                soft: vec![crate::train::SoftTerm {
                    signal: crate::train::TeacherSignal::Cached(Vec::new().into()),
                    temperature: 4.0,
                    weight: 0.9,
                    loss: crate::losses::SoftLoss::Kd,
                }],
                hint: None,
                val_targets: None,
                teacher_val: None,
                anneal: false,
                tasks: Vec::new(),
            },
            fill: 0.0,
            checkpoint: None,
            seed: 1,
            progress: crate::progress::Progress::Quiet,
            hooks: Vec::new(),
        },
    )?;
    let mut step_rng = Rng::new(2);
    let mut step = |i: usize, phases: &mut [Vec<f64>; 3]| -> Result<()> {
        let (x, y, t) = &pool[i % pool.len()];
        let (_, secs) = stepper.step(x, y, t, 1e-3, &mut step_rng)?;
        for (p, s) in phases.iter_mut().zip(secs) {
            p.push(s * 1e3);
        }
        Ok(())
    };
    let mut i = 0;
    warm_up(20, || {
        i += 1;
        step(i, &mut phases)
    })?;
    phases.iter_mut().for_each(Vec::clear);
    let breakdown = std::env::var_os("DISTILLERY_BENCH_BREAKDOWN").is_some();
    crate::kernels::gemm::profile::enable(breakdown);
    let t0 = Instant::now();
    for i in 0..steps {
        step(i, &mut phases)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    crate::kernels::gemm::profile::enable(false);
    if breakdown {
        let [f, b, o] = &mut phases;
        eprintln!(
            "{name}: median per step: forward {:.2} ms, loss and backward {:.2} ms, optimizer {:.2} ms",
            median(f),
            median(b),
            median(o)
        );
        // Per GEMM shape (the step's dense products, in order of first use).
        let mut shapes: Vec<((usize, usize, usize), Vec<f64>)> = Vec::new();
        for (m, n, k, s) in crate::kernels::gemm::profile::take() {
            match shapes.iter_mut().find(|(sh, _)| *sh == (m, n, k)) {
                Some((_, v)) => v.push(s),
                None => shapes.push(((m, n, k), vec![s])),
            }
        }
        for ((m, n, k), mut t) in shapes {
            let per_step = t.len() as f64 / steps as f64;
            let med = median(&mut t);
            eprintln!(
                "  GEMM {m}×{n}×{k} (×{per_step:.0} per step): median {:.3} ms, {:.0} GFLOP/s",
                med * 1e3,
                2.0 * (m * n * k) as f64 / med / 1e9
            );
        }
    }
    let sps = (steps * batch) as f64 / secs;
    Ok(BenchResult {
        workload: name.into(),
        steps,
        samples_per_s: Some(sps),
        latency_us_p50: None,
        latency_us_p90: None,
        latency_us_p50_b256: None,
        latency_us_p90_b256: None,
        gflops: Some(6.0 * macs_per_sample(&model) * sps / 1e9),
        peak_rss_bytes: peak_rss_bytes(),
        ..Default::default()
    })
}

/// Inference at batch 1 and 256 through the model files' own path: f32, or the model
/// converted to `int8` (integer inference) or `bf16`.
fn infer_workload(
    model_path: Option<&Path>,
    steps: usize,
    to: Option<crate::compress::quant::Precision>,
) -> Result<BenchResult> {
    use crate::compress::{self, AnyModel};
    use crate::eval::Predictor;
    let mut model: AnyModel = match model_path {
        Some(p) => compress::load_any(p)?,
        None => {
            let m = Model::new(mlp_spec(&[1200, 1200]), &mut Rng::new(1))?;
            let meta = models::ModelMeta {
                name: "bench".into(),
                role: "teacher".into(),
                spec: m.spec.clone(),
                task: crate::data::Task::Classification,
                class_names: None,
                normalizer: crate::data::Normalizer::None,
                target_scale: None,
                training: serde_json::Value::Null,
                quantization: None,
                compression: None,
                text: None,
                heads: Vec::new(),
            };
            AnyModel::float(m, meta)
        }
    };
    let d = model.meta.spec.input_dim();
    let mut rng = Rng::new(2);
    // Multiply-adds per sample of the float model (none for a model loaded already quantized).
    let macs = model.float_model().map(macs_per_sample);
    if let Some(to) = to {
        let f = model.float_model().ok_or_else(|| {
            Error::Input(format!(
                "infer-{}: the model is already int8; use `infer`",
                to.as_str()
            ))
        })?;
        let calib: Vec<f32> = (0..256 * d).map(|_| rng.uniform()).collect();
        model = compress::quantize(
            f,
            &model.meta,
            to,
            Some((&calib, compress::quant::Calibration::Minmax, 100.0)),
            32,
        )?;
    }
    let time = |b: usize, rng: &mut Rng| -> Result<(f64, f64)> {
        let x = Tensor::from_vec(
            (0..b * d).map(|_| rng.uniform()).collect::<Vec<f32>>(),
            (b, d),
            &Device::Cpu,
        )?;
        warm_up(20, || model.predict_batch(&x).map(|_| ()))?;
        let mut t = Vec::with_capacity(steps);
        for _ in 0..steps {
            let t0 = Instant::now();
            model.predict_batch(&x)?;
            t.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        let p90 = percentile(&mut t, 0.9);
        Ok((median(&mut t), p90))
    };
    let (p50, p90) = time(1, &mut rng)?;
    let (q50, q90) = time(256, &mut rng)?;
    let gflops_b256 = macs.map(|m| 2.0 * m * 256.0 / (q50 * 1e-6) / 1e9);
    let gemm_gflops = own_gemm_rate(to, steps.clamp(5, 30));
    Ok(BenchResult {
        workload: match to {
            Some(p) => format!("infer-{}", p.as_str()),
            None => "infer".into(),
        },
        steps,
        samples_per_s: None,
        latency_us_p50: Some(p50),
        latency_us_p90: Some(p90),
        latency_us_p50_b256: Some(q50),
        latency_us_p90_b256: Some(q90),
        gflops: None,
        gflops_b256,
        gemm_gflops: Some(gemm_gflops),
        gemm_fraction_b256: gflops_b256.map(|g| g / gemm_gflops),
        peak_rss_bytes: peak_rss_bytes(),
        ..Default::default()
    })
}

/// Peak matrix-multiply rate: the median of `steps` 1024×1024×1024 f32 GEMMs through candle.
fn gemm_workload(steps: usize) -> Result<BenchResult> {
    let n = 1024usize;
    let mut rng = Rng::new(3);
    let a = Tensor::from_vec(
        (0..n * n).map(|_| rng.uniform()).collect::<Vec<f32>>(),
        (n, n),
        &Device::Cpu,
    )?;
    let b = Tensor::from_vec(
        (0..n * n).map(|_| rng.uniform()).collect::<Vec<f32>>(),
        (n, n),
        &Device::Cpu,
    )?;
    warm_up(20, || a.matmul(&b).map(|_| ()).map_err(Into::into))?;
    let mut t = Vec::new();
    for _ in 0..steps {
        let t0 = Instant::now();
        let c = a.matmul(&b)?;
        drop(c);
        t.push(t0.elapsed().as_secs_f64());
    }
    let m = median(&mut t);
    Ok(BenchResult {
        workload: "gemm".into(),
        steps,
        samples_per_s: None,
        latency_us_p50: Some(m * 1e6),
        latency_us_p90: None,
        latency_us_p50_b256: None,
        latency_us_p90_b256: None,
        gflops: Some(2.0 * (n * n * n) as f64 / m / 1e9),
        peak_rss_bytes: peak_rss_bytes(),
        ..Default::default()
    })
}

/// The bf16 matrix product ([`crate::kernels::bf16`]) at 1024×1024×1024 on operands already in
/// bf16 (as the reference's `a.bfloat16() @ b.bfloat16()`), f32 output.
fn gemm_bf16_workload(steps: usize) -> Result<BenchResult> {
    let n = 1024usize;
    let mut rng = Rng::new(3);
    let mut bits = || -> Vec<u16> {
        (0..n * n)
            .map(|_| crate::kernels::bf16::round_bits(rng.uniform()) as u16)
            .collect()
    };
    let (a, b) = (bits(), bits());
    let mut c = vec![0f32; n * n];
    let mut go = || crate::kernels::bf16::matmul_bits(&mut c, n, n, n, false, &a, &b);
    warm_up(20, || {
        go();
        Ok(())
    })?;
    let mut t = Vec::new();
    for _ in 0..steps {
        let t0 = Instant::now();
        go();
        t.push(t0.elapsed().as_secs_f64());
    }
    let m = median(&mut t);
    if std::env::var_os("DISTILLERY_BENCH_BREAKDOWN").is_some() {
        match crate::kernels::bf16::breakdown(n, 30) {
            Some(parts) => {
                eprintln!("gemm-bf16: where the time goes (medians of 30 calls):");
                for (what, ms, gflops) in parts {
                    if gflops > 0.0 {
                        eprintln!("  {what}: {ms:.3} ms, {gflops:.0} GFLOP/s");
                    } else {
                        eprintln!("  {what}: {ms:.3} ms");
                    }
                }
                eprintln!(
                    "  whole product, {} threads: {:.3} ms, {:.0} GFLOP/s",
                    rayon::current_num_threads(),
                    m * 1e3,
                    2.0 * (n * n * n) as f64 / m / 1e9
                );
            }
            None => eprintln!("gemm-bf16: no breakdown on the portable path"),
        }
    }
    Ok(BenchResult {
        workload: "gemm-bf16".into(),
        steps,
        latency_us_p50: Some(m * 1e6),
        gflops: Some(2.0 * (n * n * n) as f64 / m / 1e9),
        peak_rss_bytes: peak_rss_bytes(),
        ..Default::default()
    })
}

/// Times the collectives on buffers of 1 KiB to 16 MiB per rank (run it under
/// `mpirun -np N distillery bench collectives`; in one process every time is ~0). The fit of
/// `docs/SCALING.md`'s cost model (latency and bandwidth of the link) comes from these.
fn collectives_workload(steps: usize) -> Result<BenchResult> {
    let w = crate::dist::world();
    let mut rows = Vec::new();
    for n in [256usize, 4096, 65536, 1 << 18, 1 << 20, 1 << 22] {
        let mut buf = vec![1.0f32; n];
        let reps = if n >= 1 << 20 { steps.min(10) } else { steps };
        let mut sum = Vec::new();
        let mut gather = Vec::new();
        for i in 0..=reps {
            w.barrier();
            let t = Instant::now();
            w.sum_in_rank_order(&mut buf);
            let a = t.elapsed().as_secs_f64();
            w.barrier();
            let t = Instant::now();
            let g = w.all_gather_f32(&buf);
            let b = t.elapsed().as_secs_f64();
            std::hint::black_box(g);
            buf.iter_mut().for_each(|v| *v = 1.0);
            if i > 0 {
                sum.push(a);
                gather.push(b);
            }
        }
        rows.push(CollectiveTiming {
            ranks: w.size(),
            bytes: 4 * n,
            sum_seconds: median(&mut sum),
            all_gather_seconds: median(&mut gather),
        });
    }
    Ok(BenchResult {
        workload: "collectives".into(),
        steps,
        peak_rss_bytes: peak_rss_bytes(),
        collectives: rows,
        ..Default::default()
    })
}

/// Runs a named workload.
pub fn run(workload: &str, steps: usize, model: Option<&Path>) -> Result<BenchResult> {
    if steps == 0 {
        return Err(Error::Input("--steps: must be at least 1".into()));
    }
    use crate::compress::quant;
    use crate::kernels::bf16::MatmulPrecision::{Bf16, F32};
    let mut r = match workload {
        "train-mlp" => train_workload(workload, mlp_spec(&[1200, 1200]), steps, F32),
        "train-student" => train_workload(workload, mlp_spec(&[800, 800]), steps, F32),
        "train-cnn" => train_workload(workload, lenet_spec(), steps, F32),
        "train-mlp-bf16" => train_workload(workload, mlp_spec(&[1200, 1200]), steps, Bf16),
        "train-student-bf16" => train_workload(workload, mlp_spec(&[800, 800]), steps, Bf16),
        "train-cnn-bf16" => train_workload(workload, lenet_spec(), steps, Bf16),
        "gemm-bf16" => gemm_bf16_workload(steps),
        "infer" => infer_workload(model, steps, None),
        "infer-int8" => infer_workload(model, steps, Some(quant::Precision::Int8)),
        "infer-bf16" => infer_workload(model, steps, Some(quant::Precision::Bf16)),
        "gemm" => gemm_workload(steps),
        "bert-teacher" => bert_workload(model, steps),
        "bert-corpus" => bert_corpus_workload(model, steps),
        "onnx-teacher" | "onnx-teacher-cnn" => onnx_workload(workload, model, steps),
        "train-trees" => train_trees_workload(steps),
        "infer-trees" => infer_trees_workload(steps),
        "collectives" => collectives_workload(steps),
        other => Err(Error::Input(format!(
            "unknown workload '{other}'; expected one of: {}",
            WORKLOADS.join(", ")
        ))),
    }?;
    r.cpu = cpu_name();
    r.isa = isa();
    if r.kernel.is_empty() {
        r.kernel = kernel_path(workload, &r.isa);
    }
    Ok(r)
}

impl BenchResult {
    /// Human-readable lines.
    pub fn describe(&self) -> String {
        let mut s = format!("{}: {} steps", self.workload, self.steps);
        if let Some(v) = self.samples_per_s {
            s += &format!(", {v:.0} samples/s");
        }
        if let (Some(a), Some(b)) = (self.latency_us_p50, self.latency_us_p90) {
            s += &format!(", batch 1: p50 {a:.1} µs, p90 {b:.1} µs");
        }
        if let (Some(a), Some(b)) = (self.latency_us_p50_b256, self.latency_us_p90_b256) {
            s += &format!(", batch 256: p50 {a:.0} µs, p90 {b:.0} µs");
        }
        if let Some(g) = self.gflops {
            s += &format!(", {g:.1} GFLOP/s");
        }
        if let (Some(g), Some(r), Some(f)) =
            (self.gflops_b256, self.gemm_gflops, self.gemm_fraction_b256)
        {
            s += &format!(
                ", batch 256 at {g:.0} GFLOP/s = {:.0}% of this machine's 1024³ product ({r:.0})",
                100.0 * f
            );
        }
        if let Some(f) = self.fit_seconds {
            s += &format!(", {f:.2} s per fit");
        }
        if let Some(a) = self.accuracy {
            s += &format!(", test accuracy {:.2}%", 100.0 * a);
        }
        for c in &self.collectives {
            s += &format!(
                "\n  {} ranks, {} bytes a rank: sum in rank order {:.1} µs, all-gather {:.1} µs",
                c.ranks,
                c.bytes,
                1e6 * c.sum_seconds,
                1e6 * c.all_gather_seconds
            );
        }
        s += &format!(
            ", peak RSS {:.1} MiB",
            self.peak_rss_bytes as f64 / (1 << 20) as f64
        );
        s
    }
}
