//! Augmentation of training batches (`train.augment = { … }`): applied to each batch after it is
//! gathered, from the run's seeded batch stream (so a seed gives the same views, and a run
//! resumed from an epoch checkpoint draws the same ones), before the student *and* a live
//! teacher see it — the teacher is run on the very view the student learns from (Beyer et al.,
//! CVPR 2022, "Knowledge distillation: A good teacher is patient and consistent").
//!
//! - images (`[c, h, w]`): `shift` (up to k pixels in x and y, the border filled with the blank
//!   value), `flip` (left-right, probability ½; opt-in, it is wrong for digits and text),
//!   `erase` (random erasing, Zhong et al. 2020: with this probability one rectangle of 2–33% of
//!   the image, aspect 0.3–3.3, set to the blank value), `cutmix` (Yun et al. 2019);
//! - sequences and signals (a CSV row read as a sequence): `shift` (positions), `scale`;
//! - every non-text input: `noise` (Gaussian, in normalised units), `scale` (each sample
//!   multiplied by a factor in [1 − s, 1 + s]), `mixup` (Zhang et al. 2018).
//! - texts (token ids): `mask`, `ngram` and `replace` (Tang et al. 2019; a token replaced by one
//!   of its nearest tokens in a teacher's embedding table, [`Neighbours`]).
//!
//! Mixup and CutMix draw one λ ~ Beta(α, α) per batch and pair every sample with another of the
//! batch (a random permutation); the inputs are mixed, the label term weighs both labels by λ
//! and 1 − λ ([`Mix`]), regression targets are mixed as the inputs are. With both set, each batch
//! takes one of the two, chosen at random (as timm does).

use crate::error::{bad_field, Result};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// The `train.augment` table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Shift by up to this many pixels (images, in x and y) or positions (sequences).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub shift: usize,
    /// Images: mirror left-right with probability ½.
    #[serde(default, skip_serializing_if = "is_false")]
    pub flip: bool,
    /// Images: the probability of erasing one random rectangle of a sample.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub erase: f32,
    /// Multiply each sample by a factor drawn uniformly from [1 − scale, 1 + scale].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scale: f32,
    /// Add Gaussian noise of this standard deviation (normalised units) to every feature.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub noise: f32,
    /// Mixup's α (λ ~ Beta(α, α)); 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mixup: f32,
    /// CutMix's α (images); 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cutmix: f32,
    /// Texts: each token removed with this probability (Tang et al. 2019's masking; a bag of
    /// embeddings reads a `[MASK]` as nothing); a text keeps at least one token.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mask: f32,
    /// Texts: the probability of replacing a text by one of its n-grams (n drawn from 1 to 5,
    /// the window from the text's tokens; Tang et al. 2019's n-gram sampling).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ngram: f32,
    /// Texts: each token replaced with this probability by one of its nearest tokens (cosine)
    /// in the embedding table of `replace_from` (Tang et al. 2019's word replacement, the
    /// neighbours taken from a teacher's table rather than a part-of-speech lexicon).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replace: f32,
    /// The model or teacher whose token table gives the neighbours: an `embedding-bag`
    /// `[[model]]` over the run's featurizer, or a BERT `[[teacher]]` whose tokenizer is the
    /// data's (its word-embedding table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_from: Option<String>,
    /// The neighbours themselves, filled in by the stage that trains the model.
    #[serde(skip)]
    pub neighbours: Option<std::sync::Arc<Neighbours>>,
}

/// Each token's nearest tokens in an embedding table: `k` ids per token of the vocabulary
/// (a token with none — absent from the training texts, or a special token — maps to itself).
#[derive(Clone, PartialEq)]
pub struct Neighbours {
    /// Neighbours per token.
    pub k: usize,
    /// `vocab × k` token ids.
    pub ids: Vec<u32>,
}

impl std::fmt::Debug for Neighbours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Neighbours({} tokens × {})",
            self.ids.len() / self.k.max(1),
            self.k
        )
    }
}

impl Neighbours {
    /// The `k` nearest tokens (cosine) of every token in `used`, among `used`, from the
    /// `vocab × dim` table `table`; other tokens keep themselves.
    pub fn nearest(table: &[f32], dim: usize, used: &[u32], k: usize) -> Neighbours {
        let vocab = table.len() / dim.max(1);
        let mut ids: Vec<u32> = (0..vocab as u32)
            .flat_map(|t| std::iter::repeat_n(t, k))
            .collect();
        // Unit rows of the used tokens, then their similarities block by block.
        let unit: Vec<f32> = used
            .iter()
            .flat_map(|&t| {
                let r = &table[t as usize * dim..(t as usize + 1) * dim];
                let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                r.iter().map(move |v| v / n)
            })
            .collect();
        let m = used.len();
        let block = 256;
        let mut sims = vec![0f32; block * m];
        for b0 in (0..m).step_by(block) {
            let rows = block.min(m - b0);
            crate::kernels::gemm::matmul(
                &mut sims[..rows * m],
                rows,
                m,
                dim,
                false,
                &unit[b0 * dim..(b0 + rows) * dim],
                dim,
                1,
                &unit,
                1,
                dim,
            );
            for r in 0..rows {
                let s = &sims[r * m..(r + 1) * m];
                let me = b0 + r;
                let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
                for (j, &v) in s.iter().enumerate() {
                    if j == me {
                        continue;
                    }
                    if best.len() < k || v > best[best.len() - 1].0 {
                        let at = best.partition_point(|&(b, _)| b >= v);
                        best.insert(at, (v, j));
                        best.truncate(k);
                    }
                }
                let t = used[me] as usize;
                for (slot, &(_, j)) in best.iter().enumerate() {
                    ids[t * k + slot] = used[j];
                }
            }
        }
        Neighbours { k, ids }
    }
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}
fn is_zero_usize(v: &usize) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// What the data are, for the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// `[c, h, w]` images.
    Images,
    /// Rows of numbers: tables, or sequences and signals.
    Rows,
    /// Token ids of texts.
    Tokens,
    /// Regression targets (rows of numbers).
    RegressionRows,
}

/// How a batch's samples were mixed: sample i is `λ·x_i + (1 − λ)·x_partner(i)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// Each sample's partner, an index into the batch.
    pub partner: Vec<usize>,
    /// The weight of the sample's own input and label.
    pub lambda: f32,
}

impl InputKind {
    /// The kind of a run's data.
    pub fn of(images: bool, text: bool) -> InputKind {
        match (images, text) {
            (_, true) => InputKind::Tokens,
            (true, false) => InputKind::Images,
            (false, false) => InputKind::Rows,
        }
    }
}

impl AugmentConfig {
    /// Whether the table changes anything.
    pub fn is_active(&self) -> bool {
        *self != AugmentConfig::default()
    }

    /// Checks the values and that each augmentation fits the data (`p`: the table's path).
    pub fn check(&self, p: &str, kind: InputKind) -> Result<()> {
        if !self.is_active() {
            return Ok(());
        }
        for (name, v) in [
            ("mask", self.mask),
            ("ngram", self.ngram),
            ("replace", self.replace),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                bad_field(
                    &format!("{p}.{name}"),
                    &format!("expected a number in [0, 1], got {v}"),
                )?;
            }
            if v > 0.0 && kind != InputKind::Tokens {
                bad_field(
                    &format!("{p}.{name}"),
                    "works on texts (token ids); these data are not texts",
                )?;
            }
        }
        match (self.replace > 0.0, &self.replace_from) {
            (true, None) => bad_field(
                &format!("{p}.replace_from"),
                "replace needs the model or teacher whose token table gives each token's neighbours (replace_from = \"teacher\")",
            )?,
            (false, Some(_)) => bad_field(
                &format!("{p}.replace_from"),
                "set replace (the probability of replacing a token) too, or remove replace_from",
            )?,
            _ => {}
        }
        if kind == InputKind::Tokens {
            let others = AugmentConfig {
                mask: 0.0,
                ngram: 0.0,
                replace: 0.0,
                replace_from: None,
                neighbours: None,
                ..self.clone()
            };
            if others.is_active() {
                return bad_field(
                    p,
                    "texts (token ids) take mask, ngram and replace only (shifts, noise and mixing do not apply to ids)",
                );
            }
            return Ok(());
        }
        for (name, v, max) in [
            ("erase", self.erase, 1.0),
            ("scale", self.scale, 1.0),
            ("noise", self.noise, f32::INFINITY),
            ("mixup", self.mixup, f32::INFINITY),
            ("cutmix", self.cutmix, f32::INFINITY),
        ] {
            if !(v.is_finite() && v >= 0.0 && v <= max) {
                bad_field(
                    &format!("{p}.{name}"),
                    &format!(
                        "expected a number in {}, got {v}",
                        if max.is_finite() {
                            "[0, 1]"
                        } else {
                            "[0, ∞)"
                        }
                    ),
                )?;
            }
        }
        if self.scale >= 1.0 {
            bad_field(
                &format!("{p}.scale"),
                "must be below 1 (a factor in [1 − scale, 1 + scale])",
            )?;
        }
        if kind != InputKind::Images {
            for (name, on) in [
                ("flip", self.flip),
                ("erase", self.erase > 0.0),
                ("cutmix", self.cutmix > 0.0),
            ] {
                if on {
                    bad_field(
                        &format!("{p}.{name}"),
                        "works on images ([c, h, w]); these data are rows of numbers (set data.image_shape if they are images)",
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Augments a gathered batch in place: `x` holds `b` samples of `shape` (`[c, h, w]` for
    /// images), `fill` is the normalised blank value. Returns the mixing, if the batch was
    /// mixed. The shift of images is done by the gather (`Dataset::gather`'s jitter), not here.
    pub fn apply(&self, x: &mut [f32], shape: &[usize], fill: f32, rng: &mut Rng) -> Option<Mix> {
        let d: usize = shape.iter().product();
        if d == 0 || x.is_empty() {
            return None;
        }
        if self.mask > 0.0 || self.ngram > 0.0 || self.replace > 0.0 {
            for row in x.chunks_exact_mut(d) {
                self.tokens(row, rng);
            }
            return None;
        }
        let b = x.len() / d;
        let image = match shape {
            [c, h, w] => Some((*c, *h, *w)),
            _ => None,
        };
        for row in x.chunks_exact_mut(d) {
            if image.is_none() && self.shift > 0 {
                shift_row(row, rng.shift(self.shift), fill);
            }
            if let (Some((c, h, w)), true) = (image, self.flip) {
                if rng.uniform() < 0.5 {
                    for ch in 0..c {
                        for y in 0..h {
                            row[(ch * h + y) * w..(ch * h + y + 1) * w].reverse();
                        }
                    }
                }
            }
            if self.scale > 0.0 {
                let f = rng.uniform_range(1.0 - self.scale, 1.0 + self.scale);
                row.iter_mut().for_each(|v| *v = fill + (*v - fill) * f);
            }
            if self.noise > 0.0 {
                row.iter_mut().for_each(|v| *v += self.noise * rng.normal());
            }
            if let (Some((c, h, w)), true) = (image, self.erase > 0.0) {
                if rng.uniform() < self.erase {
                    let area = rng.uniform_range(0.02, 0.33) * (h * w) as f32;
                    let aspect = rng.uniform_range(0.3f32.ln(), (1.0f32 / 0.3).ln()).exp();
                    let eh = ((area * aspect).sqrt().round() as usize).clamp(1, h);
                    let ew = ((area / aspect).sqrt().round() as usize).clamp(1, w);
                    let y0 = rng.below(h - eh + 1);
                    let x0 = rng.below(w - ew + 1);
                    for ch in 0..c {
                        for y in y0..y0 + eh {
                            let at = (ch * h + y) * w;
                            row[at + x0..at + x0 + ew].fill(fill);
                        }
                    }
                }
            }
        }
        let use_cutmix = match (self.mixup > 0.0, self.cutmix > 0.0 && image.is_some()) {
            (false, false) => return None,
            (true, false) => false,
            (false, true) => true,
            (true, true) => rng.uniform() < 0.5,
        };
        if b < 2 {
            return None;
        }
        let alpha = if use_cutmix { self.cutmix } else { self.mixup };
        let mut lambda = rng.beta(alpha, alpha);
        let mut partner: Vec<usize> = (0..b).collect();
        rng.shuffle(&mut partner);
        let src = x.to_vec();
        if let (true, Some((c, h, w))) = (use_cutmix, image) {
            // A box of area (1 − λ) from the partner; λ is then the area actually kept.
            let r = (1.0 - lambda).sqrt();
            let bh = ((h as f32 * r).round() as usize).min(h);
            let bw = ((w as f32 * r).round() as usize).min(w);
            let cy = rng.below(h);
            let cx = rng.below(w);
            let y0 = cy.saturating_sub(bh / 2);
            let y1 = (y0 + bh).min(h);
            let x0 = cx.saturating_sub(bw / 2);
            let x1 = (x0 + bw).min(w);
            for (i, row) in x.chunks_exact_mut(d).enumerate() {
                let other = &src[partner[i] * d..(partner[i] + 1) * d];
                for ch in 0..c {
                    for y in y0..y1 {
                        let at = (ch * h + y) * w;
                        row[at + x0..at + x1].copy_from_slice(&other[at + x0..at + x1]);
                    }
                }
            }
            lambda = 1.0 - ((y1 - y0) * (x1 - x0)) as f32 / (h * w) as f32;
        } else {
            for (i, row) in x.chunks_exact_mut(d).enumerate() {
                let other = &src[partner[i] * d..(partner[i] + 1) * d];
                for (v, o) in row.iter_mut().zip(other) {
                    *v = lambda * *v + (1.0 - lambda) * o;
                }
            }
        }
        Some(Mix { partner, lambda })
    }
}

impl AugmentConfig {
    /// One text's row (token ids, then `text::PAD`), augmented in place: an n-gram of it kept
    /// with probability `ngram`, then each token removed with probability `mask` (at least one
    /// kept); the ids left move to the front, padding after them.
    fn tokens(&self, row: &mut [f32], rng: &mut Rng) {
        let pad = super::text::PAD;
        let mut ids: Vec<f32> = row.iter().copied().filter(|&v| v != pad).collect();
        if ids.is_empty() {
            return;
        }
        if self.ngram > 0.0 && rng.uniform() < self.ngram && ids.len() > 1 {
            let n = 1 + rng.below(ids.len().min(5));
            let start = rng.below(ids.len() - n + 1);
            ids = ids[start..start + n].to_vec();
        }
        if self.mask > 0.0 {
            let keep: Vec<bool> = ids.iter().map(|_| rng.uniform() >= self.mask).collect();
            if keep.iter().any(|&k| k) {
                ids = ids
                    .iter()
                    .zip(&keep)
                    .filter(|(_, &k)| k)
                    .map(|(&v, _)| v)
                    .collect();
            } else {
                ids = vec![ids[rng.below(ids.len())]];
            }
        }
        if self.replace > 0.0 {
            if let Some(nb) = &self.neighbours {
                for v in ids.iter_mut() {
                    if rng.uniform() < self.replace {
                        let t = *v as usize;
                        if t * nb.k < nb.ids.len() && nb.k > 0 {
                            *v = nb.ids[t * nb.k + rng.below(nb.k)] as f32;
                        }
                    }
                }
            }
        }
        row.fill(pad);
        row[..ids.len()].copy_from_slice(&ids);
    }
}

/// Shifts a sequence by `k` positions (right for k > 0), filling the uncovered end with `fill`.
fn shift_row(row: &mut [f32], k: i64, fill: f32) {
    let n = row.len() as i64;
    if k == 0 || n == 0 {
        return;
    }
    if k.abs() >= n {
        row.fill(fill);
    } else if k > 0 {
        row.copy_within(0..(n - k) as usize, k as usize);
        row[..k as usize].fill(fill);
    } else {
        let k = (-k) as usize;
        row.copy_within(k.., 0);
        let len = row.len();
        row[len - k..].fill(fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_views() {
        let a = AugmentConfig {
            shift: 2,
            scale: 0.2,
            noise: 0.1,
            mixup: 0.4,
            ..Default::default()
        };
        let x: Vec<f32> = (0..40).map(|i| i as f32).collect();
        let run = |seed| {
            let mut v = x.clone();
            let m = a.apply(&mut v, &[10], 0.0, &mut Rng::new(seed));
            (v, m)
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1).0, run(2).0);
    }

    #[test]
    fn mixup_mixes_inputs_by_lambda_with_the_partner() {
        let a = AugmentConfig {
            mixup: 1.0,
            ..Default::default()
        };
        let x = vec![1.0, 2.0, 10.0, 20.0, 100.0, 200.0];
        let mut v = x.clone();
        let m = a.apply(&mut v, &[2], 0.0, &mut Rng::new(5)).unwrap();
        assert!((0.0..=1.0).contains(&m.lambda));
        for i in 0..3 {
            for j in 0..2 {
                let want = m.lambda * x[i * 2 + j] + (1.0 - m.lambda) * x[m.partner[i] * 2 + j];
                assert!((v[i * 2 + j] - want).abs() < 1e-5);
            }
        }
        let mut p = m.partner.clone();
        p.sort();
        assert_eq!(p, vec![0, 1, 2]);
    }

    #[test]
    fn cutmix_keeps_lambda_as_the_area_it_keeps() {
        let a = AugmentConfig {
            cutmix: 1.0,
            ..Default::default()
        };
        // Two 1×4×4 images, all 0 and all 1.
        let mut v: Vec<f32> = [0.0f32; 16]
            .iter()
            .chain([1.0f32; 16].iter())
            .copied()
            .collect();
        for seed in 0..20 {
            let mut w = v.clone();
            let Some(m) = a.apply(&mut w, &[1, 4, 4], 0.0, &mut Rng::new(seed)) else {
                panic!("two samples are mixed");
            };
            for i in 0..2 {
                let own = if i == 0 { 0.0 } else { 1.0 };
                let kept = w[i * 16..(i + 1) * 16]
                    .iter()
                    .filter(|&&p| p == own)
                    .count();
                if m.partner[i] != i {
                    assert_eq!(kept as f32 / 16.0, m.lambda, "seed {seed}");
                }
            }
        }
        v.clear();
    }

    #[test]
    fn a_sequence_shifts_and_fills() {
        let mut r = vec![1.0, 2.0, 3.0, 4.0];
        shift_row(&mut r, 1, 0.0);
        assert_eq!(r, vec![0.0, 1.0, 2.0, 3.0]);
        shift_row(&mut r, -2, 9.0);
        assert_eq!(r, vec![2.0, 3.0, 9.0, 9.0]);
    }

    #[test]
    fn each_augmentation_is_refused_on_data_it_does_not_fit() {
        let flip = AugmentConfig {
            flip: true,
            ..Default::default()
        };
        let e = flip
            .check("model.s.train.augment", InputKind::Rows)
            .unwrap_err();
        assert!(e.to_string().contains("model.s.train.augment.flip"), "{e}");
        assert!(flip.check("a", InputKind::Images).is_ok());
        let noise = AugmentConfig {
            noise: 0.1,
            ..Default::default()
        };
        assert!(noise.check("a", InputKind::Tokens).is_err());
        let mask = AugmentConfig {
            mask: 0.1,
            ..Default::default()
        };
        assert!(mask.check("a", InputKind::Tokens).is_ok());
        let e = mask.check("m", InputKind::Images).unwrap_err().to_string();
        assert!(e.contains("m.mask") && e.contains("texts"), "{e}");
        let bad = AugmentConfig {
            erase: 1.5,
            ..Default::default()
        };
        assert!(bad.check("a", InputKind::Images).is_err());
    }

    /// Tang et al.'s masking and n-gram sampling on token rows: seeded; the ids left are the
    /// text's own, in order (an n-gram is one contiguous window of 1 to 5 of them), at the
    /// front with padding after them, never none; masking removes about its rate of the tokens.
    #[test]
    fn token_views_keep_the_texts_ids_in_order() {
        let pad = crate::data::text::PAD;
        let row: Vec<f32> = (10..30).map(|v| v as f32).chain([pad; 4]).collect();
        let x: Vec<f32> = (0..200).flat_map(|_| row.clone()).collect();
        let run = |a: &AugmentConfig, seed| {
            let mut v = x.clone();
            assert!(a.apply(&mut v, &[24], 0.0, &mut Rng::new(seed)).is_none());
            v
        };
        let ngram = AugmentConfig {
            ngram: 1.0,
            ..Default::default()
        };
        assert_eq!(run(&ngram, 4), run(&ngram, 4));
        assert_ne!(run(&ngram, 4), run(&ngram, 5));
        for r in run(&ngram, 4).chunks(24) {
            let ids: Vec<f32> = r.iter().copied().take_while(|&v| v != pad).collect();
            assert!((1..=5).contains(&ids.len()), "{r:?}");
            assert!(r[ids.len()..].iter().all(|&v| v == pad));
            assert!(
                ids.windows(2).all(|w| w[1] == w[0] + 1.0),
                "contiguous: {ids:?}"
            );
        }
        let mask = AugmentConfig {
            mask: 0.25,
            ..Default::default()
        };
        let kept: usize = run(&mask, 7)
            .chunks(24)
            .map(|r| {
                let ids: Vec<f32> = r.iter().copied().take_while(|&v| v != pad).collect();
                assert!(!ids.is_empty() && ids.windows(2).all(|w| w[1] > w[0]));
                ids.len()
            })
            .sum();
        let rate = 1.0 - kept as f32 / (200.0 * 20.0);
        assert!((rate - 0.25).abs() < 0.03, "removed {rate}");
    }

    /// Token replacement: each token's neighbours are its nearest tokens by cosine among the
    /// used ones (a hand-built table: tokens 1 and 2 point nearly along x, 3 and 4 along y, 0
    /// is unused), and a replaced token takes one of them, at the given rate.
    #[test]
    fn replaced_tokens_take_their_nearest_neighbours() {
        let table = [
            9.0, 9.0, // 0: unused, would be everyone's neighbour
            1.0, 0.1, // 1
            2.0, 0.3, // 2
            0.1, 1.0, // 3
            0.2, 3.0, // 4
            -1.0, 0.0, // 5
        ];
        let nb = Neighbours::nearest(&table, 2, &[1, 2, 3, 4, 5], 1);
        assert_eq!(nb.ids, vec![0, 2, 1, 4, 3, 4]);
        let nb = Neighbours::nearest(&table, 2, &[1, 2, 3, 4], 2);
        assert_eq!(&nb.ids[2..10], &[2, 3, 1, 3, 4, 2, 3, 2]);
        assert_eq!(&nb.ids[0..2], &[0, 0], "an unused token keeps itself");
        let pad = crate::data::text::PAD;
        let a = AugmentConfig {
            replace: 0.3,
            replace_from: Some("t".into()),
            neighbours: Some(std::sync::Arc::new(Neighbours::nearest(
                &table,
                2,
                &[1, 2, 3, 4],
                1,
            ))),
            ..Default::default()
        };
        let row = [1.0, 3.0, 1.0, 4.0, pad, pad];
        let mut x: Vec<f32> = (0..500).flat_map(|_| row).collect();
        assert!(a.apply(&mut x, &[6], 0.0, &mut Rng::new(3)).is_none());
        let mut changed = 0;
        for r in x.chunks(6) {
            assert_eq!(&r[4..], &[pad, pad], "the text keeps its length");
            for (&v, &was) in r.iter().zip(&row).take(4) {
                let near = [0.0, 2.0, 0.0, 4.0, 3.0][was as usize];
                assert!(v == was || v == near, "{was} became {v}");
                changed += (v != was) as usize;
            }
        }
        let rate = changed as f32 / 2000.0;
        assert!((rate - 0.3).abs() < 0.04, "replaced {rate}");
    }
}
