//! A cursor that carves structured inputs (keys, values, entries, choices) out of the fuzzer's
//! bytes, so a check can build valid data and compare what the readers give back against it.

/// Reads from the fuzzer's bytes; once they run out every read yields zeros or empties, so a
/// target never has to handle "not enough input".
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte (0 when none is left).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A little-endian u16 from two bytes.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.byte()) | (u16::from(self.byte()) << 8)
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A byte string whose length (at most `max`) is read first.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.byte()) % (max + 1);
        self.take(n)
    }

    /// A byte string with a two-byte length, for larger parts (block contents).
    pub fn long_bytes(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u16()) % (max + 1);
        self.take(n)
    }

    /// Everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Sorted, distinct entries (key, value or tombstone) carved from the input: at most `max`.
pub fn entries(input: &mut Input<'_>, max: usize) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let n = usize::from(input.byte()) % (max + 1);
    let mut map = std::collections::BTreeMap::new();
    for _ in 0..n {
        let key = input.bytes(24).to_vec();
        let value = if input.byte().is_multiple_of(5) {
            None
        } else {
            Some(input.bytes(64).to_vec())
        };
        map.insert(key, value);
    }
    map.into_iter().collect()
}
