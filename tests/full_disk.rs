//! A run whose output folder is on a tiny filesystem fails with a clear "no space left" message
//! naming the file, and the previous checkpoint stays intact and loadable. Needs root (to mount a
//! small tmpfs), which CI has; elsewhere the test says so and does nothing.

mod common;
use common::*;
use std::process::Command;

struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_fails_cleanly_and_keeps_the_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    // One teacher checkpoint (weights, two Adam moments, best weights: 4 × 1.2 MB) fits in 7 MB;
    // writing the next one beside it (atomic: temporary file, then rename) does not.
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=7m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("full_disk test skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _guard = Mount(mnt.clone());
    let out = mnt.join("run");
    let o = run(&["demo", "-q", "--out", out.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    let ck = out.join("checkpoints/teacher.ckpt.safetensors");
    assert!(
        e.contains("No space left on device") && e.contains(ck.to_str().unwrap()),
        "{e}"
    );
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    // The previous checkpoint (after epoch 1) is complete and loadable; no temporary file is left.
    let bytes = std::fs::read(&ck).unwrap();
    let raw = distillery::models::parse_safetensors(&bytes, "ckpt").unwrap();
    assert!(
        raw.meta_json.contains("\"epoch\":1"),
        "{}",
        &raw.meta_json[..200.min(raw.meta_json.len())]
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}
