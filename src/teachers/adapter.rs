//! Input adapters: a teacher trained on another domain (scanned 28×28 digits, a table with its
//! columns in another order) sees this run's samples mapped to its own input, on the teacher's
//! side only — the students keep the run's inputs. `[[teacher]] adapter = { … }`:
//!
//! - images: `resize = [h, w]` (bilinear, half-pixel centres: PyTorch's
//!   `F.interpolate(mode="bilinear", align_corners=False)`), then `pad` zero pixels on every
//!   side (MNIST's digits sit in a 20×20 box inside 28×28), `channels = 3` repeats a grey
//!   image into three channels;
//! - values: `v · scale + offset`, applied to the raw values (the teacher's input range:
//!   `scale = 0.0625` maps pixels 0–16 to 0–1); padding stays 0;
//! - tables: `columns = ["a", "b", …]`, the run's columns by name, in the order the teacher's
//!   input takes them.
//!
//! Checked against the data before any work starts ([`AdapterConfig::build`]).

use crate::error::{bad_field, Result};
use serde::{Deserialize, Serialize};

/// The `adapter = { … }` table of a `[[teacher]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// Images: resize every channel to `[h, w]` (bilinear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<[usize; 2]>,
    /// Images: zero pixels added on every side after resizing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pad: usize,
    /// Images: repeat a one-channel image into this many channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// Values: multiplied by this (before padding).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub scale: f32,
    /// Values: then this added.
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub offset: f32,
    /// Tables: the run's columns, by name, in the order the teacher's input takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}
fn is_zero_f(v: &f32) -> bool {
    *v == 0.0
}
fn one() -> f32 {
    1.0
}
fn is_one(v: &f32) -> bool {
    *v == 1.0
}

impl AdapterConfig {
    /// Checks the table's own fields; `p` is its path for messages.
    pub fn check(&self, p: &str) -> Result<()> {
        if let Some([h, w]) = self.resize {
            if h == 0 || w == 0 {
                bad_field(&format!("{p}.resize"), "sizes must be at least 1")?;
            }
        }
        if !self.columns.is_empty()
            && (self.resize.is_some() || self.pad > 0 || self.channels.is_some())
        {
            bad_field(
                &format!("{p}.columns"),
                "columns map a table; resize, pad and channels map images: give one or the other",
            )?;
        }
        if self.channels == Some(0) {
            bad_field(&format!("{p}.channels"), "must be at least 1")?;
        }
        for (f, v) in [("scale", self.scale), ("offset", self.offset)] {
            if !v.is_finite() {
                bad_field(
                    &format!("{p}.{f}"),
                    &format!("expected a finite number, got {v}"),
                )?;
            }
        }
        if self.scale == 0.0 {
            bad_field(&format!("{p}.scale"), "must not be 0")?;
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.columns {
            if !seen.insert(c) {
                bad_field(
                    &format!("{p}.columns"),
                    &format!("column '{c}' is named twice"),
                )?;
            }
        }
        Ok(())
    }

    /// The adapter for samples of `shape` (`[c, h, w]` for images, `[d]` for tables) whose
    /// columns are `features` (empty when the data have no column names); `p` names the
    /// table in errors.
    pub fn build(&self, p: &str, shape: &[usize], features: &[String]) -> Result<Adapter> {
        self.check(p)?;
        let image = shape.len() == 3;
        let mut columns = Vec::new();
        if !self.columns.is_empty() {
            if features.is_empty() {
                bad_field(
                    &format!("{p}.columns"),
                    "the data have no column names to map (a CSV file with a header has)",
                )?;
            }
            for c in &self.columns {
                match features.iter().position(|f| f == c) {
                    Some(i) => columns.push(i),
                    None => bad_field(
                        &format!("{p}.columns"),
                        &format!(
                            "no column '{c}' in the data (columns: {})",
                            shorten(features)
                        ),
                    )?,
                }
            }
        }
        let mut out_shape = shape.to_vec();
        if self.resize.is_some() || self.pad > 0 || self.channels.is_some() {
            if !image {
                bad_field(
                    &format!("{p}.resize"),
                    &format!(
                        "resize, pad and channels map images, but the samples have shape {shape:?} (give data.image_shape = [c, h, w] for a CSV of images)"
                    ),
                )?;
            }
            let [h, w] = self.resize.unwrap_or([shape[1], shape[2]]);
            let c = match self.channels {
                Some(c) if c != shape[0] && shape[0] != 1 => {
                    return Err(crate::error::Error::Input(format!(
                        "{p}.channels: the images have {} channels; only a one-channel image can be repeated into {c}",
                        shape[0]
                    )))
                }
                Some(c) => c,
                None => shape[0],
            };
            out_shape = vec![c, h + 2 * self.pad, w + 2 * self.pad];
        }
        if !columns.is_empty() {
            out_shape = vec![columns.len()];
        }
        Ok(Adapter {
            cfg: self.clone(),
            in_shape: shape.to_vec(),
            out_shape,
            columns,
        })
    }
}

fn shorten(names: &[String]) -> String {
    let mut s = names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        s.push_str(&format!(", … {} in all", names.len()));
    }
    s
}

/// A built adapter: maps raw samples of the run's shape to raw samples of the teacher's.
#[derive(Debug, Clone)]
pub struct Adapter {
    cfg: AdapterConfig,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    columns: Vec<usize>,
}

impl Adapter {
    /// Values per sample the run's data have.
    pub fn in_dim(&self) -> usize {
        self.in_shape.iter().product()
    }

    /// Values per sample the teacher takes.
    pub fn out_dim(&self) -> usize {
        self.out_shape.iter().product()
    }

    /// The teacher's sample shape.
    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    /// What it does, for the progress line and the report.
    pub fn describe(&self) -> String {
        let c = &self.cfg;
        let mut parts = Vec::new();
        if !self.columns.is_empty() {
            parts.push(format!("{} columns by name", self.columns.len()));
        }
        if let Some([h, w]) = c.resize {
            parts.push(format!("resize to {h}×{w}"));
        }
        if c.pad > 0 {
            parts.push(format!("pad {}", c.pad));
        }
        if let Some(ch) = c.channels {
            parts.push(format!("{ch} channels"));
        }
        if c.scale != 1.0 || c.offset != 0.0 {
            parts.push(format!("× {} + {}", c.scale, c.offset));
        }
        format!(
            "{:?} → {:?}{}",
            self.in_shape,
            self.out_shape,
            if parts.is_empty() {
                String::new()
            } else {
                format!(" ({})", parts.join(", "))
            }
        )
    }

    /// Maps `rows` raw samples (row-major) to the teacher's raw samples.
    pub fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (din, dout) = (self.in_dim(), self.out_dim());
        let mut out = vec![0f32; rows * dout];
        let (scale, offset) = (self.cfg.scale, self.cfg.offset);
        for (src, dst) in x.chunks_exact(din).zip(out.chunks_exact_mut(dout)) {
            if !self.columns.is_empty() {
                for (d, &c) in dst.iter_mut().zip(&self.columns) {
                    *d = src[c] * scale + offset;
                }
                continue;
            }
            if self.in_shape.len() != 3 {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s * scale + offset;
                }
                continue;
            }
            let (c, h, w) = (self.in_shape[0], self.in_shape[1], self.in_shape[2]);
            let (oc, oh, ow) = (self.out_shape[0], self.out_shape[1], self.out_shape[2]);
            let pad = self.cfg.pad;
            let (rh, rw) = (oh - 2 * pad, ow - 2 * pad);
            for ch in 0..oc {
                let plane = &src[(ch % c) * h * w..(ch % c + 1) * h * w];
                let out_plane = &mut dst[ch * oh * ow..(ch + 1) * oh * ow];
                for i in 0..rh {
                    let (y0, y1, fy) = source(i, h, rh);
                    for j in 0..rw {
                        let (x0, x1, fx) = source(j, w, rw);
                        let top = plane[y0 * w + x0] * (1.0 - fx) + plane[y0 * w + x1] * fx;
                        let bottom = plane[y1 * w + x0] * (1.0 - fx) + plane[y1 * w + x1] * fx;
                        let v = top * (1.0 - fy) + bottom * fy;
                        out_plane[(i + pad) * ow + j + pad] = v * scale + offset;
                    }
                }
            }
        }
        out
    }
}

/// Bilinear source of output index `i` of `n_out` over `n_in` inputs, half-pixel centres
/// (negative positions clamped to 0, as PyTorch does): the two neighbours and the weight of
/// the second.
fn source(i: usize, n_in: usize, n_out: usize) -> (usize, usize, f32) {
    let pos = ((i as f32 + 0.5) * n_in as f32 / n_out as f32 - 0.5).max(0.0);
    let i0 = (pos.floor() as usize).min(n_in - 1);
    let i1 = (i0 + 1).min(n_in - 1);
    (i0, i1, pos - i0 as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdapterConfig {
        AdapterConfig {
            resize: None,
            pad: 0,
            channels: None,
            scale: 1.0,
            offset: 0.0,
            columns: Vec::new(),
        }
    }

    /// Against PyTorch 2.x:
    /// ```python
    /// x = torch.arange(4.).reshape(1, 1, 2, 2)
    /// F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
    /// # [[0.0, 0.25, 0.75, 1.0], [0.5, 0.75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2.0, 2.25, 2.75, 3.0]]
    /// ```
    #[test]
    fn bilinear_resize_matches_pytorch_and_pads_with_zeros() {
        let a = AdapterConfig {
            resize: Some([4, 4]),
            pad: 1,
            scale: 2.0,
            ..cfg()
        }
        .build("t", &[1, 2, 2], &[])
        .unwrap();
        assert_eq!(a.out_shape(), &[1, 6, 6]);
        let out = a.apply(&[0.0, 1.0, 2.0, 3.0], 1);
        let want = [
            [0.0, 0.25, 0.75, 1.0],
            [0.5, 0.75, 1.25, 1.5],
            [1.5, 1.75, 2.25, 2.5],
            [2.0, 2.25, 2.75, 3.0],
        ];
        for (i, row) in want.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!((out[(i + 1) * 6 + j + 1] - 2.0 * v).abs() < 1e-6);
            }
        }
        assert!(out[..6].iter().all(|&v| v == 0.0), "padding is 0");
    }

    #[test]
    fn columns_by_name_and_shape_errors() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let a = AdapterConfig {
            columns: vec!["c".into(), "a".into()],
            ..cfg()
        }
        .build("t", &[3], &names)
        .unwrap();
        assert_eq!(
            a.apply(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2),
            [3.0, 1.0, 6.0, 4.0]
        );
        let e = AdapterConfig {
            columns: vec!["z".into()],
            ..cfg()
        }
        .build("teacher.t.adapter", &[3], &names)
        .unwrap_err()
        .to_string();
        assert!(e.contains("no column 'z'"), "{e}");
        let e = AdapterConfig {
            resize: Some([28, 28]),
            ..cfg()
        }
        .build("teacher.t.adapter", &[64], &[])
        .unwrap_err()
        .to_string();
        assert!(e.contains("map images"), "{e}");
    }
}
