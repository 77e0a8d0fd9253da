//! Data: readers for IDX and CSV files and the embedded digits, normalisation, splits,
//! shards and mini-batches.

pub mod augment;
pub mod csv;
pub mod idx;
pub mod munge;
pub mod rows;
pub mod settings;
pub mod text;
pub mod wordpiece;
pub use rows::Rows;
pub use settings::{DataConfig, DataFormat};

use crate::error::Result;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Class labels; cross-entropy and accuracy.
    Classification,
    /// A numeric target; MSE and MAE.
    Regression,
}

/// The class index of a sample whose label is missing: the label term of the objective skips
/// it (soft-target terms still read it), scores leave it out.
pub use crate::losses::supervised::MISSING;

/// Targets of a data set.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Class indices into `names`.
    Classes {
        /// One class index per sample.
        labels: Vec<u32>,
        /// Class names, index = class id (the saved label mapping).
        names: Vec<String>,
    },
    /// Regression values.
    Values(Vec<f32>),
}

impl Targets {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes { labels, .. } => labels.len(),
            Targets::Values(v) => v.len(),
        }
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The task these targets define.
    pub fn task(&self) -> Task {
        match self {
            Targets::Classes { .. } => Task::Classification,
            Targets::Values(_) => Task::Regression,
        }
    }

    fn subset(&self, idx: &[usize]) -> Targets {
        match self {
            Targets::Classes { labels, names } => Targets::Classes {
                labels: idx.iter().map(|&i| labels[i]).collect(),
                names: names.clone(),
            },
            Targets::Values(v) => Targets::Values(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// A data set: `n` samples of `dim` f32 features each, row-major, held in memory or mapped from
/// a file ([`Rows`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Features, `n * dim` values.
    pub x: Rows,
    /// Per-sample shape: `[dim]` for tabular data, `[c, h, w]` for images.
    pub shape: Vec<usize>,
    /// Targets.
    pub targets: Targets,
    /// The raw texts, one per sample, when the data are text (`x` then holds token ids);
    /// empty otherwise.
    pub text: Vec<String>,
    /// Each sample's row in the file it came from (0-based), so that outputs computed
    /// elsewhere, one row per sample of the file, can be matched to the splits.
    pub rows: Vec<usize>,
    /// The feature columns' names (CSV headers), when the file has them; empty otherwise.
    pub features: Vec<String>,
    /// Further target columns of the same samples (`data.targets`), for multi-task models.
    pub extra: Vec<ExtraTargets>,
}

/// The targets of one further target column.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraTargets {
    /// The column's name.
    pub name: String,
    /// Its targets (classification: [`MISSING`] where a cell was empty).
    pub targets: Targets,
}

impl Dataset {
    /// A data set of `n = targets.len()` samples read in file order.
    pub fn new(x: Vec<f32>, shape: Vec<usize>, targets: Targets) -> Dataset {
        Self::from_rows(x.into(), shape, targets)
    }

    /// A data set over rows that may be mapped from a file: training reads them batch by
    /// batch, never copying them whole.
    pub fn from_rows(x: Rows, shape: Vec<usize>, targets: Targets) -> Dataset {
        let n = targets.len();
        Dataset {
            x,
            shape,
            targets,
            text: Vec::new(),
            rows: (0..n).collect(),
            features: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Features per sample.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of model outputs: classes, or 1 for regression.
    pub fn outputs(&self) -> usize {
        match &self.targets {
            Targets::Classes { names, .. } => names.len(),
            Targets::Values(_) => 1,
        }
    }

    /// Image shape `(c, h, w)` if the samples are images.
    pub fn image_shape(&self) -> Option<(usize, usize, usize)> {
        match self.shape.as_slice() {
            [c, h, w] => Some((*c, *h, *w)),
            _ => None,
        }
    }

    /// A new data set holding the samples at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let d = self.dim();
        let mut x = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            x.extend_from_slice(&self.x[i * d..(i + 1) * d]);
        }
        Dataset {
            x: x.into(),
            shape: self.shape.clone(),
            targets: self.targets.subset(idx),
            text: if self.text.is_empty() {
                Vec::new()
            } else {
                idx.iter().map(|&i| self.text[i].clone()).collect()
            },
            rows: idx.iter().map(|&i| self.rows[i]).collect(),
            features: self.features.clone(),
            extra: self
                .extra
                .iter()
                .map(|e| ExtraTargets {
                    name: e.name.clone(),
                    targets: e.targets.subset(idx),
                })
                .collect(),
        }
    }

    /// Class labels, if classification.
    pub fn labels(&self) -> Option<&[u32]> {
        match &self.targets {
            Targets::Classes { labels, .. } => Some(labels),
            Targets::Values(_) => None,
        }
    }

    /// Keeps the labels of `per_class` samples of each class (a class with fewer keeps all
    /// of its), drawn by `rng`; every other label becomes [`MISSING`]. Returns how many
    /// labels were kept.
    pub fn keep_labels_per_class(&mut self, per_class: usize, rng: &mut Rng) -> usize {
        let Targets::Classes { labels, names } = &mut self.targets else {
            return 0;
        };
        let mut kept = vec![0usize; names.len()];
        let mut keep = vec![false; labels.len()];
        for i in rng.permutation(labels.len()) {
            let c = labels[i];
            if c != MISSING && kept[c as usize] < per_class {
                kept[c as usize] += 1;
                keep[i] = true;
            }
        }
        for (l, k) in labels.iter_mut().zip(keep) {
            if !k {
                *l = MISSING;
            }
        }
        kept.iter().sum()
    }

    /// How many samples have a label (all, for regression).
    pub fn labelled(&self) -> usize {
        match &self.targets {
            Targets::Classes { labels, .. } => labels.iter().filter(|&&l| l != MISSING).count(),
            Targets::Values(v) => v.len(),
        }
    }

    /// Class names, if classification.
    pub fn class_names(&self) -> Option<&[String]> {
        match &self.targets {
            Targets::Classes { names, .. } => Some(names),
            Targets::Values(_) => None,
        }
    }

    /// True when [`Dataset::gather`] with this `jitter` shifts images (and so draws from its
    /// random stream).
    pub fn jitters(&self, jitter: usize) -> bool {
        jitter > 0 && self.image_shape().is_some()
    }

    /// Copies the features of samples `idx` into `out` (cleared first), optionally shifting
    /// each image by a random offset of up to `jitter` pixels in x and y, filling the
    /// uncovered border with `fill` (the normalised value of a blank pixel).
    pub fn gather(
        &self,
        idx: &[usize],
        jitter: usize,
        fill: f32,
        rng: &mut Rng,
        out: &mut Vec<f32>,
    ) {
        let d = self.dim();
        out.clear();
        out.reserve(idx.len() * d);
        match (jitter, self.image_shape()) {
            (j, Some((c, h, w))) if j > 0 => {
                for &i in idx {
                    let src = &self.x[i * d..(i + 1) * d];
                    let dx = rng.shift(j);
                    let dy = rng.shift(j);
                    let start = out.len();
                    out.resize(start + d, fill);
                    let dst = &mut out[start..];
                    for ch in 0..c {
                        for y in 0..h as i64 {
                            let sy = y - dy;
                            if sy < 0 || sy >= h as i64 {
                                continue;
                            }
                            for xx in 0..w as i64 {
                                let sx = xx - dx;
                                if sx < 0 || sx >= w as i64 {
                                    continue;
                                }
                                dst[ch * h * w + y as usize * w + xx as usize] =
                                    src[ch * h * w + sy as usize * w + sx as usize];
                            }
                        }
                    }
                }
            }
            _ => {
                for &i in idx {
                    out.extend_from_slice(&self.x[i * d..(i + 1) * d]);
                }
            }
        }
    }
}

/// How features are scaled before training. The fitted statistics travel with every model
/// file, so a saved model applies the same transformation to raw inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Normalizer {
    /// Leave features as they are.
    None,
    /// One mean and standard deviation for all features (images).
    Global {
        /// Mean over all training features.
        mean: f32,
        /// Standard deviation over all training features.
        std: f32,
    },
    /// One mean and standard deviation per feature (tabular data).
    PerFeature {
        /// Per-feature means.
        mean: Vec<f32>,
        /// Per-feature standard deviations (constant features get 1).
        std: Vec<f32>,
    },
}

impl Normalizer {
    /// Fits a normaliser of `kind` on the training features.
    pub fn fit(kind: NormalizeKind, data: &Dataset) -> Normalizer {
        Self::fit_rows(kind, &data.x, data.dim())
    }

    /// Fits a normaliser of `kind` on rows of `d` features, `x.len() / d` of them.
    pub fn fit_rows(kind: NormalizeKind, x: &[f32], d: usize) -> Normalizer {
        let d = d.max(1);
        let n = (x.len() / d).max(1);
        match kind {
            NormalizeKind::None => Normalizer::None,
            NormalizeKind::Global => {
                let mut s = 0f64;
                let mut s2 = 0f64;
                for &v in x {
                    s += v as f64;
                    s2 += (v as f64) * (v as f64);
                }
                let cnt = x.len().max(1) as f64;
                let mean = s / cnt;
                let var = (s2 / cnt - mean * mean).max(0.0);
                let std = if var.sqrt() > 1e-8 { var.sqrt() } else { 1.0 };
                Normalizer::Global {
                    mean: mean as f32,
                    std: std as f32,
                }
            }
            NormalizeKind::PerFeature => {
                let mut s = vec![0f64; d];
                let mut s2 = vec![0f64; d];
                for row in x.chunks_exact(d) {
                    for (j, &v) in row.iter().enumerate() {
                        s[j] += v as f64;
                        s2[j] += (v as f64) * (v as f64);
                    }
                }
                let mut mean = vec![0f32; d];
                let mut std = vec![1f32; d];
                for j in 0..d {
                    let m = s[j] / n as f64;
                    let var = (s2[j] / n as f64 - m * m).max(0.0);
                    mean[j] = m as f32;
                    std[j] = if var.sqrt() > 1e-8 {
                        var.sqrt() as f32
                    } else {
                        1.0
                    };
                }
                Normalizer::PerFeature { mean, std }
            }
        }
    }

    /// Applies the transformation in place.
    pub fn apply(&self, x: &mut [f32], dim: usize) {
        match self {
            Normalizer::None => {}
            Normalizer::Global { mean, std } => {
                let inv = 1.0 / std;
                for v in x.iter_mut() {
                    *v = (*v - mean) * inv;
                }
            }
            Normalizer::PerFeature { mean, std } => {
                for row in x.chunks_exact_mut(dim) {
                    for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
                        *v = (*v - m) / s;
                    }
                }
            }
        }
    }

    /// The raw value of feature `f` from its normalised value `v`.
    pub fn invert_feature(&self, f: usize, v: f32) -> f32 {
        match self {
            Normalizer::None => v,
            Normalizer::Global { mean, std } => v * std + mean,
            Normalizer::PerFeature { mean, std } => v * std[f] + mean[f],
        }
    }

    /// The inverse of [`Normalizer::apply`]: raw values from normalised ones, in place.
    pub fn invert(&self, x: &mut [f32], dim: usize) {
        match self {
            Normalizer::None => {}
            Normalizer::Global { mean, std } => {
                for v in x.iter_mut() {
                    *v = *v * std + mean;
                }
            }
            Normalizer::PerFeature { mean, std } => {
                for row in x.chunks_exact_mut(dim) {
                    for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
                        *v = *v * s + m;
                    }
                }
            }
        }
    }

    /// The normalised value of a raw 0 (the fill for shifted-in image borders).
    pub fn zero_value(&self) -> f32 {
        match self {
            Normalizer::None => 0.0,
            Normalizer::Global { mean, std } => -mean / std,
            Normalizer::PerFeature { .. } => 0.0,
        }
    }
}

/// Which normaliser to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormalizeKind {
    /// No scaling.
    None,
    /// One mean/std for all features.
    Global,
    /// Mean/std per feature.
    PerFeature,
}

/// Standardisation of a regression target (fitted on the training split); models are trained
/// on the standardised target and their outputs mapped back for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TargetScale {
    /// Mean of the training targets.
    pub mean: f32,
    /// Standard deviation of the training targets.
    pub std: f32,
}

impl TargetScale {
    /// Fits on training targets.
    pub fn fit(v: &[f32]) -> TargetScale {
        let n = v.len().max(1) as f64;
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
        TargetScale {
            mean: m as f32,
            std: if var.sqrt() > 1e-12 {
                var.sqrt() as f32
            } else {
                1.0
            },
        }
    }
    /// Raw → standardised.
    pub fn forward(&self, v: f32) -> f32 {
        (v - self.mean) / self.std
    }
    /// Standardised → raw.
    pub fn inverse(&self, v: f32) -> f32 {
        v * self.std + self.mean
    }
}

/// Data a caller gave in memory instead of files (`data.format = "arrays"`: the Python
/// package's `distill` and `submodels`).
#[derive(Debug, Clone, Default)]
pub struct Arrays {
    /// The samples to split into training, validation and (without `test`) test sets.
    pub data: Option<Dataset>,
    /// A separate test set, used as given.
    pub test: Option<Dataset>,
    /// Teacher outputs by the name `[[teacher]] outputs` gives.
    pub outputs: std::collections::BTreeMap<String, ArrayOutputs>,
}

/// A teacher's outputs given in memory.
#[derive(Debug, Clone)]
pub struct ArrayOutputs {
    /// Values per row.
    pub cols: usize,
    /// One row per sample of [`Arrays::data`].
    pub train: Rows,
    /// One row per sample of [`Arrays::test`], when given.
    pub test: Option<Rows>,
}

/// Feeds `v`'s little-endian bytes to `h` a block at a time (no copy of the whole slice).
pub fn hash_floats(h: &mut sha2::Sha256, v: &[f32]) {
    use sha2::Digest;
    let mut buf = Vec::with_capacity(4 * 4096);
    for c in v.chunks(4096) {
        buf.clear();
        buf.extend(c.iter().flat_map(|x| x.to_le_bytes()));
        h.update(&buf);
    }
}

impl Arrays {
    /// A digest of every value, so that a run folder is never resumed on other arrays.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let floats = hash_floats;
        let mut h = Sha256::new();
        let mut put = |d: &Dataset| {
            h.update(format!("{:?}|", d.shape));
            floats(&mut h, &d.x);
            match &d.targets {
                Targets::Classes { labels, names } => {
                    h.update(format!("{names:?}"));
                    for l in labels {
                        h.update(l.to_le_bytes());
                    }
                }
                Targets::Values(v) => floats(&mut h, v),
            }
            h.update(b"|");
        };
        for d in self.data.iter().chain(self.test.iter()) {
            put(d);
        }
        for (k, o) in &self.outputs {
            h.update(format!("{k}|{}|", o.cols));
            for r in std::iter::once(&o.train).chain(o.test.iter()) {
                floats(&mut h, r);
                h.update(b"|");
            }
        }
        format!("{:x}", h.finalize())
    }
}

/// The three splits of an experiment, normalised, plus what was fitted to produce them.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Training split.
    pub train: Dataset,
    /// Validation split (early stopping, model selection).
    pub val: Dataset,
    /// Test split (reported figures only).
    pub test: Dataset,
    /// Feature normaliser fitted on `train`.
    pub normalizer: Normalizer,
    /// Target scale for regression (fitted on `train`).
    pub target_scale: Option<TargetScale>,
    /// Each further target column's scale (`Dataset::extra`; value columns only).
    pub extra_scales: Vec<Option<TargetScale>>,
    /// Text data: how the texts became the token ids in `x` (model files carry it).
    pub featurizer: Option<text::Featurizer>,
    /// Samples in the data file (the splits' `rows` index into it).
    pub source_rows: usize,
    /// True when the test split is a separate test file (its `rows` index into that file).
    pub test_from_file: bool,
}

impl Splits {
    /// Splits `full` (and an optional separate test set) into train/val/test with a seeded
    /// shuffle, then fits the normaliser on train only and applies it to all three.
    /// Regression targets of all splits are standardised with the training statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn make(
        full: Dataset,
        test: Option<Dataset>,
        val_fraction: f64,
        test_fraction: f64,
        normalize: NormalizeKind,
        max_train: Option<usize>,
        max_test: Option<usize>,
        seed: u64,
    ) -> Result<Splits> {
        let mut rng = Rng::derive(seed, "data-split");
        let perm = rng.permutation(full.len());
        let source_rows = full.len();
        let test_from_file = test.is_some();
        let (test_set, rest_idx): (Dataset, Vec<usize>) = match test {
            Some(t) => (t, perm),
            None => {
                let n_test = ((full.len() as f64) * test_fraction).round() as usize;
                let test_idx = perm[..n_test].to_vec();
                (full.subset(&test_idx), perm[n_test..].to_vec())
            }
        };
        let n_val = ((rest_idx.len() as f64) * val_fraction).round() as usize;
        let val_idx = &rest_idx[..n_val];
        let mut train_idx = rest_idx[n_val..].to_vec();
        if let Some(m) = max_train {
            train_idx.truncate(m);
        }
        let mut val = full.subset(val_idx);
        if let Some(m) = max_test {
            if val.len() > m {
                val = val.subset(&(0..m).collect::<Vec<_>>());
            }
        }
        let mut train = full.subset(&train_idx);
        let mut test_set = test_set;
        if let Some(m) = max_test {
            if test_set.len() > m {
                test_set = test_set.subset(&(0..m).collect::<Vec<_>>());
            }
        }
        if train.is_empty() {
            crate::bad_input!(
                "data: the training split is empty ({} samples in all, val_fraction {val_fraction}, test_fraction {test_fraction})",
                full.len()
            );
        }
        if val.is_empty() {
            crate::bad_input!(
                "data.val_fraction: the validation split is empty ({} samples left after the test split); raise val_fraction or provide more data",
                rest_idx.len()
            );
        }
        if test_set.is_empty() {
            crate::bad_input!(
                "data: the test split is empty; raise test_fraction or provide a test file"
            );
        }
        let normalizer = Normalizer::fit(normalize, &train);
        let d = train.dim();
        normalizer.apply(&mut train.x, d);
        normalizer.apply(&mut val.x, d);
        normalizer.apply(&mut test_set.x, d);
        let target_scale = match &train.targets {
            Targets::Values(v) => {
                let s = TargetScale::fit(v);
                for ds in [&mut train, &mut val, &mut test_set] {
                    if let Targets::Values(v) = &mut ds.targets {
                        for t in v.iter_mut() {
                            *t = s.forward(*t);
                        }
                    }
                }
                Some(s)
            }
            Targets::Classes { .. } => None,
        };
        // Further value columns are standardised as the target is, each with its own training
        // statistics.
        let mut extra_scales = Vec::with_capacity(train.extra.len());
        for k in 0..train.extra.len() {
            let scale = match &train.extra[k].targets {
                Targets::Values(v) => Some(TargetScale::fit(v)),
                Targets::Classes { .. } => None,
            };
            if let Some(s) = scale {
                for ds in [&mut train, &mut val, &mut test_set] {
                    if let Some(Targets::Values(v)) = ds.extra.get_mut(k).map(|e| &mut e.targets) {
                        v.iter_mut().for_each(|t| *t = s.forward(*t));
                    }
                }
            }
            extra_scales.push(scale);
        }
        Ok(Splits {
            train,
            val,
            test: test_set,
            normalizer,
            target_scale,
            extra_scales,
            featurizer: None,
            source_rows,
            test_from_file,
        })
    }
}

/// Disjoint shards of `0..n` for `k` workers, after a seeded shuffle; sizes differ by at most 1.
pub fn shards(n: usize, k: usize, seed: u64) -> Vec<Vec<usize>> {
    let perm = Rng::derive(seed, "shards").permutation(n);
    (0..k)
        .map(|s| perm.iter().copied().skip(s).step_by(k).collect())
        .collect()
}

/// The UCI 8×8 digits (1,797 samples), compiled into the binary so that the demo needs no files.
/// Source: scikit-learn's bundled copy (BSD-3-Clause; UCI data CC BY 4.0); see data/README.md.
pub const EMBEDDED_DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/sklearn/digits.csv.gz");

/// Loads the embedded digits as 1×8×8 images with labels "0".."9".
pub fn embedded_digits() -> Result<Dataset> {
    let opts = csv::CsvOptions {
        label: "digit".into(),
        task: Task::Classification,
        image_shape: Some(vec![1, 8, 8]),
        extra: Vec::new(),
    };
    csv::parse_csv_bytes(
        EMBEDDED_DIGITS_CSV_GZ,
        "<embedded digits.csv.gz>",
        &opts,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        Dataset::new(
            (0..n * 2).map(|v| v as f32).collect(),
            vec![2],
            Targets::Classes {
                labels: (0..n as u32).map(|i| i % 2).collect(),
                names: vec!["a".into(), "b".into()],
            },
        )
    }

    #[test]
    fn splits_are_disjoint_and_normalised_on_train() {
        let s = Splits::make(
            toy(100),
            None,
            0.1,
            0.2,
            NormalizeKind::PerFeature,
            None,
            None,
            1,
        )
        .unwrap();
        assert_eq!(s.test.len(), 20);
        assert_eq!(s.val.len(), 8);
        assert_eq!(s.train.len(), 72);
        // train features have mean ~0 after normalisation
        let m: f32 = s.train.x.iter().step_by(2).sum::<f32>() / 72.0;
        assert!(m.abs() < 1e-4);
    }

    #[test]
    fn shards_partition() {
        let sh = shards(10, 3, 0);
        let mut all: Vec<usize> = sh.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(sh.iter().all(|s| s.len() >= 3));
    }

    #[test]
    fn jitter_shifts_within_bounds() {
        let ds = Dataset::new(
            (0..16).map(|v| v as f32 + 1.0).collect(),
            vec![1, 4, 4],
            Targets::Values(vec![0.0]),
        );
        let mut rng = Rng::new(0);
        let mut out = Vec::new();
        for _ in 0..20 {
            ds.gather(&[0], 1, 0.0, &mut rng, &mut out);
            assert_eq!(out.len(), 16);
            // a shift of at most one pixel keeps the centre 2x2 block's values from the source
            let nonzero = out.iter().filter(|&&v| v != 0.0).count();
            assert!(nonzero >= 9);
        }
    }

    #[test]
    fn embedded_digits_load() {
        let d = embedded_digits().unwrap();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.shape, vec![1, 8, 8]);
        assert_eq!(d.outputs(), 10);
    }
}
