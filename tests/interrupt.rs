//! `progress::interrupt` (Ctrl-C in the Python package): training stops at its next step with
//! `Error::Interrupted`, checkpoints stay, and the same run resumes to the figures of a run never
//! interrupted. Its own test binary: the flag is process-wide.

mod common;
use common::metrics_without_timings;
use distillery::error::Error;
use distillery::pipeline::{self, RunOptions};
use distillery::progress::{self, Progress};
use std::path::Path;
use std::time::{Duration, Instant};

const CFG: &str = r#"
seed = 4
[data]
format = "digits"
[eval]
latency_runs = 3
latency_budget_ms = 20
[[model]]
name = "teacher"
arch = { kind = "mlp", hidden = [512, 512] }
train = { epochs = 40, batch_size = 16, patience = 1000 }
"#;

fn run(out: &Path) -> distillery::error::Result<()> {
    let c = distillery::config::load_str(CFG, "t.toml", &[])
        .unwrap()
        .validate()
        .unwrap();
    let mut o = RunOptions::new(out);
    o.progress = Progress::Quiet;
    pipeline::run_experiment(&c, &o).map(|_| ())
}

#[test]
fn an_interrupted_run_stops_at_once_and_resumes_to_the_same_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let ckpt = out.join("checkpoints");
    let o2 = out.clone();
    let worker = std::thread::spawn(move || run(&o2));
    // Interrupt once the first epoch checkpoint is written.
    let start = Instant::now();
    while !std::fs::read_dir(&ckpt)
        .map(|d| d.count() > 0)
        .unwrap_or(false)
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    let asked = Instant::now();
    progress::interrupt();
    let r = worker.join().unwrap();
    let took = asked.elapsed();
    progress::clear_interrupt();
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    assert_eq!(Error::Interrupted.exit_code(), 130);
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    assert!(!out.join("models/teacher.safetensors").exists());

    run(&out).unwrap();
    let whole = dir.path().join("whole");
    run(&whole).unwrap();
    assert_eq!(
        metrics_without_timings(&out)["models"],
        metrics_without_timings(&whole)["models"]
    );
}
