//! The manifest: the durable list of live tables per level, replaced atomically.
//!
//! The whole state is rewritten to `MANIFEST.tmp`, fsynced, renamed over `MANIFEST` and the
//! directory fsynced (`fsutil::write_atomic`). Law: at every instant the `MANIFEST` on disk
//! names a complete, consistent set of tables, each fsynced (file and directory entry) before
//! the manifest naming it was written; commit-log segments numbered `>= log_number` hold every
//! write not yet in those tables.
//!
//! Format: magic `KVDMANIF` (8 bytes), version `u32 LE`, payload, crc32 of everything before it.
//! Payload: `next_file`, `log_number`, table count, then per table `level`, `number`, `size`,
//! `entries` (varints) and `smallest`, `largest` (length-prefixed).

use std::path::Path;

use crate::coding::{get_bytes, get_u32, get_varint, put_bytes, put_varint};
use crate::error::{Error, Result};
use crate::sstable::TableMeta;

pub(crate) const MANIFEST: &str = "MANIFEST";
const MAGIC: &[u8; 8] = b"KVDMANIF";
const VERSION: u32 = 1;

/// The decoded manifest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ManifestData {
    /// No file number below this is ever handed out again.
    pub(crate) next_file: u64,
    /// Oldest commit-log segment still needed.
    pub(crate) log_number: u64,
    /// (level, table).
    pub(crate) tables: Vec<(usize, TableMeta)>,
}

impl ManifestData {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.tables.len() * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        put_varint(&mut out, self.next_file);
        put_varint(&mut out, self.log_number);
        put_varint(&mut out, self.tables.len() as u64);
        for (level, t) in &self.tables {
            put_varint(&mut out, *level as u64);
            put_varint(&mut out, t.number);
            put_varint(&mut out, t.size);
            put_varint(&mut out, t.entries);
            put_bytes(&mut out, &t.smallest);
            put_bytes(&mut out, &t.largest);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(path: &Path, buf: &[u8]) -> Result<ManifestData> {
        let bad = |off: usize, what: &str| Error::corruption(path, off as u64, what.to_string());
        if buf.len() < 16 || &buf[..8] != MAGIC {
            return Err(bad(0, "bad manifest magic"));
        }
        let body = buf.len() - 4;
        if get_u32(buf, body) != Some(crc32fast::hash(&buf[..body])) {
            return Err(bad(body, "manifest checksum mismatch"));
        }
        if get_u32(buf, 8) != Some(VERSION) {
            return Err(bad(8, "unsupported manifest version"));
        }
        let b = &buf[..body];
        let mut p = 12;
        let v = |p: &mut usize| get_varint(b, p).ok_or_else(|| bad(*p, "truncated manifest"));
        let next_file = v(&mut p)?;
        let log_number = v(&mut p)?;
        let n = v(&mut p)?;
        let mut tables = Vec::new();
        for _ in 0..n {
            let level = v(&mut p)? as usize;
            let number = v(&mut p)?;
            let size = v(&mut p)?;
            let entries = v(&mut p)?;
            let smallest = get_bytes(b, &mut p)
                .ok_or_else(|| bad(p, "truncated manifest"))?
                .to_vec();
            let largest = get_bytes(b, &mut p)
                .ok_or_else(|| bad(p, "truncated manifest"))?
                .to_vec();
            tables.push((
                level,
                TableMeta {
                    number,
                    size,
                    smallest,
                    largest,
                    entries,
                },
            ));
        }
        Ok(ManifestData {
            next_file,
            log_number,
            tables,
        })
    }

    /// Reads the manifest of `dir`; `Ok(None)` when there is none.
    pub(crate) fn load(dir: &Path) -> Result<Option<ManifestData>> {
        let path = dir.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(buf) => Ok(Some(ManifestData::decode(&path, &buf)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Durably replaces the manifest of `dir` with this one.
    pub(crate) fn store(&self, dir: &Path) -> Result<()> {
        crate::fsutil::write_atomic(dir, MANIFEST, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_every_bit_flip_is_detected() {
        let m = ManifestData {
            next_file: 42,
            log_number: 40,
            tables: vec![(
                1,
                TableMeta {
                    number: 7,
                    size: 1234,
                    smallest: b"a".to_vec(),
                    largest: b"zz".to_vec(),
                    entries: 10,
                },
            )],
        };
        let enc = m.encode();
        let p = Path::new("MANIFEST");
        assert_eq!(ManifestData::decode(p, &enc).unwrap(), m);
        for i in 0..enc.len() {
            let mut e = enc.clone();
            e[i] ^= 1;
            assert!(ManifestData::decode(p, &e).is_err(), "flip at {i}");
        }
    }
}
