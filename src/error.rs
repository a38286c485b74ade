//! One error type for the whole library. Every variant names what went wrong
//! and, where it helps, what the user can do about it.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}{}", io_hint(path, source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A model or output file whose bytes do not follow its format.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    /// The file is fine but uses something llmq-gpu does not handle yet.
    #[error("{path}: unsupported: {msg}")]
    Unsupported { path: PathBuf, msg: String },

    #[error("tensor '{name}' not found in {path}")]
    MissingTensor { path: PathBuf, name: String },

    /// A tensor whose values cannot be quantized (NaN, Inf).
    #[error("tensor '{name}': {msg}")]
    BadTensor { name: String, msg: String },

    /// A user setting that cannot work (bits out of range, group size, ...).
    #[error("invalid setting: {0}")]
    Config(String),

    /// No adapter, device request failed, device lost, timeouts, limits.
    #[error("GPU: {0}")]
    Gpu(String),

    #[error("cancelled")]
    Cancelled,
}

/// What to do about the I/O failures users meet most, and a word on
/// temporary output files (whose names they never chose).
fn io_hint(path: &std::path::Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let what = match e.kind() {
        K::StorageFull => " (the disk is full: free space or write elsewhere)",
        K::FileTooLarge => {
            " (over the file-size limit, `ulimit -f`, or the filesystem's largest file)"
        }
        K::ReadOnlyFilesystem => " (a read-only filesystem: write elsewhere)",
        K::PermissionDenied => " (no permission: check the folder's owner and mode)",
        _ => "",
    };
    let temp = if path.to_string_lossy().contains(".llmq-tmp-") {
        "; this was the run's temporary output, deleted: nothing was kept"
    } else {
        ""
    };
    format!("{what}{temp}")
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn unsupported(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
