//! Write batches: the unit of atomicity, and their encoding in commit-log records.
//!
//! Record payload: `count: varint`, then per op `tag: u8` (1 = put, 0 = delete),
//! `key: varint-len bytes`, and for puts `value: varint-len bytes`.

use crate::coding::{get_bytes, get_varint, put_bytes, put_varint};

/// One operation of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Store `value` under `key`.
    Put(Vec<u8>, Vec<u8>),
    /// Erase `key` (a low-level tombstone, dropped by compaction at the last level).
    Delete(Vec<u8>),
}

impl WriteOp {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            WriteOp::Put(k, _) | WriteOp::Delete(k) => k,
        }
    }
}

/// Operations applied atomically by `Engine::write`: after a crash either all or none are present.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub(crate) ops: Vec<WriteOp>,
    /// Sum of key and value lengths, for memtable accounting.
    pub(crate) bytes: usize,
    /// Set by [`WriteBatch::mark_freeing`].
    freeing: bool,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WriteBatch::default()
    }

    /// Adds a put; a later op on the same key in the batch wins.
    pub fn put(&mut self, k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) {
        let (k, v) = (k.into(), v.into());
        self.bytes += k.len() + v.len();
        self.ops.push(WriteOp::Put(k, v));
    }

    /// Adds a delete.
    pub fn delete(&mut self, k: impl Into<Vec<u8>>) {
        let k = k.into();
        self.bytes += k.len();
        self.ops.push(WriteOp::Delete(k));
    }

    /// Marks the batch as one that frees space once compacted although it puts a value: a
    /// delete stored as a small tombstone value over a larger one. Such batches are accepted
    /// while the disk is below the reserve ([`crate::Options::reserve_bytes`]), as deletes
    /// are: deleting is how a full node's data is made smaller.
    pub fn mark_freeing(&mut self) {
        self.freeing = true;
    }

    /// Whether the batch is accepted below the reserve: it only deletes, or was marked with
    /// [`WriteBatch::mark_freeing`].
    pub fn frees_space(&self) -> bool {
        self.freeing || self.ops.iter().all(|op| matches!(op, WriteOp::Delete(_)))
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Appends the record payload of this batch to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        put_varint(out, self.ops.len() as u64);
        for op in &self.ops {
            match op {
                WriteOp::Put(k, v) => {
                    out.push(1);
                    put_bytes(out, k);
                    put_bytes(out, v);
                }
                WriteOp::Delete(k) => {
                    out.push(0);
                    put_bytes(out, k);
                }
            }
        }
    }

    /// Decodes a record payload; `None` when it is malformed.
    pub(crate) fn decode(buf: &[u8]) -> Option<WriteBatch> {
        let mut pos = 0;
        let n = get_varint(buf, &mut pos)?;
        let mut b = WriteBatch::new();
        for _ in 0..n {
            let tag = *buf.get(pos)?;
            pos += 1;
            let k = get_bytes(buf, &mut pos)?.to_vec();
            match tag {
                1 => {
                    let v = get_bytes(buf, &mut pos)?.to_vec();
                    b.put(k, v);
                }
                0 => b.delete(k),
                _ => return None,
            }
        }
        if pos != buf.len() {
            return None;
        }
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_roundtrip_and_garbage_rejected() {
        let mut b = WriteBatch::new();
        b.put("a", "1");
        b.delete("b");
        b.put(vec![0u8; 300], vec![7u8; 1000]);
        let mut enc = Vec::new();
        b.encode_into(&mut enc);
        assert_eq!(WriteBatch::decode(&enc), Some(b));
        assert_eq!(WriteBatch::decode(&enc[..enc.len() - 1]), None);
        let mut bad = enc.clone();
        bad[1] = 9;
        assert_eq!(WriteBatch::decode(&bad), None);
    }
}
