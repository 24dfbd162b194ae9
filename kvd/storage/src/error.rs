//! The one error type of the storage engine: every failure names what happened and where.

use std::fmt;
use std::path::PathBuf;

/// Everything the engine can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call on `path` failed.
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Stored bytes failed a check (checksum, framing, magic, ordering) at `file`:`offset`.
    Corruption {
        /// The file holding the bad bytes.
        file: PathBuf,
        /// Byte offset of the bad record or block in that file.
        offset: u64,
        /// What check failed.
        what: String,
    },
    /// A durability step (fsync, manifest edit) failed earlier; the engine refuses all writes
    /// since it can no longer promise what is on disk.
    Poisoned(String),
    /// A key or value exceeds the engine's limits.
    TooLarge {
        /// "key" or "value".
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The engine was closed (or is closing).
    Closed,
    /// The data directory is not usable as it is (e.g. data files without a manifest).
    InvalidDir {
        /// The directory.
        dir: PathBuf,
        /// Why it was refused.
        why: String,
    },
    /// A bad argument or option.
    InvalidArgument(String),
    /// The disk is full (or the quota is used up): the write was refused, nothing of it was
    /// kept, and the engine is not poisoned: writes succeed again once space is freed.
    NoSpace(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether this is the file system running out of space (ENOSPC, or EDQUOT for a quota):
    /// an error that freeing space cures, unlike a failing disk.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::NoSpace(_) => true,
            Error::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            _ => false,
        }
    }

    /// `self` as [`Error::NoSpace`] when it is one (see [`Error::is_no_space`]).
    pub(crate) fn into_no_space(self) -> Error {
        match self {
            Error::Io { .. } if self.is_no_space() => Error::NoSpace(self.to_string()),
            e => e,
        }
    }

    /// A corruption report for `file` at `offset`.
    pub(crate) fn corruption(
        file: impl Into<PathBuf>,
        offset: u64,
        what: impl Into<String>,
    ) -> Error {
        Error::Corruption {
            file: file.into(),
            offset,
            what: what.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "I/O error on {}: {source}", path.display()),
            Error::Corruption { file, offset, what } => {
                write!(
                    f,
                    "corruption in {} at offset {offset}: {what}",
                    file.display()
                )
            }
            Error::Poisoned(why) => {
                write!(f, "storage engine is poisoned and refuses writes: {why}")
            }
            Error::TooLarge { what, len, max } => {
                write!(f, "{what} of {len} bytes exceeds the limit of {max} bytes")
            }
            Error::Closed => write!(f, "storage engine is closed"),
            Error::InvalidDir { dir, why } => {
                write!(f, "data directory {} is not usable: {why}", dir.display())
            }
            Error::InvalidArgument(s) => write!(f, "invalid argument: {s}"),
            Error::NoSpace(why) => write!(
                f,
                "out of disk space ({why}); the write was not applied, reads go on, and \
                 writes resume once space is freed"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
