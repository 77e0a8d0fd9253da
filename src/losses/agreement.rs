//! Agreement between a student and its teacher (Stanton et al., NeurIPS 2021, "Does knowledge
//! distillation really work?": a student's accuracy and its fidelity to the teacher can part, so
//! both are reported): the share of samples on which their top-1 classes agree, and the mean
//! `KL(softmax(teacher) ‖ softmax(student))` at temperature 1, in nats.

use crate::kernels::softmax::{argmax, softmax_and_log_rows};
use serde::{Deserialize, Serialize};

/// Top-1 agreement and mean KL on one split.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Agreement {
    /// Share of samples whose arg-max class is the teacher's, in [0, 1].
    pub top1: f64,
    /// Mean KL(teacher ‖ student) over the samples, nats.
    pub kl: f64,
}

/// The agreement of `student` with `teacher`, both row-major logits (or log-probabilities) of
/// `classes` columns; `None` when they do not have the same rows.
pub fn agreement(student: &[f32], teacher: &[f32], classes: usize) -> Option<Agreement> {
    if classes == 0 || student.len() != teacher.len() || student.is_empty() {
        return None;
    }
    let rows = student.len() / classes;
    let (_, log_s) = softmax_and_log_rows(student, classes, 1.0);
    let (p_t, log_t) = softmax_and_log_rows(teacher, classes, 1.0);
    let mut same = 0usize;
    let mut kl = 0f64;
    for r in 0..rows {
        let at = r * classes..(r + 1) * classes;
        if argmax(&student[at.clone()]) == argmax(&teacher[at.clone()]) {
            same += 1;
        }
        for c in at {
            if p_t[c] > 0.0 {
                kl += p_t[c] as f64 * (log_t[c] as f64 - log_s[c] as f64);
            }
        }
    }
    Some(Agreement {
        top1: same as f64 / rows as f64,
        kl: kl / rows as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_computed_case() {
        // Row 1: both pick class 0; row 2: the student picks 1, the teacher 0.
        let student = [2.0f32, 0.0, 0.0, 1.0];
        let teacher = [1.0f32, 0.0, 1.0, 0.0];
        let a = agreement(&student, &teacher, 2).unwrap();
        assert_eq!(a.top1, 0.5);
        // KL per row: Σ p_t (log p_t − log p_s), p = softmax.
        let sm = |a: f64, b: f64| {
            let m = a.max(b);
            let z = (a - m).exp() + (b - m).exp();
            ((a - m).exp() / z, (b - m).exp() / z)
        };
        let kl = |t: (f64, f64), s: (f64, f64)| t.0 * (t.0 / s.0).ln() + t.1 * (t.1 / s.1).ln();
        let want = (kl(sm(1.0, 0.0), sm(2.0, 0.0)) + kl(sm(1.0, 0.0), sm(0.0, 1.0))) / 2.0;
        assert!((a.kl - want).abs() < 1e-6, "{} vs {want}", a.kl);
        // A student that is its teacher agrees fully, at KL 0.
        let same = agreement(&teacher, &teacher, 2).unwrap();
        assert_eq!(same.top1, 1.0);
        assert!(same.kl.abs() < 1e-9);
        assert!(agreement(&student[..2], &teacher, 2).is_none());
    }
}
