//! Bad input through the real binary: every case must exit with code 2 and a one-line error
//! naming the file, line or field, and never panic.

mod common;
use common::*;
use std::path::Path;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

fn idx_u8(dims: &[u32], data: &[u8]) -> Vec<u8> {
    distillery::data::idx::encode_idx_u8(dims, data)
}

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Runs `distillery run CONFIG` for a config text and checks exit code 2 and the message.
fn expect_bad_config(dir: &Path, name: &str, toml: &str, needles: &[&str]) {
    let cfg = write(dir, &format!("{name}.toml"), toml.as_bytes());
    let out = dir.join(format!("out-{name}"));
    let o = run(&["run", &cfg, "--out", out.to_str().unwrap(), "-q"]);
    check(&o, name, needles);
}

fn check(o: &std::process::Output, name: &str, needles: &[&str]) {
    let err = stderr(o);
    catalogue(name, &err);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{name}: expected exit code 2, got {:?}; stderr: {err}",
        o.status.code()
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{name}: panic: {err}"
    );
    assert!(err.starts_with("error: "), "{name}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{name}: not a one-line error: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{name}: expected '{n}' in: {err}");
    }
}

fn idx_config(images: &str, labels: &str) -> String {
    format!(
        "[data]\nformat = \"idx\"\ntrain_images = \"{images}\"\ntrain_labels = \"{labels}\"\n[[model]]\nname = \"t\"\narch = {{ kind = \"mlp\", hidden = [8] }}\n"
    )
}

fn csv_config(path: &str, label: &str) -> String {
    format!(
        "[data]\nformat = \"csv\"\npath = \"{path}\"\nlabel = \"{label}\"\n[[model]]\nname = \"t\"\narch = {{ kind = \"mlp\", hidden = [8] }}\n"
    )
}

#[test]
fn bad_data_files() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let labels = write(dir, "labels.idx", &idx_u8(&[4], &[0, 1, 0, 1]));
    let good_images = idx_u8(&[4, 2, 2], &[0; 16]);

    // Truncated IDX: the header promises 16 bytes of pixels, the file holds 10.
    let p = write(dir, "trunc.idx", &good_images[..good_images.len() - 6]);
    expect_bad_config(
        dir,
        "truncated-idx",
        &idx_config(&p, &labels),
        &["trunc.idx", "truncated"],
    );

    // Header sizes far beyond the file (a 20-byte file claiming 16 GB) are rejected before allocating.
    let mut huge = vec![0, 0, 0x08, 2];
    huge.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    huge.extend_from_slice(&0x0004_0000u32.to_be_bytes());
    huge.extend_from_slice(&[1; 8]);
    let p = write(dir, "huge.idx", &huge);
    expect_bad_config(
        dir,
        "idx-header-vs-length",
        &idx_config(&p, &labels),
        &["huge.idx", "dimensions", "8 data bytes"],
    );

    // Not an IDX file at all.
    let p = write(dir, "text.idx", b"this is not idx data");
    expect_bad_config(
        dir,
        "idx-bad-magic",
        &idx_config(&p, &labels),
        &["text.idx", "not an IDX file"],
    );

    // Corrupt gzip: valid gzip header, garbage after.
    let mut gz = gzip(&good_images);
    let n = gz.len();
    for b in &mut gz[12..n - 8] {
        *b ^= 0x5a;
    }
    let p = write(dir, "corrupt.idx.gz", &gz);
    expect_bad_config(
        dir,
        "idx-corrupt-gzip",
        &idx_config(&p, &labels),
        &["corrupt.idx.gz"],
    );

    // Images and labels disagree in count.
    let p = write(dir, "five.idx", &idx_u8(&[5, 2, 2], &[0; 20]));
    expect_bad_config(
        dir,
        "idx-count-mismatch",
        &idx_config(&p, &labels),
        &["5 samples", "4 labels"],
    );

    // CSV: the label column does not exist.
    let csv = write(dir, "ok.csv", b"a,b,y\n1,2,x\n3,4,z\n5,6,x\n7,8,z\n");
    expect_bad_config(
        dir,
        "csv-no-label",
        &csv_config(&csv, "target"),
        &["ok.csv", "label column 'target' not found", "a, b, y"],
    );

    // CSV: a non-numeric cell, a NaN, an infinity, a ragged row, an empty cell, an empty file.
    let p = write(dir, "word.csv", b"a,b,y\n1,2,x\n3,four,z\n");
    expect_bad_config(
        dir,
        "csv-non-numeric",
        &csv_config(&p, "y"),
        &["word.csv:3", "column 'b'", "'four' is not a number"],
    );
    let p = write(dir, "nan.csv", b"a,b,y\n1,2,x\n3,NaN,z\n");
    expect_bad_config(
        dir,
        "csv-nan",
        &csv_config(&p, "y"),
        &["nan.csv:3", "column 'b'", "not a finite number"],
    );
    let p = write(dir, "inf.csv", b"a,b,y\n1,inf,x\n3,4,z\n");
    expect_bad_config(
        dir,
        "csv-inf",
        &csv_config(&p, "y"),
        &["inf.csv:2", "not a finite number"],
    );
    let p = write(dir, "ragged.csv", b"a,b,y\n1,2,x\n3,4\n");
    expect_bad_config(
        dir,
        "csv-ragged",
        &csv_config(&p, "y"),
        &["ragged.csv:3", "2 fields, expected 3"],
    );
    let p = write(dir, "hole.csv", b"a,b,y\n1,,x\n3,4,z\n");
    expect_bad_config(
        dir,
        "csv-empty-cell",
        &csv_config(&p, "y"),
        &["hole.csv:2", "empty cell"],
    );
    let p = write(dir, "empty.csv", b"");
    expect_bad_config(
        dir,
        "csv-empty-file",
        &csv_config(&p, "y"),
        &["empty.csv", "empty file"],
    );
}

#[test]
fn bad_configs() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let base = "[data]\nformat = \"digits\"\n[[model]]\nname = \"t\"\narch = { kind = \"mlp\", hidden = [8] }\n";
    expect_bad_config(
        dir,
        "unknown-key",
        &base.replace("format", "colour = 1\nformat"),
        &["unknown field `colour`", ":2"],
    );
    expect_bad_config(
        dir,
        "wrong-type",
        &base.replace("hidden = [8]", "hidden = \"big\""),
        &["invalid type", "hidden"],
    );
    expect_bad_config(
        dir,
        "malformed-toml",
        "[data\nformat = 1",
        &["malformed-toml.toml:1"],
    );
    expect_bad_config(
        dir,
        "negative-lr",
        &format!("{base}train = {{ lr = -0.1 }}\n"),
        &["model.t.train.lr", "positive"],
    );
    expect_bad_config(
        dir,
        "zero-epochs",
        &format!("{base}train = {{ epochs = 0 }}\n"),
        &["model.t.train.epochs"],
    );
    expect_bad_config(
        dir,
        "bad-max-norm",
        &format!("{base}train = {{ max_norm = 0.0 }}\n"),
        &["model.t.train.max_norm", "positive norm"],
    );
    expect_bad_config(
        dir,
        "bad-dropout",
        &base.replace("hidden = [8]", "hidden = [8], dropout = 1.5"),
        &["model.t.arch.dropout"],
    );
    expect_bad_config(
        dir,
        "unknown-teacher",
        &format!("{base}[[model]]\nname = \"s\"\narch = {{ kind = \"mlp\", hidden = [4] }}\ndistill = {{ teacher = \"nobody\" }}\n"),
        &["model.s.distill.teacher", "'nobody'", "known: t"],
    );
    expect_bad_config(
        dir,
        "bad-temperature",
        &format!("{base}[[model]]\nname = \"s\"\narch = {{ kind = \"mlp\", hidden = [4] }}\ndistill = {{ teacher = \"t\", temperature = 0.0 }}\n"),
        &["model.s.distill.temperature"],
    );
    expect_bad_config(
        dir,
        "duplicate-name",
        &format!("{base}[[model]]\nname = \"t\"\narch = {{ kind = \"mlp\", hidden = [4] }}\n"),
        &["duplicate model name"],
    );
    // Augmentation that does not fit the data, and transfer data that are not there.
    let iris = "[data]\nformat = \"csv\"\npath = \"data/sklearn/iris.csv\"\nlabel = \"species\"\n[[model]]\nname = \"t\"\narch = { kind = \"mlp\" }\n";
    expect_bad_config(
        dir,
        "augment-flip-on-rows",
        &format!("{iris}train = {{ augment = {{ flip = true }} }}\n"),
        &["model.t.train.augment.flip", "works on images"],
    );
    expect_bad_config(
        dir,
        "augment-shift-and-jitter",
        &format!("{base}train = {{ jitter = 1, augment = {{ shift = 2 }} }}\n"),
        &["model.t.train.augment.shift", "give the shift once"],
    );
    expect_bad_config(
        dir,
        "augment-bad-mixup",
        &format!("{iris}train = {{ augment = {{ mixup = -1.0 }} }}\n"),
        &["model.t.train.augment.mixup"],
    );
    expect_bad_config(
        dir,
        "transfer-missing-file",
        &format!("{base}[[model]]\nname = \"s\"\narch = {{ kind = \"mlp\", hidden = [4] }}\ndistill = {{ teacher = \"t\", alpha = 1.0, temperature = 2.0, transfer = {{ path = \"no/such.csv\" }} }}\n"),
        &["model.s.distill.transfer.path", "does not exist"],
    );
    // One name rule for every kind of name (models, teachers, stages, groups).
    expect_bad_config(
        dir,
        "bad-stage-name",
        &format!("{base}[[prune]]\nname = \"p 1\"\nfrom = \"t\"\nmethod = \"magnitude\"\nsparsity = 0.5\n"),
        &["prune.name", "'p 1' is not a valid name (1-64 letters"],
    );
    let long = "g".repeat(60);
    expect_bad_config(
        dir,
        "group-name-too-long-for-members",
        &format!("{base}[[submodels]]\nname = \"{long}\"\nk = 2\narch = {{ kind = \"mlp\", hidden = [4] }}\n"),
        &["submodels.name", "-ensemble' is longer than 64 characters"],
    );
    expect_bad_config(
        dir,
        "missing-file",
        "[data]\nformat = \"csv\"\npath = \"no/such.csv\"\nlabel = \"y\"\n[[model]]\nname = \"t\"\narch = { kind = \"mlp\" }\n",
        &["data.path", "no/such.csv", "does not exist"],
    );
    expect_bad_config(
        dir,
        "cnn-on-tabular",
        "[data]\nformat = \"csv\"\npath = \"data/sklearn/iris.csv\"\nlabel = \"species\"\n[[model]]\nname = \"t\"\narch = { kind = \"cnn\", channels = [4] }\n",
        &["model.t.arch.kind", "image data"],
    );
    expect_bad_config(
        dir,
        "cnn-too-deep",
        &base.replace(
            "kind = \"mlp\", hidden = [8]",
            "kind = \"cnn\", channels = [4, 4, 4, 4]",
        ),
        &["model.t", "pool"],
    );
    expect_bad_config(
        dir,
        "no-models",
        "[data]\nformat = \"digits\"\n",
        &["model", "no [[model]]"],
    );
    expect_bad_config(
        dir,
        "bad-val-fraction",
        &base.replace(
            "format = \"digits\"",
            "format = \"digits\"\nval_fraction = 1.5",
        ),
        &["data.val_fraction"],
    );
    expect_bad_config(dir, "jitter-on-tabular", "[data]\nformat = \"csv\"\npath = \"data/sklearn/iris.csv\"\nlabel = \"species\"\n[[model]]\nname = \"t\"\narch = { kind = \"mlp\" }\ntrain = { jitter = 2 }\n", &["model.t.train.jitter"]);
}

#[test]
fn bad_arguments_and_model_files() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // --set without '='
    let o = run(&[
        "run",
        "configs/demo.toml",
        "--out",
        dir.join("x").to_str().unwrap(),
        "--set",
        "seed",
    ]);
    check(&o, "set-syntax", &["--set seed", "KEY=VALUE"]);
    // --set naming a model that does not exist
    let o = run(&[
        "run",
        "configs/demo.toml",
        "--out",
        dir.join("x").to_str().unwrap(),
        "--set",
        "model.nobody.train.lr=1",
    ]);
    check(&o, "set-unknown-model", &["no entry named 'nobody'"]);
    // An unknown verb or flag: clap's own error, exit code 2.
    let o = run(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    catalogue("unknown-verb", stderr(&o).lines().next().unwrap_or(""));
    // A config file that does not exist.
    let o = run(&["run", "nope.toml", "--out", dir.join("y").to_str().unwrap()]);
    check(&o, "missing-config", &["nope.toml", "not found"]);

    // A corrupt and a truncated model file.
    let junk = write(
        dir,
        "junk.safetensors",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    );
    let o = run(&["evaluate", &junk, "--digits"]);
    check(
        &o,
        "corrupt-model",
        &["junk.safetensors", "not a valid safetensors"],
    );
    let out = dir.join("m");
    let o = run(&["demo", "--quick", "-q", "--out", out.to_str().unwrap()]);
    assert!(o.status.success());
    let good = std::fs::read(out.join("models/student-kd.safetensors")).unwrap();
    let cut = write(dir, "cut.safetensors", &good[..good.len() / 2]);
    let o = run(&["evaluate", &cut, "--digits"]);
    check(&o, "truncated-model", &["cut.safetensors"]);

    // A model whose input size does not match the data (8×8 digits model on iris features).
    let o = run(&[
        "evaluate",
        out.join("models/student-kd.safetensors").to_str().unwrap(),
        "--csv",
        "data/sklearn/iris.csv",
        "--label",
        "species",
    ]);
    check(
        &o,
        "evaluate-shape-mismatch",
        &["inputs of shape [1, 8, 8]", "[4]"],
    );
    let cfg = format!(
        "[data]\nformat = \"csv\"\npath = \"data/sklearn/iris.csv\"\nlabel = \"species\"\n[[model]]\nname = \"t\"\nfrom = \"{}\"\n",
        out.join("models/teacher.safetensors").display()
    );
    expect_bad_config(
        dir,
        "from-shape-mismatch",
        &cfg,
        &["model.t.from", "inputs of shape [1, 8, 8]", "[4]"],
    );

    // Re-using an output folder with a different config.
    let o = run(&[
        "demo",
        "--quick",
        "-q",
        "--set",
        "seed=9",
        "--out",
        out.to_str().unwrap(),
    ]);
    check(
        &o,
        "out-folder-different-config",
        &["config.toml", "different config"],
    );
}

#[test]
fn enormous_lines_and_columns_fail_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // One 70 MB line.
    let mut big = b"a,y\n".to_vec();
    big.extend(std::iter::repeat_n(b'1', 70 << 20));
    big.extend_from_slice(b",0\n");
    let p = write(dir, "long-line.csv", &big);
    expect_bad_config(
        dir,
        "csv-enormous-line",
        &csv_config(&p, "y"),
        &["long-line.csv", "exceeds the 67108864-byte limit"],
    );
    // Two million columns.
    let mut wide = String::with_capacity(16 << 20);
    for i in 0..2_000_000 {
        wide.push_str(&format!("c{i},"));
    }
    wide.push_str("y\n");
    let p = write(dir, "wide.csv", wide.as_bytes());
    expect_bad_config(
        dir,
        "csv-millions-of-columns",
        &csv_config(&p, "y"),
        &["wide.csv", "2000001 columns", "at most 1000000"],
    );
    // A folder where a file is expected.
    let sub = dir.join("folder.csv");
    std::fs::create_dir(&sub).unwrap();
    expect_bad_config(
        dir,
        "csv-is-a-folder",
        &csv_config(sub.to_str().unwrap(), "y"),
        &["folder.csv", "is a folder"],
    );
}

#[test]
fn bad_compression_export_and_predict_input() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let base = "[data]\nformat = \"digits\"\n[[model]]\nname = \"t\"\narch = { kind = \"mlp\", hidden = [8] }\ntrain = { epochs = 1 }\n";
    expect_bad_config(
        dir,
        "prune-sparsity-range",
        &format!(
            "{base}[[prune]]\nname = \"p\"\nfrom = \"t\"\nmethod = \"magnitude\"\nsparsity = 1.5\n"
        ),
        &["prune.p.sparsity", "[0, 1)", "1.5"],
    );
    expect_bad_config(
        dir,
        "prune-unknown-from",
        &format!("{base}[[prune]]\nname = \"p\"\nfrom = \"nobody\"\nmethod = \"structured\"\nsparsity = 0.5\n"),
        &["prune.p.from", "'nobody'"],
    );
    expect_bad_config(
        dir,
        "quantize-zero-calibration",
        &format!("{base}[[quantize]]\nname = \"q\"\nfrom = \"t\"\nprecision = \"int8\"\ncalibration_samples = 0\n"),
        &["quantize.q.calibration_samples", "at least 1 sample"],
    );
    expect_bad_config(
        dir,
        "quantize-unknown-precision",
        &format!("{base}[[quantize]]\nname = \"q\"\nfrom = \"t\"\nprecision = \"int3\"\n"),
        &["unknown variant `int3`", "int8-weights"],
    );
    expect_bad_config(
        dir,
        "quantize-qat-weight-only",
        &format!("{base}[[quantize]]\nname = \"q\"\nfrom = \"t\"\nprecision = \"int4-weights\"\nqat = {{ teacher = \"t\" }}\n"),
        &["quantize.q.qat", "int8"],
    );
    // int8 integer inference of a CNN is refused before training starts, naming the
    // alternative.
    let cnn = "[data]\nformat = \"digits\"\n[[model]]\nname = \"c\"\narch = { kind = \"cnn\", channels = [2], hidden = [4] }\ntrain = { epochs = 1 }\n[[quantize]]\nname = \"q\"\nfrom = \"c\"\nprecision = \"int8\"\n";
    expect_bad_config(
        dir,
        "quantize-int8-cnn",
        cnn,
        &["int8", "is a cnn", "int8-weights"],
    );

    // A trained model and its int8 form to feed bad inputs to.
    let out = dir.join("m");
    let cfg = write(
        dir,
        "ok.toml",
        format!("{base}[[quantize]]\nname = \"q\"\nfrom = \"t\"\nprecision = \"int8\"\ncalibration_samples = 50\n").as_bytes(),
    );
    let o = run(&["run", &cfg, "--out", out.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q = out.join("models/q.safetensors.gz");
    let good = std::fs::read(&q).unwrap();
    let cut = write(dir, "cut.safetensors.gz", &good[..good.len() / 2]);
    let o = run(&["predict", &cut, &cfg]);
    check(
        &o,
        "truncated-quantized-model",
        &["cut.safetensors.gz", "truncated"],
    );
    let o = run(&[
        "export",
        &cut,
        "--out",
        dir.join("x.onnx").to_str().unwrap(),
    ]);
    check(&o, "export-truncated-model", &["cut.safetensors.gz"]);
    // Inputs of the wrong shape for the model: a 28×28 IDX file, a 3-column CSV, a 5×5 PNG.
    let idx = write(dir, "big.idx", &idx_u8(&[2, 28, 28], &[0u8; 2 * 784]));
    let qs = q.to_str().unwrap();
    let o = run(&["predict", qs, &idx]);
    check(
        &o,
        "predict-idx-shape",
        &["big.idx", "[2, 28, 28]", "[1, 8, 8]"],
    );
    let csv = write(dir, "three.csv", b"a,b,c\n1,2,3\n");
    let o = run(&["predict", qs, &csv]);
    check(
        &o,
        "predict-csv-columns",
        &["three.csv", "3 feature columns", "64 features"],
    );
    let png_path = dir.join("small.png");
    {
        let f = std::fs::File::create(&png_path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 5, 5);
        enc.set_color(png::ColorType::Grayscale);
        enc.write_header()
            .unwrap()
            .write_image_data(&[0u8; 25])
            .unwrap();
    }
    let o = run(&["predict", qs, png_path.to_str().unwrap()]);
    check(&o, "predict-png-size", &["small.png", "5×5", "8×8"]);
    let notpng = write(dir, "fake.png", b"hello");
    let o = run(&["predict", qs, &notpng]);
    check(&o, "predict-not-png", &["fake.png", "PNG"]);
    let csv_nan = write(
        dir,
        "nan.csv",
        format!(
            "{}\n{}\n",
            (0..64)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(","),
            (0..64)
                .map(|i| if i == 3 {
                    "x".to_string()
                } else {
                    "0".to_string()
                })
                .collect::<Vec<_>>()
                .join(",")
        )
        .as_bytes(),
    );
    let o = run(&["predict", qs, &csv_nan]);
    check(
        &o,
        "predict-csv-not-number",
        &["nan.csv:2", "column 'c3'", "expected a number"],
    );
    // A quantized model cannot be a teacher: only f32 models train further.
    let t = write(
        dir,
        "from-q.toml",
        format!("[data]\nformat = \"digits\"\n[[model]]\nname = \"t\"\nfrom = \"{qs}\"\n")
            .as_bytes(),
    );
    let o = run(&["run", &t, "--out", dir.join("fq").to_str().unwrap(), "-q"]);
    check(
        &o,
        "quantized-model-as-teacher",
        &["q.safetensors.gz", "quantized (int8) model"],
    );
    // A layer the ONNX exporter does not support: a conv with an even kernel.
    let spec = distillery::models::ModelSpec {
        arch: distillery::models::Arch::Cnn(distillery::models::cnn::CnnArch {
            hidden: vec![4],
            dropout: 0.0,
            input_dropout: 0.0,
            channels: vec![2],
            kernel: 4,
        }),
        input_shape: vec![1, 8, 8],
        outputs: 10,
    };
    let m =
        distillery::models::Model::new(spec.clone(), &mut distillery::rng::Rng::new(1)).unwrap();
    let meta = distillery::models::ModelMeta {
        name: "even".into(),
        role: "teacher".into(),
        spec,
        task: distillery::data::Task::Classification,
        class_names: None,
        normalizer: distillery::data::Normalizer::None,
        target_scale: None,
        training: serde_json::Value::Null,
        quantization: None,
        compression: None,
        text: None,
        heads: Vec::new(),
    };
    let even = dir.join("even.safetensors");
    distillery::models::save_model(&even, &m, &meta).unwrap();
    let o = run(&[
        "export",
        even.to_str().unwrap(),
        "--out",
        dir.join("e.onnx").to_str().unwrap(),
    ]);
    check(
        &o,
        "export-unsupported-layer",
        &["even kernel", "ONNX export does not support"],
    );
}

#[test]
fn bad_tree_settings_synthetic_samples_and_tree_files() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut csv = String::from("a,b,c,y\n");
    for i in 0..60 {
        csv.push_str(&format!("{},{},{},{}\n", i % 7, i % 5, i, i % 2));
    }
    let data = write(dir, "t.csv", csv.as_bytes());
    let cfg = |arch: &str, extra: &str| {
        format!(
            "[data]\nformat = \"csv\"\npath = \"{data}\"\nlabel = \"y\"\n[[model]]\nname = \"t\"\narch = {arch}\n{extra}"
        )
    };
    for (name, arch, needles) in [
        (
            "tree-depth-zero",
            "{ kind = \"decision-tree\", depth = 0 }",
            &["model.t.arch.depth", "got 0"][..],
        ),
        (
            "trees-zero",
            "{ kind = \"boosted-trees\", trees = 0 }",
            &["model.t.arch.trees", "got 0"][..],
        ),
        (
            "trees-learning-rate",
            "{ kind = \"boosted-trees\", learning_rate = 0.0 }",
            &["model.t.arch.learning_rate", "(0, 1]"][..],
        ),
        (
            "trees-bins",
            "{ kind = \"boosted-trees\", bins = 1000 }",
            &["model.t.arch.bins", "2 to 255"][..],
        ),
        (
            "trees-hidden",
            "{ kind = \"boosted-trees\", hidden = [8] }",
            &["`hidden`", "not a setting of a tree model", ":7"][..],
        ),
        (
            "mlp-with-tree-setting",
            "{ kind = \"mlp\", hidden = [8], leaves = 8 }",
            &["`leaves`", "only for tree models", ":7"][..],
        ),
    ] {
        expect_bad_config(dir, name, &cfg(arch, ""), needles);
    }
    // Logit matching is for classifiers.
    expect_bad_config(
        dir,
        "fit-to-on-regression",
        &cfg("{ kind = \"boosted-trees\", fit_to = \"logits\" }", "")
            .replace("label = \"y\"", "label = \"y\"\ntask = \"regression\""),
        &["model.t.arch.fit_to", "only for classification"],
    );
    // A tree model on images must ask for flattening.
    expect_bad_config(
        dir,
        "trees-on-images",
        "[data]\nformat = \"digits\"\n[[model]]\nname = \"t\"\narch = { kind = \"boosted-trees\" }\n",
        &["model.t.arch.flatten", "flatten = true"],
    );
    // Synthetic samples: bad settings, and a count that cannot fit in memory.
    let student = |synthetic: &str| {
        cfg(
            "{ kind = \"boosted-trees\", trees = 3 }",
            &format!(
                "[[model]]\nname = \"s\"\narch = {{ kind = \"decision-tree\", depth = 3 }}\ndistill = {{ teacher = \"t\", synthetic = {synthetic} }}\n"
            ),
        )
    };
    expect_bad_config(
        dir,
        "synthetic-swap",
        &student("{ samples = 10, swap = 0.0 }"),
        &["model.s.distill.synthetic.swap", "(0, 1]"],
    );
    expect_bad_config(
        dir,
        "synthetic-too-many",
        &student("{ samples = 100000000000000 }"),
        &["model.s.distill.synthetic.samples", "GiB"],
    );
    expect_bad_config(
        dir,
        "synthetic-with-auto",
        &cfg(
            "{ kind = \"boosted-trees\", trees = 3 }",
            "[[model]]\nname = \"s\"\narch = { kind = \"decision-tree\" }\ndistill = { teacher = \"t\", alpha = \"auto\", synthetic = { samples = 10 } }\n",
        ),
        &["model.s.distill.synthetic", "auto"],
    );
    // A tree model file whose node points back at itself (a walk that would never end).
    let out = dir.join("run");
    let good = write(
        dir,
        "good.toml",
        cfg("{ kind = \"boosted-trees\", trees = 3, min_leaf = 2 }", "").as_bytes(),
    );
    let o = run(&["run", &good, "--out", out.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file = out.join("models/t.safetensors");
    let m = distillery::compress::load_any(&file).unwrap();
    let distillery::compress::Body::Trees(mut t) = m.body else {
        panic!("not a tree model")
    };
    let tree = t.trees.iter_mut().find(|t| !t.nodes.is_empty()).unwrap();
    tree.nodes[0].left = 0;
    let bytes = distillery::models::trees::file_bytes(&t, &m.meta).unwrap();
    let bad = write(dir, "loop.safetensors", &bytes);
    let o = run(&["predict", &bad, &data, "--label", "y"]);
    check(&o, "tree-loop", &["loop.safetensors", "out of range"]);
}

/// Teachers from another domain and data with few labels: every mistake is found before any
/// work starts (the adapter is built against the data and the ONNX graph at the start).
#[test]
fn bad_adapters_and_label_budgets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = env!("CARGO_MANIFEST_DIR");
    let mnist = format!("{root}/data/teachers/mnist-cnn.onnx");
    let mlp = format!("{root}/data/teachers/digits-torch-mlp.onnx");
    let digits = "[data]\nformat = \"digits\"\n";
    let student = "[[model]]\nname = \"s\"\nrole = \"student\"\narch = { kind = \"mlp\", hidden = [8] }\ntrain = { epochs = 1 }\ndistill = { teacher = \"t\" }\n";
    // The adapter's 20×20 images are not the 28×28 the graph takes.
    expect_bad_config(
        dir,
        "adapter-shape-mismatch",
        &format!("{digits}[[teacher]]\nname = \"t\"\nonnx = \"{mnist}\"\nadapter = {{ resize = [20, 20] }}\n{student}"),
        &["teacher.t.adapter", "[1, 20, 20]", "784"],
    );
    // Resizing a table.
    let table = format!(
        "[data]\nformat = \"csv\"\npath = \"{root}/data/sklearn/iris.csv\"\nlabel = \"species\"\n"
    );
    expect_bad_config(
        dir,
        "adapter-resize-table",
        &format!("{table}[[teacher]]\nname = \"t\"\nonnx = \"{mnist}\"\nadapter = {{ resize = [28, 28] }}\n{student}"),
        &["teacher.t.adapter.resize", "map images", "[4]"],
    );
    // A column the data do not have.
    expect_bad_config(
        dir,
        "adapter-unknown-column",
        &format!("{table}[[teacher]]\nname = \"t\"\nonnx = \"{mlp}\"\nadapter = {{ columns = [\"petal_width\", \"wingspan\"] }}\n{student}"),
        &["teacher.t.adapter.columns", "no column 'wingspan'"],
    );
    // A teacher of 10 classes for data of 3, uncalibrated.
    let mut csv = String::from(
        &(0..64)
            .map(|i| format!("p{i}"))
            .chain(["label".to_string()])
            .collect::<Vec<_>>()
            .join(","),
    );
    csv.push('\n');
    for r in 0..30 {
        let row: Vec<String> = (0..64).map(|i| ((r * 7 + i) % 17).to_string()).collect();
        csv.push_str(&format!("{},c{}\n", row.join(","), r % 3));
    }
    let path = write(dir, "three.csv", csv.as_bytes());
    expect_bad_config(
        dir,
        "adapter-teacher-classes",
        &format!("[data]\nformat = \"csv\"\npath = \"{path}\"\nlabel = \"label\"\n[[teacher]]\nname = \"t\"\nonnx = \"{mlp}\"\nadapter = {{ scale = 1.0 }}\n{student}"),
        &["teacher.t", "10 outputs", "3 classes", "calibrate"],
    );
    // Adapters and calibration belong to ONNX teachers; the label budget is at least 1 and
    // leaves decoupled KD without labels.
    expect_bad_config(
        dir,
        "adapter-not-onnx",
        &format!(
            "{digits}[[teacher]]\nname = \"t\"\noutputs = \"{path}\"\ncalibrate = true\n{student}"
        ),
        &["teacher[0].calibrate", "onnx"],
    );
    expect_bad_config(
        dir,
        "labels-per-class-zero",
        &format!("{digits}labels_per_class = 0\n[[model]]\nname = \"s\"\narch = {{ kind = \"mlp\", hidden = [8] }}\n"),
        &["data.labels_per_class", "at least 1"],
    );
    expect_bad_config(
        dir,
        "labels-per-class-dkd",
        &format!("{digits}labels_per_class = 5\n[[model]]\nname = \"t\"\narch = {{ kind = \"mlp\", hidden = [8] }}\n[[model]]\nname = \"s\"\narch = {{ kind = \"mlp\", hidden = [8] }}\ndistill = {{ teacher = \"t\", loss = {{ kind = \"dkd\" }} }}\n"),
        &["model.s.distill.loss", "labels_per_class"],
    );
}

/// Teacher annealing needs labels to move to and a network's training steps.
#[test]
fn bad_teacher_annealing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = "[data]\nformat = \"digits\"\n[[model]]\nname = \"t\"\narch = { kind = \"mlp\", hidden = [8] }\n";
    expect_bad_config(
        dir,
        "anneal-trees",
        &format!("{base}[[model]]\nname = \"s\"\narch = {{ kind = \"boosted-trees\", flatten = true }}\ndistill = {{ teacher = \"t\", anneal = true }}\n"),
        &["model.s.distill.anneal", "tree"],
    );
    expect_bad_config(
        dir,
        "anneal-embedding",
        &format!("{base}[[model]]\nname = \"s\"\narch = {{ kind = \"mlp\", hidden = [8] }}\ndistill = {{ teacher = \"t\", anneal = true, loss = {{ kind = \"cosine\" }} }}\n"),
        &["model.s.distill.anneal", "embedding"],
    );
}

/// Multi-task models: their tasks are checked before any work starts, and a head whose teacher
/// has another number of classes than its labels stops before training.
#[test]
fn bad_multi_task_models() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = "[data]\nformat = \"digits\"\n[[model]]\nname = \"t\"\narch = { kind = \"mlp\", hidden = [8] }\n";
    let task = |name: &str, extra: &str| format!("[[model.task]]\nname = \"{name}\"\n{extra}\n");
    let model =
        |arch: &str, tasks: &str| format!("{base}[[model]]\nname = \"s\"\narch = {arch}\n{tasks}");
    let mlp = "{ kind = \"mlp\", hidden = [8] }";
    expect_bad_config(
        dir,
        "task-duplicate-name",
        &model(mlp, &(task("a", "teacher = \"t\"") + &task("a", ""))),
        &["model.s.task[1].name", "duplicate task name 'a'"],
    );
    expect_bad_config(
        dir,
        "task-weight-zero",
        &model(
            mlp,
            &(task("a", "teacher = \"t\"\nweight = 0.0") + &task("b", "")),
        ),
        &["model.s.task[0].weight", "> 0", "auto"],
    );
    expect_bad_config(
        dir,
        "task-not-a-trunk",
        &model(
            "{ kind = \"boosted-trees\", flatten = true }",
            &(task("a", "teacher = \"t\"") + &task("b", "")),
        ),
        &["model.s.arch.kind", "boosted-trees", "trunk"],
    );
    expect_bad_config(
        dir,
        "task-one-only",
        &model(mlp, &task("a", "teacher = \"t\"")),
        &["model.s.task", "at least two"],
    );
    expect_bad_config(
        dir,
        "task-learns-nothing",
        &model(mlp, &(task("a", "labels = false") + &task("b", ""))),
        &["model.s.task[0].teacher", "neither labels nor a teacher"],
    );
    expect_bad_config(
        dir,
        "task-unknown-teacher",
        &model(mlp, &(task("a", "teacher = \"nobody\"") + &task("b", ""))),
        &["model.s.task[0].teacher", "'nobody'", "known: t"],
    );
    expect_bad_config(
        dir,
        "task-with-distill",
        &format!(
            "{base}[[model]]\nname = \"s\"\narch = {mlp}\ndistill = {{ teacher = \"t\" }}\n{}",
            task("a", "teacher = \"t\"") + &task("b", "")
        ),
        &["model.s.distill", "remove distill"],
    );
    expect_bad_config(
        dir,
        "task-prune",
        &format!(
            "{}[[prune]]\nname = \"p\"\nfrom = \"s\"\nmethod = \"magnitude\"\nsparsity = 0.5\nrecover = {{ teacher = \"t\" }}\n",
            model(mlp, &(task("a", "teacher = \"t\"") + &task("b", "")))
        ),
        &["prune[0].recover.teacher", "multi-task", "own tasks", "remove teacher"],
    );
    expect_bad_config(
        dir,
        "task-qat",
        &format!(
            "{}[[prune]]\nname = \"p\"\nfrom = \"s\"\nmethod = \"magnitude\"\nsparsity = 0.5\n[[quantize]]\nname = \"q\"\nfrom = \"p\"\nprecision = \"int8\"\nqat = {{ teacher = \"t\" }}\n",
            model(mlp, &(task("a", "teacher = \"t\"") + &task("b", "")))
        ),
        &["quantize[0].qat.teacher", "'p' is a multi-task model", "remove teacher"],
    );
    expect_bad_config(
        dir,
        "task-unknown-column",
        &model(mlp, &(task("a", "column = \"height\"") + &task("b", ""))),
        &["model.s.task[0].column", "'height'", "data.targets"],
    );
    expect_bad_config(
        dir,
        "data-targets-not-csv",
        &format!(
            "[data]\nformat = \"digits\"\ntargets = [{{ column = \"x\", task = \"regression\" }}]\n[[model]]\nname = \"t\"\narch = {mlp}\n"
        ),
        &["data.targets[0].column", "CSV"],
    );
    expect_bad_config(
        dir,
        "task-model-as-teacher",
        &format!(
            "{}[[model]]\nname = \"u\"\narch = {mlp}\ndistill = {{ teacher = \"s\" }}\n",
            model(mlp, &(task("a", "teacher = \"t\"") + &task("b", "")))
        ),
        &["model.u.distill.teacher", "'s' is a multi-task model"],
    );
    let iris = repo().join("data/sklearn/iris.csv");
    expect_bad_config(
        dir,
        "targets-mixup",
        &format!(
            "[data]\nformat = \"csv\"\npath = \"{}\"\nlabel = \"species\"\ntargets = [{{ column = \"petal_width\", task = \"regression\" }}]\n[[model]]\nname = \"s\"\narch = {mlp}\ntrain = {{ augment = {{ mixup = 0.2 }} }}\n",
            iris.display()
        ),
        &["model.s.train.augment", "mixup", "data.targets"],
    );
    expect_bad_config(
        dir,
        "group-task-teacher",
        &format!(
            "{base}[[submodels]]\nname = \"g\"\nk = 2\nteacher = \"t\"\nalpha = 0.5\narch = {mlp}\n{}",
            (task("a", "teacher = \"t\"") + &task("b", ""))
                .replace("[[model.task]]", "[[submodels.task]]")
        ),
        &["submodels.g.teacher", "remove teacher", "init = \"split\""],
    );
    expect_bad_config(
        dir,
        "group-task-alpha",
        &format!(
            "{base}[[submodels]]\nname = \"g\"\nk = 2\ninit = \"split\"\nteacher = \"t\"\nalpha = 0.5\n{}",
            (task("a", "teacher = \"t\"") + &task("b", ""))
                .replace("[[model.task]]", "[[submodels.task]]")
        ),
        &["submodels.g.alpha", "remove alpha"],
    );
    expect_bad_config(
        dir,
        "group-task-archs-tree",
        &format!(
            "{base}[[submodels]]\nname = \"g\"\nk = 2\narchs = [{mlp}, {{ kind = \"decision-tree\", flatten = true }}]\n{}",
            (task("a", "teacher = \"t\"") + &task("b", ""))
                .replace("[[model.task]]", "[[submodels.task]]")
        ),
        &["submodels.g.archs[1].kind", "shared trunk"],
    );
    expect_bad_config(
        dir,
        "group-task-final-tree",
        &format!(
            "{base}[[submodels]]\nname = \"g\"\nk = 2\narch = {mlp}\nfinal_student = {{ name = \"f\", arch = {{ kind = \"decision-tree\", flatten = true }} }}\n{}",
            (task("a", "teacher = \"t\"") + &task("b", ""))
                .replace("[[model.task]]", "[[submodels.task]]")
        ),
        &["submodels.g.final_student.arch.kind", "shared trunk"],
    );
    // A head that learns 3 classes from a teacher of 10: the teacher is refused first.
    let onnx = repo().join("data/teachers/digits-torch-mlp.onnx");
    let mut csv = (0..64)
        .map(|i| format!("p{i}"))
        .chain(["label".to_string()])
        .collect::<Vec<_>>()
        .join(",");
    csv.push('\n');
    for r in 0..60 {
        let row: Vec<String> = (0..64).map(|i| ((r * 7 + i) % 17).to_string()).collect();
        csv.push_str(&format!("{},c{}\n", row.join(","), r % 3));
    }
    let path = write(dir, "three.csv", csv.as_bytes());
    expect_bad_config(
        dir,
        "task-teacher-classes",
        &format!(
            "[data]\nformat = \"csv\"\npath = \"{path}\"\nlabel = \"label\"\n[[teacher]]\nname = \"t\"\nonnx = \"{}\"\n[[model]]\nname = \"s\"\narch = {mlp}\ntrain = {{ epochs = 1 }}\n{}",
            onnx.display(),
            task("a", "teacher = \"t\"") + &task("b", "")
        ),
        &["teacher.t", "10 outputs", "3 classes"],
    );
}

/// ONNX teachers whose inputs do not fit the data: an input name the graph lacks, a float graph
/// on texts, token-id settings on a float graph, an id below 0, and values that are not ids
/// fed to a token-id graph — each one line, exit 2, before any work.
#[test]
fn bad_onnx_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = env!("CARGO_MANIFEST_DIR");
    let mlp = format!("{root}/data/teachers/digits-torch-mlp.onnx");
    let float12 = format!("{root}/tests/data/onnx/lower-mlp.onnx");
    let ids = format!("{root}/tests/data/onnx/token-bag.onnx");
    let digits = "[data]\nformat = \"digits\"\n";
    let student = "[[model]]\nname = \"s\"\nrole = \"student\"\narch = { kind = \"mlp\", hidden = [8] }\ntrain = { epochs = 1 }\ndistill = { teacher = \"t\" }\n";
    expect_bad_config(
        dir,
        "onnx-input-name-missing",
        &format!(
            "{digits}[[teacher]]\nname = \"t\"\nonnx = \"{mlp}\"\ninput_name = \"ids\"\n{student}"
        ),
        &["digits-torch-mlp.onnx", "no input named 'ids'", "pixels"],
    );
    expect_bad_config(
        dir,
        "onnx-token-ids-float-graph",
        &format!("{digits}[[teacher]]\nname = \"t\"\nonnx = \"{mlp}\"\ntoken_ids = {{ pad = 0 }}\n{student}"),
        &["teacher.t.token_ids", "takes float values, not token ids"],
    );
    expect_bad_config(
        dir,
        "onnx-token-ids-negative",
        &format!("{digits}[[teacher]]\nname = \"t\"\nonnx = \"{ids}\"\ntoken_ids = {{ pad = -1 }}\n{student}"),
        &["teacher[0].token_ids.pad", "≥ 0"],
    );
    let iris = format!(
        "[data]\nformat = \"csv\"\npath = \"{root}/data/sklearn/iris.csv\"\nlabel = \"species\"\n"
    );
    expect_bad_config(
        dir,
        "onnx-token-ids-not-ids",
        &format!("{iris}[[teacher]]\nname = \"t\"\nonnx = \"{ids}\"\ncalibrate = true\n{student}"),
        &["token-bag.onnx", "integer token ids", "sample 0 holds"],
    );
    let texts: String = (0..40)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"text": format!("word{} other words {}", i % 5, i), "label": if i % 2 == 0 {"a"} else {"b"}})
            )
        })
        .collect();
    let data = write(dir, "t.jsonl", texts.as_bytes());
    expect_bad_config(
        dir,
        "onnx-float-teacher-on-text",
        &format!("[data]\nformat = \"text\"\npath = \"{data}\"\nfeatures = {{ kind = \"ngrams\", buckets = 64, max_tokens = 12 }}\n[[teacher]]\nname = \"t\"\nonnx = \"{float12}\"\ncalibrate = true\n[[model]]\nname = \"s\"\nrole = \"student\"\narch = {{ kind = \"embedding-bag\", dim = 4 }}\ntrain = {{ epochs = 1 }}\ndistill = {{ teacher = \"t\" }}\n"),
        &["lower-mlp.onnx", "takes float values", "integer token ids"],
    );
    // Token augmentations on images; image and row augmentations on texts.
    expect_bad_config(
        dir,
        "augment-mask-on-images",
        &format!("{digits}[[model]]\nname = \"s\"\narch = {{ kind = \"mlp\", hidden = [8] }}\ntrain = {{ epochs = 1, augment = {{ mask = 0.1 }} }}\n"),
        &["model.s.train.augment.mask", "texts"],
    );
    expect_bad_config(
        dir,
        "augment-noise-on-texts",
        &format!("[data]\nformat = \"text\"\npath = \"{data}\"\nfeatures = {{ kind = \"ngrams\", buckets = 64 }}\n[[model]]\nname = \"s\"\narch = {{ kind = \"embedding-bag\", dim = 4 }}\ntrain = {{ epochs = 1, augment = {{ noise = 0.1 }} }}\n"),
        &["model.s.train.augment", "mask, ngram and replace only"],
    );
    // Synthetic or transfer samples need a teacher that runs on features, not a mix with a
    // member of precomputed outputs (known for the data set's own samples only).
    let outputs = write(dir, "outputs.csv", b"a,b\n0.1,0.2\n");
    expect_bad_config(
        dir,
        "synthetic-from-a-mix",
        &format!("{digits}[[teacher]]\nname = \"a\"\noutputs = \"{outputs}\"\n[[model]]\nname = \"own\"\narch = {{ kind = \"mlp\", hidden = [8] }}\ntrain = {{ epochs = 1 }}\n[[teacher]]\nname = \"t\"\nmix = [{{ teacher = \"a\", weight = 1.0 }}, {{ teacher = \"own\", weight = 1.0 }}]\n[[model]]\nname = \"s\"\nrole = \"student\"\narch = {{ kind = \"mlp\", hidden = [8] }}\ntrain = {{ epochs = 1 }}\ndistill = {{ teacher = \"t\", synthetic = {{ samples = 100 }} }}\n"),
        &["model.s.distill.synthetic", "a mix with such a member", "runs on features"],
    );
    // Token replacement: without its table, from a name that is not there, from a model
    // without a token table.
    let text = format!("[data]\nformat = \"text\"\npath = \"{data}\"\nfeatures = {{ kind = \"ngrams\", buckets = 64 }}\n");
    let bag = "arch = { kind = \"embedding-bag\", dim = 4 }";
    expect_bad_config(
        dir,
        "augment-replace-without-table",
        &format!("{text}[[model]]\nname = \"s\"\n{bag}\ntrain = {{ epochs = 1, augment = {{ replace = 0.1 }} }}\n"),
        &["model.s.train.augment.replace_from", "token table"],
    );
    expect_bad_config(
        dir,
        "augment-replace-unknown",
        &format!("{text}[[model]]\nname = \"s\"\n{bag}\ntrain = {{ epochs = 1, augment = {{ replace = 0.1, replace_from = \"nobody\" }} }}\n"),
        &["model.s.train.augment.replace_from", "'nobody' is not an earlier"],
    );
    expect_bad_config(
        dir,
        "augment-replace-not-a-bag",
        &format!("{text}[[teacher]]\nname = \"t\"\nonnx = \"{ids}\"\n[[model]]\nname = \"s\"\n{bag}\ntrain = {{ epochs = 1, augment = {{ replace = 0.1, replace_from = \"t\" }} }}\n"),
        &["model.s.train.augment.replace_from", "no token table", "embedding-bag"],
    );
    // Fine-tuning a BERT teacher: with a head of its own, bad settings, on another teacher.
    let folder = dir.display();
    let student = format!("[[model]]\nname = \"s\"\n{bag}\ntrain = {{ epochs = 1 }}\n");
    for (case, teacher, expect) in [
        (
            "finetune-with-head",
            format!("bert = \"{folder}\"\nhead = {{}}\nfinetune = {{}}"),
            &["teacher[0].head", "finetune trains its own linear head"][..],
        ),
        (
            "finetune-lr",
            format!("bert = \"{folder}\"\nfinetune = {{ lr = 0.0 }}"),
            &[
                "teacher[0].finetune.lr",
                "expected a positive number, got 0",
            ][..],
        ),
        (
            "finetune-warmup",
            format!("bert = \"{folder}\"\nfinetune = {{ warmup = 1.5 }}"),
            &["teacher[0].finetune.warmup", "in [0, 1)"][..],
        ),
        (
            "finetune-not-bert",
            format!("onnx = \"{ids}\"\nfinetune = {{}}"),
            &["teacher[0].finetune", "only for a bert teacher"][..],
        ),
    ] {
        expect_bad_config(
            dir,
            case,
            &format!("{text}[[teacher]]\nname = \"t\"\n{teacher}\n{student}"),
            expect,
        );
    }
    // Fixed views: none, without augmentation, with mixup.
    for (case, train, expect) in [
        (
            "views-zero",
            "{ epochs = 1, views = 0, augment = { noise = 0.1 } }",
            &["model.s.train.views", "at least 1 view"][..],
        ),
        (
            "views-without-augment",
            "{ epochs = 1, views = 4 }",
            &["model.s.train.views", "set jitter or augment"][..],
        ),
        (
            "views-with-mixup",
            "{ epochs = 1, views = 4, augment = { mixup = 0.2 } }",
            &["model.s.train.views", "mixup and CutMix pair"][..],
        ),
    ] {
        expect_bad_config(
            dir,
            case,
            &format!("{digits}[[model]]\nname = \"s\"\narch = {{ kind = \"mlp\", hidden = [8] }}\ntrain = {train}\n"),
            expect,
        );
    }
}
