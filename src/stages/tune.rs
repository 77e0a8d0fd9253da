//! `alpha = "auto"` and `temperature = "auto"`: the distillation settings of a `[[model]]`
//! chosen on the validation split, so that a user need not know that α = 0.9 is wrong for their
//! data. Short trials over a small grid that includes α = 0 (labels only) pick the winner by
//! validation accuracy (regression: validation MSE); the model is then trained in full with it.
//! The grid, its scores and the choice are saved in `auto/<name>.json` (a resumed run reads
//! them instead of repeating the trials) and shown in the report.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::store::RunStore;
use crate::train::{self, Objective, TrainConfig, TrainJob};

pub use crate::train::Tunable;

/// α candidates when α is `auto` (0 = labels only).
pub const ALPHAS: [f32; 3] = [0.0, 0.5, 0.9];
/// Temperature candidates when T is `auto`.
pub const TEMPERATURES: [f32; 4] = [1.0, 2.0, 4.0, 8.0];

pub use crate::train::{AutoChoice, FullRuns, Trial};

/// The trial at the best epoch of a training record.
pub fn trial_of(alpha: f32, temperature: f32, r: &train::TrainRecord) -> Trial {
    let i = r.best_epoch.saturating_sub(1);
    let c = &r.curves;
    Trial {
        weight: alpha,
        temperature,
        val_accuracy: c.val_accuracy.get(i).copied(),
        val_loss: c.val_loss.get(i).copied().unwrap_or(f64::INFINITY),
    }
}

/// Where a model's choice is kept.
pub fn choice_path(store: &RunStore, name: &str) -> std::path::PathBuf {
    store.out().join("auto").join(format!("{name}.json"))
}

/// The choice saved for `name` by this or an earlier session.
pub fn saved_choice(store: &RunStore, name: &str) -> Option<AutoChoice> {
    let bytes = std::fs::read(choice_path(store, name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Chooses α and T for model `name`. `objective(α, T)` builds the training objective with
/// those settings; `fresh()` a newly initialised model (the same initial weights each time).
/// Trials train for a fifth of `cfg.epochs` (at least 1) without early stopping; with
/// `full_fits` (tree models, which have no epochs to shorten) each trial is a full fit.
#[allow(clippy::too_many_arguments)]
pub fn choose<'a>(
    store: &RunStore,
    name: &str,
    alpha: Tunable,
    temperature: Tunable,
    cfg: &TrainConfig,
    fresh: &dyn Fn() -> Result<Box<dyn train::Learner>>,
    full_fits: bool,
    objective: &dyn Fn(f32, f32) -> Result<Objective<'a>>,
    teacher_val_accuracy: Option<f64>,
) -> Result<AutoChoice> {
    if store.splits.val.is_empty() {
        return Err(Error::Input(format!(
            "model.{name}.distill: \"auto\" chooses on the validation split, and this run has none (set data.val_fraction > 0)"
        )));
    }
    // Regression distils the teacher's outputs by MSE: the temperature plays no part.
    let regression = matches!(store.splits.train.targets, crate::data::Targets::Values(_));
    let grid = train::grid::Axes {
        weight: alpha,
        weights: &ALPHAS,
        temperature: Some(temperature),
        temperatures: &TEMPERATURES,
        default_temperature: 1.0,
        regression,
        with_baseline: false,
    }
    .candidates();
    // Tree models (`full_fits`) fit in one go, in seconds: their trials are full fits
    // (trial_epochs = 0).
    let trial_epochs = if full_fits {
        0
    } else {
        cfg.epochs.div_ceil(5).max(1)
    };
    let (trials_are, trial_is) = if full_fits {
        ("(full fits)".to_string(), "full-fit trial".to_string())
    } else {
        (
            format!("of {trial_epochs} epoch(s)"),
            format!("{trial_epochs}-epoch trial"),
        )
    };
    // A choice saved by an earlier session for the same grid is read, not tried again.
    if let Some(c) = saved_choice(store, name).filter(|c| {
        c.trial_epochs == trial_epochs
            && c.trials.len() == grid.len()
            && c.trials
                .iter()
                .zip(&grid)
                .all(|(t, &(a, tt))| t.weight == a && t.temperature == tt)
    }) {
        store.progress.say(&format!(
            "{name}: distillation settings chosen earlier (α = {}, T = {}; {})",
            c.alpha,
            c.temperature,
            choice_path(store, name).display()
        ));
        return Ok(c);
    }
    let trial_cfg = if full_fits {
        cfg.clone()
    } else {
        TrainConfig {
            epochs: trial_epochs,
            patience: None,
            ..cfg.clone()
        }
    };
    store.progress.say(&format!(
        "{name}: choosing {} on validation: {} trials {trials_are}",
        match (alpha, temperature) {
            (Tunable::Auto, Tunable::Auto) => "α and T",
            (Tunable::Auto, _) => "α",
            _ => "T",
        },
        grid.len()
    ));
    let mut trials = Vec::new();
    for &(a, t) in &grid {
        let model = fresh()?;
        let record = model.fit(TrainJob {
            name: &format!("{name} (α={a}, T={t})"),
            cfg: &trial_cfg,
            train: &store.splits.train,
            val: &store.splits.val,
            objective: objective(a, t)?,
            fill: store.splits.normalizer.zero_value(),
            checkpoint: None,
            seed: Rng::derive(store.seed, &format!("auto/{name}")).next_u64(),
            progress: crate::progress::Progress::Quiet,
            hooks: Vec::new(),
        })?;
        let tr = trial_of(a, t, &record);
        store
            .progress
            .say(&format!("{name}: trial α = {a}, T = {t}: {}", tr.line()));
        trials.push(tr);
    }
    let best = Trial::best(&trials)
        .ok_or_else(|| Error::Other("empty grid".into()))?
        .clone();
    let labels_only = trials.iter().find(|t| t.weight == 0.0);
    let warning = match (teacher_val_accuracy, labels_only.and_then(|t| t.val_accuracy)) {
        (Some(tv), Some(lv)) if tv < lv => Some(format!(
            "teacher validates worse ({:.2}%) than this student trained on labels alone ({:.2}%, {trial_is}): distilling it copies its mistakes",
            100.0 * tv,
            100.0 * lv
        )),
        _ => None,
    };
    if let Some(w) = &warning {
        store.progress.say(&format!("warning: {name}: {w}"));
    }
    store.progress.say(&format!(
        "{name}: chose α = {}, T = {}",
        best.weight, best.temperature
    ));
    let choice = AutoChoice {
        trial_epochs,
        trials,
        alpha: best.weight,
        temperature: best.temperature,
        teacher_val_accuracy,
        warning,
        full_runs: None,
    };
    save_choice(store, name, &choice)?;
    Ok(choice)
}

/// Saves `name`'s choice (atomically).
pub fn save_choice(store: &RunStore, name: &str, choice: &AutoChoice) -> Result<()> {
    let json = serde_json::to_vec_pretty(choice).map_err(|e| Error::Other(e.to_string()))?;
    crate::io::write_atomic(&choice_path(store, name), &json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn tunable_reads_numbers_and_auto_only() {
        #[derive(Deserialize)]
        struct T {
            a: Tunable,
        }
        let t: T = toml::from_str("a = 0.5").unwrap();
        assert_eq!(t.a, Tunable::Fixed(0.5));
        let t: T = toml::from_str("a = 2").unwrap();
        assert_eq!(t.a, Tunable::Fixed(2.0));
        let t: T = toml::from_str("a = \"auto\"").unwrap();
        assert_eq!(t.a, Tunable::Auto);
        let e = toml::from_str::<T>("a = \"often\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("expected a number or \"auto\""), "{e}");
    }
}
