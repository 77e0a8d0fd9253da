//! The crate's one softmax and log-sum-exp. Every loss, the evaluation, the ensembles and the
//! prediction output go through these functions, so that the same logits always give the same
//! probabilities.
//!
//! `log_sum_exp` subtracts the row's maximum before exponentiating (no overflow for any finite
//! logits) and sums the exponentials in the arithmetic `A`: `f32` on the training step's hot
//! path, `f64` where the result feeds a target or a reported figure.

/// Arithmetic in which the exponentials are summed (`f32` or `f64`).
pub trait Acc: Copy + std::iter::Sum + Into<f64> {
    /// From an `f32` value.
    fn of(v: f32) -> Self;
    /// `e^self`.
    fn exp(self) -> Self;
    /// `ln self`.
    fn ln(self) -> Self;
}

impl Acc for f32 {
    fn of(v: f32) -> Self {
        v
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
}

impl Acc for f64 {
    fn of(v: f32) -> Self {
        v as f64
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// The largest value of `row` (−∞ for an empty row).
#[inline]
pub fn row_max(row: &[f32]) -> f32 {
    row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `(m, ln Σ_k exp((z_k − m) / T))` with `m` the row's maximum, over every entry of `row`
/// except the one at `skip` (the target class, for decoupled KD). The log-softmax of entry `k`
/// is then `(z_k − m) / T − lse`.
#[inline]
pub fn log_sum_exp<A: Acc>(row: &[f32], temperature: f32, skip: Option<usize>) -> (f32, A) {
    let max = row_max(row);
    let sum: A = row
        .iter()
        .enumerate()
        .filter(|(k, _)| Some(*k) != skip)
        .map(|(_, &v)| A::of((v - max) / temperature).exp())
        .sum();
    (max, sum.ln())
}

/// `softmax(row / T)` into `out` (same length), computed as `exp(log_softmax)` in `f64`.
pub fn softmax_into(row: &[f32], temperature: f32, out: &mut [f32]) {
    let (max, lse) = log_sum_exp::<f64>(row, temperature, None);
    for (o, &z) in out.iter_mut().zip(row) {
        *o = (((z - max) / temperature) as f64 - lse).exp() as f32;
    }
}

/// Row-wise `softmax(logits / T)` of a row-major `[n, classes]` matrix.
pub fn softmax_rows(logits: &[f32], classes: usize, temperature: f32) -> Vec<f32> {
    let mut out = vec![0f32; logits.len()];
    for (row, o) in logits
        .chunks_exact(classes)
        .zip(out.chunks_exact_mut(classes))
    {
        softmax_into(row, temperature, o);
    }
    out
}

/// Row-wise `softmax(logits / T)` and its logarithm, row-major (the log computed directly, so
/// that tiny probabilities keep their exact logarithm).
pub fn softmax_and_log_rows(
    logits: &[f32],
    classes: usize,
    temperature: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut p = Vec::with_capacity(logits.len());
    let mut logp = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let (max, lse) = log_sum_exp::<f64>(row, temperature, None);
        for &z in row {
            let lp = ((z - max) / temperature) as f64 - lse;
            logp.push(lp as f32);
            p.push(lp.exp() as f32);
        }
    }
    (p, logp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_normalised() {
        // Logits far beyond exp's range still give a distribution.
        let row = [1000.0f32, 999.0, -1000.0];
        let mut p = [0f32; 3];
        softmax_into(&row, 1.0, &mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[0] - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
        assert_eq!(p[2], 0.0);
        // Skipping an entry is the log-sum-exp of the others.
        let (m, l) = log_sum_exp::<f64>(&[0.0, 1.0, 2.0], 1.0, Some(2));
        assert_eq!(m, 2.0);
        assert!((l - ((-2.0f64).exp() + (-1.0f64).exp()).ln()).abs() < 1e-12);
    }
}
