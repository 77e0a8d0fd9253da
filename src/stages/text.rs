//! Text students: a static-embedding student started from its teacher, in the manner of
//! Model2Vec (Tulkens & van Dongen 2024): every vocabulary token is run through the teacher on
//! its own (`[CLS] token [SEP]`, pooled as the teacher pools sentences), the token embeddings
//! are reduced by PCA to the student's width, and each token's row is weighted by
//! `a / (a + p(token))` with `p` its frequency in the training texts (SIF weighting, Arora et
//! al. 2017), so that frequent tokens weigh less in the mean. Training by distillation then
//! goes on from there.

use crate::error::{Error, Result};
use crate::models::{ArchKind, Model, ParamKind};
use crate::store::RunStore;
use crate::teachers::cache;

/// SIF coefficient `a` (Model2Vec's default).
const SIF_A: f64 = 1e-4;

/// Initialises `model`'s embedding table (and, for an embedding student with no hidden layer,
/// its output layer) from teacher `teacher`'s token embeddings.
pub fn init_from_teacher(model: &Model, teacher: &str, name: &str, store: &RunStore) -> Result<()> {
    let enc = store
        .known(teacher)
        .and_then(|k| k.encoder.clone())
        .ok_or_else(|| {
            Error::Input(format!(
                "model.{name}.distill.init_from_teacher: '{teacher}' is not a bert teacher"
            ))
        })?;
    if model.spec.arch.kind != ArchKind::EmbeddingBag {
        return Err(Error::Input(format!(
            "model.{name}.distill.init_from_teacher: only for kind = \"embedding-bag\" students"
        )));
    }
    let vocab = model.spec.arch.vocab;
    match &store.splits.featurizer {
        Some(crate::data::text::Featurizer::Tokenizer { .. }) if vocab <= enc.vocab => {}
        _ => {
            return Err(Error::Input(format!(
                "model.{name}.distill.init_from_teacher: the data's features must be the teacher's tokenizer (data.features = {{ kind = \"tokenizer\", path = \"{}/tokenizer.json\" }})",
                enc.dir.display()
            )))
        }
    }
    let dim = model.spec.arch.dim;
    let hidden = enc.hidden;
    if dim > hidden {
        return Err(Error::Input(format!(
            "model.{name}.arch.dim: {dim} is wider than the teacher's {hidden}-dim embeddings; PCA can only reduce"
        )));
    }
    let (open, close) = enc.specials()?;
    let key = cache::key(&enc.digest, "token-embeddings", std::iter::once(&b""[..]));
    store.progress.say(&format!(
        "{name}: embedding the {vocab} vocabulary tokens with {teacher} (Model2Vec initialisation)"
    ));
    let (tok, _) = cache::rows(
        &store.cache_dir(),
        &key,
        vocab,
        hidden,
        4096,
        &format!("{teacher} tokens"),
        store.progress,
        |r| {
            let ids: Vec<Vec<u32>> = r
                .map(|t| {
                    let mut v = Vec::with_capacity(3);
                    v.extend(open);
                    v.push(t as u32);
                    v.extend(close);
                    v
                })
                .collect();
            let mut out = Vec::with_capacity(ids.len() * hidden);
            for chunk in ids.chunks(512) {
                out.extend(enc.embed_ids(chunk)?);
            }
            Ok(out)
        },
    )?;
    let (mean, comps) = pca(&tok, hidden, dim);
    // Token frequencies in the training texts.
    let mut counts = vec![0u64; vocab];
    let mut total = 0u64;
    for &id in store.splits.train.x.iter() {
        if id >= 0.0 {
            counts[(id as usize).min(vocab - 1)] += 1;
            total += 1;
        }
    }
    let mut table = vec![0f32; vocab * dim];
    for t in 0..vocab {
        let row = &tok[t * hidden..(t + 1) * hidden];
        let p = counts[t] as f64 / total.max(1) as f64;
        let w = SIF_A / (SIF_A + p);
        for k in 0..dim {
            let c = &comps[k * hidden..(k + 1) * hidden];
            let z: f64 = row
                .iter()
                .zip(c)
                .zip(&mean)
                .map(|((&x, &ck), &m)| (x as f64 - m) * ck)
                .sum();
            table[t * dim + k] = (z * w) as f32;
        }
    }
    let mut weights = model.weights()?;
    let kinds = model.param_kinds();
    let e = kinds
        .iter()
        .position(|k| *k == ParamKind::Embedding)
        .ok_or_else(|| Error::Other("no embedding table".into()))?;
    weights[e] = table;
    // An embedding student without hidden layers maps the PCA space back to the teacher's.
    if model.spec.arch.hidden.is_empty() && model.spec.outputs == hidden {
        let mut w = vec![0f32; dim * hidden];
        for k in 0..dim {
            for j in 0..hidden {
                w[k * hidden + j] = comps[k * hidden + j] as f32;
            }
        }
        weights[e + 1] = w;
        weights[e + 2] = mean.iter().map(|&m| m as f32).collect();
    }
    model.set_weights(&weights)
}

/// The mean of the rows of `x` (`cols` each) and the `k` leading principal directions
/// (unit vectors, row-major `k × cols`), by a Jacobi eigendecomposition of the covariance.
pub fn pca(x: &[f32], cols: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / cols.max(1);
    let mut mean = vec![0f64; cols];
    for row in x.chunks_exact(cols) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let mut cov = vec![0f64; cols * cols];
    let mut c = vec![0f64; cols];
    for row in x.chunks_exact(cols) {
        for (ci, (&v, &m)) in c.iter_mut().zip(row.iter().zip(&mean)) {
            *ci = v as f64 - m;
        }
        for i in 0..cols {
            let ci = c[i];
            for j in i..cols {
                cov[i * cols + j] += ci * c[j];
            }
        }
    }
    for i in 0..cols {
        for j in 0..i {
            cov[i * cols + j] = cov[j * cols + i];
        }
    }
    let (vals, vecs) = jacobi_eigen(cov, cols);
    let mut order: Vec<usize> = (0..cols).collect();
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
    let mut comps = Vec::with_capacity(k * cols);
    for &o in order.iter().take(k) {
        // Column `o` of the eigenvector matrix, with a fixed sign (largest entry positive).
        let v: Vec<f64> = (0..cols).map(|r| vecs[r * cols + o]).collect();
        let big = v
            .iter()
            .copied()
            .fold(0f64, |a, b| if b.abs() > a.abs() { b } else { a });
        let s = if big < 0.0 { -1.0 } else { 1.0 };
        comps.extend(v.iter().map(|x| x * s));
    }
    (mean, comps)
}

/// Eigenvalues and eigenvectors (columns of the returned row-major matrix) of a symmetric
/// `n × n` matrix, by cyclic Jacobi rotations.
pub fn jacobi_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let total: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-22 * total.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let cs = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * cs;
                for k in 0..n {
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    a[k * n + p] = cs * akp - sn * akq;
                    a[k * n + q] = sn * akp + cs * akq;
                }
                for k in 0..n {
                    let apk = a[p * n + k];
                    let aqk = a[q * n + k];
                    a[p * n + k] = cs * apk - sn * aqk;
                    a[q * n + k] = sn * apk + cs * aqk;
                }
                for k in 0..n {
                    let vkp = v[k * n + p];
                    let vkq = v[k * n + q];
                    v[k * n + p] = cs * vkp - sn * vkq;
                    v[k * n + q] = sn * vkp + cs * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_leading_direction() {
        // Points along (3, 4)/5 with small noise across it.
        let mut x = Vec::new();
        for i in 0..=200 {
            let t = (i as f32 - 100.0) / 10.0;
            let e = if i % 2 == 0 { 0.05 } else { -0.05 };
            x.extend([
                3.0 * t / 5.0 - 4.0 * e / 5.0 + 1.0,
                4.0 * t / 5.0 + 3.0 * e / 5.0,
            ]);
        }
        let (mean, comps) = pca(&x, 2, 1);
        assert!(
            (mean[0] - 1.0).abs() < 1e-3 && mean[1].abs() < 1e-3,
            "{mean:?}"
        );
        assert!(
            (comps[0] - 0.6).abs() < 1e-3 && (comps[1] - 0.8).abs() < 1e-3,
            "{comps:?}"
        );
    }

    #[test]
    fn jacobi_diagonalises() {
        let a = vec![4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 5.0];
        let (vals, vecs) = jacobi_eigen(a.clone(), 3);
        for k in 0..3 {
            for i in 0..3 {
                let av: f64 = (0..3).map(|j| a[i * 3 + j] * vecs[j * 3 + k]).sum();
                assert!((av - vals[k] * vecs[i * 3 + k]).abs() < 1e-9);
            }
        }
        assert!((vals.iter().sum::<f64>() - 12.0).abs() < 1e-9);
    }
}
