//! The one grid search behind every `"auto"`: a student's α and T (`stages::tune`, for networks
//! and tree models alike) and a sub-model group's peer weight β and T (`submodels`). The grid
//! is a list of (weight, temperature) candidates in which weight 0 — no soft targets: the
//! student on labels alone, or the group's phase 1 without transfer — appears once, with one
//! temperature (it plays no part there); each candidate is scored on the validation split as a
//! [`Trial`]; the best is chosen by [`Trial::best`] (higher validation accuracy, then lower
//! validation loss; regression: lower loss; the first of equals, so the baseline wins ties).
//! The trials and the choice are kept in the run's records and shown by one report table.

use super::Tunable;
use serde::{Deserialize, Serialize};

/// One candidate of a grid and its validation figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The soft-target weight: a student's α, a group's peer weight β.
    #[serde(alias = "alpha", alias = "peer_weight")]
    pub weight: f32,
    /// Temperature.
    pub temperature: f32,
    /// Validation accuracy (classification): at the trial's best epoch for a student, the
    /// ensemble's best over the trial's rounds for a group.
    #[serde(alias = "ensemble_val_accuracy")]
    pub val_accuracy: Option<f64>,
    /// Validation loss against the labels at the same point (cross-entropy, or MSE in
    /// standardised units): the score for regression, the tie-break for classification.
    #[serde(alias = "ensemble_val_loss")]
    pub val_loss: f64,
}

impl Trial {
    /// Larger is better: validation accuracy, then lower loss; regression: lower loss.
    pub fn key(&self) -> (f64, f64) {
        (self.val_accuracy.unwrap_or(0.0), -self.val_loss)
    }

    /// Whether `self` beats `other` (strictly).
    pub fn beats(&self, other: &Trial) -> bool {
        self.key() > other.key()
    }

    /// The validation figure: accuracy, or the loss for regression.
    pub fn describe(&self) -> String {
        match self.val_accuracy {
            Some(a) => format!("{:.2}%", 100.0 * a),
            None => format!("loss {:.4}", self.val_loss),
        }
    }

    /// The figures as a progress line shows them.
    pub fn line(&self) -> String {
        match self.val_accuracy {
            Some(a) => format!("val acc {:.2}%, val loss {:.4}", 100.0 * a, self.val_loss),
            None => format!("val MSE (standardised) {:.4}", self.val_loss),
        }
    }

    /// The best of `trials` (the first of equals).
    pub fn best(trials: &[Trial]) -> Option<&Trial> {
        trials.iter().reduce(|b, t| if t.beats(b) { t } else { b })
    }
}

/// The grid's axes: the weights and temperatures tried for a setting that may be `"auto"`.
pub struct Axes<'a> {
    /// The weight as configured.
    pub weight: Tunable,
    /// Weights tried when it is `"auto"`.
    pub weights: &'a [f32],
    /// The temperature as configured (`None`: not configured).
    pub temperature: Option<Tunable>,
    /// Temperatures tried when it is `"auto"`.
    pub temperatures: &'a [f32],
    /// The temperature used when it is not configured, and for weight 0.
    pub default_temperature: f32,
    /// Regression: soft targets are matched by MSE, so the temperature plays no part.
    pub regression: bool,
    /// The baseline (weight 0) is a candidate even when the weight is fixed.
    pub with_baseline: bool,
}

impl Axes<'_> {
    /// The candidates, in the order they are tried: for each weight, weight 0 once, any other
    /// weight with every temperature.
    pub fn candidates(&self) -> Vec<(f32, f32)> {
        let mut weights: Vec<f32> = match self.weight {
            Tunable::Auto => self.weights.to_vec(),
            Tunable::Fixed(w) => vec![w],
        };
        if self.with_baseline && !weights.contains(&0.0) {
            weights.insert(0, 0.0);
        }
        let temps: Vec<f32> = match self.temperature {
            Some(Tunable::Auto) if !self.regression => self.temperatures.to_vec(),
            Some(Tunable::Auto) => vec![self.default_temperature],
            Some(Tunable::Fixed(t)) => vec![t],
            None => vec![self.default_temperature],
        };
        let mut grid = Vec::new();
        for &w in &weights {
            if w == 0.0 {
                grid.push((w, self.zero_temperature(&temps)));
            } else {
                grid.extend(temps.iter().map(|&t| (w, t)));
            }
        }
        grid
    }

    fn zero_temperature(&self, temps: &[f32]) -> f32 {
        if self.with_baseline {
            self.default_temperature
        } else {
            temps[0]
        }
    }

    /// Whether anything is to be chosen (some axis is `"auto"`).
    pub fn is_auto(&self) -> bool {
        self.weight == Tunable::Auto || self.temperature == Some(Tunable::Auto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(weight: f32, acc: Option<f64>, loss: f64) -> Trial {
        Trial {
            weight,
            temperature: 1.0,
            val_accuracy: acc,
            val_loss: loss,
        }
    }

    #[test]
    fn the_best_trial_is_accuracy_then_loss_and_the_first_of_equals() {
        let t = [
            trial(0.0, Some(0.9), 0.3),
            trial(0.5, Some(0.9), 0.3),
            trial(0.9, Some(0.8), 0.1),
        ];
        assert_eq!(Trial::best(&t).unwrap().weight, 0.0);
        let t = [trial(0.0, Some(0.9), 0.3), trial(0.5, Some(0.9), 0.2)];
        assert_eq!(Trial::best(&t).unwrap().weight, 0.5);
        let t = [trial(0.0, None, 0.3), trial(0.5, None, 0.2)];
        assert_eq!(Trial::best(&t).unwrap().weight, 0.5);
    }

    #[test]
    fn a_students_grid_and_a_groups_grid() {
        // A student: α and T auto; α = 0 once, with the first temperature.
        let student = Axes {
            weight: Tunable::Auto,
            weights: &[0.0, 0.5],
            temperature: Some(Tunable::Auto),
            temperatures: &[1.0, 4.0],
            default_temperature: 1.0,
            regression: false,
            with_baseline: false,
        };
        assert_eq!(
            student.candidates(),
            vec![(0.0, 1.0), (0.5, 1.0), (0.5, 4.0)]
        );
        // A group: β auto among [0.5, 0.9], T fixed; β = 0 (phase 1) first.
        let group = Axes {
            weight: Tunable::Auto,
            weights: &[0.5, 0.9],
            temperature: None,
            temperatures: &[1.0, 2.0],
            default_temperature: 4.0,
            regression: false,
            with_baseline: true,
        };
        assert_eq!(group.candidates(), vec![(0.0, 4.0), (0.5, 4.0), (0.9, 4.0)]);
        // Regression: one temperature.
        let reg = Axes {
            regression: true,
            temperature: Some(Tunable::Auto),
            ..group
        };
        assert_eq!(reg.candidates(), vec![(0.0, 4.0), (0.5, 4.0), (0.9, 4.0)]);
    }

    #[test]
    fn records_of_earlier_versions_still_read() {
        let t: Trial = serde_json::from_str(
            r#"{"peer_weight":0.5,"temperature":2.0,"ensemble_val_accuracy":0.9,"ensemble_val_loss":0.3}"#,
        )
        .unwrap();
        assert_eq!(
            t,
            Trial {
                weight: 0.5,
                temperature: 2.0,
                val_accuracy: Some(0.9),
                val_loss: 0.3
            }
        );
        let t: Trial = serde_json::from_str(
            r#"{"alpha":0.9,"temperature":4.0,"val_accuracy":null,"val_loss":1.0}"#,
        )
        .unwrap();
        assert_eq!(t.weight, 0.9);
    }
}
