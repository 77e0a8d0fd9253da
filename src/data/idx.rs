//! IDX files (the MNIST format), raw or gzip-compressed.
//!
//! Layout: two zero bytes, a type byte (0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32,
//! 0x0E f64), the number of dimensions, then each dimension as a big-endian u32, then the data
//! in big-endian row-major order. The sizes in the header are checked against the bytes the
//! file really holds before anything of that size is allocated.

use super::{Dataset, Targets};
use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// A decoded IDX array, converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Dimensions from the header.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
    /// True when the stored type was an unsigned byte (pixels 0..255).
    pub is_u8: bool,
}

fn elem_size(t: u8) -> Option<usize> {
    match t {
        0x08 | 0x09 => Some(1),
        0x0B => Some(2),
        0x0C | 0x0D => Some(4),
        0x0E => Some(8),
        _ => None,
    }
}

/// Reads an IDX file from disk (gzip detected from its magic bytes).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = crate::io::read_file(path)?;
    parse_idx(&bytes, &path.display().to_string())
}

/// Parses IDX bytes; `name` is used in error messages.
pub fn parse_idx(bytes: &[u8], name: &str) -> Result<IdxArray> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        let mut dec = GzDecoder::new(bytes);
        let mut head = [0u8; 4];
        read_exact_named(&mut dec, &mut head, name, "the 4-byte IDX magic")?;
        let (t, ndim) = check_magic(&head, name)?;
        let mut dim_bytes = vec![0u8; 4 * ndim];
        read_exact_named(&mut dec, &mut dim_bytes, name, "the IDX dimensions")?;
        let dims = dims_from(&dim_bytes);
        let expected = expected_len(&dims, t, name)?;
        // Decompress at most expected+1 bytes: memory grows with what the file really
        // holds, never with what the header claims.
        let mut body = Vec::new();
        (&mut dec)
            .take(expected as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| Error::Input(format!("{name}: corrupt gzip stream: {e}")))?;
        if body.len() != expected {
            return Err(size_mismatch(name, &dims, expected, body.len()));
        }
        Ok(decode(&body, t, dims))
    } else {
        if bytes.len() < 4 {
            return Err(Error::Input(format!(
                "{name}: truncated IDX file ({} bytes; expected at least a 4-byte header)",
                bytes.len()
            )));
        }
        let (t, ndim) = check_magic(&bytes[..4], name)?;
        let header = 4 + 4 * ndim;
        if bytes.len() < header {
            return Err(Error::Input(format!(
                "{name}: truncated IDX header ({} bytes; {ndim} dimensions need {header})",
                bytes.len()
            )));
        }
        let dims = dims_from(&bytes[4..header]);
        let expected = expected_len(&dims, t, name)?;
        let body = &bytes[header..];
        if body.len() != expected {
            return Err(size_mismatch(name, &dims, expected, body.len()));
        }
        Ok(decode(body, t, dims))
    }
}

fn read_exact_named(r: &mut impl Read, buf: &mut [u8], name: &str, what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        Error::Input(format!(
            "{name}: truncated or corrupt IDX file while reading {what}: {e}"
        ))
    })
}

fn check_magic(head: &[u8], name: &str) -> Result<(u8, usize)> {
    if head[0] != 0 || head[1] != 0 || elem_size(head[2]).is_none() || head[3] == 0 {
        return Err(Error::Input(format!(
            "{name}: not an IDX file (magic bytes {:02x} {:02x} {:02x} {:02x}; expected 00 00 <type 08/09/0b/0c/0d/0e> <ndim ≥ 1>)",
            head[0], head[1], head[2], head[3]
        )));
    }
    Ok((head[2], head[3] as usize))
}

fn dims_from(b: &[u8]) -> Vec<usize> {
    b.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect()
}

fn expected_len(dims: &[usize], t: u8, name: &str) -> Result<usize> {
    let es = elem_size(t).unwrap_or(1);
    dims.iter()
        .try_fold(es, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= (1usize << 40))
        .ok_or_else(|| {
            Error::Input(format!(
                "{name}: IDX header dimensions {dims:?} are impossibly large"
            ))
        })
}

fn size_mismatch(name: &str, dims: &[usize], expected: usize, got: usize) -> Error {
    Error::Input(format!(
        "{name}: IDX header says dimensions {dims:?} ({expected} data bytes) but the file holds {}{got} data bytes (truncated or corrupt file)",
        if got > expected { "more than " } else { "" }
    ))
}

fn decode(body: &[u8], t: u8, dims: Vec<usize>) -> IdxArray {
    let data: Vec<f32> = match t {
        0x08 => body.iter().map(|&b| b as f32).collect(),
        0x09 => body.iter().map(|&b| b as i8 as f32).collect(),
        0x0B => body
            .chunks_exact(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]) as f32)
            .collect(),
        0x0C => body
            .chunks_exact(4)
            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        0x0D => body
            .chunks_exact(4)
            .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => body
            .chunks_exact(8)
            .map(|c| f64::from_be_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
    };
    IdxArray {
        dims,
        data,
        is_u8: t == 0x08,
    }
}

/// Loads an image/label pair of IDX files as a classification data set. Unsigned-byte pixels
/// are scaled to [0, 1]. `num_classes` fixes the class count (taken from the training labels
/// when `None`).
pub fn load_idx_pair(images: &Path, labels: &Path, num_classes: Option<usize>) -> Result<Dataset> {
    let img = read_idx(images)?;
    let lab = read_idx(labels)?;
    let (iname, lname) = (images.display(), labels.display());
    if lab.dims.len() != 1 {
        return Err(Error::Input(format!(
            "{lname}: expected a 1-D IDX label file, got dimensions {:?}",
            lab.dims
        )));
    }
    if img.dims[0] != lab.dims[0] {
        return Err(Error::Input(format!(
            "{iname} holds {} samples but {lname} holds {} labels",
            img.dims[0], lab.dims[0]
        )));
    }
    let shape = match img.dims.len() {
        1 => vec![1],
        2 => vec![img.dims[1]],
        3 => vec![1, img.dims[1], img.dims[2]],
        4 => vec![img.dims[1], img.dims[2], img.dims[3]],
        n => {
            return Err(Error::Input(format!(
                "{iname}: expected 2 to 4 IDX dimensions (samples first), got {n}"
            )))
        }
    };
    if shape.contains(&0) {
        return Err(Error::Input(format!(
            "{iname}: a sample dimension is zero: {:?}",
            img.dims
        )));
    }
    let mut labels_u32 = Vec::with_capacity(lab.data.len());
    for (i, &v) in lab.data.iter().enumerate() {
        if !(v >= 0.0 && v.fract() == 0.0 && v < 100_000.0) {
            return Err(Error::Input(format!(
                "{lname}: label {i} is {v}; expected a non-negative integer class"
            )));
        }
        labels_u32.push(v as u32);
    }
    let max = labels_u32.iter().copied().max().unwrap_or(0) as usize;
    let k = match num_classes {
        Some(k) => {
            if max >= k {
                return Err(Error::Input(format!(
                    "{lname}: label {max} is outside the {k} classes of the training labels"
                )));
            }
            k
        }
        None => max + 1,
    };
    let mut x = img.data;
    if img.is_u8 {
        for v in x.iter_mut() {
            *v /= 255.0;
        }
    }
    if let Some((i, _)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let d: usize = shape.iter().product();
        return Err(Error::Input(format!(
            "{iname}: sample {} value {} is not a finite number",
            i / d,
            i % d
        )));
    }
    Ok(Dataset::new(
        x,
        shape,
        Targets::Classes {
            labels: labels_u32,
            names: (0..k).map(|c| c.to_string()).collect(),
        },
    ))
}

/// Encodes an array as an IDX file (used by tests and to write fixtures).
pub fn encode_idx_u8(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_u8() {
        let b = encode_idx_u8(&[2, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7]);
        let a = parse_idx(&b, "t").unwrap();
        assert_eq!(a.dims, vec![2, 2, 2]);
        assert_eq!(a.data[7], 7.0);
    }

    #[test]
    fn header_larger_than_file_is_rejected_without_allocating() {
        // claims 4e9 x 4e9 bytes in a 20-byte file
        let mut b = vec![0, 0, 0x08, 2];
        b.extend_from_slice(&0xEE6B_2800u32.to_be_bytes());
        b.extend_from_slice(&0xEE6B_2800u32.to_be_bytes());
        b.extend_from_slice(&[1, 2, 3, 4]);
        let e = parse_idx(&b, "f.idx").unwrap_err().to_string();
        assert!(e.contains("f.idx") && e.contains("impossibly large"), "{e}");
        // 100,000 x 100,000 bytes (10 GB) claimed by a 20-byte file: checked against the length.
        let mut b = vec![0, 0, 0x08, 2];
        b.extend_from_slice(&100_000u32.to_be_bytes());
        b.extend_from_slice(&100_000u32.to_be_bytes());
        b.extend_from_slice(&[1, 2, 3, 4]);
        let e = parse_idx(&b, "f.idx").unwrap_err().to_string();
        assert!(
            e.contains("f.idx") && e.contains("truncated") && e.contains("4 data bytes"),
            "{e}"
        );
    }

    #[test]
    fn bad_magic() {
        let e = parse_idx(b"hello world", "x").unwrap_err().to_string();
        assert!(e.contains("not an IDX file"), "{e}");
    }

    #[test]
    fn gzip_roundtrip_and_truncation() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let raw = encode_idx_u8(&[3], &[1, 2, 3]);
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&raw).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(parse_idx(&gz, "g").unwrap().data, vec![1.0, 2.0, 3.0]);
        let cut = &gz[..gz.len() - 12];
        assert!(parse_idx(cut, "g").is_err());
    }
}
