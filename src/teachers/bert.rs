//! A Hugging Face BERT-family encoder as a teacher: `config.json`, `model.safetensors` and
//! `tokenizer.json` from one folder (as the Hub and sentence-transformers lay them out), run
//! natively ([`super::native::NativeBert`], tested against candle-transformers' `BertModel`),
//! with sentence-transformers' pooling (mean over the
//! attention mask, or the `[CLS]` token) and its optional L2 normalisation, read from the
//! folder's `modules.json` and `1_Pooling/config.json` when present.

use super::native::Config;
use super::native::NativeBert;
use crate::error::{Error, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How token embeddings become one sentence embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// What the folder's sentence-transformers files say (mean when they say nothing).
    #[default]
    Auto,
    /// Mean of the token embeddings over the attention mask.
    Mean,
    /// The first (`[CLS]`) token's embedding.
    Cls,
}

/// A loaded BERT encoder with its tokenizer.
pub struct BertEncoder {
    model: NativeBert,
    /// What the folder's `config.json` says.
    pub config: Config,
    tokenizer: tokenizers::Tokenizer,
    /// Embedding width.
    pub hidden: usize,
    /// Longest input in tokens (longer texts are truncated).
    pub max_tokens: usize,
    /// Pooling in use (never `Auto`).
    pub pooling: Pooling,
    /// L2-normalise the pooled embedding.
    pub normalize: bool,
    /// Parameters in `model.safetensors`.
    pub params: usize,
    /// Bytes of `model.safetensors`.
    pub bytes: u64,
    /// A digest of the files and settings: equal digests give equal outputs.
    pub digest: String,
    /// The folder.
    pub dir: PathBuf,
    /// Vocabulary size of `config.json`.
    pub vocab: usize,
    /// A digest of `tokenizer.json` (equal digests: the same token ids).
    pub tokenizer_digest: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = crate::io::read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Input(format!(
            "{}: not the expected JSON ({e}); expected a Hugging Face BERT config",
            path.display()
        ))
    })
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Deserialize)]
struct SbertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
}

impl BertEncoder {
    /// Loads the encoder in `dir`. `max_tokens` overrides sentence-transformers'
    /// `max_seq_length` (default: that, else 512 capped by the position table).
    pub fn load(
        dir: &Path,
        max_tokens: Option<usize>,
        pooling: Pooling,
        normalize: Option<bool>,
    ) -> Result<BertEncoder> {
        let cfg_path = dir.join("config.json");
        let st_path = dir.join("model.safetensors");
        let tok_path = dir.join("tokenizer.json");
        for p in [&cfg_path, &st_path, &tok_path] {
            if !p.exists() {
                return Err(Error::Input(format!(
                    "{}: missing; a BERT teacher folder holds config.json, model.safetensors and tokenizer.json",
                    p.display()
                )));
            }
        }
        let cfg_bytes = crate::io::read_file(&cfg_path)?;
        let config: Config = serde_json::from_slice(&cfg_bytes).map_err(|e| {
            Error::Input(format!(
                "{}: not a BERT config.json ({e})",
                cfg_path.display()
            ))
        })?;
        let (mut tokenizer, tok_json) = crate::data::text::load_tokenizer(&tok_path)?;
        let tok_vocab = tokenizer.get_vocab_size(true);
        if tok_vocab > config.vocab_size {
            return Err(Error::Input(format!(
                "{}: {tok_vocab} tokens, but {} says vocab_size = {}; the tokenizer does not belong to this model",
                tok_path.display(),
                cfg_path.display(),
                config.vocab_size
            )));
        }
        let weights = crate::io::read_file(&st_path)?;
        let bytes = weights.len() as u64;
        let params = count_params(&weights, &st_path)?;
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [&cfg_bytes[..], tok_json.as_bytes(), &weights[..]] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let vb =
            candle_nn::VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
                .map_err(|e| Error::Input(format!("{}: {e}", st_path.display())))?;
        let model = NativeBert::load(&vb, &config).map_err(|e| {
            Error::Input(format!(
                "{}: the weights do not match {} ({e})",
                st_path.display(),
                cfg_path.display()
            ))
        })?;
        let st_max = dir
            .join("sentence_bert_config.json")
            .exists()
            .then(|| read_json::<SbertConfig>(&dir.join("sentence_bert_config.json")))
            .transpose()?
            .and_then(|c| c.max_seq_length);
        let max_tokens = max_tokens
            .or(st_max)
            .unwrap_or(512)
            .min(config.max_position_embeddings);
        // Truncate as sentence-transformers does: to max_tokens including the special tokens.
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| Error::Input(format!("{}: {e}", tok_path.display())))?;
        let pool_file = dir.join("1_Pooling").join("config.json");
        let pooling = match pooling {
            Pooling::Auto if pool_file.exists() => {
                let p: PoolingFile = read_json(&pool_file)?;
                if p.pooling_mode_cls_token && !p.pooling_mode_mean_tokens {
                    Pooling::Cls
                } else {
                    Pooling::Mean
                }
            }
            Pooling::Auto => Pooling::Mean,
            p => p,
        };
        let normalize = match normalize {
            Some(n) => n,
            None => {
                let modules = dir.join("modules.json");
                modules.exists()
                    && String::from_utf8_lossy(&crate::io::read_file(&modules)?)
                        .contains("sentence_transformers.models.Normalize")
            }
        };
        let tokenizer_digest = crate::teachers::bert::text_digest(&tok_json);
        h.update(format!("{max_tokens}/{pooling:?}/{normalize}").as_bytes());
        let digest = h
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Ok(BertEncoder {
            model,
            config: config.clone(),
            tokenizer,
            hidden: config.hidden_size,
            max_tokens,
            pooling,
            normalize,
            params,
            bytes,
            digest,
            dir: dir.to_path_buf(),
            vocab: config.vocab_size,
            tokenizer_digest,
        })
    }

    /// The same encoder (tokenizer, pooling, normalisation) over other weights of the same
    /// shapes, named as in `model.safetensors` (a fine-tuning run's current weights).
    pub fn with_weights(
        &self,
        tensors: std::collections::HashMap<String, candle_core::Tensor>,
    ) -> Result<BertEncoder> {
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = NativeBert::load(&vb, &self.config)?;
        Ok(BertEncoder {
            model,
            config: self.config.clone(),
            tokenizer: self.tokenizer.clone(),
            hidden: self.hidden,
            max_tokens: self.max_tokens,
            pooling: self.pooling,
            normalize: self.normalize,
            params: self.params,
            bytes: self.bytes,
            digest: String::new(),
            dir: self.dir.clone(),
            vocab: self.vocab,
            tokenizer_digest: self.tokenizer_digest.clone(),
        })
    }

    /// Floating-point operations of one input of `tokens` tokens (its products).
    pub fn flops(&self, tokens: usize) -> f64 {
        self.model.flops(tokens)
    }

    /// The word-embedding table, `vocab × hidden` row-major (what `augment.replace` finds
    /// each token's neighbours in).
    pub fn word_embeddings(&self) -> &[f32] {
        self.model.word_embeddings()
    }

    /// Token ids (with the special tokens, truncated to `max_tokens`) of each text.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let enc = self
            .tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|e| Error::Input(format!("{}: {e}", self.dir.display())))?;
        Ok(enc
            .iter()
            .map(|e| {
                let ids = e.get_ids();
                let mut v = ids[..ids.len().min(self.max_tokens)].to_vec();
                // Keep the closing special token when truncating, as the tokenizer would.
                if ids.len() > self.max_tokens && self.max_tokens >= 2 {
                    v[self.max_tokens - 1] = ids[ids.len() - 1];
                }
                v
            })
            .collect())
    }

    /// Sentence embeddings of already-tokenized inputs, `n * hidden` values (no padding: each
    /// input runs at its own length).
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<f32>> {
        let hd = self.hidden;
        let (h, off) = self
            .model
            .forward(ids)
            .map_err(|e| Error::Input(format!("{}: {e}", self.dir.display())))?;
        let mut out = vec![0f32; ids.len() * hd];
        for (i, o) in out.chunks_exact_mut(hd).enumerate() {
            let rows = &h[off[i] * hd..off[i + 1] * hd];
            match self.pooling {
                Pooling::Cls => {
                    if let Some(first) = rows.get(..hd) {
                        o.copy_from_slice(first);
                    }
                }
                _ => {
                    for r in rows.chunks_exact(hd) {
                        for (a, &b) in o.iter_mut().zip(r) {
                            *a += b;
                        }
                    }
                    let c = (off[i + 1] - off[i]).max(1) as f32;
                    o.iter_mut().for_each(|a| *a /= c);
                }
            }
            if self.normalize {
                let n = o.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                o.iter_mut().for_each(|a| *a /= n);
            }
        }
        Ok(out)
    }

    /// Sentence embeddings of `texts`, `n * hidden` values, in batches of `batch` with the
    /// texts of similar length together (less padding); rows come back in the input order.
    pub fn embed(&self, texts: &[&str], batch: usize) -> Result<Vec<f32>> {
        let ids = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![0f32; ids.len() * self.hidden];
        for chunk in order.chunks(batch.max(1)) {
            let part: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let e = self.embed_ids(&part)?;
            for (k, &i) in chunk.iter().enumerate() {
                out[i * self.hidden..(i + 1) * self.hidden]
                    .copy_from_slice(&e[k * self.hidden..(k + 1) * self.hidden]);
            }
        }
        Ok(out)
    }

    /// The special token ids that open and close an input (`[CLS]`, `[SEP]`), if the
    /// tokenizer adds them.
    pub fn specials(&self) -> Result<(Option<u32>, Option<u32>)> {
        let e = self
            .tokenizer
            .encode_fast("a", true)
            .map_err(|e| Error::Input(format!("{}: {e}", self.dir.display())))?;
        let plain = self
            .tokenizer
            .encode_fast("a", false)
            .map_err(|e| Error::Input(format!("{}: {e}", self.dir.display())))?;
        let ids = e.get_ids();
        let p = plain.get_ids();
        let open = (ids.len() > p.len() && ids.first() != p.first()).then(|| ids[0]);
        let close = (ids.len() > p.len() && ids.last() != p.last()).then(|| ids[ids.len() - 1]);
        Ok((open, close))
    }
}

/// A SHA-256 digest of a text, in hex.
pub fn text_digest(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A BERT teacher with its classification head, run on a text run's token-id rows (the ids of
/// the teacher's own tokenizer, [`crate::data::text::PAD`] after them), as they come from an
/// augmentation or a transfer set: `[CLS]` and `[SEP]` put around each row's ids, cut to the
/// encoder's length, the sentence embedding (standardised, for a head trained on frozen
/// embeddings), then the head. So a BERT teacher teaches on the very view the student sees.
pub struct BertTeacher {
    /// The encoder.
    pub encoder: std::sync::Arc<BertEncoder>,
    /// Standardises the embeddings before the head (a head on the frozen embeddings).
    pub norm: Option<crate::data::Normalizer>,
    /// The classification head.
    pub head: crate::models::Model,
    /// The ids put before and after each text.
    pub specials: (Option<u32>, Option<u32>),
}

impl BertTeacher {
    /// Token ids with the special tokens of each row of `x` (`rows` rows of ids, then PAD).
    fn ids(&self, x: &[f32], rows: usize) -> Result<Vec<Vec<u32>>> {
        let d = x.len() / rows.max(1);
        let max = self.encoder.max_tokens;
        let (open, close) = self.specials;
        x.chunks(d.max(1))
            .take(rows)
            .map(|row| {
                let mut ids = Vec::with_capacity(row.len() + 2);
                ids.extend(open);
                for &v in row {
                    if v < 0.0 {
                        continue;
                    }
                    if v.fract() != 0.0 || v as usize >= self.encoder.vocab {
                        return Err(Error::Input(format!(
                            "a BERT teacher got {v} among token ids; expected ids of its tokenizer (below {})",
                            self.encoder.vocab
                        )));
                    }
                    ids.push(v as u32);
                }
                let keep = max.saturating_sub(usize::from(close.is_some()));
                ids.truncate(keep);
                ids.extend(close);
                Ok(ids)
            })
            .collect()
    }
}

impl super::Teacher for BertTeacher {
    fn predict_batch(&self, x: &candle_core::Tensor) -> Result<Vec<f32>> {
        let rows = x.dim(0)?;
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        self.predict_rows(&v, rows)
    }

    fn predict_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let ids = self.ids(x, rows)?;
        let hd = self.encoder.hidden;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut e = vec![0f32; ids.len() * hd];
        for chunk in order.chunks(32) {
            let part: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let got = self.encoder.embed_ids(&part)?;
            for (k, &i) in chunk.iter().enumerate() {
                e[i * hd..(i + 1) * hd].copy_from_slice(&got[k * hd..(k + 1) * hd]);
            }
        }
        if let Some(n) = &self.norm {
            n.apply(&mut e, hd);
        }
        self.head.predict(&e, rows.max(1))
    }

    fn flops_per_sample(&self) -> Option<f64> {
        Some(self.encoder.flops(self.encoder.max_tokens) + self.head.flops_per_sample()?)
    }
}

/// Elements of every floating-point tensor in a safetensors file.
fn count_params(bytes: &[u8], path: &Path) -> Result<usize> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        Error::Input(format!(
            "{}: not a valid safetensors file ({e})",
            path.display()
        ))
    })?;
    Ok(st
        .tensors()
        .iter()
        .map(|(_, v)| v.shape().iter().product::<usize>())
        .sum())
}
