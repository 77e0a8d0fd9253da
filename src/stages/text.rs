//! Text students: a static-embedding student started from its teacher, in the manner of
//! Model2Vec (Tulkens & van Dongen 2024): every vocabulary token is run through the teacher on
//! its own (`[CLS] token [SEP]`, pooled as the teacher pools sentences), the token embeddings
//! are reduced by PCA to the student's width, and each token's row is weighted by
//! `a / (a + p(token))` with `p` its frequency in the training texts (SIF weighting, Arora et
//! al. 2017), so that frequent tokens weigh less in the mean. Training by distillation then
//! goes on from there.

use crate::error::{Error, Result};
use crate::kernels::linalg::pca;
use crate::models::{Arch, Model, ParamKind};
use crate::store::RunStore;
use crate::teachers::cache;

/// SIF coefficient `a` (Model2Vec's default).
const SIF_A: f64 = 1e-4;

/// Initialises `model`'s embedding table (and, for an embedding student with no hidden layer,
/// its output layer — or, for a multi-task model, the columns `head` of its embedding head)
/// from teacher `teacher`'s token embeddings.
pub fn init_from_teacher(
    model: &Model,
    teacher: &str,
    name: &str,
    store: &RunStore,
    head: Option<std::ops::Range<usize>>,
) -> Result<()> {
    let enc = store
        .known(teacher)
        .and_then(|k| k.encoder.clone())
        .ok_or_else(|| {
            Error::Input(format!(
                "model.{name}.distill.init_from_teacher: '{teacher}' is not a bert teacher"
            ))
        })?;
    // The table this initialises is the embedding bag's own.
    let Arch::EmbeddingBag(bag) = &model.spec.arch else {
        return Err(Error::Input(format!(
            "model.{name}.distill.init_from_teacher: only for kind = \"embedding-bag\" students"
        )));
    };
    let vocab = bag.vocab;
    match &store.splits.featurizer {
        Some(crate::data::text::Featurizer::Tokenizer { .. }) if vocab <= enc.vocab => {}
        _ => {
            return Err(Error::Input(format!(
                "model.{name}.distill.init_from_teacher: the data's features must be the teacher's tokenizer (data.features = {{ kind = \"tokenizer\", path = \"{}/tokenizer.json\" }})",
                enc.dir.display()
            )))
        }
    }
    let dim = bag.dim;
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
    // An embedding student without hidden layers maps the PCA space back to the teacher's
    // (a multi-task model: in its embedding head's columns).
    let outputs = model.spec.outputs;
    let cols = head.unwrap_or(0..outputs);
    if model.spec.arch.hidden().is_empty() && cols.len() == hidden {
        let w = &mut weights[e + 1];
        for k in 0..dim {
            for j in 0..hidden {
                w[k * outputs + cols.start + j] = comps[k * hidden + j] as f32;
            }
        }
        for (j, &m) in mean.iter().enumerate() {
            weights[e + 2][cols.start + j] = m as f32;
        }
    }
    model.set_weights(&weights)
}

/// Neighbours per token for `augment.replace` (its documented default).
const REPLACE_NEIGHBOURS: usize = 5;

/// `t` with the token neighbours `augment.replace` draws from, when it is set: the
/// [`REPLACE_NEIGHBOURS`] nearest tokens (cosine) of every token of the training texts among
/// those tokens, in the table of `augment.replace_from` — an embedding-bag model's own table
/// (over the run's featurizer), or a BERT teacher's word embeddings (its tokenizer the data's).
pub fn with_neighbours(
    t: &crate::train::TrainConfig,
    name: &str,
    store: &RunStore,
) -> Result<crate::train::TrainConfig> {
    let a = &t.augment;
    let Some(from) = a.replace_from.as_deref().filter(|_| a.replace > 0.0) else {
        return Ok(t.clone());
    };
    let field = format!("model.{name}.train.augment.replace_from");
    let vocab = store
        .splits
        .featurizer
        .as_ref()
        .map(|f| f.vocab())
        .ok_or_else(|| Error::Input(format!("{field}: the data hold no texts")))?;
    let (table, dim) = if let Ok((m, _)) = store.float(from) {
        let Arch::EmbeddingBag(bag) = &m.spec.arch else {
            return Err(Error::Input(format!(
                "{field}: '{from}' is a {} model; its token table must be an embedding-bag's",
                m.spec.arch.kind()
            )));
        };
        let e = m
            .param_kinds()
            .iter()
            .position(|k| *k == ParamKind::Embedding)
            .ok_or_else(|| Error::Other("no embedding table".into()))?;
        (m.weights()?.swap_remove(e), bag.dim)
    } else if let Some(enc) = store.known(from).and_then(|k| k.encoder.clone()) {
        match &store.splits.featurizer {
            Some(crate::data::text::Featurizer::Tokenizer { .. }) if vocab <= enc.vocab => {}
            _ => {
                return Err(Error::Input(format!(
                    "{field}: '{from}''s word table is indexed by its tokenizer; the data's features must be it (data.features = {{ kind = \"tokenizer\", path = \"{}/tokenizer.json\" }})",
                    enc.dir.display()
                )))
            }
        }
        (
            enc.word_embeddings()[..vocab * enc.hidden].to_vec(),
            enc.hidden,
        )
    } else {
        return Err(Error::Input(format!(
            "{field}: '{from}' has no token table; name an embedding-bag [[model]] or a bert [[teacher]]"
        )));
    };
    let mut seen = vec![false; vocab];
    for &id in store.splits.train.x.iter() {
        if id >= 0.0 && (id as usize) < vocab {
            seen[id as usize] = true;
        }
    }
    let used: Vec<u32> = (0..vocab as u32).filter(|&t| seen[t as usize]).collect();
    store.progress.say(&format!(
        "{name}: token replacement draws from each token's {REPLACE_NEIGHBOURS} nearest in {from}'s table ({} tokens of the training texts)",
        used.len()
    ));
    let nb = crate::data::augment::Neighbours::nearest(&table, dim, &used, REPLACE_NEIGHBOURS);
    let mut t = t.clone();
    t.augment.neighbours = Some(std::sync::Arc::new(nb));
    Ok(t)
}
