//! `progress::interrupt` (Ctrl-C in the Python package): training stops at its next step with
//! `Error::Interrupted`, checkpoints stay, and the same run resumes to the figures of a run never
//! interrupted. Its own test binary: the flag is process-wide (and the tests take turns).

mod common;
use common::{metrics_without_timings, write_tiny_bert};
use distillery::error::Error;
use distillery::pipeline::{self, RunOptions};
use distillery::progress::{self, Progress};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One test at a time: the interrupt flag is the process's.
static TURN: Mutex<()> = Mutex::new(());

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
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
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

/// Fine-tuning a BERT teacher stopped right after its first epoch's checkpoint resumes at the
/// second epoch and ends with the figures of a run never stopped (weights, head, curves).
#[test]
fn an_interrupted_finetuning_resumes_to_the_same_figures() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bert = dir.path().join("bert");
    write_tiny_bert(&bert);
    let data = dir.path().join("texts.jsonl");
    let mut s = String::new();
    for i in 0..120 {
        let (text, label) = if i % 3 == 0 {
            ("win free money now click here", "spam")
        } else {
            ("the cat sat on the mat", "ham")
        };
        let words: Vec<&str> = text.split(' ').skip(i % 4).collect();
        s.push_str(&format!(
            "{{\"text\": \"{}\", \"label\": \"{label}\"}}\n",
            words.join(" ")
        ));
    }
    std::fs::write(&data, s).unwrap();
    let cfg = format!(
        r#"
seed = 2
[data]
format = "text"
path = "{data}"
features = {{ kind = "tokenizer", path = "{bert}/tokenizer.json", max_tokens = 16 }}
[eval]
latency_runs = 1
latency_budget_ms = 1
[[teacher]]
name = "tuned"
bert = "{bert}"
finetune = {{ epochs = 3, batch_size = 8, lr = 0.001 }}
[[model]]
name = "student"
arch = {{ kind = "embedding-bag", dim = 4 }}
distill = {{ teacher = "tuned", temperature = 2.0, alpha = 0.5 }}
train = {{ epochs = 2, batch_size = 32 }}
"#,
        data = data.display(),
        bert = bert.display()
    );
    let c = distillery::config::load_str(&cfg, "t.toml", &[])
        .unwrap()
        .validate()
        .unwrap();
    let go = |out: &Path, progress: Progress| {
        let mut o = RunOptions::new(out);
        o.progress = progress;
        pipeline::run_experiment(&c, &o).map(|_| ())
    };
    let out = dir.path().join("run");
    // Stop as the first epoch's line is printed: its checkpoint is written just before.
    progress::set_sink(Some(std::sync::Arc::new(|line: &str| {
        if line.contains("fine-tuning epoch 1/3") {
            progress::interrupt();
        }
    })));
    let r = go(&out, Progress::Lines);
    progress::set_sink(None);
    progress::clear_interrupt();
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    assert!(out.join("checkpoints/tuned.finetune.safetensors").exists());
    go(&out, Progress::Quiet).unwrap();
    let whole = dir.path().join("whole");
    go(&whole, Progress::Quiet).unwrap();
    let (a, b) = (
        metrics_without_timings(&out),
        metrics_without_timings(&whole),
    );
    assert_eq!(a["models"], b["models"]);
    let tuned = &a["models"].as_array().unwrap()[0];
    assert_eq!(tuned["training"]["epochs_run"], 3);
    assert_eq!(
        std::fs::read(out.join("models/tuned-finetuned/model.safetensors")).unwrap(),
        std::fs::read(whole.join("models/tuned-finetuned/model.safetensors")).unwrap()
    );
}
