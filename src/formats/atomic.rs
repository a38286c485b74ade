//! All-or-nothing output folders: write into a hidden folder beside the
//! target, fsync, then rename into place. A failed or interrupted run leaves
//! neither a half-written model nor the temporary folder behind.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tempfile::TempDir;

/// Temporary outputs being written now, so that a process stopped by a
/// signal can delete them before it exits ([`remove_pending`]).
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Registers a temporary output in [`PENDING`] while it lives.
struct Tracked(PathBuf);

impl Tracked {
    fn new(path: &Path) -> Self {
        PENDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.to_path_buf());
        Self(path.to_path_buf())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|q| *q != self.0);
    }
}

/// Deletes every temporary output still being written (staging folders,
/// temporary files) and returns how many there were: for a process about
/// to exit on a signal, which runs no destructors.
pub fn remove_pending() -> usize {
    let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    for path in p.iter() {
        if !path.is_dir() {
            let _ = std::fs::remove_file(path);
            continue;
        }
        // The writer may still be adding files: renamed away first, the
        // folder takes no new ones (they are opened by path), so removing
        // it cannot race them.
        let mut doomed = path.as_os_str().to_owned();
        doomed.push("-deleting");
        let doomed = PathBuf::from(doomed);
        let gone = if std::fs::rename(path, &doomed).is_ok() {
            &doomed
        } else {
            path
        };
        for _ in 0..10 {
            if std::fs::remove_dir_all(gone).is_ok() || !gone.exists() {
                break;
            }
        }
    }
    let n = p.len();
    p.clear();
    n
}

/// A folder being written beside its final place. Dropping it without
/// [`StagingDir::commit`] deletes it with everything inside.
pub struct StagingDir {
    _tracked: Tracked,
    dir: TempDir,
    out: PathBuf,
    overwrite: bool,
}

impl StagingDir {
    /// Creates `.NAME.llmq-tmp-<pid>-<random>` in `out`'s parent. Fails if
    /// `out` exists and `overwrite` is false.
    pub fn create(out: &Path, overwrite: bool) -> Result<Self> {
        check_target(out, overwrite)?;
        let parent = parent_of(out);
        // Like `mkdir -p`: a missing parent folder is created, not an error.
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        warn_stale_staging(&parent, out);
        let prefix = format!(".{}.llmq-tmp-{}-", file_name(out), std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        Ok(Self {
            _tracked: Tracked::new(dir.path()),
            dir,
            out: out.to_path_buf(),
            overwrite,
        })
    }

    /// The temporary folder to write into.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The final destination.
    pub fn target(&self) -> &Path {
        &self.out
    }

    /// Syncs the folder and renames it to the target. With `overwrite`, an
    /// existing target is moved aside first and deleted only once the new
    /// one is in place, so some complete version exists at every moment.
    pub fn commit(self) -> Result<PathBuf> {
        let out = self.out.clone();
        check_target(&out, self.overwrite)?;
        sync_dir(self.dir.path())?;
        let staged = self.dir.keep();
        let result = replace(&staged, &out);
        if result.is_err() {
            // Best effort: the error that matters is the rename's.
            let _ = std::fs::remove_dir_all(&staged);
        }
        result?;
        sync_dir(&parent_of(&out))?;
        Ok(out)
    }
}

/// Staging folders of `out` left by runs that were killed (SIGKILL, power
/// loss) are never reused: each is reported with what deleting it frees.
fn warn_stale_staging(parent: &Path, out: &Path) {
    let prefix = format!(".{}.llmq-tmp-", file_name(out));
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(process_alive) {
            continue;
        }
        let bytes: u64 = std::fs::read_dir(e.path())
            .map(|d| {
                d.flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        log::warn!(
            "{}: left by an interrupted run and not reused; delete it to free {:.1} MB",
            e.path().display(),
            bytes as f64 / 1e6
        );
    }
}

/// Whether process `pid` still runs (Unix; elsewhere assumed so, never warned).
pub(crate) fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Writes one file all-or-nothing: `write` fills a temporary file beside
/// `out`, which is synced and renamed into place only if it succeeds (on
/// error it is deleted). Fails if `out` exists and `overwrite` is false.
pub fn write_file(
    out: &Path,
    overwrite: bool,
    write: impl FnOnce(&mut std::io::BufWriter<&File>, &Path) -> Result<()>,
) -> Result<()> {
    check_target(out, overwrite)?;
    let parent = parent_of(out);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.llmq-tmp-", file_name(out)))
        .tempfile_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    let _tracked = Tracked::new(tmp.path());
    let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
    write(&mut w, tmp.path())?;
    std::io::Write::flush(&mut w).map_err(|e| Error::io(tmp.path(), e))?;
    drop(w);
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(out).map_err(|e| Error::io(out, e.error))?;
    sync_dir(&parent)
}

fn replace(staged: &Path, out: &Path) -> Result<()> {
    if std::fs::symlink_metadata(out).is_err() {
        return std::fs::rename(staged, out).map_err(|e| Error::io(out, e));
    }
    let old = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.llmq-old-{}-",
            file_name(out),
            std::process::id()
        ))
        .tempdir_in(parent_of(out))
        .map_err(|e| Error::io(out, e))?
        .keep();
    // rename() will not replace a non-empty folder, so move the old one
    // into a fresh empty folder's place first.
    std::fs::remove_dir(&old).map_err(|e| Error::io(&old, e))?;
    std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
    if let Err(e) = std::fs::rename(staged, out) {
        let _ = std::fs::rename(&old, out);
        return Err(Error::io(out, e));
    }
    let removed = if old.is_dir() {
        std::fs::remove_dir_all(&old)
    } else {
        std::fs::remove_file(&old)
    };
    removed.map_err(|e| Error::io(&old, e))
}

fn check_target(out: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::Config(format!(
            "{} already exists; use --overwrite to replace it",
            out.display()
        )));
    }
    Ok(())
}

/// The folder `path` lies in (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path`'s last component, as the hidden names beside it spell it.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into())
}

/// Flushes a file's data to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Flushes a folder's entries (new names) to disk. Windows cannot open
/// folders for syncing; renames there are durable enough without it.
pub fn sync_dir(path: &Path) -> Result<()> {
    if cfg!(windows) {
        return Ok(());
    }
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Refuses an output path that is the source model itself, a folder
/// holding it (replacing it would delete the source), or a path inside the
/// source folder (the output would become part of the model it came from).
/// Paths that do not exist yet are resolved through their nearest existing
/// ancestor, so `--out model/q` is caught before `model/q` exists.
pub fn refuse_source_as_target(src: &Path, out: &Path) -> Result<()> {
    let (Ok(src_abs), Some(out_abs)) = (src.canonicalize(), resolve(out)) else {
        return Ok(());
    };
    if src_abs.starts_with(&out_abs) {
        return Err(Error::Config(format!(
            "--out {} is (or holds) the source model {}; write to another path",
            out.display(),
            src.display()
        )));
    }
    if src_abs.is_dir() && out_abs.starts_with(&src_abs) {
        return Err(Error::Config(format!(
            "--out {} is inside the source model folder {}; write outside it (the output \
             would be mixed into the model it was made from)",
            out.display(),
            src.display()
        )));
    }
    Ok(())
}

/// `path` made absolute with symlinks resolved as far as it exists, the
/// rest appended as written (`..` taken lexically).
fn resolve(path: &Path) -> Option<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let mut base = abs.as_path();
    let mut tail = Vec::new();
    let mut resolved = loop {
        if let Ok(c) = base.canonicalize() {
            break c;
        }
        tail.push(base.components().next_back()?);
        base = base.parent()?;
    };
    for c in tail.into_iter().rev() {
        match c {
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            std::path::Component::Normal(n) => resolved.push(n),
            _ => {}
        }
    }
    Some(resolved)
}
