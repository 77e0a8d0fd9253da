//! Text data, the BERT teacher and text students.
//!
//! The BERT reference: `bench/reference/tiny_bert.py` builds the same tiny BERT (2 layers, 32
//! dimensions, weights a fixed formula of name and position) in PyTorch 2.15 / transformers
//! 5.24 (float64, eager attention) and prints the first 8 values of each mean-pooled,
//! L2-normalised sentence embedding:
//!
//! ```text
//! The cats sat on the mat. [2, 5, 6, 21, 7, 8, 5, 9, 25, 3]
//! [-0.1856619, -0.3054665, -0.2340360, -0.1190794, -0.0916961, -0.0917899, -0.0100031, 0.0922760]
//! Win free money now, click here! [2, 23, 13, 14, 15, 1, 16, 17, 1, 3]
//! [-0.1999010, -0.3051120, -0.2224491, -0.1101733, -0.0951868, -0.1036149, -0.0205072, 0.0863923]
//! a dog [2, 10, 11, 3]
//! [-0.2393960, -0.3218283, -0.1700386, -0.0673709, -0.1253526, -0.1226710, 0.0988912, 0.3179973]
//! ```

mod common;
use common::*;
use distillery::teachers::bert::{BertEncoder, Pooling};

const TEXTS: [&str; 3] = [
    "The cats sat on the mat.",
    "Win free money now, click here!",
    "a dog",
];
const IDS: [&[u32]; 3] = [
    &[2, 5, 6, 21, 7, 8, 5, 9, 25, 3],
    &[2, 23, 13, 14, 15, 1, 16, 17, 1, 3],
    &[2, 10, 11, 3],
];
#[allow(clippy::excessive_precision)]
const GOLDEN: [[f32; 8]; 3] = [
    [
        -0.1856619, -0.3054665, -0.2340360, -0.1190794, -0.0916961, -0.0917899, -0.0100031,
        0.0922760,
    ],
    [
        -0.1999010, -0.3051120, -0.2224491, -0.1101733, -0.0951868, -0.1036149, -0.0205072,
        0.0863923,
    ],
    [
        -0.2393960, -0.3218283, -0.1700386, -0.0673709, -0.1253526, -0.1226710, 0.0988912,
        0.3179973,
    ],
];

#[test]
fn bert_embeddings_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path());
    let enc = BertEncoder::load(dir.path(), None, Pooling::Auto, None).unwrap();
    assert_eq!(enc.pooling, Pooling::Mean);
    assert!(enc.normalize, "modules.json asks for normalisation");
    assert_eq!(enc.hidden, 32);
    let ids = enc.tokenize(&TEXTS).unwrap();
    for (got, want) in ids.iter().zip(IDS) {
        assert_eq!(got.as_slice(), want);
    }
    // Batched with padding (the shorter texts are padded to the longest) and one by one.
    let all = enc.embed(&TEXTS, 8).unwrap();
    for (i, want) in GOLDEN.iter().enumerate() {
        let row = &all[i * 32..i * 32 + 8];
        for (g, w) in row.iter().zip(want) {
            assert!((g - w).abs() < 2e-5, "text {i}: {row:?} vs {want:?}");
        }
        let alone = enc.embed(&TEXTS[i..i + 1], 1).unwrap();
        for (a, b) in alone.iter().zip(&all[i * 32..(i + 1) * 32]) {
            assert!((a - b).abs() < 2e-5, "padding changed text {i}'s embedding");
        }
    }
    // Truncation keeps the closing [SEP].
    let short = BertEncoder::load(dir.path(), Some(4), Pooling::Auto, None).unwrap();
    assert_eq!(short.tokenize(&TEXTS[..1]).unwrap()[0], vec![2, 5, 6, 3]);
    // A tokenizer.json exported with fixed padding and truncation (as all-MiniLM-L6-v2's is:
    // every text padded to 128 [PAD] tokens and cut there) gives the same ids and embeddings:
    // its padding must not be read as part of the text, nor its truncation override ours.
    let tok_path = dir.path().join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tok_path).unwrap()).unwrap();
    tok["padding"] = serde_json::json!({"strategy": {"Fixed": 16}, "direction": "Right",
        "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"});
    tok["truncation"] = serde_json::json!({"direction": "Right", "max_length": 6,
        "strategy": "LongestFirst", "stride": 0});
    std::fs::write(&tok_path, tok.to_string()).unwrap();
    let padded = BertEncoder::load(dir.path(), None, Pooling::Auto, None).unwrap();
    let ids = padded.tokenize(&TEXTS).unwrap();
    for (got, want) in ids.iter().zip(IDS) {
        assert_eq!(got.as_slice(), want);
    }
    let again = padded.embed(&TEXTS, 8).unwrap();
    for (a, b) in again.iter().zip(&all) {
        assert!(
            (a - b).abs() < 1e-6,
            "the tokenizer's own padding changed an embedding"
        );
    }
}

/// The message of loading the BERT folder `dir`, which must fail.
fn load_error(dir: &std::path::Path) -> String {
    BertEncoder::load(dir, None, Pooling::Auto, None)
        .err()
        .expect("the folder must not load")
        .to_string()
}

#[test]
fn bert_folders_that_do_not_fit_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path());
    // Weights that do not match config.json.
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"hidden_size\":32", "\"hidden_size\":48"),
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("do not match"),
        "{e}"
    );
    // A tokenizer with more tokens than the model's vocabulary.
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"vocab_size\":26", "\"vocab_size\":20"),
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab_size = 20"),
        "{e}"
    );
    // Not a tokenizer at all; missing files.
    std::fs::write(dir.path().join("config.json"), &cfg).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{\"hello\": 1}").unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("tokenizer.json") && e.contains("not a Hugging Face tokenizer"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("tokenizer.json: missing"), "{e}");
    assert!(!e.contains('\n'));
}

/// A small labelled text set from the tiny vocabulary: "spam" texts draw mostly from the
/// spam words, "ham" texts from the others.
fn write_texts(path: &std::path::Path, n: usize) {
    let spam = ["free", "money", "now", "click", "here", "win", "prize"];
    let ham = [
        "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "meeting", "at", "noon",
    ];
    let mut s = String::new();
    let mut x: u64 = 12345;
    let mut next = |m: usize| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as usize) % m
    };
    for i in 0..n {
        let is_spam = i % 3 == 0;
        let len = 3 + next(8);
        let words: Vec<&str> = (0..len)
            .map(|_| {
                let own = next(10) < 7;
                match (is_spam, own) {
                    (true, true) | (false, false) => spam[next(spam.len())],
                    _ => ham[next(ham.len())],
                }
            })
            .collect();
        s.push_str(&serde_json::json!({"text": words.join(" "), "label": if is_spam {"spam"} else {"ham"}}).to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn text_teachers_and_students_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let bert = dir.path().join("bert");
    write_tiny_bert(&bert);
    let data = dir.path().join("texts.jsonl");
    write_texts(&data, 300);
    // Precomputed outputs for the same 300 rows: a keyword rule's log-probabilities.
    let mut outs = String::from("ham,spam\n");
    for line in std::fs::read_to_string(&data).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = v["text"].as_str().unwrap();
        let hits = ["free", "money", "win", "prize", "click"]
            .iter()
            .filter(|w| t.contains(*w))
            .count() as f64;
        let p = 1.0 / (1.0 + (-(hits - 1.0)).exp());
        outs.push_str(&format!("{},{}\n", 1.0 - p, p));
    }
    let outs_file = dir.path().join("rule.csv");
    std::fs::write(&outs_file, outs).unwrap();
    let cfg = format!(
        r#"
seed = 3
[data]
format = "text"
path = "{data}"
features = {{ kind = "tokenizer", path = "{bert}/tokenizer.json", max_tokens = 16 }}
[eval]
latency_runs = 2
latency_budget_ms = 1
[[teacher]]
name = "tiny"
bert = "{bert}"
head = {{ train = {{ epochs = 30, optimizer = "adam", lr = 0.01, batch_size = 32 }} }}
[[teacher]]
name = "rule"
outputs = "{outs}"
outputs_kind = "probs"
[[teacher]]
name = "both"
mix = [{{ teacher = "tiny", weight = 1.0 }}, {{ teacher = "rule", weight = 1.0 }}]
[[model]]
name = "embed"
arch = {{ kind = "embedding-bag", dim = 8 }}
distill = {{ teacher = "tiny", loss = {{ kind = "cosine" }}, init_from_teacher = true }}
train = {{ epochs = 5, optimizer = "adam", lr = 0.01, batch_size = 32 }}
[[model]]
name = "kd"
arch = {{ kind = "embedding-bag", dim = 8 }}
distill = {{ teacher = "both", temperature = 2.0, alpha = 0.7, init_from_teacher = true }}
train = {{ epochs = 8, optimizer = "adam", lr = 0.02, batch_size = 32 }}
[[model]]
name = "replace"
arch = {{ kind = "embedding-bag", dim = 8 }}
train = {{ epochs = 3, optimizer = "adam", lr = 0.02, batch_size = 32, augment = {{ replace = 0.2, replace_from = "tiny" }} }}
[[export]]
from = "kd"
format = "onnx"
"#,
        data = data.display(),
        bert = bert.display(),
        outs = outs_file.display()
    );
    let cfg_file = dir.path().join("text.toml");
    std::fs::write(&cfg_file, cfg).unwrap();
    let out = dir.path().join("run");
    let o = run(&[
        "run",
        cfg_file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics(&out);
    let by = |n: &str| {
        m["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("no record for {n}"))
            .clone()
    };
    let tiny = by("tiny");
    // A random-weight encoder: its head's accuracy is only required to exist.
    assert!(tiny["accuracy"].as_f64().is_some(), "{tiny}");
    assert_eq!(
        tiny["params"].as_u64().unwrap(),
        20096 + 66,
        "encoder + head 32-2"
    );
    let rule = by("rule");
    assert!(rule["accuracy"].as_f64().is_some());
    // Token replacement from the BERT teacher's word-embedding table.
    assert!(
        stderr(&o).contains(
            "replace: token replacement draws from each token's 5 nearest in tiny's table"
        ),
        "{}",
        stderr(&o)
    );
    assert!(by("replace")["accuracy"].as_f64().is_some());
    let kd = by("kd");
    assert!(kd["accuracy"].as_f64().unwrap() > 0.75, "{kd}");
    assert!(kd["f1"].as_f64().is_some());
    let e = by("embed");
    let cos = e["cosine_to_teacher"].as_f64().unwrap();
    assert!(cos > 0.5 && cos <= 1.0, "{e}");
    assert!(e["nn_agreement"].as_f64().is_some());
    // The student's ONNX export (token ids in, the tokenizer outside) runs in tract with the
    // model's own outputs.
    let ex = &m["exports"][0];
    assert!(out.join("exports/kd.onnx").exists(), "{ex}");
    assert!(ex["max_abs_diff"].as_f64().unwrap() < 1e-4, "{ex}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Text models"), "{report}");
    // Every teacher output was cached once: a second run computes nothing and gives the same
    // figures.
    let cached: Vec<_> = std::fs::read_dir(out.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        cached.iter().all(|p| p.extension().unwrap() == "f32"),
        "{cached:?}"
    );
    assert_eq!(
        cached.len(),
        7,
        "train, val, test embeddings, their standardised copies the head reads, and the token embeddings"
    );
    let out2 = dir.path().join("run2");
    std::fs::create_dir_all(&out2).unwrap();
    copy_dir(&out.join("cache"), &out2.join("cache"));
    let o2 = run(&[
        "run",
        cfg_file.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(o2.status.success(), "{}", stderr(&o2));
    let err2 = stderr(&o2);
    // Three splits' embeddings, and the token embeddings once per student that starts from them.
    assert_eq!(
        err2.matches("rows read from the cache").count(),
        5,
        "{err2}"
    );
    assert!(!err2.contains("rows,"), "nothing computed: {err2}");
    assert_eq!(
        metrics_without_timings(&out),
        metrics_without_timings(&out2)
    );
    // Predict from raw text with the student's file alone.
    let texts = dir.path().join("new.csv");
    std::fs::write(&texts, "text\nwin a prize now\nthe cat sat on the mat\n").unwrap();
    let model = out.join("models/kd.safetensors");
    let p = run(&["predict", model.to_str().unwrap(), texts.to_str().unwrap()]);
    assert!(p.status.success(), "{}", stderr(&p));
    let lines: Vec<String> = stdout(&p).lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("new.csv:2\tspam\t") && lines[1].contains("new.csv:3\tham\t"),
        "{lines:?}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn bad_text_inputs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bert = dir.path().join("bert");
    write_tiny_bert(&bert);
    let data = dir.path().join("texts.jsonl");
    write_texts(&data, 60);
    let base = |extra: &str, data: &std::path::Path| {
        format!(
            r#"
[data]
format = "text"
path = "{}"
features = {{ kind = "ngrams", buckets = 1000 }}
{extra}
[[model]]
name = "s"
role = "student"
arch = {{ kind = "embedding-bag", dim = 8 }}
train = {{ epochs = 1 }}
"#,
            data.display()
        )
    };
    let check = |cfg: String, want: &[&str]| {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, cfg).unwrap();
        let out = dir.path().join("out-bad");
        let _ = std::fs::remove_dir_all(&out);
        let o = run(&["run", f.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        for w in want {
            assert!(e.contains(w), "expected '{w}' in: {e}");
        }
        assert!(!e.contains("panicked"), "{e}");
    };
    // Precomputed outputs with the wrong number of rows, and with NaN.
    let short = dir.path().join("short.csv");
    std::fs::write(&short, "a,b\n0.1,0.2\n").unwrap();
    check(
        base(
            &format!(
                "[[teacher]]\nname = \"t\"\noutputs = \"{}\"",
                short.display()
            ),
            &data,
        ),
        &["short.csv", "1 rows", "60 samples"],
    );
    let nan = dir.path().join("nan.csv");
    std::fs::write(&nan, "a,b\n0.1,NaN\n").unwrap();
    check(
        base(
            &format!("[[teacher]]\nname = \"t\"\noutputs = \"{}\"", nan.display()),
            &data,
        ),
        &["nan.csv:2", "not a finite number"],
    );
    // A BERT teacher whose head has three outputs' worth of classes is fine; one whose
    // precomputed outputs have three columns for two classes is not.
    let three = dir.path().join("three.csv");
    std::fs::write(&three, format!("a,b,c\n{}", "0.1,0.2,0.3\n".repeat(60))).unwrap();
    check(
        base(
            &format!(
                "[[teacher]]\nname = \"t\"\noutputs = \"{}\"",
                three.display()
            ),
            &data,
        ),
        &["three.csv:2", "3 values", "2 classes"],
    );
    // Text files with an empty text and with invalid UTF-8.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(
        &empty,
        "{\"text\": \"a b\", \"label\": \"x\"}\n{\"text\": \"\", \"label\": \"y\"}\n",
    )
    .unwrap();
    check(base("", &empty), &["empty.jsonl:2", "empty"]);
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, b"text,label\nhello,x\n\xff\xfe,y\n").unwrap();
    check(base("", &bad), &["bad.csv:3", "UTF-8"]);
    // An MLP on text.
    check(
        base("", &data).replace("kind = \"embedding-bag\", dim = 8", "kind = \"mlp\""),
        &["model.s.arch.kind", "embedding-bag"],
    );
}

#[test]
fn unlabelled_texts_train_embedding_students() {
    let dir = tempfile::tempdir().unwrap();
    let bert = dir.path().join("bert");
    write_tiny_bert(&bert);
    let data = dir.path().join("texts.jsonl");
    write_texts(&data, 120);
    // Drop the labels.
    let plain: String = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{}\n", serde_json::json!({"text": v["text"]}))
        })
        .collect();
    std::fs::write(&data, plain).unwrap();
    let cfg = |student: &str| {
        format!(
            r#"
[data]
format = "text"
path = "{}"
labels = false
features = {{ kind = "ngrams", buckets = 512, max_tokens = 32 }}
[eval]
latency_runs = 2
latency_budget_ms = 1
[[teacher]]
name = "tiny"
bert = "{}"
[[model]]
name = "s"
arch = {{ kind = "embedding-bag", dim = 8 }}
train = {{ epochs = 3, optimizer = "adam", lr = 0.01 }}
{student}
"#,
            data.display(),
            bert.display()
        )
    };
    let f = dir.path().join("u.toml");
    std::fs::write(
        &f,
        cfg("distill = { teacher = \"tiny\", loss = { kind = \"mse\" } }"),
    )
    .unwrap();
    let out = dir.path().join("u");
    let o = run(&["run", f.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics(&out);
    let s = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "s")
        .unwrap()
        .clone();
    assert!(s["cosine_to_teacher"].as_f64().is_some(), "{s}");
    // A student that would need labels is refused before any work.
    std::fs::write(&f, cfg("")).unwrap();
    let o = run(&[
        "run",
        f.to_str().unwrap(),
        "--out",
        dir.path().join("v").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("data.labels = false"), "{}", stderr(&o));
}

/// The teacher cache survives a SIGKILL half-way: the restarted run resumes after the rows the
/// killed one wrote, computes only the rest, and ends with the uninterrupted run's figures.
#[test]
fn teacher_cache_resumes_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let bert = dir.path().join("bert");
    write_tiny_bert(&bert);
    let data = dir.path().join("texts.jsonl");
    write_texts(&data, 8_000);
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
seed = 9
[data]
format = "text"
path = "{}"
features = {{ kind = "ngrams", buckets = 512, max_tokens = 16 }}
[eval]
latency_runs = 2
latency_budget_ms = 1
[[teacher]]
name = "tiny"
bert = "{}"
batch_size = 4
[[model]]
name = "s"
arch = {{ kind = "embedding-bag", dim = 8 }}
train = {{ epochs = 1, optimizer = "adam", lr = 0.01 }}
distill = {{ teacher = "tiny", loss = {{ kind = "cosine" }} }}
"#,
            data.display(),
            bert.display()
        ),
    )
    .unwrap();
    let whole = dir.path().join("whole");
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        whole.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Kill a second run as soon as its first cache file holds some rows but is not finished.
    let out = dir.path().join("killed");
    let mut child = std::process::Command::new(bin())
        .args([
            "run",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "-q",
        ])
        .current_dir(repo())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut killed = false;
    while start.elapsed().as_secs() < 60 {
        let part = std::fs::read_dir(out.join("cache")).ok().and_then(|rd| {
            rd.flatten()
                .find(|e| e.path().extension().map(|x| x == "part").unwrap_or(false))
        });
        if let Some(p) = part {
            if p.metadata()
                .map(|m| m.len() >= 32 * 4 * 64)
                .unwrap_or(false)
            {
                child.kill().unwrap(); // SIGKILL
                killed = true;
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.wait();
    assert!(
        killed,
        "the run finished before a partly written cache file was seen"
    );
    let o = run(&["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("resuming after"), "{e}");
    assert_eq!(
        metrics_without_timings(&whole),
        metrics_without_timings(&out)
    );
    let whole_cache: Vec<Vec<u8>> = sorted_files(&whole.join("cache"));
    assert_eq!(
        whole_cache,
        sorted_files(&out.join("cache")),
        "the same cache bytes"
    );
}

fn sorted_files(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// A long text's first tokens, read from a prefix cut between words, are the whole text's.
#[test]
fn first_tokens_of_a_prefix_are_the_whole_texts() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path());
    let (tok, _) =
        distillery::data::text::load_tokenizer(&dir.path().join("tokenizer.json")).unwrap();
    let words = [
        "the",
        "cats",
        "sat",
        "on",
        "mat.",
        "Win",
        "free",
        "money,",
        "click",
        "here!",
        "a",
        "dog",
        "zebra",
        "ünïcödé",
        "—",
        "x\ty",
        "catsdog",
    ];
    let mut seed = 11u64;
    let mut prefix_used = 0;
    for _ in 0..300 {
        let mut text = String::new();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let len = 5 + (seed >> 33) as usize % 60;
        for k in 0..len {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            text.push_str(words[(seed >> 33) as usize % words.len()]);
            text.push_str(["  ", " ", "\n", " ", "\t "][k % 5]);
        }
        let full = tok.encode_fast(text.as_str(), false).unwrap();
        for n in [1, 3, 8] {
            let want: Vec<u32> = full.get_ids().iter().take(n).copied().collect();
            let got = distillery::data::text::first_tokens(&tok, &text, n).unwrap();
            assert_eq!(got, want, "n = {n}, text {text:?}");
            prefix_used += usize::from(text.len() > 16 * n);
        }
    }
    assert!(prefix_used > 300, "the prefix path ran {prefix_used} times");
}

/// A tokenizer.json that pads and truncates (as all-MiniLM-L6-v2's does, to 128) gives the
/// texts' own tokens, both when read for training and when read back from a model file.
#[test]
fn a_tokenizers_own_padding_is_never_read_as_tokens() {
    use distillery::data::text::{FeaturesConfig, Featurizer};
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path());
    let path = dir.path().join("tokenizer.json");
    let plain = Featurizer::from_config(&FeaturesConfig::Tokenizer {
        path: path.clone(),
        max_tokens: 12,
    })
    .unwrap();
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tok["padding"] = serde_json::json!({"strategy": {"Fixed": 16}, "direction": "Right",
        "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"});
    tok["truncation"] = serde_json::json!({"direction": "Right", "max_length": 3,
        "strategy": "LongestFirst", "stride": 0});
    std::fs::write(&path, tok.to_string()).unwrap();
    let padded = Featurizer::from_config(&FeaturesConfig::Tokenizer {
        path,
        max_tokens: 12,
    })
    .unwrap();
    // As a model file carries it: serialised without the loaded tokenizer, then made ready.
    let reloaded: Featurizer =
        serde_json::from_str(&serde_json::to_string(&padded).unwrap()).unwrap();
    let reloaded = reloaded.ready("model.safetensors").unwrap();
    let texts: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
    let want = plain.featurize(&texts).unwrap();
    assert_eq!(padded.featurize(&texts).unwrap(), want);
    assert_eq!(reloaded.featurize(&texts).unwrap(), want);
}

/// The ASCII fast path of a BERT WordPiece tokenizer gives the `tokenizers` crate's ids on
/// texts made to hit every rule: case, punctuation, tabs and newlines, control characters,
/// continuation pieces, unknown pieces, words over the length limit; and declines texts with
/// non-ASCII characters or an added token written out.
#[test]
fn fast_wordpiece_matches_the_tokenizers_crate() {
    use distillery::data::wordpiece::FastWordPiece;
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path());
    let path = dir.path().join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let pieces = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "##a", "##b", "a",
        "b", "ab", "##ab", "!", ",", ".", "x", "##x", "the", "cat", "##s", "(", ")", "'", "-",
        "##-", "1", "##2", "12", "[", "]",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.to_string(), serde_json::json!(i)))
        .collect();
    tok["model"]["vocab"] = serde_json::Value::Object(vocab);
    tok["added_tokens"] = serde_json::json!([
        {"id": 2, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false,
         "normalized": false, "special": true},
        {"id": 3, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false,
         "normalized": false, "special": true}
    ]);
    let json = tok.to_string();
    std::fs::write(&path, &json).unwrap();
    let (hf, _) = distillery::data::text::load_tokenizer(&path).unwrap();
    let fast = FastWordPiece::from_json(&json).expect("a BERT WordPiece tokenizer");
    let parts = [
        "unaffable",
        "UnAffAble",
        "ab",
        "abab",
        "aba",
        "b",
        "x",
        "xx",
        "cats",
        "the",
        "12",
        "122",
        "!",
        "(a)",
        "don't",
        "a-b",
        "a--b",
        "qq",
        "uncat",
        "\t",
        "\n",
        "\r\n",
        "  ",
        "\u{1}",
        "\u{7f}",
        "\u{0}",
        "\u{b}",
        "\u{c}",
        "[",
        "]",
        "CAT",
        "ThE",
        ",",
        ".",
        "...",
        "##a",
    ];
    let mut seed = 5u64;
    let mut next = |m: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % m
    };
    let mut checked = 0;
    for k in 0..2000 {
        let mut text = String::new();
        for _ in 0..1 + next(30) {
            text.push_str(parts[next(parts.len())]);
            if next(3) > 0 {
                text.push(' ');
            }
        }
        if k % 50 == 0 {
            text.push_str(&"ab".repeat(60)); // a word over 100 characters
        }
        let want = hf
            .encode_fast(text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        for n in [1, 4, 1000] {
            let mut got = Vec::new();
            assert!(fast.first_ids(&text, n, &mut got), "{text:?}");
            let w: Vec<u32> = want.iter().take(n).copied().collect();
            assert_eq!(got, w, "n = {n}, text {text:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 6000);
    let mut v = Vec::new();
    assert!(!fast.first_ids("the cat [SEP] sat", 8, &mut v) && v.is_empty());
    assert!(!fast.first_ids("the café", 8, &mut v) && v.is_empty());
}

/// Through the binary: an ONNX text classifier over token ids (three inputs, as PyTorch
/// exports Hugging Face models) teaches an embedding-bag student on hashed n-gram ids of the
/// same vocabulary, and the student agrees with it; a float-input ONNX teacher on texts is
/// refused before any work, one line naming the file.
#[test]
fn onnx_token_id_teachers_teach_text_students() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("texts.jsonl");
    write_texts(&data, 150);
    let cfg_with = |onnx: &str, augment: &str| {
        format!(
            r#"
seed = 3
[data]
format = "text"
path = "{}"
features = {{ kind = "ngrams", buckets = 64, word_ngrams = 1, min_char = 0, max_tokens = 12 }}
[eval]
latency_runs = 2
latency_budget_ms = 1
[[teacher]]
name = "onnx-ids"
onnx = "{onnx}"
token_ids = {{ pad = 0, cls = 1, sep = 2 }}
calibrate = true
[[model]]
name = "s"
role = "student"
arch = {{ kind = "embedding-bag", dim = 8 }}
train = {{ epochs = 6, optimizer = "adam", lr = 0.02{augment} }}
distill = {{ teacher = "onnx-ids", alpha = 1.0, temperature = 1.0 }}
"#,
            data.display()
        )
    };
    let cfg = |onnx: &str| cfg_with(onnx, "");
    let f = dir.path().join("t.toml");
    let onnx = common::repo().join("tests/data/onnx/token-bag.onnx");
    std::fs::write(&f, cfg(&onnx.display().to_string())).unwrap();
    let out = dir.path().join("o");
    let o = run(&["run", f.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics(&out);
    let s = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "s")
        .unwrap()
        .clone();
    let agree = s["distill"]["agreement"]["test"]["top1"].as_f64().unwrap();
    assert!(agree > 0.7, "{s}");
    // Tang et al.'s token augmentations, the teacher on every augmented view.
    std::fs::write(
        &f,
        cfg_with(
            &onnx.display().to_string(),
            ", augment = { mask = 0.1, ngram = 0.2 }",
        ),
    )
    .unwrap();
    let out = dir.path().join("aug");
    let o = run(&["run", f.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the teacher runs on every augmented batch"),
        "{}",
        stderr(&o)
    );
    let m = metrics(&out);
    assert!(m["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "s"
            && r["distill"]["agreement"]["test"]["top1"].as_f64().unwrap() > 0.7));
    // A float-input teacher of as many values as the rows have ids, on texts.
    let img = common::repo().join("tests/data/onnx/lower-mlp.onnx");
    std::fs::write(&f, cfg(&img.display().to_string())).unwrap();
    let o = run(&[
        "run",
        f.to_str().unwrap(),
        "--out",
        dir.path().join("p").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("lower-mlp.onnx") && e.contains("takes float values"),
        "{e}"
    );
}

/// Fine-tuning's differentiable graph (candle autograd, padded batches) gives the native
/// encoder's sentence embeddings for the same weights — mean and CLS pooling, normalised or not.
#[test]
fn the_finetuning_graph_gives_the_native_embeddings() {
    use distillery::stages::finetune::{Graph, Weights};
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path());
    let config: distillery::teachers::native::Config =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    let w = Weights::read(&dir.path().join("model.safetensors"), &config).unwrap();
    let ids: Vec<Vec<u32>> = IDS.iter().map(|v| v.to_vec()).collect();
    for (pooling, normalize) in [
        (Pooling::Auto, None),
        (Pooling::Cls, Some(false)),
        (Pooling::Mean, Some(false)),
    ] {
        let enc = BertEncoder::load(dir.path(), None, pooling, normalize).unwrap();
        let g = Graph::new(&w, &config, enc.pooling, enc.normalize);
        let a = g.embeddings(&ids).unwrap();
        let b = enc.embed_ids(&ids).unwrap();
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "{pooling:?}/{normalize:?}: differs by {worst}"
        );
    }
}

/// A BERT teacher fine-tuned end to end (`finetune`) learns the texts better than a head on its
/// frozen embeddings, writes a folder the native encoder runs, teaches a student, and a second
/// run reads the fine-tuned folder back instead of training again.
#[test]
fn a_finetuned_bert_teacher_beats_its_frozen_head() {
    let dir = tempfile::tempdir().unwrap();
    let bert = dir.path().join("bert");
    write_tiny_bert(&bert);
    let data = dir.path().join("texts.jsonl");
    write_texts(&data, 300);
    let cfg = format!(
        r#"
seed = 5
[data]
format = "text"
path = "{data}"
features = {{ kind = "tokenizer", path = "{bert}/tokenizer.json", max_tokens = 16 }}
[eval]
latency_runs = 2
latency_budget_ms = 1
[[teacher]]
name = "frozen"
bert = "{bert}"
head = {{ train = {{ epochs = 30, optimizer = "adam", lr = 0.01, batch_size = 32 }} }}
[[teacher]]
name = "tuned"
bert = "{bert}"
finetune = {{ epochs = 8, batch_size = 16, lr = 0.001, head_lr = 0.01 }}
[[model]]
name = "kd"
arch = {{ kind = "embedding-bag", dim = 8 }}
distill = {{ teacher = "tuned", temperature = 2.0, alpha = 0.5, init_from_teacher = true }}
train = {{ epochs = 5, optimizer = "adam", lr = 0.02, batch_size = 32 }}
[[model]]
name = "kd-views"
arch = {{ kind = "embedding-bag", dim = 8 }}
distill = {{ teacher = "tuned", temperature = 2.0, alpha = 0.5, init_from_teacher = true }}
train = {{ epochs = 4, optimizer = "adam", lr = 0.02, batch_size = 32, views = 2, augment = {{ mask = 0.2, replace = 0.2, replace_from = "tuned" }} }}
"#,
        data = data.display(),
        bert = bert.display(),
    );
    let cfg_file = dir.path().join("tune.toml");
    std::fs::write(&cfg_file, cfg).unwrap();
    let out = dir.path().join("run");
    let args = [
        "run",
        cfg_file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics_without_timings(&out);
    let by = |n: &str| {
        m["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()
            .clone()
    };
    let (frozen, tuned) = (by("frozen"), by("tuned"));
    // The fine-tuned teacher ran on the student's augmented views of the token ids.
    assert!(
        stderr(&o).contains("the teacher runs once on each of 2 fixed augmented views"),
        "{}",
        stderr(&o)
    );
    assert!(by("kd-views")["accuracy"].as_f64().unwrap() > 0.6);
    let acc = |r: &serde_json::Value| r["accuracy"].as_f64().unwrap();
    // 60 test texts: 3 more right than the frozen head's 44.
    assert!(
        acc(&tuned) >= acc(&frozen) + 0.05,
        "{} vs {}",
        acc(&tuned),
        acc(&frozen)
    );
    assert!(tuned["architecture"]
        .as_str()
        .unwrap()
        .contains("fine-tuned end to end"));
    let curves = &tuned["training"]["curves"];
    assert_eq!(curves["val_loss"].as_array().unwrap().len(), 8);
    let tl: Vec<f64> = curves["train_loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(tl[3] < tl[0], "training loss {tl:?}");
    // The fine-tuned folder holds other weights than the source, under the same names.
    let tuned_dir = out.join("models/tuned-finetuned");
    let a = std::fs::read(tuned_dir.join("model.safetensors")).unwrap();
    let b = std::fs::read(bert.join("model.safetensors")).unwrap();
    assert_ne!(a, b);
    let names = |bytes: &[u8]| {
        let mut v: Vec<String> = safetensors::SafeTensors::deserialize(bytes)
            .unwrap()
            .names()
            .into_iter()
            .map(|s| s.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&a), names(&b));
    assert!(BertEncoder::load(&tuned_dir, None, Pooling::Auto, None).is_ok());
    assert!(!out.join("checkpoints").exists() || walk(&out.join("checkpoints")).is_empty());
    // Again with the same --out: read back, the same figures.
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("already fine-tuned"), "{}", stderr(&o));
    assert_eq!(metrics_without_timings(&out), m);
    // The folder copied into a run of other splits is not read back: it is fine-tuned again.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("models")).unwrap();
    for f in walk(&tuned_dir) {
        let to = other
            .join("models/tuned-finetuned")
            .join(f.strip_prefix(&tuned_dir).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f, to).unwrap();
    }
    let o = run(&[
        "run",
        cfg_file.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
        "--set",
        "data.val_fraction=0.3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("already fine-tuned"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("fine-tuning every layer"),
        "{}",
        stderr(&o)
    );
}

/// A BERT teacher on a text run's token-id rows (ids without the special tokens, PAD after
/// them — what augmentation and transfer sets give) answers as it does on the texts.
#[test]
fn a_bert_teacher_on_token_rows_answers_as_on_the_texts() {
    use distillery::models::{Arch, Model, ModelSpec};
    use distillery::teachers::bert::BertTeacher;
    use distillery::teachers::Teacher;
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path());
    let enc =
        std::sync::Arc::new(BertEncoder::load(dir.path(), None, Pooling::Auto, None).unwrap());
    let head = Model::new(
        ModelSpec {
            arch: Arch::mlp(vec![6]),
            input_shape: vec![enc.hidden],
            outputs: 3,
        },
        &mut distillery::rng::Rng::new(4),
    )
    .unwrap();
    let want = head.predict(&enc.embed(&TEXTS, 8).unwrap(), 3).unwrap();
    let (open, close) = enc.specials().unwrap();
    let width = 14;
    let mut rows = Vec::new();
    for ids in enc.tokenize(&TEXTS).unwrap() {
        let inner: Vec<f32> = ids[1..ids.len() - 1].iter().map(|&i| i as f32).collect();
        rows.extend(&inner);
        rows.extend(std::iter::repeat_n(
            distillery::data::text::PAD,
            width - inner.len(),
        ));
    }
    let t = BertTeacher {
        encoder: enc.clone(),
        norm: None,
        head: head.duplicate().unwrap(),
        specials: (open, close),
    };
    let got = t.predict_rows(&rows, 3).unwrap();
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    // Ids outside the vocabulary are a one-line error, not garbage.
    let mut bad = rows.clone();
    bad[0] = 1e6;
    let e = t.predict_rows(&bad, 3).err().unwrap().to_string();
    assert!(e.contains("token ids"), "{e}");
    assert!(t.flops_per_sample().unwrap() > 0.0);
}
