//! Synthetic samples near the training set, for a teacher to label: MUNGE (Bucila, Caruana &
//! Niculescu-Mizil 2006, "Model compression", §3). Each new sample starts from a training
//! sample and its nearest neighbour; each feature, with probability `swap`, takes a value
//! drawn around the neighbour's (a normal of standard deviation |a − b| / `spread`) — or, for a
//! categorical feature, the neighbour's value itself. Values are kept within each feature's
//! training range, and a categorical feature only ever takes values seen in training.

use crate::error::{bad_field, Error, Result};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// The `synthetic = { … }` table of a student's `distill`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MungeConfig {
    /// Synthetic samples to add to the training set.
    pub samples: usize,
    /// Probability that a feature is resampled from the neighbour (the paper's p).
    #[serde(default = "default_swap")]
    pub swap: f32,
    /// Divides |a − b| to give the resampling standard deviation (the paper's s).
    #[serde(default = "default_spread")]
    pub spread: f32,
}

fn default_swap() -> f32 {
    0.5
}
fn default_spread() -> f32 {
    1.0
}

impl MungeConfig {
    /// Checks the values; `p` is the table's path, for the messages.
    pub fn check(&self, p: &str) -> Result<()> {
        if self.samples == 0 {
            bad_field(&format!("{p}.samples"), "expected at least 1 sample")?;
        }
        if !(self.swap > 0.0 && self.swap <= 1.0) {
            bad_field(
                &format!("{p}.swap"),
                &format!("expected a probability in (0, 1], got {}", self.swap),
            )?;
        }
        if !(self.spread.is_finite() && self.spread > 0.0) {
            bad_field(
                &format!("{p}.spread"),
                &format!("expected a positive number, got {}", self.spread),
            )?;
        }
        Ok(())
    }
}

/// A column with at most this many distinct training values is categorical.
pub const CATEGORICAL_MAX_VALUES: usize = 10;

/// Which of the `d` columns of `x` (`n` rows) are categorical: at most
/// [`CATEGORICAL_MAX_VALUES`] distinct values.
pub fn categorical_columns(x: &[f32], n: usize, d: usize) -> Vec<bool> {
    (0..d)
        .map(|f| {
            let mut seen: Vec<f32> = Vec::new();
            for r in 0..n {
                let v = x[r * d + f];
                if !seen.contains(&v) {
                    seen.push(v);
                    if seen.len() > CATEGORICAL_MAX_VALUES {
                        return false;
                    }
                }
            }
            true
        })
        .collect()
}

/// Fails when `samples` synthetic rows beside `existing` training rows, of `d` features each
/// (and their teacher outputs, `outputs` per row), would not fit in memory: more than half of
/// what the system has available.
pub fn check_fits_memory(
    samples: usize,
    existing: usize,
    d: usize,
    outputs: usize,
    what: &str,
) -> Result<()> {
    let need = (samples as u128 + existing as u128) * ((d + outputs + 1) as u128) * 4;
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u128>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30);
    if need > available / 2 {
        return Err(Error::Input(format!(
            "{what}: {samples} synthetic samples of {d} features need {:.1} GiB, more than half of the {:.1} GiB available; ask for fewer",
            need as f64 / (1u64 << 30) as f64,
            available as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// Nearest neighbours searched among at most this many rows (a fixed random subset of a larger
/// training set).
const CANDIDATES: usize = 1024;

/// `samples` synthetic rows (row-major, `d` values each) made from the `n` rows of `x`.
pub fn munge(
    x: &[f32],
    n: usize,
    d: usize,
    cfg: &MungeConfig,
    categorical: &[bool],
    rng: &mut Rng,
) -> Vec<f32> {
    use rayon::prelude::*;
    if n < 2 || d == 0 {
        return x.iter().copied().cycle().take(cfg.samples * d).collect();
    }
    let mut lo = vec![f32::INFINITY; d];
    let mut hi = vec![f32::NEG_INFINITY; d];
    for row in x.chunks_exact(d) {
        for f in 0..d {
            lo[f] = lo[f].min(row[f]);
            hi[f] = hi[f].max(row[f]);
        }
    }
    // The rows the samples start from, in order, cycling through a shuffled training set.
    let mut perm = rng.permutation(n);
    let starts: Vec<usize> = (0..cfg.samples).map(|i| perm[i % n]).collect();
    rng.shuffle(&mut perm);
    let cands: Vec<usize> = perm.iter().copied().take(CANDIDATES.min(n)).collect();
    // Nearest neighbour (Euclidean, on the normalised features) of each distinct start.
    let mut distinct = starts.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let nn: Vec<(usize, usize)> = distinct
        .par_iter()
        .map(|&r| {
            let a = &x[r * d..(r + 1) * d];
            let mut best = (f32::INFINITY, r);
            for &c in &cands {
                if c == r {
                    continue;
                }
                let b = &x[c * d..(c + 1) * d];
                let dist: f32 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
                if dist < best.0 {
                    best = (dist, c);
                }
            }
            (r, best.1)
        })
        .collect();
    let neighbour = |r: usize| nn[nn.binary_search_by_key(&r, |p| p.0).unwrap_or(0)].1;
    let mut out = Vec::with_capacity(cfg.samples * d);
    for &r in &starts {
        let e = &x[r * d..(r + 1) * d];
        let nb = &x[neighbour(r) * d..(neighbour(r) + 1) * d];
        for f in 0..d {
            let mut v = e[f];
            if rng.uniform() < cfg.swap {
                if categorical[f] {
                    v = nb[f];
                } else {
                    let sd = (e[f] - nb[f]).abs() / cfg.spread;
                    v = (nb[f] + sd * rng.normal()).clamp(lo[f], hi[f]);
                }
            }
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stay_in_range_and_categories_stay_categories() {
        let mut rng = Rng::new(7);
        let (n, d) = (300, 3);
        let mut x = Vec::new();
        for i in 0..n {
            x.push(rng.uniform_range(-2.0, 3.0)); // continuous
            x.push((i % 4) as f32); // categorical: 0, 1, 2, 3
            x.push(if i % 2 == 0 { -1.5 } else { 0.5 }); // categorical: two values
        }
        let cat = categorical_columns(&x, n, d);
        assert_eq!(cat, vec![false, true, true]);
        let cfg = MungeConfig {
            samples: 2000,
            swap: 0.5,
            spread: 1.0,
        };
        let s = munge(&x, n, d, &cfg, &cat, &mut Rng::new(1));
        assert_eq!(s.len(), 2000 * d);
        let mut moved = 0;
        for row in s.chunks_exact(d) {
            assert!((-2.0..=3.0).contains(&row[0]), "{row:?}");
            assert!([0.0, 1.0, 2.0, 3.0].contains(&row[1]), "{row:?}");
            assert!([-1.5, 0.5].contains(&row[2]), "{row:?}");
            moved += usize::from(!x.chunks_exact(d).any(|t| t[0] == row[0]));
        }
        // Continuous values are new values, not copies of training rows.
        assert!(moved > 500, "{moved}");
        // Reproducible.
        assert_eq!(s, munge(&x, n, d, &cfg, &cat, &mut Rng::new(1)));
    }
}
