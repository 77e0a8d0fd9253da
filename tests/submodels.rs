//! Sub-models: the loss of each transfer method against reference values, the hidden-unit split,
//! convergence stopping, and the group's outputs through the real binary.
//!
//! Reference values (float64, pure Python; the PyTorch expression is in each comment):
//! ```python
//! import math
//! A=[[1.0,2.0,0.5],[0.3,-1.2,2.2]]; B=[[0.2,0.1,1.5],[2.0,0.0,-1.0]]; S=[[0.5,0.5,0.0],[1.0,1.0,1.0]]
//! def sm(z,T=1.0):
//!     m=max(z); e=[math.exp((v-m)/T) for v in z]; s=sum(e); return [v/s for v in e]
//! T=2.0
//! pbar=[[(x+y)/2 for x,y in zip(sm(A[i],T),sm(B[i],T))] for i in range(2)]
//! # T*T*F.kl_div(F.log_softmax(S/T,1), pbar, reduction="batchmean")
//! loss=T*T*sum(sum(p*(math.log(p)-math.log(q)) for p,q in zip(pbar[i],sm(S[i],T))) for i in range(2))/2
//! grad=[[T*(q-p)/2 for p,q in zip(pbar[i],sm(S[i],T))] for i in range(2)]
//! # disagreement: mean over models k and samples of KL(softmax(z_k/T) || mean_{j!=k} softmax(z_j/T))
//! # hint: F.mse_loss(hs @ Ad, ht)
//! hs=[[1,2],[0,-1]]; Ad=[[0.5,-1,0],[0.25,0,1]]; ht=[[1,0,2],[0,1,-1]]
//! ```
//!
//! Cross-checked in PyTorch 2.15.0, float64 (agrees to 1e-15):
//!
//! ```python
//! import torch, torch.nn.functional as F
//! torch.set_default_dtype(torch.float64)
//! A=torch.tensor([[1.0,2.0,0.5],[0.3,-1.2,2.2]]); B=torch.tensor([[0.2,0.1,1.5],[2.0,0.0,-1.0]])
//! S=torch.tensor([[0.5,0.5,0.0],[1.0,1.0,1.0]],requires_grad=True); T=2.0
//! pbar=(F.softmax(A/T,1)+F.softmax(B/T,1))/2
//! l=T*T*F.kl_div(F.log_softmax(S/T,1),pbar,reduction='batchmean'); l.backward()  # 0.17419880935075777
//! hs=torch.tensor([[1.,2],[0,-1]]); Ad=torch.tensor([[0.5,-1,0],[0.25,0,1]]); ht=torch.tensor([[1.,0,2],[0,1,-1]])
//! F.mse_loss(hs@Ad,ht)   # 0.34375
//! ```

mod common;
use candle_core::{Device, Tensor, Var};
use common::*;
use distillery::config::Arch as ArchConfig;
use distillery::losses::{self, mutual};
use distillery::models::{Model, ModelSpec};
use distillery::rng::Rng;

const A: [f32; 6] = [1.0, 2.0, 0.5, 0.3, -1.2, 2.2];
const B: [f32; 6] = [0.2, 0.1, 1.5, 2.0, 0.0, -1.0];
const S: [f32; 6] = [0.5, 0.5, 0.0, 1.0, 1.0, 1.0];

#[test]
fn deep_mutual_learning_loss_golden() {
    let pbar = mutual::peer_average(&[&A, &B], 3, 2.0);
    let want = [
        0.2751848625992026,
        0.36351264137200995,
        0.36130249602878745,
        0.43747695123458474,
        0.1738127474231825,
        0.3887103013422328,
    ];
    for (a, b) in pbar.iter().zip(want) {
        close(*a as f64, b, 1e-6);
    }
    // The peers' average acts as a teacher through logits T·ln p̄.
    let s = Var::from_tensor(&Tensor::from_slice(&S, (2, 3), &Device::Cpu).unwrap()).unwrap();
    let l =
        losses::soft_target_loss(s.as_tensor(), &mutual::probs_as_logits(&pbar, 2.0), 2.0).unwrap();
    close(
        l.to_scalar::<f32>().unwrap() as f64,
        0.17419880935075785,
        2e-6,
    );
    let g = grad_of(&l, &s);
    let want = [
        0.08468260472413003,
        -0.003645174048677313,
        -0.08103743067545277,
        -0.10414361790125143,
        0.1595205859101508,
        -0.05537696800889946,
    ];
    for (a, b) in g.iter().zip(want) {
        close(*a as f64, b, 2e-6);
    }
}

#[test]
fn disagreement_golden() {
    let d = mutual::disagreement(&[A.to_vec(), B.to_vec(), S.to_vec()], 3, 2.0, false);
    close(d, 0.16706197047108706, 1e-6);
    // regression: mean over models of MSE to the peers' mean; R=[[1,2],[0,2.5],[2,0.5]] → 1.5625
    let r = mutual::disagreement(
        &[vec![1.0, 2.0], vec![0.0, 2.5], vec![2.0, 0.5]],
        1,
        1.0,
        true,
    );
    close(r, 1.5625, 1e-9);
    // identical models agree perfectly
    close(
        mutual::disagreement(&[A.to_vec(), A.to_vec()], 3, 1.0, false),
        0.0,
        1e-9,
    );
}

#[test]
fn fitnets_hint_loss_golden() {
    let d = &Device::Cpu;
    let hs = Tensor::from_slice(&[1f32, 2., 0., -1.], (2, 2), d).unwrap();
    let ad = Tensor::from_slice(&[0.5f32, -1., 0., 0.25, 0., 1.], (2, 3), d).unwrap();
    let ht = Tensor::from_slice(&[1f32, 0., 2., 0., 1., -1.], (2, 3), d).unwrap();
    close(
        losses::hint_loss(&hs, &ad, &ht)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64,
        0.34375,
        1e-7,
    );
}

fn mlp(hidden: &[usize], inputs: usize, outputs: usize, seed: u64) -> Model {
    let arch: ArchConfig = toml::from_str(&format!("kind = \"mlp\"\nhidden = {hidden:?}")).unwrap();
    Model::new(
        ModelSpec {
            arch,
            input_shape: vec![inputs],
            outputs,
        },
        &mut Rng::new(seed),
    )
    .unwrap()
}

#[test]
fn split_of_one_hidden_layer_sums_to_the_teacher() {
    let mut teacher = mlp(&[10], 6, 4, 3);
    // non-zero biases so that the output bias accounting is tested too
    let mut w = teacher.weights().unwrap();
    w[1] = (0..10).map(|i| 0.1 * i as f32 - 0.3).collect();
    w[3] = vec![0.5, -0.25, 1.0, 0.0];
    teacher.set_weights(&w).unwrap();
    teacher = teacher.duplicate().unwrap();
    let (subs, kept) = distillery::submodels::split_teacher(&teacher, 3, None).unwrap();
    assert_eq!(subs.len(), 3);
    assert_eq!(
        subs.iter()
            .map(|s| s.spec.arch.hidden()[0])
            .collect::<Vec<_>>(),
        vec![4, 3, 3]
    );
    close(kept.iter().sum(), 1.0, 1e-9);
    let x: Vec<f32> = (0..5 * 6)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
        .collect();
    let t_out = teacher.predict(&x, 16).unwrap();
    let mut sum = vec![0f32; t_out.len()];
    for s in &subs {
        for (a, b) in sum.iter_mut().zip(s.predict(&x, 16).unwrap()) {
            *a += b;
        }
    }
    for (a, b) in sum.iter().zip(&t_out) {
        assert!(
            (a - b).abs() < 1e-5,
            "summed sub-model logits {a} != teacher {b}"
        );
    }
    // Every sub-model weight is exactly the teacher's slice: sub-model 2 holds units 4..7.
    let tw = teacher.weights().unwrap();
    let sw = subs[1].weights().unwrap();
    for r in 0..6 {
        for c in 0..3 {
            assert_eq!(sw[0][r * 3 + c], tw[0][r * 10 + 4 + c]);
        }
    }
    assert_eq!(&sw[1][..], &tw[1][4..7]);
    for r in 0..3 {
        assert_eq!(
            &sw[2][r * 4..r * 4 + 4],
            &tw[2][(4 + r) * 4..(4 + r) * 4 + 4]
        );
    }
    for (a, b) in sw[3].iter().zip(&tw[3]) {
        assert_eq!(*a, b / 3.0);
    }
}

#[test]
fn split_of_a_deep_teacher_drops_cross_weights() {
    let teacher = mlp(&[8, 6], 5, 3, 9);
    let (subs, kept) = distillery::submodels::split_teacher(&teacher, 2, None).unwrap();
    let tw = teacher.weights().unwrap();
    // sub-model 1 (index 1) takes units 4..8 of layer 0 and 3..6 of layer 1
    let sw = subs[1].weights().unwrap();
    for r in 0..4 {
        for c in 0..3 {
            assert_eq!(sw[2][r * 3 + c], tw[2][(4 + r) * 6 + 3 + c]);
        }
    }
    let total: f64 = kept.iter().sum();
    assert!(total < 0.95 && total > 0.3, "kept {total}");
    assert!(
        distillery::submodels::split_teacher(&teacher, 7, None).is_err(),
        "7 sub-models cannot share 6 units"
    );
}

const GROUP: &str = r#"
name = "sub-test"
seed = 4
[data]
format = "digits"
[eval]
latency_runs = 2
latency_budget_ms = 5
[[model]]
name = "teacher"
arch = { kind = "mlp", hidden = [64] }
train = { epochs = 6, batch_size = 32, lr = 2e-3 }
[[submodels]]
name = "g"
k = 2
init = "split"
teacher = "teacher"
phase1 = { epochs = 1, batch_size = 32 }
transfer = { rounds = 6, tolerance = TOL, epochs_per_round = 1, train = { batch_size = 32 } }
final_student = { name = "final", arch = { kind = "mlp", hidden = [16] }, train = { epochs = 3, batch_size = 32 } }
"#;

#[test]
fn transfer_stops_at_tolerance_and_reports_rounds() {
    let d = tempfile::tempdir().unwrap();
    // A loose tolerance: the first round already agrees well enough.
    let cfg = d.path().join("loose.toml");
    std::fs::write(&cfg, GROUP.replace("TOL", "0.5")).unwrap();
    let out = d.path().join("loose");
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics(&out);
    let rounds = m["transfer_rounds"].as_array().unwrap();
    assert_eq!(
        rounds.len(),
        2,
        "round 0 and one transfer round: {rounds:?}"
    );
    assert!(rounds[1]["disagreement"].as_f64().unwrap() < 0.5);
    let g = &m["submodel_groups"][0];
    assert!(g["stop_reason"]
        .as_str()
        .unwrap()
        .contains("fell below the tolerance"));
    let wm: f64 = g["weight_mass_kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!(
        (wm - 1.0).abs() < 1e-9,
        "one hidden layer: the split keeps all weight mass"
    );
    let roles: Vec<&str> = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["teacher", "submodel", "submodel", "ensemble", "student"]
    );
    assert_eq!(rounds[0]["val_accuracy"].as_array().unwrap().len(), 2);

    // An impossible tolerance: all rounds run, disagreement falls, the best round is reported.
    let cfg = d.path().join("tight.toml");
    std::fs::write(&cfg, GROUP.replace("TOL", "1e-9")).unwrap();
    let out = d.path().join("tight");
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics(&out);
    let rounds = m["transfer_rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 7);
    let first = rounds[1]["disagreement"].as_f64().unwrap();
    let last = rounds[6]["disagreement"].as_f64().unwrap();
    assert!(
        last < first,
        "transfer should make the sub-models agree more: {first} → {last}"
    );
    let g = &m["submodel_groups"][0];
    assert!(g["stop_reason"]
        .as_str()
        .unwrap()
        .contains("maximum of 6 rounds"));
    let chosen = g["chosen_round"].as_u64().unwrap() as usize;
    let best = rounds
        .iter()
        .map(|r| r["ensemble_val_accuracy"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(
        rounds[chosen]["ensemble_val_accuracy"].as_f64().unwrap(),
        best
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains(&format!("| {chosen} (kept) |")) && report.contains("disagreement.svg")
    );
    assert!(out.join("plots/disagreement.svg").exists());
}

#[test]
fn submodel_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let base = "[data]\nformat = \"digits\"\n[[model]]\nname = \"teacher\"\narch = { kind = \"mlp\", hidden = [4] }\n";
    let cases: &[(&str, &str, &[&str])] = &[
        ("split-too-many", "[[submodels]]\nname = \"g\"\nk = 5\ninit = \"split\"\nteacher = \"teacher\"\n", &["submodels.g.k", "hidden layer of 4 units", "5 sub-models"]),
        ("bad-tolerance", "[[submodels]]\nname = \"g\"\nk = 2\narch = { kind = \"mlp\", hidden = [4] }\ntransfer = { tolerance = -1.0 }\n", &["submodels.g.transfer.tolerance", "positive"]),
        ("zero-tolerance", "[[submodels]]\nname = \"g\"\nk = 2\narch = { kind = \"mlp\", hidden = [4] }\ntransfer = { tolerance = 0.0 }\n", &["submodels.g.transfer.tolerance"]),
        ("k-one", "[[submodels]]\nname = \"g\"\nk = 1\narch = { kind = \"mlp\", hidden = [4] }\n", &["submodels.g.k", "at least 2"]),
        ("no-arch", "[[submodels]]\nname = \"g\"\nk = 2\n", &["submodels.g.arch", "required"]),
        ("archs-count", "[[submodels]]\nname = \"g\"\nk = 3\narchs = [{ kind = \"mlp\" }]\n", &["submodels.g.archs", "1 entries for k = 3"]),
        ("unknown-teacher", "[[submodels]]\nname = \"g\"\nk = 2\ninit = \"split\"\nteacher = \"nobody\"\n", &["submodels.g.teacher", "'nobody'"]),
        ("live-on-shards", "[[submodels]]\nname = \"g\"\nk = 2\nshards = true\narch = { kind = \"mlp\" }\ntransfer = { peers = \"live\" }\n", &["submodels.g.transfer.peers"]),
        ("more-shards-than-samples", "[[submodels]]\nname = \"g\"\nk = 500\nshards = true\narch = { kind = \"mlp\" }\n", &["submodels.g.k", "500 shards", "leave shards empty"]),
    ];
    for (name, group, needles) in cases {
        let cfg = d.path().join(format!("{name}.toml"));
        let text = if *name == "more-shards-than-samples" {
            format!(
                "{}{group}",
                base.replace(
                    "format = \"digits\"",
                    "format = \"digits\"\nmax_train = 100"
                )
            )
        } else {
            format!("{base}{group}")
        };
        std::fs::write(&cfg, text).unwrap();
        let o = run(&[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            d.path().join(name).to_str().unwrap(),
            "-q",
            "--quick",
        ]);
        let e = stderr(&o);
        catalogue(name, &e);
        assert_eq!(o.status.code(), Some(2), "{name}: {e}");
        assert!(!e.contains("panicked"), "{name}: {e}");
        for n in *needles {
            assert!(e.contains(n), "{name}: expected '{n}' in {e}");
        }
    }
}

#[test]
fn shard_without_a_class_is_warned() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("w.toml");
    // 12 training samples, 6 shards of 2: most shards miss most of the 10 digits.
    std::fs::write(
        &cfg,
        "[data]\nformat = \"digits\"\nmax_train = 12\n[eval]\nlatency_runs = 1\nlatency_budget_ms = 1\n[[submodels]]\nname = \"g\"\nk = 6\nshards = true\narch = { kind = \"mlp\", hidden = [4] }\nphase1 = { epochs = 1 }\ntransfer = { rounds = 1 }\n",
    )
    .unwrap();
    let out = d.path().join("w");
    let o = run(&["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: submodels.g: shard 1"),
        "{}",
        stderr(&o)
    );
    let m = metrics(&out);
    assert!(!m["submodel_groups"][0]["warnings"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(m["submodel_groups"][0]["peers"], "stale (codistillation)");
}

/// `peer_weight = temperature = "auto"`: short trials from the phase-1 state over β ∈ {0.5,
/// 0.9} × T ∈ {1, 2, 4}, against β = 0 (phase 1 itself); the choice is the candidate with the
/// best ensemble validation accuracy (ties: lower loss), recorded with every trial; a group
/// whose phase 1 no trial beats does no transfer. A second run in the same folder reads the
/// group back instead of trying again.
#[test]
fn auto_transfer_settings_are_chosen_on_validation() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("auto.toml");
    let text = GROUP.replace("TOL", "1e-9").replace(
        "epochs_per_round = 1,",
        "epochs_per_round = 1, peer_weight = \"auto\", temperature = \"auto\",",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = d.path().join("auto");
    let o = run(&["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("6 trials of 2 round(s) from phase 1"), "{err}");
    let m = metrics(&out);
    let g = &m["submodel_groups"][0];
    let a = &g["auto"];
    let trials = a["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 7, "{a}");
    // One trial record for every grid search: the weight is β here.
    assert_eq!(trials[0]["weight"].as_f64(), Some(0.0));
    let rounds = m["transfer_rounds"].as_array().unwrap();
    assert_eq!(
        trials[0]["val_accuracy"], rounds[0]["ensemble_val_accuracy"],
        "β = 0 is phase 1 itself"
    );
    // The choice is the best trial: highest accuracy, then lowest loss, first among equals.
    let key = |t: &serde_json::Value| {
        (
            t["val_accuracy"].as_f64().unwrap(),
            -t["val_loss"].as_f64().unwrap(),
        )
    };
    let best = trials
        .iter()
        .fold(&trials[0], |b, t| if key(t) > key(b) { t } else { b });
    assert_eq!(a["peer_weight"], best["weight"], "{a}");
    if best["weight"].as_f64() == Some(0.0) {
        assert_eq!(rounds.len(), 1, "no transfer: {rounds:?}");
        assert!(g["stop_reason"].as_str().unwrap().contains("no transfer"));
    } else {
        assert_eq!(a["temperature"], best["temperature"], "{a}");
        assert!(rounds.len() > 1);
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("Transfer settings chosen on validation"),
        "{report}"
    );
    // Run again: everything is read back, no trial repeated.
    let o = run(&["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("trial β"), "{err}");
}

/// A multi-task group cut from its teacher: each member keeps the cut's hidden layers, the
/// heads that learn from that teacher (same width) start from the cut's output columns — so
/// the members' logits of such a head still sum to the teacher's — and any other head starts
/// fresh.
#[test]
fn a_split_member_carries_every_head() {
    use distillery::models::{HeadKind, TaskHead};
    let teacher = mlp(&[10], 6, 4, 3);
    let (cuts, _) = distillery::submodels::split_teacher(&teacher, 2, None).unwrap();
    let head = |name: &str, start, outputs, teacher: &str| TaskHead {
        name: name.into(),
        start,
        outputs,
        kind: HeadKind::Classes,
        teacher: Some(teacher.into()),
        labels: false,
        column: None,
        classes: None,
        scale: None,
    };
    let heads = [
        head("digit", 0, 4, "t"),
        head("other", 4, 3, "u"),
        head("mimic", 7, 4, "t"),
    ];
    let members: Vec<Model> = cuts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            distillery::submodels::with_heads(c, &heads, "t", &mut Rng::new(40 + i as u64)).unwrap()
        })
        .collect();
    let x: Vec<f32> = (0..5 * 6)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
        .collect();
    let t_out = teacher.predict(&x, 16).unwrap();
    let outs: Vec<Vec<f32>> = members.iter().map(|m| m.predict(&x, 16).unwrap()).collect();
    for r in 0..5 {
        for start in [0, 7] {
            for c in 0..4 {
                let sum = outs[0][r * 11 + start + c] + outs[1][r * 11 + start + c];
                close(sum as f64, t_out[r * 4 + c] as f64, 1e-5);
            }
        }
    }
    for (m, c) in members.iter().zip(&cuts) {
        assert_eq!(m.spec.outputs, 11);
        let (mw, cw) = (m.weights().unwrap(), c.weights().unwrap());
        assert_eq!(mw[0], cw[0]);
        assert_eq!(mw[1], cw[1]);
    }
    // The other head's columns are fresh: the two members' differ, and differ from zero.
    let other = |m: &Model| {
        let w = m.weights().unwrap();
        (0..5).map(|r| w[2][r * 11 + 4]).collect::<Vec<f32>>()
    };
    assert_ne!(other(&members[0]), other(&members[1]));
    assert!(other(&members[0]).iter().any(|v| *v != 0.0));
}
