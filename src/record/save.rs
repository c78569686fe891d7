//! Saving a record: buffered, to a temporary file in the save directory, synced, then moved to
//! `<tag>.json` without ever replacing a file there.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::Saved;

/// A file-name-safe form of a tag.
fn file_stem(tag: &str) -> String {
    tag.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Saves `run` as `DIR/<tag>.json`. An existing file is never overwritten: the run is saved as
/// `<tag>-2.json` (then -3, ...) with its tag changed to match, and the caller is told.
///
/// The record is written through a buffer to a temporary file in `DIR` (`.svclb-save-<pid>-<n>.tmp`,
/// left behind only by a save killed before its rename), synced,
/// and then moved to its name without replacing anything there: a reader never sees a partial
/// record under that name, even when the process is killed mid-save. On error the run keeps its tag.
pub fn save<R: Saved>(dir: &Path, run: &mut R) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create save directory {}", dir.display()))?;
    let temp = Temp::create(dir)?;
    let wanted = run.tag().to_string();
    let base = file_stem(&wanted);
    let mut written: Option<String> = None;
    for n in 1u32.. {
        let stem = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        let path = dir.join(format!("{stem}.json"));
        if path.symlink_metadata().is_ok() {
            continue;
        }
        let tag = if n == 1 { wanted.clone() } else { stem };
        if written.as_ref() != Some(&tag) {
            run.set_tag(tag.clone());
            if let Err(e) = temp.write(run) {
                run.set_tag(wanted);
                return Err(e).with_context(|| format!("cannot write {}", temp.path.display()));
            }
            written = Some(tag);
        }
        match publish(&temp.path, &path) {
            Ok(()) => {
                // The new name's directory entry: best effort, the record is in place either way.
                let _ = File::open(dir).and_then(|d| d.sync_all());
                return Ok(path);
            }
            // Taken since the check above, by another save.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                run.set_tag(wanted);
                return Err(e).with_context(|| format!("cannot save {}", path.display()));
            }
        }
    }
    unreachable!("u32 suffixes exhausted")
}

const TEMP_PREFIX: &str = ".svclb-save-";

/// Bytes buffered per `write` of a save (a 2 MB record is about 30 writes).
pub(super) const SAVE_BUFFER: usize = 64 * 1024;

/// A temporary save file: its name is removed on drop (after a hard link; a rename already did).
struct Temp {
    path: PathBuf,
    file: File,
}

impl Temp {
    fn create(dir: &Path) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!("{TEMP_PREFIX}{}-{n}.tmp", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Self { path, file });
                }
                // A leftover of a killed process that had this pid.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        }
    }

    /// Replaces the file's content with `run`, and syncs it.
    fn write<R: Serialize>(&self, run: &R) -> std::io::Result<()> {
        self.file.set_len(0)?;
        let mut file = &self.file;
        std::io::Seek::rewind(&mut file)?;
        write_record(file, run)?;
        self.file.sync_all()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        // The name is this process's (its pid): nobody else made it since a rename freed it.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `run` as pretty JSON and a newline, through a [`SAVE_BUFFER`] buffer: a few large writes.
pub(super) fn write_record<R: Serialize, W: Write>(out: W, run: &R) -> std::io::Result<W> {
    let mut w = std::io::BufWriter::with_capacity(SAVE_BUFFER, out);
    serde_json::to_writer_pretty(&mut w, run)?;
    w.write_all(b"\n")?;
    w.into_inner().map_err(|e| e.into_error())
}

/// Moves `from` to `to` unless `to` exists (then `AlreadyExists`, and nothing changes): one
/// `renameat2(RENAME_NOREPLACE)`, or where the kernel or filesystem lacks it a hard link.
#[cfg(target_os = "linux")]
fn publish(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => publish_by_link(from, to),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn publish(from: &Path, to: &Path) -> std::io::Result<()> {
    publish_by_link(from, to)
}

/// `link(2)` refuses an existing name ([`Temp`] removes the temporary one).
pub(super) fn publish_by_link(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to)
}
