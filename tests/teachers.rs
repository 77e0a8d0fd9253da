//! Teachers distillery did not train: an ONNX file made by PyTorch
//! (`bench/reference/make_onnx_teacher.py`), run in tract, against the outputs PyTorch saved
//! beside it; and the `[[teacher]]` table's errors.

mod common;
use common::{metrics, run, stderr};
use distillery::data::Normalizer;
use distillery::teachers::{OnnxInput, OnnxTeacher, Teacher};

/// A JSON matrix (array of rows), row-major.
/// The inputs and the reference logits saved beside an ONNX model.
fn inputs_and_logits(path: &std::path::Path) -> (Vec<f32>, Vec<f32>) {
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    (rows(&refs["inputs"]), rows(&refs["logits"]))
}

fn rows(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect()
}

#[test]
fn onnx_teacher_matches_the_pytorch_outputs_saved_with_it() {
    let dir = common::repo().join("data/teachers");
    let (x, want) = inputs_and_logits(&dir.join("digits-torch-mlp.outputs.json"));
    let t = OnnxTeacher::load(
        &dir.join("digits-torch-mlp.onnx"),
        64,
        OnnxInput::Raw,
        0,
        Normalizer::None,
    )
    .unwrap();
    // 64·128 + 128 + 128·10 + 10 weights and biases, plus the model's scalar constant(s).
    assert!((9610..9700).contains(&t.params()), "{}", t.params());
    // Batch sizes 16, 1 and 5 (one plan each) give the same outputs as PyTorch.
    let all = t.predict_rows(&x, 16).unwrap();
    assert_eq!(all.len(), want.len());
    for (a, b) in all.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
    let one = t.predict_rows(&x[..64], 1).unwrap();
    assert_eq!(one.len(), 10);
    for (a, b) in one.iter().zip(&want[..10]) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0));
    }
    assert_eq!(t.predict_rows(&x[64..6 * 64], 5).unwrap().len(), 50);
    // Normalised inputs are mapped back to raw values when input = raw.
    let norm = Normalizer::Global {
        mean: 4.0,
        std: 6.0,
    };
    let tn = OnnxTeacher::load(
        &dir.join("digits-torch-mlp.onnx"),
        64,
        OnnxInput::Raw,
        0,
        norm.clone(),
    )
    .unwrap();
    let mut xn = x.clone();
    norm.apply(&mut xn, 64);
    for (a, b) in tn.predict_rows(&xn, 16).unwrap().iter().zip(&want) {
        assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn onnx_teacher_errors_name_the_file_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    // Not an ONNX file.
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    let e = OnnxTeacher::load(&junk, 64, OnnxInput::Raw, 0, Normalizer::None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("junk.onnx"), "{e}");
    // The digits teacher on data of another width, through the real binary: exit 2, one line.
    let onnx = common::repo().join("data/teachers/digits-torch-mlp.onnx");
    let cfg = dir.path().join("iris.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\nformat = \"csv\"\npath = \"data/sklearn/iris.csv\"\nlabel = \"species\"\n\
             [[teacher]]\nname = \"t\"\nonnx = \"{}\"\n\
             [[model]]\nname = \"s\"\narch = {{ kind = \"mlp\", hidden = [8] }}\n\
             distill = {{ teacher = \"t\" }}\n",
            onnx.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    let o = common::run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    let err = common::stderr(&o);
    assert!(
        err.contains("digits-torch-mlp.onnx") && err.lines().count() == 1,
        "{err}"
    );
}

/// An ONNX teacher (and a mix of it with a distillery model) teaches wherever a teacher is
/// named: a student, a sub-model group (on shards), pruning recovery and quantization-aware
/// training.
#[test]
fn outside_teachers_teach_recovery_and_qat_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        r#"
seed = 3
[data]
format = "digits"
max_train = 400
[eval]
latency_runs = 2
latency_budget_ms = 1
[[teacher]]
name = "torch"
onnx = "data/teachers/digits-torch-mlp.onnx"
[[model]]
name = "own"
arch = { kind = "mlp", hidden = [32] }
train = { epochs = 3 }
[[teacher]]
name = "both"
mix = [{ teacher = "torch", weight = 2.0 }, { teacher = "own", weight = 1.0 }]
[[model]]
name = "student"
role = "student"
arch = { kind = "mlp", hidden = [24] }
train = { epochs = 3 }
distill = { teacher = "both", temperature = 4.0, alpha = 0.7 }
[[model]]
name = "student-aug"
role = "student"
arch = { kind = "mlp", hidden = [24] }
train = { epochs = 2, augment = { noise = 0.05 } }
distill = { teacher = "both", temperature = 2.0, alpha = 1.0, synthetic = { samples = 300 } }
[[submodels]]
name = "g"
k = 2
teacher = "torch"
alpha = 0.5
shards = true
arch = { kind = "mlp", hidden = [16] }
phase1 = { epochs = 1 }
transfer = { rounds = 1 }
[[prune]]
name = "pruned"
from = "student"
method = "structured"
sparsity = 0.5
recover = { teacher = "torch", train = { epochs = 2 } }
[[quantize]]
name = "int8"
from = "pruned"
precision = "int8"
qat = { teacher = "both", train = { epochs = 1 } }
"#,
    )
    .unwrap();
    let out = dir.path().join("run");
    let o = run(&["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("a mix of teachers: torch ×0.67 + own ×0.33"),
        "{err}"
    );
    assert!(err.contains("torch's soft targets"), "{err}");
    // Its members run on features, so the mix teaches augmented views and synthetic samples
    // (and its outputs on the training samples equal its averaged ones: checked as it starts).
    assert!(err.contains("both: every member runs on features"), "{err}");
    assert!(
        err.contains("student-aug: the teacher runs on every augmented batch"),
        "{err}"
    );
    assert!(err.contains("student-aug: 300 synthetic samples"), "{err}");
    assert!(err.contains("with both's soft targets"), "{err}");
    let m = metrics(&out);
    let names: Vec<&str> = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for n in [
        "torch",
        "own",
        "both",
        "student",
        "student-aug",
        "g-1",
        "g-2",
        "pruned",
        "int8",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let both = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "both")
        .unwrap();
    assert!(both["accuracy"].as_f64().unwrap() > 0.8, "{both}");
}

/// A distillery model exported to ONNX and read back as a teacher scores exactly as the model
/// did, and teaches a student.
#[test]
fn exported_model_round_trips_as_an_onnx_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let head = r#"
seed = 5
[data]
format = "digits"
[eval]
latency_runs = 2
latency_budget_ms = 1
"#;
    let first = dir.path().join("first.toml");
    std::fs::write(
        &first,
        format!(
            "{head}[[model]]\nname = \"own\"\narch = {{ kind = \"mlp\", hidden = [48] }}\ntrain = {{ epochs = 4 }}\n[[export]]\nfrom = \"own\"\nformat = \"onnx\"\n"
        ),
    )
    .unwrap();
    let out1 = dir.path().join("one");
    let o = run(&[
        "run",
        first.to_str().unwrap(),
        "--out",
        out1.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let onnx = out1.join("exports/own.onnx");
    let second = dir.path().join("second.toml");
    std::fs::write(
        &second,
        format!(
            "{head}[[teacher]]\nname = \"back\"\nonnx = \"{}\"\n[[model]]\nname = \"s\"\nrole = \"student\"\narch = {{ kind = \"mlp\", hidden = [16] }}\ntrain = {{ epochs = 4 }}\ndistill = {{ teacher = \"back\" }}\n",
            onnx.display()
        ),
    )
    .unwrap();
    let out2 = dir.path().join("two");
    let o = run(&[
        "run",
        second.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (m1, m2) = (metrics(&out1), metrics(&out2));
    let own = &m1["models"][0];
    let back = m2["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "back")
        .unwrap();
    assert_eq!(own["test_errors"], back["test_errors"], "{own} vs {back}");
    let d = (own["test_loss"].as_f64().unwrap() - back["test_loss"].as_f64().unwrap()).abs();
    assert!(d < 1e-5, "test loss differs by {d}");
}

/// A teacher-output cache larger than the memory the process may allocate still trains a
/// student: the test runs itself again as a child under `prlimit --data` (a cap on the heap and
/// every other private writable mapping, not on read-only file maps) of 96 MiB, and there
/// computes a 192 MiB cache chunk by chunk, maps it, and trains a student on it (the rows as
/// targets) and a classifier (the rows as inputs, as a BERT teacher's head reads its cached
/// embeddings). Had anything read the cache into memory, the child would die allocating it.
#[test]
fn a_cache_larger_than_the_memory_limit_trains_a_student() {
    use distillery::teachers::{cache, Rows};
    const N: usize = 196_608;
    const COLS: usize = 256;
    let target = |i: usize, j: usize| ((i * 31 + j * 7) % 97) as f32 / 97.0 - 0.5;
    if std::env::var_os("DISTILLERY_BIG_CACHE_CHILD").is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("prlimit")
            .arg(format!("--data={}", 96usize << 20))
            .arg(&exe)
            .args([
                "a_cache_larger_than_the_memory_limit_trains_a_student",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DISTILLERY_BIG_CACHE_CHILD", "1")
            .output()
            .expect("prlimit (util-linux) runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed:\n{text}");
        assert!(text.contains("big cache: mapped"), "{text}");
        return;
    }
    // A heap allocation as large as the cache must fail here, or the limit proves nothing.
    let mut probe: Vec<u8> = Vec::new();
    assert!(
        probe.try_reserve_exact(N * COLS * 4).is_err(),
        "the data limit is not in force"
    );
    let dir = tempfile::tempdir().unwrap();
    let (rows, used) = cache::rows(
        dir.path(),
        "big",
        N,
        COLS,
        8192,
        "big",
        distillery::progress::Progress::Quiet,
        |r| {
            Ok(r.flat_map(|i| (0..COLS).map(move |j| target(i, j)))
                .collect())
        },
    )
    .unwrap();
    assert_eq!(used.computed, N);
    assert!(matches!(rows, Rows::Mapped(_)));
    assert_eq!(rows.len(), N * COLS);
    println!("big cache: mapped {} MiB", (rows.len() * 4) >> 20);
    // A student whose outputs are the cached rows (embedding distillation, MSE): one epoch.
    use distillery::data::{Dataset, Targets};
    use distillery::models::{Arch, Model, ModelSpec};
    let x: Vec<f32> = (0..N).map(|i| (i % 1000) as f32 / 1000.0).collect();
    let train = Dataset::new(x, vec![1], Targets::Values(vec![0.0; N]));
    let val_n = 512;
    let val = Dataset::new(
        (0..val_n).map(|i| i as f32 / val_n as f32).collect(),
        vec![1],
        Targets::Values(vec![0.0; val_n]),
    );
    let val_rows: Rows = (0..val_n)
        .flat_map(|i| (0..COLS).map(move |j| target(i, j)))
        .collect::<Vec<f32>>()
        .into();
    let spec = ModelSpec {
        arch: Arch::mlp(vec![16]),
        input_shape: vec![1],
        outputs: COLS,
    };
    let model = Model::new(spec, &mut distillery::rng::Rng::new(1)).unwrap();
    let cfg = distillery::train::TrainConfig {
        epochs: 3,
        batch_size: 1024,
        ..Default::default()
    };
    let rec = distillery::train::fit(
        &model,
        distillery::train::TrainJob {
            name: "big",
            cfg: &cfg,
            train: &train,
            val: &val,
            objective: distillery::train::Objective::embedding(
                rows,
                val_rows,
                distillery::losses::SoftLoss::Mse,
            ),
            fill: 0.0,
            checkpoint: None,
            seed: 1,
            progress: distillery::progress::Progress::Quiet,
            hooks: Vec::new(),
        },
    )
    .unwrap();
    // The loss (squared error summed over the 256 values) falls from epoch to epoch towards
    // what the mean of the targets would score.
    let l = &rec.curves.train_loss;
    assert!(
        l.iter().all(|x| x.is_finite()) && l[2] < l[0],
        "training loss {l:?}"
    );
}

/// `alpha = "auto"`: with a teacher that is confidently wrong (its logits name the class three
/// after the true one), the trials on validation choose α = 0 (labels only), the run warns
/// that the teacher validates worse than labels, the report shows the grid, and a resumed run
/// reads the choice instead of repeating the trials.
#[test]
fn auto_alpha_chooses_labels_when_the_teacher_misleads() {
    let dir = tempfile::tempdir().unwrap();
    let d = distillery::data::embedded_digits().unwrap();
    let labels = match &d.targets {
        distillery::data::Targets::Classes { labels, .. } => labels.clone(),
        _ => unreachable!(),
    };
    let mut csv = (0..10).map(|c| c.to_string()).collect::<Vec<_>>().join(",") + "\n";
    for &y in &labels {
        let row: Vec<String> = (0..10u32)
            .map(|c| if c == (y + 3) % 10 { "6" } else { "0" }.to_string())
            .collect();
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    let outs = dir.path().join("liar.csv");
    std::fs::write(&outs, csv).unwrap();
    let cfg = dir.path().join("auto.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"seed = 3
[data]
format = "digits"
val_fraction = 0.2
test_fraction = 0.2
[eval]
latency_runs = 3
latency_budget_ms = 20
[[teacher]]
name = "liar"
outputs = "{}"
[[model]]
name = "student"
role = "student"
arch = {{ kind = "mlp", hidden = [32] }}
distill = {{ teacher = "liar", alpha = "auto", temperature = "auto" }}
train = {{ epochs = 10, batch_size = 64, lr = 0.003 }}
"#,
            outs.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    let o = run(&["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("9 trials of 2 epoch(s)"), "{err}");
    assert!(
        err.contains("warning: student: teacher validates worse"),
        "{err}"
    );
    let m = metrics(&out);
    let first = common::metrics_without_timings(&out);
    eprintln!("{err}");
    let student = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "student")
        .unwrap();
    let auto = &student["distill"]["auto"];
    assert_eq!(auto["alpha"], 0.0, "{auto}");
    assert_eq!(student["distill"]["alpha"], 0.0);
    assert_eq!(auto["trials"].as_array().unwrap().len(), 9);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Distillation settings chosen on validation"));
    assert!(report.contains("**Warning:** teacher validates worse"));
    // The student is as good as labels alone: it is labels alone.
    assert!(student["accuracy"].as_f64().unwrap() > 0.85, "{student}");
    // Resumed (the model file removed): the choice is read back, not tried again.
    std::fs::remove_file(out.join("models/student.safetensors")).unwrap();
    let o2 = run(&["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let err2 = stderr(&o2);
    assert!(o2.status.success(), "{err2}");
    assert!(err2.contains("chosen earlier"), "{err2}");
    assert!(!err2.contains("trial α"), "{err2}");
    assert_eq!(common::metrics_without_timings(&out), first);

    // α fixed at 0.9 and only T chosen: every trial distils, so the winner is trained in full
    // beside the same student on labels alone, and the better on validation is kept — here
    // labels alone, recorded as α = 0.
    let cfg2 = dir.path().join("auto2.toml");
    std::fs::write(
        &cfg2,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("alpha = \"auto\"", "alpha = 0.9"),
    )
    .unwrap();
    let out2 = dir.path().join("run2");
    let o3 = run(&[
        "run",
        cfg2.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    let err3 = stderr(&o3);
    assert!(o3.status.success(), "{err3}");
    assert!(err3.contains("4 trials of 2 epoch(s)"), "{err3}");
    assert!(err3.contains("keeping labels alone"), "{err3}");
    let m2 = metrics(&out2);
    let s2 = m2["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "student")
        .unwrap()
        .clone();
    let full = &s2["distill"]["auto"]["full_runs"];
    assert_eq!(full["kept_labels"], true, "{full}");
    assert_eq!(s2["distill"]["alpha"], 0.0);
    assert!(
        full["labels"]["val_accuracy"].as_f64() > full["distilled"]["val_accuracy"].as_f64(),
        "{full}"
    );
    assert!(s2["accuracy"].as_f64().unwrap() > 0.85, "{s2}");
    assert!(!out2.join("checkpoints/student.labels.ckpt").exists());
}

/// An image model as PyTorch exports it: input `pixels` of shape `[N, 1, 8, 8]` (dynamic batch),
/// two outputs with the logits second, picked by name; in one file and with its weights in an
/// external-data file beside it (`scripts/make_onnx_image_teacher.py`, against onnxruntime's
/// outputs saved with them).
#[test]
fn onnx_image_teachers_as_pytorch_exports_them_match_onnxruntime() {
    let dir = common::repo().join("tests/data/onnx");
    let (x, want) = inputs_and_logits(&dir.join("image-cnn.expected.json"));
    let by_name = distillery::teachers::OnnxOutput::Name("logits".into());
    for file in ["image-cnn.onnx", "image-cnn-ext.onnx"] {
        let t = OnnxTeacher::load(
            &dir.join(file),
            64,
            OnnxInput::Raw,
            by_name.clone(),
            Normalizer::None,
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(t.sample_shape(), &[1, 8, 8], "{file}");
        // Its weights and biases, plus the few constants tract's typing adds.
        let weights = 4 * 9 + 4 + 64 * 10 + 10;
        assert!(
            (weights..weights + 32).contains(&t.params()),
            "{file}: {}",
            t.params()
        );
        for rows_at_once in [5, 2] {
            let mut got = Vec::new();
            for chunk in x.chunks(rows_at_once * 64) {
                got.extend(t.predict_rows(chunk, chunk.len() / 64).unwrap());
            }
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{file}: max |Δ| {worst} against onnxruntime");
        }
    }
    // By position, the first output is the softmax: rows sum to 1.
    let probs = OnnxTeacher::load(
        &dir.join("image-cnn.onnx"),
        64,
        OnnxInput::Raw,
        0,
        Normalizer::None,
    )
    .unwrap();
    let p = probs.predict_rows(&x[..64], 1).unwrap();
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    // What does not fit is one line naming the file.
    let e = OnnxTeacher::load(
        &dir.join("image-cnn.onnx"),
        63,
        OnnxInput::Raw,
        0,
        Normalizer::None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("image-cnn.onnx") && e.contains("[1, 8, 8]") && e.contains("63"),
        "{e}"
    );
    let e = OnnxTeacher::load(
        &dir.join("image-cnn.onnx"),
        64,
        OnnxInput::Raw,
        distillery::teachers::OnnxOutput::Name("scores".into()),
        Normalizer::None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("no output named 'scores'") && e.contains("logits"),
        "{e}"
    );
    // The external-data form without its data file.
    let lone = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("image-cnn-ext.onnx"), lone.path().join("m.onnx")).unwrap();
    let e = OnnxTeacher::load(
        &lone.path().join("m.onnx"),
        64,
        OnnxInput::Raw,
        0,
        Normalizer::None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("m.onnx") && !e.contains('\n'), "{e}");
}

/// ONNX graphs made of the operators our kernels have run on them, lowered onto distillery's
/// own MLP and CNN (`teachers::lowered`), and give onnxruntime's outputs
/// (`scripts/make_onnx_lowering_cases.py`: every fold — input scaling, MatMul + Add, batch
/// normalisation after a dense layer and a conv, Gemm's alpha, beta and transB, a scale after
/// the last layer, pool before ReLU, Reshape, LogSoftmax — in two graphs); a graph with a
/// residual branch stays in tract, and says why. Every committed PyTorch-made teacher is
/// lowered, and agrees with tract at batch 1, 7 and 256 (256: one block of rows per thread).
#[test]
fn onnx_graphs_made_of_our_operators_run_on_our_kernels() {
    let dir = common::repo().join("tests/data/onnx");
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("lower-cases.expected.json")).unwrap(),
    )
    .unwrap();
    let cases = [
        ("lower-mlp", 12, "logits", "native mlp 12-16-8-5"),
        ("lower-mlp", 12, "logp", "native mlp 12-16-8-5"),
        ("lower-cnn", 72, "out", "native cnn 2-6-6 conv3x3 [3-5]"),
        (
            "lower-branch",
            12,
            "y",
            "tract (not lowered: value 'x' branches",
        ),
    ];
    for (name, dim, output, runtime) in cases {
        let t = OnnxTeacher::load(
            &dir.join(format!("{name}.onnx")),
            dim,
            OnnxInput::Raw,
            distillery::teachers::OnnxOutput::Name(output.into()),
            Normalizer::None,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            t.runtime().starts_with(runtime),
            "{name}/{output}: {}",
            t.runtime()
        );
        let x = rows(&refs[name]["inputs"]);
        let want = rows(&refs[name]["outputs"][output]);
        let got = t.predict_rows(&x, 6).unwrap();
        assert_eq!(got.len(), want.len(), "{name}/{output}");
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{name}/{output}: {a} vs onnxruntime's {b}"
            );
        }
    }
    let teachers = [
        (
            "data/teachers/digits-torch-mlp.onnx",
            64,
            "native mlp 64-128-10",
        ),
        (
            "data/teachers/mnist-cnn.onnx",
            784,
            "native cnn 1-28-28 conv5x5",
        ),
        (
            "tests/data/onnx/image-cnn.onnx",
            64,
            "native cnn 1-8-8 conv3x3",
        ),
        (
            "tests/data/onnx/image-cnn-ext.onnx",
            64,
            "native cnn 1-8-8 conv3x3",
        ),
    ];
    let mut rng = distillery::rng::Rng::new(3);
    for (file, dim, runtime) in teachers {
        let t = OnnxTeacher::load(
            &common::repo().join(file),
            dim,
            OnnxInput::Raw,
            distillery::teachers::OnnxOutput::Name("logits".into()),
            Normalizer::None,
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(t.runtime().starts_with(runtime), "{file}: {}", t.runtime());
        for rows in [1, 7, 256] {
            let x: Vec<f32> = (0..rows * dim).map(|_| rng.uniform() * 16.0).collect();
            let (a, b) = (
                t.predict_rows(&x, rows).unwrap(),
                t.predict_rows_in_tract(&x, rows).unwrap(),
            );
            let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                a.len() == b.len() && worst <= 1e-4 * scale,
                "{file} at {rows} rows: max |Δ| {worst} against tract (scale {scale})"
            );
        }
    }
}

/// An ONNX text classifier over integer token ids, with three inputs as `torch.onnx.export`
/// writes Hugging Face models (`scripts/make_onnx_token_teacher.py`): distillery feeds the
/// featurized rows (ids, then -1 padding) as `input_ids` — the padding given its id, [CLS]
/// and [SEP] put around each text when asked — and fills `attention_mask` and
/// `token_type_ids`; the logits are onnxruntime's. Inputs are chosen by name; what does not fit
/// is one line naming the file.
#[test]
fn onnx_teachers_of_token_ids_fill_the_inputs_pytorch_exports() {
    let dir = common::repo().join("tests/data/onnx");
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("token-bag.expected.json")).unwrap(),
    )
    .unwrap();
    let x = rows(&refs["rows"]);
    let file = dir.join("token-bag.onnx");
    let load = |feed: distillery::teachers::OnnxFeed| {
        OnnxTeacher::load_fed(&file, 6, OnnxInput::Raw, 0, Normalizer::None, feed)
    };
    let plain = distillery::teachers::OnnxFeed::default();
    let wrapped = distillery::teachers::OnnxFeed {
        input_name: Some("input_ids".into()),
        token_ids: distillery::teachers::TokenIds {
            pad: 0,
            cls: Some(1),
            sep: Some(2),
        },
    };
    for (feed, key) in [(plain, "logits"), (wrapped, "logits_cls_sep")] {
        let t = load(feed).unwrap();
        assert!(t.takes_token_ids());
        assert!(t.runtime().starts_with("tract"), "{}", t.runtime());
        let want = rows(&refs[key]);
        for at_once in [6, 1, 4] {
            let mut got = Vec::new();
            for chunk in x.chunks(at_once * 6) {
                got.extend(t.predict_rows(chunk, chunk.len() / 6).unwrap());
            }
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{key}: {a} vs onnxruntime's {b}");
            }
        }
    }
    // A value that is not an id; an input name the graph lacks.
    let t = load(Default::default()).unwrap();
    let mut bad = x.clone();
    bad[7] = 2.5;
    let e = t.predict_rows(&bad, 6).unwrap_err().to_string();
    assert!(
        e.contains("token-bag.onnx") && e.contains("sample 1 holds 2.5"),
        "{e}"
    );
    let e = load(distillery::teachers::OnnxFeed {
        input_name: Some("ids".into()),
        ..Default::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("no input named 'ids'") && e.contains("input_ids, attention_mask"),
        "{e}"
    );
}
