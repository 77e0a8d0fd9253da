//! Teacher outputs computed once and kept: `cache/<key>.f32` in the run folder holds one row
//! of `cols` little-endian f32 values per sample, in sample order. The key is a SHA-256 of
//! the teacher's digest (its files and settings) and of the inputs, so a repeated or resumed
//! run with the same teacher and data reads the file instead of running the teacher, and a
//! changed teacher or data set can never read a stale one.
//!
//! Rows are appended to `<key>.part` chunk by chunk as they are computed (nothing but the
//! current chunk is held in memory) and flushed to disk; a run killed half-way starts again
//! after the last whole row in the part file. When every row is there the part file is
//! renamed to its final name.

use crate::error::{Error, Result};
use sha2::Digest;
use std::io::{Seek, Write};
use std::path::Path;
use std::time::Instant;

/// A key for `teacher` (a digest of what determines its outputs) over `inputs`.
pub fn key<'a>(teacher: &str, what: &str, inputs: impl Iterator<Item = &'a [u8]>) -> String {
    let mut h = sha2::Sha256::new();
    h.update(teacher.as_bytes());
    h.update([0]);
    h.update(what.as_bytes());
    h.update([0]);
    for i in inputs {
        h.update((i.len() as u64).to_le_bytes());
        h.update(i);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

use crate::data::Rows;

/// What happened when rows were asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUse {
    /// Rows read from an earlier run's file or part file.
    pub reused: usize,
    /// Rows computed now.
    pub computed: usize,
}

/// The `n × cols` rows under `key` in `dir`: read when cached, else computed by `compute`
/// (given a range of sample indices, it returns their rows) in chunks of `chunk` samples,
/// resuming after the rows an interrupted run left. `label` names the work in progress lines.
#[allow(clippy::too_many_arguments)]
pub fn rows(
    dir: &Path,
    key: &str,
    n: usize,
    cols: usize,
    chunk: usize,
    label: &str,
    progress: crate::progress::Progress,
    mut compute: impl FnMut(std::ops::Range<usize>) -> Result<Vec<f32>>,
) -> Result<(Rows, CacheUse)> {
    let w = crate::dist::world();
    if w.size() > 1 {
        // Under MPI rank 0 computes the file (alone, in a world of one) and the other ranks
        // read it once it is done.
        let mine = if w.rank() == 0 {
            Some(crate::dist::local(|| {
                rows(dir, key, n, cols, chunk, label, progress, compute)
            })?)
        } else {
            None
        };
        w.barrier();
        if let Some(r) = mine {
            return Ok(r);
        }
        let done_path = dir.join(format!("{key}.f32"));
        let v = read_rows(&done_path, n, cols)?.ok_or_else(|| {
            Error::Other(format!(
                "{}: rank 0 wrote it, and this rank cannot read it (is the run folder on a file system every rank shares?)",
                done_path.display()
            ))
        })?;
        return Ok((
            v,
            CacheUse {
                reused: n,
                computed: 0,
            },
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let done_path = dir.join(format!("{key}.f32"));
    let part_path = dir.join(format!("{key}.part"));
    let row_bytes = cols * 4;
    if let Some(v) = read_rows(&done_path, n, cols)? {
        progress.say(&format!(
            "{label}: {n} rows read from the cache ({})",
            done_path.display()
        ));
        return Ok((
            v,
            CacheUse {
                reused: n,
                computed: 0,
            },
        ));
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&part_path)
        .map_err(|e| Error::io(&part_path, e))?;
    let len = f.metadata().map_err(|e| Error::io(&part_path, e))?.len() as usize;
    // Whole chunks only: a chunk is computed as one batch, so the resumed run computes exactly
    // the batches the uninterrupted one would (and gets the same bytes); a half-written chunk
    // or row (the process died in the middle of a write) is dropped and computed again.
    let chunk = chunk.max(1);
    let mut done = ((len / row_bytes.max(1)).min(n) / chunk) * chunk;
    f.set_len((done * row_bytes) as u64)
        .map_err(|e| Error::io(&part_path, e))?;
    f.seek(std::io::SeekFrom::End(0))
        .map_err(|e| Error::io(&part_path, e))?;
    let reused = done;
    if done > 0 {
        progress.say(&format!(
            "{label}: resuming after {done} of {n} rows cached by an interrupted run"
        ));
    }
    let bar = (progress == crate::progress::Progress::Bars && done < n).then(|| {
        let b = indicatif::ProgressBar::new(n as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>18} {bar:28.cyan/blue} {pos:>6}/{len:6} {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(label.to_string());
        b.set_position(done as u64);
        b
    });
    let start = Instant::now();
    let mut last_line = Instant::now();
    while done < n {
        let end = (done + chunk).min(n);
        let out = compute(done..end)?;
        if out.len() != (end - done) * cols {
            return Err(Error::Other(format!(
                "{label}: {} values for {} rows of {cols}",
                out.len(),
                end - done
            )));
        }
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "{label}: the teacher gave a non-finite output for sample {}",
                done + i / cols.max(1)
            )));
        }
        let mut buf = Vec::with_capacity(out.len() * 4);
        for v in &out {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        f.write_all(&buf).map_err(|e| Error::io(&part_path, e))?;
        f.sync_data().map_err(|e| Error::io(&part_path, e))?;
        done = end;
        if let Some(b) = &bar {
            b.set_position(done as u64);
        } else if progress == crate::progress::Progress::Lines
            && (last_line.elapsed().as_secs_f64() > 10.0 || done == n)
        {
            last_line = Instant::now();
            let rate = (done - reused) as f64 / start.elapsed().as_secs_f64().max(1e-9);
            let eta = (n - done) as f64 / rate.max(1e-9);
            progress.say(&format!(
                "{label}: {done}/{n} rows, {rate:.1}/s, ETA {eta:.0} s"
            ));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(f);
    std::fs::rename(&part_path, &done_path).map_err(|e| Error::io(&done_path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let v = read_rows(&done_path, n, cols)?.ok_or_else(|| {
        Error::Other(format!(
            "{}: just written, now unreadable",
            done_path.display()
        ))
    })?;
    Ok((
        v,
        CacheUse {
            reused,
            computed: n - reused,
        },
    ))
}

/// The rows of a finished cache file, mapped, or `None` when it is absent, of another size or
/// holds a non-finite value (a damaged file): then they are computed again.
fn read_rows(path: &Path, n: usize, cols: usize) -> Result<Option<Rows>> {
    Ok(Rows::map(path, n * cols)?.filter(|v| v.iter().all(|x| x.is_finite())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Progress;

    #[test]
    fn rows_are_computed_once_and_resumed_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let f = |r: std::ops::Range<usize>| Ok(r.flat_map(|i| [i as f32, -(i as f32)]).collect());
        // A run that fails after two chunks leaves a part file of 4 rows…
        let mut calls = 0;
        let err = rows(dir.path(), "k", 10, 2, 2, "t", Progress::Quiet, |r| {
            calls += 1;
            if calls == 3 {
                return Err(Error::Other("killed".into()));
            }
            f(r)
        });
        assert!(err.is_err());
        // …the next run computes only the 6 missing rows…
        let (v, u) = rows(dir.path(), "k", 10, 2, 2, "t", Progress::Quiet, f).unwrap();
        assert_eq!(
            u,
            CacheUse {
                reused: 4,
                computed: 6
            }
        );
        assert!(matches!(v, Rows::Mapped(_)));
        assert_eq!(*v, f(0..10).unwrap()[..]);
        // …and a third computes nothing.
        let (v2, u) = rows(dir.path(), "k", 10, 2, 2, "t", Progress::Quiet, |_| {
            panic!("must not compute")
        })
        .unwrap();
        assert_eq!(
            u,
            CacheUse {
                reused: 10,
                computed: 0
            }
        );
        assert_eq!(*v2, *v);
    }

    #[test]
    fn keys_depend_on_teacher_and_inputs() {
        let a = key("t1", "embed", [b"x".as_slice(), b"y"].into_iter());
        assert_eq!(a, key("t1", "embed", [b"x".as_slice(), b"y"].into_iter()));
        assert_ne!(a, key("t2", "embed", [b"x".as_slice(), b"y"].into_iter()));
        assert_ne!(a, key("t1", "embed", [b"xy".as_slice()].into_iter()));
    }
}
