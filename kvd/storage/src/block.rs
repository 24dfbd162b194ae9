//! Data and index blocks: sorted entries with prefix-compressed keys and restart points.
//!
//! Entry: `shared: varint` (bytes shared with the previous key), `unshared: varint`,
//! `vtag: varint` (0 = tombstone, else value length + 1), key suffix, value.
//! After the entries: one `u32 LE` offset per restart point, then the restart count `u32 LE`.
//! At a restart point `shared` is 0, so a reader can binary-search the restart points and decode
//! forward from there.
//!
//! On disk a block is followed by a 5-byte trailer: compression type (0 raw, 1 lz4) and the
//! crc32 of the stored bytes plus that type byte.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::coding::{compare_keys, get_u32, get_varint, put_varint};

/// Bytes of the trailer after each stored block.
pub(crate) const TRAILER: usize = 5;

/// Accumulates sorted entries into one block.
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    last_key: Vec<u8>,
    count: usize,
    restart_interval: usize,
}

impl BlockBuilder {
    pub(crate) fn new(restart_interval: usize) -> BlockBuilder {
        BlockBuilder {
            buf: Vec::with_capacity(4096 + 512),
            restarts: vec![0],
            last_key: Vec::new(),
            count: 0,
            restart_interval: restart_interval.max(1),
        }
    }

    /// Adds an entry; keys must arrive in strictly increasing order.
    pub(crate) fn add(&mut self, key: &[u8], value: Option<&[u8]>) {
        let shared = if self.count.is_multiple_of(self.restart_interval) {
            if self.count > 0 {
                self.restarts.push(self.buf.len() as u32);
            }
            0
        } else {
            key.iter()
                .zip(self.last_key.iter())
                .take_while(|(a, b)| a == b)
                .count()
        };
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, (key.len() - shared) as u64);
        put_varint(&mut self.buf, value.map_or(0, |v| v.len() as u64 + 1));
        self.buf.extend_from_slice(&key[shared..]);
        if let Some(v) = value {
            self.buf.extend_from_slice(v);
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.count += 1;
    }

    /// Estimated size of the finished block.
    pub(crate) fn size_estimate(&self) -> usize {
        self.buf.len() + self.restarts.len() * 4 + 4
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub(crate) fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Finishes the block, returning its bytes, and resets the builder.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts.clear();
        self.restarts.push(0);
        self.last_key.clear();
        self.count = 0;
        self.buf = Vec::with_capacity(4096 + 512);
        out
    }
}

/// A decoded (decompressed, checksum-verified) block.
pub(crate) struct Block {
    data: Vec<u8>,
    /// Offset of the restart array.
    restarts_at: usize,
    num_restarts: usize,
}

/// A decoded entry: the value is a range into the block data, `None` for a tombstone.
pub(crate) type ValueRange = Option<(usize, usize)>;

impl Block {
    /// Parses block contents; `Err(what)` when the layout is inconsistent.
    pub(crate) fn new(data: Vec<u8>) -> Result<Block, &'static str> {
        if data.len() < 4 {
            return Err("block shorter than its restart count");
        }
        let n = get_u32(&data, data.len() - 4).ok_or("block restart count")? as usize;
        let need = n
            .checked_mul(4)
            .and_then(|x| x.checked_add(4))
            .ok_or("restart count")?;
        if n == 0 || need > data.len() {
            return Err("block restart count out of range");
        }
        let restarts_at = data.len() - need;
        Ok(Block {
            data,
            restarts_at,
            num_restarts: n,
        })
    }

    /// Memory charged to the cache.
    pub(crate) fn charge(&self) -> usize {
        self.data.capacity() + 64
    }

    fn restart(&self, i: usize) -> Result<usize, &'static str> {
        let off = get_u32(&self.data, self.restarts_at + 4 * i).ok_or("restart point")? as usize;
        if off > self.restarts_at {
            return Err("restart point past the entries");
        }
        Ok(off)
    }

    /// The full key stored at restart point `i` (no shared prefix there), without copying.
    fn restart_key(&self, i: usize) -> Result<&[u8], &'static str> {
        let d = &self.data[..self.restarts_at];
        let mut p = self.restart(i)?;
        let shared = get_varint(d, &mut p).ok_or("entry header")?;
        let unshared = get_varint(d, &mut p).ok_or("entry header")? as usize;
        get_varint(d, &mut p).ok_or("entry header")?;
        if shared != 0 {
            return Err("restart entry shares a prefix");
        }
        d.get(p..p.checked_add(unshared).ok_or("entry key")?)
            .ok_or("entry key past the block")
    }

    /// Decodes the entry at `pos`, rebuilding its key into `key` (which holds the previous key).
    /// Returns the value range and the position of the next entry.
    fn decode_at(
        &self,
        pos: usize,
        key: &mut Vec<u8>,
    ) -> Result<(ValueRange, usize), &'static str> {
        let d = &self.data[..self.restarts_at];
        let mut p = pos;
        let shared = get_varint(d, &mut p).ok_or("entry header")? as usize;
        let unshared = get_varint(d, &mut p).ok_or("entry header")? as usize;
        let vtag = get_varint(d, &mut p).ok_or("entry header")?;
        if shared > key.len() {
            return Err("entry shares more than the previous key");
        }
        let kend = p.checked_add(unshared).ok_or("entry key")?;
        let suffix = d.get(p..kend).ok_or("entry key past the block")?;
        key.truncate(shared);
        key.extend_from_slice(suffix);
        if vtag == 0 {
            return Ok((None, kend));
        }
        let vlen = usize::try_from(vtag - 1).map_err(|_| "entry value length")?;
        let vend = kend.checked_add(vlen).ok_or("entry value")?;
        if vend > d.len() {
            return Err("entry value past the block");
        }
        Ok((Some((kend, vend)), vend))
    }

    /// An iterator positioned before the first entry.
    pub(crate) fn iter(self: &Arc<Self>) -> BlockIter {
        BlockIter {
            block: self.clone(),
            next: 0,
            key: Vec::new(),
            value: None,
        }
    }
}

/// Walks the entries of a block in order.
pub(crate) struct BlockIter {
    block: Arc<Block>,
    /// Position of the next entry to decode.
    next: usize,
    key: Vec<u8>,
    value: ValueRange,
}

impl BlockIter {
    /// Advances to the next entry; `Ok(false)` at the end.
    pub(crate) fn advance(&mut self) -> Result<bool, &'static str> {
        if self.next >= self.block.restarts_at {
            return Ok(false);
        }
        let (v, next) = self.block.decode_at(self.next, &mut self.key)?;
        self.value = v;
        self.next = next;
        Ok(true)
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    pub(crate) fn value(&self) -> Option<&[u8]> {
        self.value.map(|(s, e)| &self.block.data[s..e])
    }

    /// Positions at the first entry with key >= `target`; `Ok(false)` if there is none.
    pub(crate) fn seek(&mut self, target: &[u8]) -> Result<bool, &'static str> {
        // Binary search for the last restart point whose key is < target.
        let (mut lo, mut hi) = (0usize, self.block.num_restarts);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if compare_keys(self.block.restart_key(mid)?, target) == Ordering::Less {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.next = self.block.restart(lo)?;
        self.key.clear();
        while self.advance()? {
            if compare_keys(&self.key, target) != Ordering::Less {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_seek_and_iterate() {
        let mut b = BlockBuilder::new(4);
        let keys: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("key{:05}", i * 2).into_bytes())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            if i % 7 == 0 {
                b.add(k, None);
            } else {
                b.add(k, Some(format!("v{i}").as_bytes()));
            }
        }
        let block = Arc::new(Block::new(b.finish()).unwrap());
        let mut it = block.iter();
        for (i, k) in keys.iter().enumerate() {
            assert!(it.advance().unwrap());
            assert_eq!(it.key(), k.as_slice());
            if i % 7 == 0 {
                assert_eq!(it.value(), None);
            } else {
                assert_eq!(it.value(), Some(format!("v{i}").as_bytes()));
            }
        }
        assert!(!it.advance().unwrap());
        for i in 0..201 {
            let target = format!("key{i:05}").into_bytes();
            let mut it = block.iter();
            let found = it.seek(&target).unwrap();
            let expect = keys.iter().find(|k| k.as_slice() >= target.as_slice());
            match expect {
                Some(k) => {
                    assert!(found);
                    assert_eq!(it.key(), k.as_slice());
                }
                None => assert!(!found),
            }
        }
    }
}
