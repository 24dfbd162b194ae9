//! File-system helpers: directory fsync and atomic file replacement.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Makes the directory entries of `dir` (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::io(dir, e))?;
    d.sync_all().map_err(|e| Error::io(dir, e))
}

/// Replaces `dir/name` with `data` atomically: write a temporary file, fsync it, rename it
/// over the old one, fsync the directory. After a crash either the old or the new content is
/// there, never a mix.
pub(crate) fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    // Until the rename, `name` is as it was: a failure (a full disk) leaves no trace.
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // After it, the new contents may or may not be durable: never an error that freeing
    // space would cure (the caller must not undo what `name` may now point at).
    sync_dir(dir).map_err(|e| match e {
        Error::Io { path, source } if source.raw_os_error().is_some() => Error::Io {
            path,
            source: std::io::Error::other(format!("directory sync after the rename: {source}")),
        },
        e => e,
    })
}
