//! Atomic file output: every file distillery writes goes to a temporary file in the same
//! folder, is flushed to disk (fsync), then renamed over the target, and the folder is synced.
//! A crash or a full disk therefore never leaves a truncated file under the real name.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// The longest name a model, teacher, stage or group may have.
pub const MAX_NAME_LEN: usize = 64;

/// The one rule for names the run folder turns into file names (`models/<name>.safetensors`,
/// `checkpoints/<name>…`): 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `-` or `_`. A group's
/// members are named `<group>-<i>`, so a group checks the name of its last member with it too.
pub fn check_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        crate::error::bad_field(
            field,
            &format!("'{name}' is not a valid name (1-{MAX_NAME_LEN} letters, digits, '-' or '_')"),
        )
    }
}

/// Writes `bytes` to `path` atomically. On failure the previous content of `path` (if any)
/// is untouched and the temporary file is removed.
///
/// Under MPI this is a shared output: rank 0 writes it and every rank waits until it has
/// ([`crate::dist::shared_write`]); inside [`crate::dist::local`] the rank writes its own file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::dist::shared_write(|| write_atomic_here(path, bytes))
}

fn write_atomic_here(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Other(format!("{}: not a file path", path.display())))?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Make the rename itself durable.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes a string atomically.
pub fn write_atomic_str(path: &Path, s: &str) -> Result<()> {
    write_atomic(path, s.as_bytes())
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    if let Ok(m) = fs::metadata(path) {
        if m.is_dir() {
            return Err(Error::Input(format!(
                "{}: is a folder, expected a file",
                path.display()
            )));
        }
    }
    fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Input(format!("{}: file not found", path.display())),
        _ => Error::io(path, e),
    })
}

/// Removes stale temporary files left by a process killed mid-write (under MPI, rank 0 does:
/// another rank's cleaning could remove a file rank 0 is writing).
pub fn clean_temp_files(dir: &Path) {
    if !crate::dist::writes_shared() {
        return;
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic_str(&p, "one").unwrap();
        write_atomic_str(&p, "two").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        let n = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(n, 1);
    }
}
