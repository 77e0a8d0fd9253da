//! Pruning and quantization: compressed models against their f32 reference, within stated
//! tolerances; the integer path against an independent integer reference, exactly; and the
//! whole pipeline, `export` and `predict` through the real binary.

mod common;
use common::*;
use distillery::compress::{self, prune, quant, AnyModel, Body};
use distillery::data;
use distillery::models::{Model, ModelMeta};

fn spec(
    kind: ArchKind,
    hidden: Vec<usize>,
    channels: Vec<usize>,
) -> (ArchKind, Vec<usize>, Vec<usize>) {
    (kind, hidden, channels)
}

/// A model trained for a few epochs on the digits.
fn trained(
    s: (ArchKind, Vec<usize>, Vec<usize>),
    epochs: usize,
    seed: u64,
) -> (Model, ModelMeta, data::Dataset) {
    trained_digits_model(s.0, s.1, s.2, epochs, seed)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn agreement(a: &[f32], b: &[f32], c: usize) -> f64 {
    let n = a.len() / c;
    a.chunks(c)
        .zip(b.chunks(c))
        .filter(|(x, y)| distillery::eval::argmax(x) == distillery::eval::argmax(y))
        .count() as f64
        / n as f64
}

/// Sets the incoming weights and bias of some hidden units (MLP) to values that make them
/// dead (output 0 after ReLU), so that removing them must not change the function.
#[test]
fn structured_pruning_of_dead_units_is_exact_and_really_smaller() {
    for (kind, hidden, channels) in [
        (ArchKind::Mlp, vec![20, 12], vec![]),
        (ArchKind::Cnn, vec![10], vec![6, 4]),
    ] {
        let (m, _, d) = trained(spec(kind, hidden.clone(), channels.clone()), 2, 11);
        let mut w = m.weights().unwrap();
        // Kill half of every prunable layer's units: zero incoming weights, negative bias.
        let blocks = channels.len();
        for i in 0..blocks {
            let c = channels[i];
            let per = w[2 * i].len() / c;
            for o in (0..c).step_by(2) {
                w[2 * i][o * per..(o + 1) * per]
                    .iter_mut()
                    .for_each(|v| *v = 0.0);
                w[2 * i + 1][o] = -1.0;
            }
        }
        for (l, &hdim) in hidden.iter().enumerate() {
            let wi = 2 * blocks + 2 * l;
            let in_dim = w[wi].len() / hdim;
            for o in (0..hdim).step_by(2) {
                for i in 0..in_dim {
                    w[wi][i * hdim + o] = 0.0;
                }
                w[wi + 1][o] = -1.0;
            }
        }
        m.set_weights(&w).unwrap();
        let before = m.predict(&d.x, 256).unwrap();
        let p = prune::structured(&m, 0.5, prune::Rank::WeightNorm, None).unwrap();
        assert_eq!(
            p.spec.arch.hidden(),
            hidden.iter().map(|h| h / 2).collect::<Vec<_>>(),
            "{kind:?}"
        );
        if kind == ArchKind::Cnn {
            let distillery::models::Arch::Cnn(c) = &p.spec.arch else {
                panic!("pruning a CNN gives a CNN");
            };
            assert_eq!(c.channels, vec![3, 2]);
        }
        assert!(p.num_params() < m.num_params() * 6 / 10, "{kind:?}");
        let after = p.predict(&d.x, 256).unwrap();
        assert!(
            max_abs_diff(&before, &after) < 1e-4,
            "{kind:?}: removing dead units changed outputs by {}",
            max_abs_diff(&before, &after)
        );
        // Ranking by activation finds the same dead units.
        let pa = prune::structured(&m, 0.5, prune::Rank::Activation, Some(&d.x)).unwrap();
        assert!(max_abs_diff(&before, &pa.predict(&d.x, 256).unwrap()) < 1e-4);
        // Sparsity 0 keeps everything.
        let same = prune::structured(&m, 0.0, prune::Rank::WeightNorm, None).unwrap();
        assert_eq!(same.num_params(), m.num_params());
    }
}

#[test]
fn magnitude_masks_reach_the_sparsity_and_survive_fine_tuning() {
    let (m, _, d) = trained(spec(ArchKind::Mlp, vec![32, 32], vec![]), 1, 12);
    for scope in [prune::Scope::Global, prune::Scope::Layer] {
        let c = m.duplicate().unwrap();
        prune::Masks::magnitude(&c, 0.75, scope)
            .unwrap()
            .apply(&c)
            .unwrap();
        let (s, _) = prune::sparsity(&c).unwrap();
        assert!((s - 0.75).abs() < 0.002, "{scope:?}: sparsity {s}");
    }
    // Gradual pruning while training: the final sparsity holds after the last step.
    let c = m.duplicate().unwrap();
    let cfg = distillery::config::TrainConfig {
        epochs: 4,
        ..Default::default()
    };
    distillery::train::fit(
        &c,
        distillery::train::TrainJob {
            name: "p",
            cfg: &cfg,
            train: &d,
            val: &d,
            objective: distillery::train::Objective::supervised(),
            fill: 0.0,
            checkpoint: None,
            seed: 1,
            progress: distillery::progress::Progress::Quiet,
            hooks: vec![Box::new(prune::GradualPruning {
                sparsity: 0.8,
                scope: prune::Scope::Global,
                ramp_epochs: 3,
                masks: None,
            })],
        },
    )
    .unwrap();
    let (s, nz) = prune::sparsity(&c).unwrap();
    assert!(s >= 0.799, "sparsity after fine-tuning {s}");
    assert!(nz < c.num_params() / 4);
}

/// An independent integer reference: quantize, multiply in i32, requantize — written here from
/// the definitions, not from the library's code.
fn integer_reference(q: &quant::Int8Mlp, x: &[f32], rows: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for r in 0..rows {
        let l0 = &q.layers[0];
        let mut act: Vec<i32> = x[r * l0.n_in..(r + 1) * l0.n_in]
            .iter()
            .map(|&v| {
                ((v / l0.input.scale).round_ties_even() + l0.input.zero_point as f32)
                    .clamp(0.0, 255.0) as i32
            })
            .collect();
        for (l, layer) in q.layers.iter().enumerate() {
            let z = layer.input.zero_point as i32;
            let y: Vec<f32> = (0..layer.n_out)
                .map(|o| {
                    let acc: i32 = (0..layer.n_in)
                        .map(|i| (act[i] - z) * layer.w_q[o * layer.n_in + i] as i32)
                        .sum();
                    acc as f32 * (layer.input.scale * layer.w_scale[o]) + layer.bias[o]
                })
                .collect();
            match q.layers.get(l + 1) {
                Some(next) => {
                    act = y
                        .iter()
                        .map(|&v| {
                            ((v.max(0.0) / next.input.scale).round_ties_even()
                                + next.input.zero_point as f32)
                                .clamp(0.0, 255.0) as i32
                        })
                        .collect();
                }
                None => out.extend(y),
            }
        }
    }
    out
}

#[test]
fn int8_inference_is_integer_arithmetic_and_close_to_f32() {
    let (m, meta, d) = trained(spec(ArchKind::Mlp, vec![64, 32], vec![]), 6, 13);
    let n = d.len();
    let reference = m.predict(&d.x, 256).unwrap();
    for method in [quant::Calibration::Minmax, quant::Calibration::Percentile] {
        let any = compress::quantize(
            &m,
            &meta,
            quant::Precision::Int8,
            Some((&d.x[..500 * 64], method, 99.99)),
            32,
        )
        .unwrap();
        let Body::Int8(q) = &any.body else {
            panic!("int8 model without integer layers")
        };
        // Weights are stored as i8 codes with per-channel scales.
        assert_eq!(q.layers[0].w_q.len(), 64 * 64);
        assert_eq!(q.layers[0].w_scale.len(), 64);
        let ours = any.predict(&d.x, 256).unwrap();
        // Against the integer reference: the same integers, so logits agree to float
        // rounding of the epilogue (a requantized activation may differ by one step where
        // the float product lands exactly on .5 — allow 0.5% of rows to differ slightly).
        let ints = integer_reference(q, &d.x, n);
        let exact_rows = ours
            .chunks(10)
            .zip(ints.chunks(10))
            .filter(|(a, b)| max_abs_diff(a, b) < 1e-3)
            .count();
        assert!(
            exact_rows as f64 >= 0.995 * n as f64,
            "{method:?}: {exact_rows}/{n}"
        );
        // Against f32: same class on ≥ 98% of inputs, logits within 5% of their range.
        let scale = reference.iter().fold(0f32, |a, &b| a.max(b.abs()));
        assert!(
            max_abs_diff(&ours, &reference) < 0.05 * scale + 0.1,
            "{method:?}: {} vs scale {scale}",
            max_abs_diff(&ours, &reference)
        );
        assert!(agreement(&ours, &reference, 10) >= 0.98, "{method:?}");
        // Batch sizes (serial and thread-pool paths) give identical results.
        let one: Vec<f32> = (0..7)
            .flat_map(|i| any.predict(&d.x[i * 64..(i + 1) * 64], 1).unwrap())
            .collect();
        assert_eq!(&one[..], &ours[..70]);
    }
}

#[test]
fn quantization_aware_forward_simulates_the_integer_model() {
    let (m, meta, d) = trained(spec(ArchKind::Mlp, vec![48], vec![]), 4, 14);
    let any = compress::quantize(
        &m,
        &meta,
        quant::Precision::Int8,
        Some((&d.x[..400 * 64], quant::Calibration::Minmax, 99.99)),
        32,
    )
    .unwrap();
    let acts = any.meta.quantization.as_ref().unwrap().activations.clone();
    let x =
        candle_core::Tensor::from_slice(&d.x, (d.len(), 64), &candle_core::Device::Cpu).unwrap();
    let fake = quant::qat_forward(&m, &x, &acts, distillery::models::Mode::Eval)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let real = any.predict(&d.x, 256).unwrap();
    let scale = real.iter().fold(0f32, |a, &b| a.max(b.abs()));
    assert!(
        max_abs_diff(&fake, &real) < 0.01 * scale,
        "fake-quant forward differs from the int8 model by {}",
        max_abs_diff(&fake, &real)
    );
    assert!(agreement(&fake, &real, 10) >= 0.995);
}

/// Training at bf16 (the products' operands rounded, f32 weights) reaches the accuracy of the
/// same model and seed trained at f32, within a point, for an MLP and a CNN's dense layers;
/// and differs from it (the precision really applies).
#[test]
fn bf16_training_matches_f32_accuracy() {
    use distillery::kernels::bf16::MatmulPrecision as Precision;
    for (kind, hidden, channels) in [
        (ArchKind::Mlp, vec![64, 32], vec![]),
        (ArchKind::Cnn, vec![32], vec![8]),
    ] {
        let acc = |p| {
            let (m, _, d) =
                common::trained_digits_model_at(kind, hidden.clone(), channels.clone(), 6, 17, p);
            let out = m.predict(&d.x, 256).unwrap();
            let labels = d.labels().unwrap();
            let right = out
                .chunks(10)
                .zip(labels)
                .filter(|(o, &y)| distillery::eval::argmax(o) == y as usize)
                .count();
            (right as f64 / labels.len() as f64, m.weights().unwrap())
        };
        let (a32, w32) = acc(Precision::F32);
        let (a16, w16) = acc(Precision::Bf16);
        assert!(a32 > 0.9, "{kind:?}: f32 accuracy {a32}");
        assert!(
            (a32 - a16).abs() <= 0.01,
            "{kind:?}: bf16 {a16} against f32 {a32}"
        );
        assert_ne!(w32, w16, "{kind:?}: bf16 training changed nothing");
    }
}

#[test]
fn weight_only_formats_and_files_round_trip() {
    let (m, meta, d) = trained(spec(ArchKind::Cnn, vec![128], vec![8]), 2, 15);
    let reference = m.predict(&d.x, 256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f32_file = dir.path().join("m.safetensors");
    AnyModel::float(m.duplicate().unwrap(), meta.clone())
        .save(&f32_file)
        .unwrap();
    let f32_bytes = std::fs::metadata(&f32_file).unwrap().len();
    // Stored weight bytes: int8 = 1/4 of f32 plus per-channel scales; int4 = 1/8 plus one
    // scale per group of 16; bf16 = 1/2 (f32 biases). Files add a header (and gzip).
    let f32_weights = m.bytes();
    for (p, max_ratio, tol) in [
        (quant::Precision::Int8Weights, 0.27, 0.05),
        (quant::Precision::Int4Weights, 0.20, 0.35),
        (quant::Precision::Bf16, 0.51, 0.03),
    ] {
        let q = compress::quantize(&m, &meta, p, None, 16).unwrap();
        let out = q.predict(&d.x, 256).unwrap();
        let scale = reference.iter().fold(0f32, |a, &b| a.max(b.abs()));
        assert!(max_abs_diff(&out, &reference) < tol * scale, "{p:?}");
        let file = dir.path().join(format!("{}.safetensors.gz", p.as_str()));
        q.save(&file).unwrap();
        assert!(
            (q.bytes() as f64) < max_ratio * f32_weights as f64,
            "{p:?}: {} vs f32 {f32_weights}",
            q.bytes()
        );
        let bytes = std::fs::metadata(&file).unwrap().len();
        assert!(
            (bytes as f64) < (max_ratio + 0.05) * f32_bytes as f64,
            "{p:?}: file {bytes} vs f32 file {f32_bytes}"
        );
        let back = compress::load_any(&file).unwrap();
        assert_eq!(back.precision(), p);
        assert_eq!(
            back.predict(&d.x, 256).unwrap(),
            out,
            "{p:?}: reload changed outputs"
        );
    }
    // int8 file round trip, and the f32 loader refuses it with a clear message.
    let (mm, mmeta, _) = trained(spec(ArchKind::Mlp, vec![16], vec![]), 1, 16);
    let q = compress::quantize(
        &mm,
        &mmeta,
        quant::Precision::Int8,
        Some((&d.x[..100 * 64], quant::Calibration::Minmax, 99.99)),
        32,
    )
    .unwrap();
    let file = dir.path().join("q.safetensors.gz");
    q.save(&file).unwrap();
    let back = compress::load_any(&file).unwrap();
    assert_eq!(
        back.predict(&d.x, 64).unwrap(),
        q.predict(&d.x, 64).unwrap()
    );
    let e = distillery::models::load_model(&file)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("quantized (int8) model"), "{e}");
}

#[test]
fn compression_pipeline_export_and_predict_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = run(&[
        "run",
        "configs/digits-compress.toml",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics(&out);
    let rows = m["models"].as_array().unwrap();
    let get = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    let student = get("student");
    let structured = get("student-structured");
    let sparse = get("student-sparse");
    let int8 = get("student-int8");
    let int4 = get("student-int4-weights");
    assert_eq!(structured["role"], "pruned");
    assert_eq!(structured["precision"], "f32");
    assert_eq!(int8["role"], "quantized");
    assert_eq!(int8["precision"], "int8");
    assert_eq!(int4["precision"], "int4");
    assert!(structured["params"].as_u64() < student["params"].as_u64());
    assert!(sparse["nonzero_params"].as_u64().unwrap() < student["params"].as_u64().unwrap() / 4);
    // Recovery was measured before and after.
    let before = structured["compression"]["before"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!(structured["accuracy"].as_f64().unwrap() > before);
    // Quantized files are smaller on disk (this small model's file header weighs more than on
    // MNIST, where README shows ≥ 4×); int8 stays close to f32 accuracy.
    assert!(int8["file_bytes"].as_u64().unwrap() * 7 < student["file_bytes"].as_u64().unwrap() * 2);
    assert!(
        int8["accuracy"].as_f64().unwrap() >= student["accuracy"].as_f64().unwrap() - 0.02,
        "{int8}"
    );
    assert!(int8["kernel"].is_string());
    assert!(out.join("plots/accuracy_vs_size.svg").exists());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Compression stages"));

    // Export every format.
    let model8 = out.join("models/student-structured-int8.safetensors.gz");
    let onnx = dir.path().join("s8.onnx");
    let o = run(&[
        "export",
        model8.to_str().unwrap(),
        "--format",
        "onnx",
        "--out",
        onnx.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1000);
    let plain = dir.path().join("s8.safetensors");
    let o = run(&[
        "export",
        model8.to_str().unwrap(),
        "--format",
        "safetensors",
        "--out",
        plain.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Predict: CSV rows, an IDX file, PNG images, a folder of PNGs — the same 5 digits.
    let digits = data::embedded_digits().unwrap();
    let k = 5;
    let raw = &digits.x[..k * 64];
    let mut csv = (0..64)
        .map(|i| format!("p{i}"))
        .collect::<Vec<_>>()
        .join(",")
        + ",label\n";
    for r in 0..k {
        let row: Vec<String> = raw[r * 64..(r + 1) * 64]
            .iter()
            .map(|v| v.to_string())
            .collect();
        csv += &format!("{},{}\n", row.join(","), digits.labels().unwrap()[r]);
    }
    let csv_path = dir.path().join("in.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let bytes: Vec<u8> = raw.iter().map(|&v| v as u8).collect();
    let idx_path = dir.path().join("in.idx");
    std::fs::write(
        &idx_path,
        data::idx::encode_idx_u8(&[k as u32, 8, 8], &bytes),
    )
    .unwrap();
    let png_dir = dir.path().join("pngs");
    std::fs::create_dir(&png_dir).unwrap();
    for r in 0..k {
        let f = std::fs::File::create(png_dir.join(format!("d{r}.png"))).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 8, 8);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .unwrap()
            .write_image_data(&bytes[r * 64..(r + 1) * 64])
            .unwrap();
    }
    let classes = |args: &[&str]| -> Vec<String> {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| l.split('\t').nth(1).unwrap().to_string())
            .collect()
    };
    let m8 = model8.to_str().unwrap();
    let from_csv = classes(&[
        "predict",
        m8,
        csv_path.to_str().unwrap(),
        "--label",
        "label",
    ]);
    let from_idx = classes(&["predict", m8, idx_path.to_str().unwrap()]);
    let from_pngs = classes(&["predict", m8, png_dir.to_str().unwrap()]);
    let one_png = classes(&["predict", m8, png_dir.join("d0.png").to_str().unwrap()]);
    assert_eq!(from_csv.len(), k);
    assert_eq!(from_csv, from_idx);
    assert_eq!(from_csv, from_pngs);
    assert_eq!(one_png[0], from_csv[0]);
    // The same predictions as the library on the same inputs.
    let any = compress::load_any(&model8).unwrap();
    let mut x = raw.to_vec();
    any.meta.normalizer.apply(&mut x, 64);
    let lib: Vec<String> = any
        .predict(&x, 8)
        .unwrap()
        .chunks(10)
        .map(|r| distillery::eval::argmax(r).to_string())
        .collect();
    assert_eq!(from_csv, lib);
    // Batch mode into a CSV file with every probability.
    let pred_csv = dir.path().join("pred.csv");
    let o = run(&[
        "predict",
        m8,
        idx_path.to_str().unwrap(),
        "--out",
        pred_csv.to_str().unwrap(),
        "--batch",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&pred_csv).unwrap();
    assert_eq!(text.lines().count(), k + 1);
    assert!(text.starts_with("input,predicted,p_0,"));
    // `evaluate` reads quantized files too.
    let o = run(&["evaluate", m8, "--digits", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(v["accuracy"].as_f64().unwrap() > 0.9);
}
