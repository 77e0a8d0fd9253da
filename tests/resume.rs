//! Lost work: a run killed with SIGKILL at random moments and restarted with the same --out
//! resumes from its last completed epoch and ends with exactly the metrics of an uninterrupted
//! run (a student with teacher annealing, a multi-task student with a learned task weight, the
//! training split with 60 labels per class); a
//! diverging loss stops the run, names the epoch and keeps the last good checkpoint.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills before the run is allowed to finish.
const KILLS: usize = 20;

const CONFIG: &str = r#"
name = "resume-test"
seed = 5
[data]
format = "digits"
labels_per_class = 60
[eval]
latency_runs = 2
latency_budget_ms = 5
[[model]]
name = "teacher"
arch = { kind = "mlp", hidden = [768, 768], dropout = 0.2 }
train = { epochs = 8, batch_size = 8, lr = 5e-4, patience = 6 }
[[model]]
name = "student"
arch = { kind = "mlp", hidden = [32] }
train = { epochs = 8, batch_size = 4, lr = 2e-3, schedule = "cosine", checkpoint_seconds = 0.002 }
distill = { teacher = "teacher", temperature = 4.0, alpha = 0.9, anneal = true }
[[model]]
name = "multi"
arch = { kind = "mlp", hidden = [32] }
train = { epochs = 8, batch_size = 4, lr = 2e-3, checkpoint_seconds = 0.002 }
[[model.task]]
name = "digit"
teacher = "teacher"
anneal = true
[[model.task]]
name = "mimic"
teacher = "teacher"
labels = false
weight = "auto"
[[submodels]]
name = "multi-sub"
k = 2
arch = { kind = "mlp", hidden = [16] }
phase1 = { epochs = 3, batch_size = 8 }
transfer = { rounds = 2, tolerance = 1e-9, peer_weight = 0.5, train = { batch_size = 8 } }
[[submodels.task]]
name = "digit"
teacher = "teacher"
[[submodels.task]]
name = "mimic"
teacher = "teacher"
labels = false
[[submodels]]
name = "sub"
k = 2
arch = { kind = "mlp", hidden = [32] }
phase1 = { epochs = 3, batch_size = 4 }
transfer = { rounds = 3, tolerance = 1e-9, train = { batch_size = 4 } }
"#;

#[test]
fn killed_runs_resume_to_identical_metrics() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("resume.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let reference = d.path().join("reference");
    let t0 = Instant::now();
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        reference.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let full = t0.elapsed().as_secs_f64();
    let want = metrics_without_timings(&reference);

    // Kill at pseudo-random moments (mid-epoch, mid-checkpoint-write, between models, between
    // transfer rounds), restarting with the same --out each time, until at least KILLS kills
    // have happened and a run has completed; every completed run must equal the reference.
    let mut kills = 0;
    let mut completed = 0;
    let mut resumed_lines = 0;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = d.path().join("killed-0");
    for attempt in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let frac = (x % 1000) as f64 / 1000.0;
        let wait = if kills >= KILLS {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs_f64(0.02 + frac * full * 0.25)
        };
        let mut child = Command::new(bin())
            .args(["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut finished = None;
        while start.elapsed() < wait {
            if let Some(s) = child.try_wait().unwrap() {
                finished = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if finished.is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let o = child.wait_with_output().unwrap();
        resumed_lines += stderr(&o).matches("resuming").count();
        check_files_complete(&out);
        if finished.is_some() {
            assert!(o.status.success(), "attempt {attempt}: {}", stderr(&o));
            assert_eq!(
                want,
                metrics_without_timings(&out),
                "a resumed run differs from the uninterrupted one"
            );
            let files = walk(&out);
            assert!(
                !files.iter().any(|f| f.to_string_lossy().contains(".tmp-")),
                "temporary files left: {files:?}"
            );
            completed += 1;
            if kills >= KILLS {
                break;
            }
            out = d.path().join(format!("killed-{completed}"));
        }
    }
    assert!(
        kills >= KILLS && completed >= 1,
        "{kills} kills, {completed} completed runs"
    );
    assert!(resumed_lines >= 1, "no restart resumed from a checkpoint");
    eprintln!("survived {kills} kills in {completed} run(s); {resumed_lines} restarts resumed mid-model or mid-rounds; every completed run equals the uninterrupted one");
}

/// A run killed right after a checkpoint within an epoch (`train.checkpoint_seconds`) resumes
/// in that epoch at the next batch — the same shuffle, random stream (dropout, mixup), running
/// figures and learned task weights — and ends with the uninterrupted run's metrics.
#[test]
fn a_run_killed_within_an_epoch_resumes_there() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("mid.toml");
    std::fs::write(
        &cfg,
        r#"seed = 9
[data]
format = "digits"
[[model]]
name = "t"
arch = { kind = "mlp", hidden = [32] }
train = { epochs = 2 }
[[model]]
name = "m"
arch = { kind = "mlp", hidden = [24], dropout = 0.2 }
train = { epochs = 3, batch_size = 32, lr = 3e-3, schedule = "cosine", checkpoint_seconds = 1e-9, augment = { mixup = 0.3, noise = 0.05 } }
[[model.task]]
name = "digit"
teacher = "t"
anneal = true
[[model.task]]
name = "mimic"
teacher = "t"
labels = false
weight = "auto"
"#,
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let reference = d.path().join("reference");
    let o = run(&["run", cfg, "--out", reference.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.path().join("killed");
    let err = killed_then_resumed(cfg, &out, "kill@0:mid2.5/m");
    assert!(
        err.contains("m: resuming from the checkpoint in epoch 2 after batch 5"),
        "{err}"
    );
    assert_eq!(
        metrics_without_timings(&reference),
        metrics_without_timings(&out),
        "resumed within an epoch, the run differs from the uninterrupted one"
    );
    // Killed within the first epoch: no validation loss is known yet (the checkpoint's best
    // is infinite, which JSON cannot write as a number).
    let out = d.path().join("killed-first");
    let err = killed_then_resumed(cfg, &out, "kill@0:mid1.5/m");
    assert!(
        err.contains("m: resuming from the checkpoint in epoch 1 after batch 5"),
        "{err}"
    );
    assert_eq!(
        metrics_without_timings(&reference),
        metrics_without_timings(&out),
        "resumed within the first epoch, the run differs from the uninterrupted one"
    );
}

/// Fixed views (`train.views`): the teacher's outputs on each view go to the run's cache, one
/// file per view of every training sample; a run killed within an epoch resumes there, reads
/// the views from the cache instead of running the teacher again, and ends with the
/// uninterrupted run's metrics.
#[test]
fn fixed_views_resume_from_the_cache_to_the_same_result() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("views.toml");
    std::fs::write(
        &cfg,
        r#"seed = 9
[data]
format = "digits"
[[model]]
name = "t"
arch = { kind = "mlp", hidden = [32] }
train = { epochs = 2 }
[[model]]
name = "s"
role = "student"
arch = { kind = "mlp", hidden = [24] }
train = { epochs = 4, batch_size = 32, lr = 3e-3, checkpoint_seconds = 1e-9, views = 3, augment = { shift = 1, noise = 0.05 } }
distill = { teacher = "t", alpha = 1.0, temperature = 2.0 }
"#,
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let reference = d.path().join("reference");
    let o = run(&["run", cfg, "--out", reference.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("s: the teacher runs once on each of 3 fixed augmented views"),
        "{}",
        stderr(&o)
    );
    let m = metrics(&reference);
    let train_n = m["data"]["train"]
        .as_u64()
        .expect("data.train in metrics.json") as usize;
    let views: Vec<u64> = walk(&reference.join("cache"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "f32"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(
        views,
        vec![(train_n * 10 * 4) as u64; 3],
        "one file of outputs per view"
    );
    let out = d.path().join("killed");
    let err = killed_then_resumed(cfg, &out, "kill@0:mid3.5/s");
    assert!(
        err.contains("s: resuming from the checkpoint in epoch 3"),
        "{err}"
    );
    assert_eq!(
        err.matches("rows read from the cache").count(),
        3,
        "every view read back: {err}"
    );
    assert_eq!(
        metrics_without_timings(&reference),
        metrics_without_timings(&out),
        "resumed with fixed views, the run differs from the uninterrupted one"
    );
}

/// Runs `cfg` into `out` until the fault `fault` kills it, then again to the end; returns the
/// second run's stderr.
fn killed_then_resumed(cfg: &str, out: &std::path::Path, fault: &str) -> String {
    let o = Command::new(bin())
        .args(["run", cfg, "--out", out.to_str().unwrap(), "-q"])
        .env("DISTILLERY_FAULT", fault)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!o.status.success(), "the fault did not stop the run");
    let o = Command::new(bin())
        .args(["run", cfg, "--out", out.to_str().unwrap()])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

/// Every file under the folder is complete at every moment: models, checkpoints, JSON and the
/// config all parse.
fn check_files_complete(out: &std::path::Path) {
    let files = if out.exists() { walk(out) } else { Vec::new() };
    for f in &files {
        let name = f.display().to_string();
        let bytes = std::fs::read(f).unwrap();
        match f.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => {
                distillery::models::parse_safetensors(&bytes, &name)
                    .expect("a truncated or corrupt model file was left behind");
            }
            Some("json") => {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .expect("a truncated JSON file was left behind");
            }
            Some("toml") => {
                distillery::config::load_str(std::str::from_utf8(&bytes).unwrap(), &name, &[])
                    .expect("a truncated config was left behind");
            }
            _ => {}
        }
    }
}

#[test]
fn diverging_loss_stops_names_epoch_and_keeps_checkpoint() {
    use distillery::config::TrainConfig;
    use distillery::data::{embedded_digits, NormalizeKind, Splits};
    use distillery::models::{Model, ModelSpec};
    use distillery::progress::Progress;
    use distillery::train::{fit, Objective, TrainJob};

    let d = tempfile::tempdir().unwrap();
    let ck = d.path().join("m.ckpt.safetensors");
    let s = Splits::make(
        embedded_digits().unwrap(),
        None,
        0.1,
        0.2,
        NormalizeKind::Global,
        None,
        None,
        1,
    )
    .unwrap();
    let arch: distillery::config::Arch = toml::from_str("kind = \"mlp\"\nhidden = [16]").unwrap();
    let spec = ModelSpec {
        arch,
        input_shape: s.train.shape.clone(),
        outputs: 10,
    };
    let model = Model::new(spec, &mut distillery::rng::Rng::new(0)).unwrap();
    fn job<'a>(cfg: &'a TrainConfig, s: &'a Splits, ck: &std::path::Path) -> TrainJob<'a> {
        TrainJob {
            name: "m",
            cfg,
            train: &s.train,
            val: &s.val,
            objective: Objective::supervised(),
            fill: 0.0,
            checkpoint: Some(ck.to_path_buf()),
            seed: 1,
            progress: Progress::Quiet,
            hooks: Vec::new(),
        }
    }
    let good = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    fit(&model, job(&good, &s, &ck)).unwrap();
    let before = std::fs::read(&ck).unwrap();
    // Resume for two more epochs with an absurd learning rate: epoch 2 diverges.
    let bad = TrainConfig {
        epochs: 3,
        lr: 1e9,
        ..TrainConfig::default()
    };
    let err = fit(&model, job(&bad, &s, &ck)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, distillery::Error::Diverged(_)), "{msg}");
    assert!(
        msg.contains("epoch 2") && msg.contains("kept in") && msg.contains("lower learning rate"),
        "{msg}"
    );
    assert_eq!(err.exit_code(), 1);
    // The last good checkpoint is intact and loadable.
    assert_eq!(std::fs::read(&ck).unwrap(), before);
    distillery::models::parse_safetensors(&before, "ckpt").unwrap();
}

#[test]
fn diverging_run_through_the_cli() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("nan");
    let o = run(&[
        "demo",
        "-q",
        "--out",
        out.to_str().unwrap(),
        "--set",
        "model.teacher.train.lr=1e12",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("model 'teacher' diverged in epoch 1") && e.contains("lower learning rate"),
        "{e}"
    );
    assert!(!e.contains("panicked"));
}
