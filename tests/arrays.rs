//! Data and teacher outputs given in memory (`data.format = "arrays"`, what the Python package
//! runs on), against the same data from files: the same figures. And precomputed regression
//! outputs, which are in the target's units.

mod common;
use common::{metrics_without_timings, run, stderr};
use distillery::config;
use distillery::data::Task;
use distillery::data::{self, csv::CsvOptions, ArrayOutputs, Arrays, Dataset, Rows};
use distillery::pipeline::{self, RunOptions};
use distillery::progress::Progress;
use std::path::Path;
use std::sync::Arc;

fn digits_csv() -> std::path::PathBuf {
    common::repo().join("data/sklearn/digits.csv.gz")
}

/// Logits of a fixed, imperfect teacher: the true class and the next one favoured.
fn logits(d: &Dataset) -> Vec<f32> {
    let labels = match &d.targets {
        data::Targets::Classes { labels, .. } => labels.clone(),
        _ => unreachable!(),
    };
    let mut out = Vec::new();
    for (i, &y) in labels.iter().enumerate() {
        for c in 0..10u32 {
            let base = ((i * 31 + c as usize * 7) % 13) as f32 / 13.0 - 0.5;
            out.push(
                base + if c == y {
                    2.5
                } else if c == (y + 1) % 10 {
                    1.0
                } else {
                    0.0
                },
            );
        }
    }
    out
}

/// A model's record in a run's metrics.
fn record(m: &serde_json::Value, name: &str) -> serde_json::Value {
    m["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no model '{name}'"))
        .clone()
}

fn write_outputs(path: &Path, v: &[f32], cols: usize) {
    let mut s = (0..cols)
        .map(|c| format!("c{c}"))
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for row in v.chunks(cols) {
        s += &row
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",");
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn run_quiet(cfg: &str, out: &Path, arrays: Option<Arrays>) -> distillery::error::Result<()> {
    let c = config::load_str(cfg, "test.toml", &[])?.validate()?;
    let mut opts = RunOptions::new(out);
    opts.progress = Progress::Quiet;
    opts.arrays = arrays.map(Arc::new);
    pipeline::run_experiment(&c, &opts).map(|_| ())
}

const STUDENT: &str = r#"
[eval]
latency_runs = 3
latency_budget_ms = 20
[[teacher]]
name = "teacher"
outputs = "OUTPUTS"
[[model]]
name = "student"
role = "student"
arch = { kind = "mlp", hidden = [24] }
train = { epochs = 4, lr = 0.003 }
distill = { teacher = "teacher", temperature = 3.0, alpha = 0.7 }
[[submodels]]
name = "sub"
k = 2
shards = true
arch = { kind = "mlp", hidden = [12] }
phase1 = { epochs = 2 }
transfer = { rounds = 2, tolerance = 1e-4, epochs_per_round = 1, peer_weight = 0.5 }
"#;

#[test]
fn arrays_in_memory_give_the_figures_of_the_same_data_in_files() {
    let dir = tempfile::tempdir().unwrap();
    let opts = CsvOptions {
        label: "digit".into(),
        task: Task::Classification,
        image_shape: None,
        extra: Vec::new(),
    };
    let d = data::csv::read_csv(&digits_csv(), &opts, None).unwrap();
    let t = logits(&d);
    let outs = dir.path().join("t.csv");
    write_outputs(&outs, &t, 10);

    let head = |fmt: &str| format!("seed = 11\n[data]\nformat = \"{fmt}\"\nval_fraction = 0.15\n");
    let files = head("csv").replace(
        "[data]\n",
        &format!(
            "[data]\npath = \"{}\"\nlabel = \"digit\"\n",
            digits_csv().display()
        ),
    ) + &STUDENT.replace("OUTPUTS", &outs.display().to_string());
    run_quiet(&files, &dir.path().join("files"), None).unwrap();

    // The same values, borrowed (as from a NumPy array), and the outputs by name.
    let x: Arc<Vec<f32>> = Arc::new(d.x.to_vec());
    let arrays = Arrays {
        data: Some(Dataset::from_rows(
            Rows::Borrowed(x),
            d.shape.clone(),
            d.targets.clone(),
        )),
        test: None,
        outputs: [(
            "teacher".to_string(),
            ArrayOutputs {
                cols: 10,
                train: Rows::from(t.clone()),
                test: None,
            },
        )]
        .into_iter()
        .collect(),
    };
    let mem = head("arrays") + &STUDENT.replace("OUTPUTS", "teacher");
    run_quiet(&mem, &dir.path().join("arrays"), Some(arrays)).unwrap();

    let a = metrics_without_timings(&dir.path().join("files"));
    let b = metrics_without_timings(&dir.path().join("arrays"));
    let models = |m: &serde_json::Value| {
        let mut v = m["models"].clone();
        for r in v.as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("architecture");
        }
        v
    };
    assert_eq!(models(&a), models(&b));
    assert_eq!(a["submodel_groups"], b["submodel_groups"]);
    assert!(
        common::metrics(&dir.path().join("arrays"))["data"]["source"]
            .as_str()
            .unwrap()
            .starts_with("arrays given from Python")
    );
    assert!(record(&b, "student")["accuracy"].as_f64().unwrap() > 0.5);

    // Other arrays in the same folder are refused; the same ones resume.
    let other = Arrays {
        data: Some(Dataset::from_rows(
            Rows::from(d.x.iter().map(|v| v + 1.0).collect::<Vec<_>>()),
            d.shape.clone(),
            d.targets.clone(),
        )),
        ..Default::default()
    };
    let e = run_quiet(&mem, &dir.path().join("arrays"), Some(other)).unwrap_err();
    assert!(e.to_string().contains("holds a run on other arrays"), "{e}");
}

#[test]
fn the_arrays_format_needs_arrays_and_its_outputs_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        "[data]\nformat = \"arrays\"\n[[model]]\nname = \"m\"\narch = { kind = \"mlp\", hidden = [4] }\n",
    )
    .unwrap();
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("data.format = \"arrays\": the data are arrays given from Python"),
        "{err}"
    );
    // An outputs name no array was given for.
    let d = data::embedded_digits().unwrap();
    let arrays = Arrays {
        data: Some(d),
        ..Default::default()
    };
    let student = STUDENT.replace("OUTPUTS", "nobody");
    let text = "[data]\nformat = \"arrays\"\n".to_string()
        + student.split("[[submodels]]").next().unwrap();
    let e = run_quiet(&text, &dir.path().join("p"), Some(arrays)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "teacher.teacher.outputs: no array named 'nobody' was given"
    );
}

#[test]
fn precomputed_regression_outputs_are_in_the_targets_units() {
    // The diabetes targets themselves as the teacher's values: a perfect teacher, MSE 0.
    let dir = tempfile::tempdir().unwrap();
    let path = common::repo().join("data/sklearn/diabetes.csv.gz");
    let opts = CsvOptions {
        label: "progression".into(),
        task: Task::Regression,
        image_shape: None,
        extra: Vec::new(),
    };
    let d = data::csv::read_csv(&path, &opts, None).unwrap();
    let y = match &d.targets {
        data::Targets::Values(v) => v.clone(),
        _ => unreachable!(),
    };
    let outs = dir.path().join("t.csv");
    write_outputs(&outs, &y, 1);
    let cfg = format!(
        "[data]\nformat = \"csv\"\npath = \"{}\"\nlabel = \"progression\"\ntask = \"regression\"\n[eval]\nlatency_runs = 3\nlatency_budget_ms = 20\n[[teacher]]\nname = \"t\"\noutputs = \"{}\"\n[[model]]\nname = \"s\"\nrole = \"student\"\narch = {{ kind = \"mlp\", hidden = [16] }}\ntrain = {{ epochs = 60, lr = 0.01 }}\ndistill = {{ teacher = \"t\", alpha = 1.0, temperature = 1.0 }}\n",
        path.display(),
        outs.display()
    );
    run_quiet(&cfg, &dir.path().join("r"), None).unwrap();
    let m = metrics_without_timings(&dir.path().join("r"));
    let rec = |n: &str| record(&m, n);
    let teacher_mse = rec("t")["mse"].as_f64().unwrap();
    assert!(teacher_mse < 1e-6, "teacher MSE {teacher_mse}");
    // A student that learns from those values alone (α = 1) learns the task: far below the
    // targets' variance (about 5,900).
    let s = rec("s")["mse"].as_f64().unwrap();
    assert!(s < 4000.0, "student MSE {s}");
}
