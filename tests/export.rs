//! ONNX export checked in tract (a pure-Rust ONNX runtime): every format distillery exports is
//! run on real inputs (the UCI digits) and compared with distillery's own outputs.
//!
//! Tolerances: f32 graphs agree to 1e-4 (relative to the largest logit); the QDQ int8 graph
//! evaluates the same quantized arithmetic in float, so an activation exactly on a rounding
//! boundary can land one u8 step apart — its logits agree to 2% of the largest logit and the
//! predicted class on at least 99% of inputs.

mod common;
use common::ArchKind;
use distillery::compress::{self, onnx, quant::Calibration, quant::Precision, AnyModel};
use distillery::data::{self, NormalizeKind, Normalizer};

use tract_onnx::prelude::*;

fn digits() -> (Vec<f32>, Vec<f32>, Normalizer, usize) {
    let d = data::embedded_digits().unwrap();
    let norm = Normalizer::fit(NormalizeKind::Global, &d);
    let raw = d.x.to_vec();
    let mut x = d.x.to_vec();
    norm.apply(&mut x, d.dim());
    (raw, x, norm, d.len())
}

fn model(
    kind: ArchKind,
    hidden: Vec<usize>,
    channels: Vec<usize>,
    seed: u64,
) -> (distillery::models::Model, distillery::models::ModelMeta) {
    let (m, meta, _) = common::trained_digits_model(kind, hidden, channels, 3, seed);
    (m, meta)
}

/// Runs ONNX bytes in tract on raw inputs; returns (logits, probabilities).
fn run_tract(bytes: &[u8], raw: &[f32], n: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract parses the exported file")
        .with_input_fact(0, f32::fact([n, d]).into())
        .unwrap()
        .into_optimized()
        .expect("tract optimizes the graph")
        .into_runnable()
        .unwrap();
    let input: Tensor = tract_ndarray::Array2::from_shape_vec((n, d), raw.to_vec())
        .unwrap()
        .into();
    let out = plan.run(tvec!(input.into())).expect("tract runs the graph");
    let logits = out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let probs = out[1]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    (logits, probs)
}

fn compare(any: &AnyModel, tol_rel: f32, min_agree: f64) {
    let (raw, x, _, n) = digits();
    let d = 64;
    let ours = any.predict(&x, 256).unwrap();
    let bytes = onnx::export(any).unwrap();
    let (theirs, probs) = run_tract(&bytes, &raw, n, d);
    assert_eq!(ours.len(), theirs.len());
    let scale = ours.iter().fold(0f32, |a, &b| a.max(b.abs())).max(1e-6);
    let max_diff = ours
        .iter()
        .zip(&theirs)
        .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
    assert!(
        max_diff <= tol_rel * scale,
        "{}: max |Δlogit| = {max_diff} > {tol_rel} × {scale}",
        any.precision().as_str()
    );
    let agree = ours
        .chunks(10)
        .zip(theirs.chunks(10))
        .filter(|(a, b)| distillery::eval::argmax(a) == distillery::eval::argmax(b))
        .count() as f64
        / n as f64;
    assert!(agree >= min_agree, "class agreement {agree}");
    // The softmax output sums to one.
    for row in probs.chunks(10).take(20) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
}

#[test]
fn f32_mlp_in_tract_matches() {
    let (m, meta) = model(ArchKind::Mlp, vec![32, 16], vec![], 1);
    compare(&AnyModel::float(m, meta), 1e-4, 1.0);
}

#[test]
fn f32_cnn_in_tract_matches() {
    let (m, meta) = model(ArchKind::Cnn, vec![16], vec![4, 6], 2);
    compare(&AnyModel::float(m, meta), 1e-4, 1.0);
}

#[test]
fn f32_resnet_in_tract_matches_with_its_normalisation_folded() {
    // Trained, so that the running statistics are far from their start (0 and 1).
    let (m, meta) = model(ArchKind::Resnet, vec![12], vec![4, 8], 7);
    let means = m
        .param("stem.bn.running_mean")
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        means.iter().any(|v| v.abs() > 1e-3),
        "running means {means:?}"
    );
    compare(&AnyModel::float(m, meta), 1e-4, 1.0);
}

#[test]
fn f32_conv1d_in_tract_matches() {
    let (m, meta) = model(ArchKind::Conv1d, vec![16], vec![4, 6], 8);
    compare(&AnyModel::float(m, meta), 1e-4, 1.0);
}

#[test]
fn int8_qdq_in_tract_matches_the_integer_kernels() {
    let (m, meta) = model(ArchKind::Mlp, vec![48, 24], vec![], 3);
    let (_, x, _, _) = digits();
    let q = compress::quantize(
        &m,
        &meta,
        Precision::Int8,
        Some((&x[..500 * 64], Calibration::Minmax, 99.99)),
        32,
    )
    .unwrap();
    compare(&q, 0.02, 0.99);
}

#[test]
fn weight_only_formats_in_tract_match() {
    let (m, meta) = model(ArchKind::Cnn, vec![16], vec![4], 4);
    for p in [Precision::Int8Weights, Precision::Int4Weights] {
        let q = compress::quantize(&m, &meta, p, None, 16).unwrap();
        compare(&q, 1e-4, 1.0);
    }
    // bf16: exported with its (exactly representable) weights as f32; tract then computes in
    // f32 while distillery rounds the activations to bf16 too — agreement within that.
    let q = compress::quantize(&m, &meta, Precision::Bf16, None, 16).unwrap();
    compare(&q, 0.02, 0.99);
}

#[test]
fn unsupported_layers_are_refused_with_a_clear_error() {
    let (m, mut meta) = model(ArchKind::Cnn, vec![8], vec![2], 5);
    // An even kernel: asymmetric 'same' padding.
    let distillery::models::Arch::Cnn(c) = &mut meta.spec.arch else {
        panic!("a CNN");
    };
    c.kernel = 4;
    let any = AnyModel::float(m, meta);
    let e = onnx::export(&any).expect_err("refused").to_string();
    assert!(e.contains("even kernel"), "{e}");
}

#[test]
fn regression_graph_outputs_values_in_target_units() {
    use distillery::data::{TargetScale, Task};
    let (m, mut meta) = model(ArchKind::Mlp, vec![16], vec![], 6);
    // Reinterpret as a 1-output regression model: keep only the first output column.
    let w = m.weights().unwrap();
    let h = 16usize;
    let mut spec = meta.spec.clone();
    spec.outputs = 1;
    let reg =
        distillery::models::Model::new(spec.clone(), &mut distillery::rng::Rng::new(1)).unwrap();
    let mut rw = reg.weights().unwrap();
    rw[0] = w[0].clone();
    rw[1] = w[1].clone();
    rw[2] = (0..h).map(|i| w[2][i * 10]).collect();
    rw[3] = vec![w[3][0]];
    reg.set_weights(&rw).unwrap();
    meta.spec = spec;
    meta.task = Task::Regression;
    meta.class_names = None;
    meta.target_scale = Some(TargetScale {
        mean: 150.0,
        std: 75.0,
    });
    let any = AnyModel::float(reg, meta);
    let (raw, x, _, n) = digits();
    let ours: Vec<f32> = any
        .predict(&x, 256)
        .unwrap()
        .iter()
        .map(|v| v * 75.0 + 150.0)
        .collect();
    let bytes = onnx::export(&any).unwrap();
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact([n, 64]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input: Tensor = tract_ndarray::Array2::from_shape_vec((n, 64), raw)
        .unwrap()
        .into();
    let out = plan.run(tvec!(input.into())).unwrap();
    let theirs: Vec<f32> = out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert_eq!(theirs.len(), n);
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
    }
}

#[test]
fn export_stage_writes_checked_onnx_and_safetensors() {
    // configs/digits-deploy.toml through the real binary: its [[export]] stages write the files
    // and run each ONNX export in tract against the model's own outputs.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deploy");
    let o = common::run(&[
        "run",
        "configs/digits-deploy.toml",
        "--out",
        out.to_str().unwrap(),
        "--quick",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let m = common::metrics(&out);
    let ex = m["exports"].as_array().unwrap();
    assert_eq!(ex.len(), 3);
    for e in ex {
        let file = out.join(e["file"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            e["bytes"].as_u64().unwrap()
        );
        if e["format"] == "onnx" {
            assert!(e["checked_samples"].as_u64().unwrap() > 0, "{e}");
            let d = e["max_abs_diff"].as_f64().unwrap();
            assert!(d < 1e-3, "{}: max |Δ| {d}", e["from"]);
            assert_eq!(e["class_agreement"].as_f64().unwrap(), 1.0, "{e}");
        } else {
            // The plain safetensors export is a model file distillery reads back.
            let back = distillery::compress::load_any(&file).unwrap();
            assert_eq!(back.precision().as_str(), "int8");
        }
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Exports"), "{report}");
    // An export of a model the run does not have is refused before any work.
    let bad = dir.path().join("bad.toml");
    let cfg = std::fs::read_to_string(common::repo().join("configs/digits-deploy.toml"))
        .unwrap()
        .replace(
            "from = \"student-int8\"\nformat = \"safetensors\"",
            "from = \"nope\"",
        );
    std::fs::write(&bad, cfg).unwrap();
    let o = common::run(&["check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    let e = common::stderr(&o);
    assert!(e.contains("export[2].from") && e.contains("'nope'"), "{e}");
}

/// Tree students and teachers export to `ai.onnx.ml` TreeEnsembleClassifier; tract runs each
/// export on test inputs: outputs agree to 1e-4 and every predicted class is the same. (Two
/// classes, one tree per round, and ten classes, one tree per class and round, and a single
/// tree with a vector in each leaf.)
#[test]
fn tree_exports_agree_with_distillery_in_tract() {
    let dir = tempfile::tempdir().unwrap();
    for cfg in ["breast-cancer-trees", "digits-trees"] {
        let out = dir.path().join(cfg);
        let o = common::run(&[
            "run",
            &format!("configs/{cfg}.toml"),
            "--out",
            out.to_str().unwrap(),
            "--quick",
            "-q",
        ]);
        assert!(o.status.success(), "{cfg}: {}", common::stderr(&o));
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
                .unwrap();
        let exports = m["exports"].as_array().unwrap();
        assert_eq!(exports.len(), 2, "{cfg}");
        for e in exports {
            assert!(e["checked_samples"].as_u64().unwrap() > 0, "{cfg}: {e}");
            assert!(e["max_abs_diff"].as_f64().unwrap() < 1e-4, "{cfg}: {e}");
            assert_eq!(e["class_agreement"].as_f64(), Some(1.0), "{cfg}: {e}");
        }
    }
}
