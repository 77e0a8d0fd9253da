//! Runs across processes with MPI, through the real binary under `mpirun` (Open MPI): the same
//! answers as one process, faults that end the whole job, a killed rank resumed, launches that
//! do not fit. Built only with the `mpi` feature (`.ci/run`'s MPI step:
//! `cargo test --release --features mpi --test mpi -- --test-threads=1`); the plain
//! `cargo test` stays free of MPI.
#![cfg(feature = "mpi")]

mod common;

use common::{bin, repo};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const CONFIG: &str = "configs/digits-mpi.toml";

/// `mpirun -np N distillery ARGS` from the repository root (oversubscribed: this machine may
/// have fewer cores than ranks), with `env` passed to every rank.
fn mpirun(np: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-np", &np.to_string()]);
    for (k, v) in env {
        c.env(k, v).args(["-x", k]);
    }
    c.arg(bin())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("failed to start mpirun (install Open MPI: openmpi-bin)")
}

fn run_np(np: usize, out: &Path, env: &[(&str, &str)]) -> Output {
    mpirun(np, &["run", CONFIG, "--out", out.to_str().unwrap()], env)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The metrics without what differs between runs that computed the same thing: timings, file
/// sizes (the training record in a model file holds its seconds), bytes exchanged, whether a
/// model was read back from an earlier session.
fn comparable(out: &Path) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| {
                    ![
                        "latency",
                        "seconds",
                        "file_bytes",
                        "bytes_sent",
                        "data_parallel",
                        "resumed_from",
                        "ranks",
                    ]
                    .iter()
                    .any(|s| k.contains(s))
                        && k != "source"
                });
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut m = common::metrics(out);
    strip(&mut m);
    m
}

/// Every difference between `a` and `b` beyond a relative tolerance `tol`, by path.
fn differences(a: &Value, b: &Value, tol: f64, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (u, v) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                differences(u, v, tol, &format!("{path}.{k}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                differences(u, v, tol, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (x - y).abs() > tol * x.abs().max(1.0) {
                out.push(format!("{path}: {x} vs {y}"));
            }
        }
        _ if a != b => out.push(format!("{path}: {a} vs {b}")),
        _ => {}
    }
}

fn assert_close(a: &Value, b: &Value, tol: f64, what: &str) {
    let mut d = Vec::new();
    differences(a, b, tol, "", &mut d);
    assert!(
        d.is_empty(),
        "{what}: {} differences, first: {:?}",
        d.len(),
        &d[..d.len().min(8)]
    );
}

fn one_process(out: &Path) {
    let o = Command::new(bin())
        .args(["run", CONFIG, "--out", out.to_str().unwrap(), "-q"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// The whole config under `mpirun -np 1`, `-np 2` and `-np 4` against one process:
/// -np 1 is the one-process run exactly; the sub-model groups (each sub-model on its own rank,
/// outputs or weights exchanged) are equal bit for bit at every N; the data-parallel networks
/// (gradients summed across ranks) agree within 1e-4, relative, on every figure.
#[test]
fn same_answers_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    one_process(&one);
    let reference = comparable(&one);
    for np in [1, 2, 4] {
        let out = dir.path().join(format!("np{np}"));
        let o = run_np(np, &out, &[]);
        assert!(o.status.success(), "-np {np}: {}", text(&o));
        let got = comparable(&out);
        assert_close(
            &reference["submodel_groups"],
            &got["submodel_groups"],
            0.0,
            &format!("-np {np}: sub-model groups"),
        );
        let tol = if np == 1 { 0.0 } else { 1e-4 };
        assert_close(&reference, &got, tol, &format!("-np {np}: all metrics"));
        if np == 4 {
            // k = 2 and k = 3 on 4 ranks: the ranks without a sub-model say so and wait.
            assert!(
                text(&o).contains("ranks 2–3 hold none")
                    && text(&o).contains("ranks 3–3 hold none"),
                "{}",
                text(&o)
            );
        }
        if np > 1 {
            let m = common::metrics(&out);
            assert_eq!(m["ranks"], np);
            let report = std::fs::read_to_string(out.join("report.md")).unwrap();
            assert!(
                report.contains(&format!("Run across {np} MPI ranks")),
                "{report}"
            );
            let dp = &m["models"][0]["training"]["data_parallel"];
            assert_eq!(dp["ranks"], np, "{dp}");
            assert!(dp["bytes_sent"].as_u64().unwrap() > 0, "{dp}");
        }
    }
}

/// An error or a panic on one rank ends every rank within seconds, with a message naming the
/// rank, and a non-zero exit.
#[test]
fn a_failing_rank_ends_the_job() {
    let dir = tempfile::tempdir().unwrap();
    for (fault, code) in [("error@1:phase1", 2), ("panic@1:phase1", 101)] {
        let out = dir.path().join(fault.replace([':', '@'], "-"));
        let t = Instant::now();
        let o = run_np(2, &out, &[("DISTILLERY_FAULT", fault)]);
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(o.status.code(), Some(code), "{fault}: {}", text(&o));
        let s = text(&o);
        assert!(s.contains("rank 1"), "{fault}: {s}");
        assert!(s.contains("ending every rank of the job"), "{fault}: {s}");
        // The whole run before the fault takes a few seconds; a hung rank would take forever.
        assert!(secs < 60.0, "{fault}: the job took {secs:.0} s to end");
    }
}

/// A rank killed with SIGKILL (in a data-parallel epoch, in a sub-model's phase 1 on its own
/// rank, between transfer rounds) ends the job; the same command then resumes and finishes with
/// the figures of an uninterrupted run.
#[test]
fn a_killed_rank_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let o = run_np(2, &whole, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = comparable(&whole);
    for point in ["epoch4/teacher", "epoch3/stale-2", "round2"] {
        let out = dir.path().join(point.replace('/', "-"));
        let fault = format!("kill@1:{point}");
        let t = Instant::now();
        let o = run_np(2, &out, &[("DISTILLERY_FAULT", &fault)]);
        assert!(
            !o.status.success(),
            "{fault}: the job went on: {}",
            text(&o)
        );
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{fault}: slow to end"
        );
        let o = run_np(2, &out, &[]);
        assert!(o.status.success(), "{fault}, resumed: {}", text(&o));
        assert!(
            text(&o).contains("resuming") || text(&o).contains("already"),
            "{fault}: did not resume: {}",
            text(&o)
        );
        assert_close(
            &reference,
            &comparable(&out),
            0.0,
            &format!("{fault}, resumed"),
        );
    }
}

/// Ranks started with different configs are refused, on every rank, exit code 2.
#[test]
fn ranks_with_different_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mixed");
    let out = out.to_str().unwrap();
    let o = Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-np", "1"])
        .arg(bin())
        .args(["run", CONFIG, "--out", out, ":", "-np", "1"])
        .arg(bin())
        .args(["run", CONFIG, "--out", out, "--set", "seed=6"])
        .current_dir(repo())
        .output()
        .unwrap();
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    for r in 0..2 {
        assert!(
            s.contains(&format!("rank {r} of 2: the ranks of this MPI job were started differently: rank 1 has another experiment file")),
            "rank {r}: {s}"
        );
    }
}

/// A rank that cannot read the data (here: started in a folder without it) ends the job with
/// an error naming the file.
#[test]
fn a_rank_without_its_data_ends_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let with = dir.path().join("with");
    let without = dir.path().join("without");
    std::fs::create_dir_all(with.join("data")).unwrap();
    std::fs::create_dir_all(&without).unwrap();
    std::fs::copy(
        repo().join("data/sklearn/breast_cancer.csv"),
        with.join("data/bc.csv"),
    )
    .unwrap();
    let cfg = dir.path().join("bc.toml");
    std::fs::write(
        &cfg,
        "name = \"bc\"\n[data]\nformat = \"csv\"\npath = \"data/bc.csv\"\nlabel = \"diagnosis\"\n\
         [[model]]\nname = \"teacher\"\narch = { kind = \"mlp\", hidden = [16] }\n\
         train = { epochs = 2, batch_size = 32 }\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let args = |wdir: &Path| {
        vec![
            "-np".to_string(),
            "1".into(),
            "--wdir".into(),
            wdir.display().to_string(),
            bin().display().to_string(),
            "run".into(),
            cfg.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let o = Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .arg("--oversubscribe")
        .args(args(&with))
        .arg(":")
        .args(args(&without))
        .output()
        .unwrap();
    let s = text(&o);
    assert!(!o.status.success(), "{s}");
    assert!(
        s.contains("rank 1 of 2") && s.contains("data/bc.csv"),
        "{s}"
    );
}

/// Few labels (`data.labels_per_class`) under data parallelism: a slice of a batch holds
/// another share of the labelled rows than the batch, and the label term's mean over the
/// *global* batch's labelled rows keeps `-np 2` equal to one process — for the fused path and
/// autograd (a hint student), with mixup's partners, for a calibrated teacher from another
/// domain (its head is trained on the few labels too), and for a multi-task student whose
/// learned task weight steps on the global batch's task losses.
#[test]
fn few_labels_give_the_same_answers_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("few-labels.toml");
    std::fs::write(
        &cfg,
        r#"name = "few-labels"
seed = 2

[data]
format = "digits"
val_fraction = 0.15
test_fraction = 0.25
labels_per_class = 5

[[teacher]]
name = "mnist"
onnx = "data/teachers/mnist-cnn.onnx"
adapter = { resize = [20, 20], pad = 4, scale = 0.0625 }
calibrate = true

[[model]]
name = "own"
arch = { kind = "mlp", hidden = [64] }
train = { epochs = 8, batch_size = 32, lr = 3e-3 }

[[model]]
name = "kd-mixup"
arch = { kind = "mlp", hidden = [24] }
train = { epochs = 8, batch_size = 32, lr = 3e-3, augment = { mixup = 0.4 } }
distill = { teacher = "mnist", temperature = 2.0, alpha = 0.7 }

[[model]]
name = "hint-mixup"
arch = { kind = "mlp", hidden = [24] }
train = { epochs = 8, batch_size = 32, lr = 3e-3, augment = { mixup = 0.4 } }
distill = { teacher = "own", temperature = 2.0, alpha = 0.5, hint = { teacher_layer = 0, student_layer = 0, weight = 0.1 } }

# Fixed views: the teacher's outputs on 3 views per sample, computed by rank 0 into the cache,
# each rank drawing its rows' views.
[[model]]
name = "kd-views"
arch = { kind = "mlp", hidden = [24] }
train = { epochs = 8, batch_size = 32, lr = 3e-3, views = 3, augment = { shift = 1, noise = 0.1 } }
distill = { teacher = "mnist", temperature = 2.0, alpha = 0.7 }

# Multi-task: a learned task weight, a class head with few labels beside a teacher's head.
[[model]]
name = "multi"
arch = { kind = "mlp", hidden = [24] }
train = { epochs = 8, batch_size = 32, lr = 3e-3, augment = { mixup = 0.4 } }

[[model.task]]
name = "digit"
teacher = "mnist"
alpha = 0.5
weight = "auto"

[[model.task]]
name = "mimic"
teacher = "own"
labels = false
"#,
    )
    .unwrap();
    let (a, b) = one_and_two(&cfg, dir.path());
    assert_eq!(a["models"].as_array().unwrap().len(), 6, "{a}");
    assert_close(&a, &b, 1e-4, "-np 2, few labels");
}

/// Multi-task students under data parallelism: heads on the data's label and on a further
/// value column (`data.targets`), both weights learned, through the fused pass (an MLP) and
/// autograd (a 1-D CNN); and groups of multi-task members whose transfer runs head by head,
/// live (outputs exchanged per batch) and stale: `-np 2` equals one process.
#[test]
fn multi_task_students_give_the_same_answers_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("multi.toml");
    let model = |name: &str, arch: &str| {
        format!(
            r#"
[[model]]
name = "{name}"
arch = {arch}
train = {{ epochs = 6, batch_size = 32, lr = 3e-3 }}
[[model.task]]
name = "diagnosis"
weight = "auto"
[[model.task]]
name = "area"
column = "mean_area"
weight = "auto"
"#
        )
    };
    // Groups of multi-task members, with live and stale peers, head by head.
    let group = |name: &str, peers: &str| {
        format!(
            r#"
[[submodels]]
name = "{name}"
k = 2
arch = {{ kind = "mlp", hidden = [8] }}
phase1 = {{ epochs = 3, batch_size = 32, lr = 3e-3 }}
transfer = {{ rounds = 2, peer_weight = 0.5, tolerance = 1e-9, peers = "{peers}", train = {{ batch_size = 32 }} }}
[[submodels.task]]
name = "diagnosis"
[[submodels.task]]
name = "area"
column = "mean_area"
weight = "auto"
"#
        )
    };
    let toml = format!(
        "seed = 3\n[data]\nformat = \"csv\"\npath = \"data/sklearn/breast_cancer.csv\"\nlabel = \"diagnosis\"\ntargets = [{{ column = \"mean_area\", task = \"regression\" }}]\n{}{}{}{}",
        model("mlp", "{ kind = \"mlp\", hidden = [16] }"),
        model("conv", "{ kind = \"conv1d\", channels = [4], kernel = 3, hidden = [] }"),
        group("live", "live"),
        group("stale", "stale")
    );
    std::fs::write(&cfg, toml).unwrap();
    let (a, b) = one_and_two(&cfg, dir.path());
    assert_eq!(a["models"].as_array().unwrap().len(), 8, "{a}");
    assert_eq!(a["models"][1]["tasks"].as_array().unwrap().len(), 2, "{a}");
    assert_eq!(a["submodel_groups"].as_array().unwrap().len(), 2, "{a}");
    assert_close(&a, &b, 1e-4, "-np 2, multi-task");
}

/// The comparable metrics of `cfg` run in one process and under `mpirun -np 2`, in `dir`.
fn one_and_two(cfg: &Path, dir: &Path) -> (Value, Value) {
    let cfg = cfg.to_str().unwrap();
    let one = dir.join("one");
    let o = Command::new(bin())
        .args(["run", cfg, "--out", one.to_str().unwrap(), "-q"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let two = dir.join("np2");
    let o = mpirun(2, &["run", cfg, "--out", two.to_str().unwrap(), "-q"], &[]);
    assert!(o.status.success(), "-np 2: {}", text(&o));
    (comparable(&one), comparable(&two))
}
