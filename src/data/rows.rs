//! [`Rows`]: f32 rows held in memory or mapped from a file.

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// `n × cols` f32 values (features, teacher outputs), shared cheaply (clones share one buffer):
/// held in memory, or a finished cache file mapped into memory, so that the operating system reads its
/// pages as training touches them and drops them under memory pressure; a cache larger than
/// memory never has to fit in it.
#[derive(Clone)]
pub enum Rows {
    /// Values held in memory.
    Owned(Arc<Vec<f32>>),
    /// A finished cache file (little-endian f32, mapped read-only).
    Mapped(Arc<memmap2::Mmap>),
    /// Values owned by someone else and read in place (a NumPy array passed from Python).
    Borrowed(Arc<dyn AsRef<[f32]> + Send + Sync>),
}

impl Rows {
    /// Maps a finished cache file of `len` values; `None` when it is absent or of another
    /// size (or on a big-endian CPU, where the bytes are not f32 values as they lie).
    pub fn map(path: &Path, len: usize) -> Result<Option<Rows>> {
        if !path.exists() || cfg!(target_endian = "big") {
            return Ok(None);
        }
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let size = f.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
        if size != len * 4 {
            return Ok(None);
        }
        if len == 0 {
            return Ok(Some(Rows::from(Vec::new())));
        }
        // SAFETY: the file is a finished cache file, written whole under another name and
        // renamed, never written again; the map is read-only. (Another process truncating it
        // under a running job would be outside what distillery supports, as for any input.)
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        Ok(Some(Rows::Mapped(Arc::new(map))))
    }
}

impl From<Vec<f32>> for Rows {
    fn from(v: Vec<f32>) -> Rows {
        Rows::Owned(Arc::new(v))
    }
}

impl std::ops::Deref for Rows {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Rows::Owned(v) => v,
            Rows::Mapped(m) => {
                let b: &[u8] = m;
                assert!(
                    (b.as_ptr() as usize).is_multiple_of(4),
                    "a mapped file starts on a page"
                );
                // SAFETY: the map is page-aligned (asserted), its length a multiple of 4 (checked
                // in `map`), every bit pattern is a valid f32, and the bytes live as long as `m`.
                unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len() / 4) }
            }
            Rows::Borrowed(b) => (**b).as_ref(),
        }
    }
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Rows::Owned(_) => "in memory",
            Rows::Mapped(_) => "mapped",
            Rows::Borrowed(_) => "borrowed",
        };
        write!(f, "Rows({} values, {kind})", self.len())
    }
}

impl std::ops::DerefMut for Rows {
    /// Mutable values: shared ones are copied first (copy on write), and a mapped file is
    /// read into memory (it is never written through), as are borrowed values.
    fn deref_mut(&mut self) -> &mut [f32] {
        if !matches!(self, Rows::Owned(_)) {
            *self = Rows::from(self.to_vec());
        }
        match self {
            Rows::Owned(v) => Arc::make_mut(v).as_mut_slice(),
            _ => unreachable!("converted above"),
        }
    }
}

impl PartialEq for Rows {
    fn eq(&self, other: &Rows) -> bool {
        **self == **other
    }
}

impl Default for Rows {
    fn default() -> Rows {
        Rows::from(Vec::new())
    }
}
