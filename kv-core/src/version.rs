//! Versions: version vectors and the dotted sibling set every key is stored as.
//!
//! A key's stored state is a [`SiblingSet`]: a causal context `cc` (a [`VersionVector`]
//! claiming "every dot `(a, 1..=cc[a])` is known here") plus the live siblings, each tagged
//! with the [`Dot`] that minted it. This is the dotted causal container of Almeida et al.,
//! the "DVV set" of Riak 2.0.
//!
//! Why not plain per-server vector clocks: two clients that read the same version and write
//! through the same coordinator would both get the coordinator's counter incremented from the
//! same base, and the second write would look like a descendant of the first, losing it. Here
//! the second write carries the context the client read, which does not cover the first
//! write's dot, so both survive as siblings.
//!
//! Actors are replicas (the daemon uses the node id plus an incarnation suffix). Dots are minted
//! only by a replica applying a client write to its own state for that key, with writes to one
//! key serialized on that replica, so the dots of one actor for one key are contiguous: that is
//! what makes the compact `cc` (one counter per actor) exact.
//!
//! Encodings:
//! - [`SiblingSet::encode`] is compact and canonical: equal sets give equal bytes, because the
//!   node stores these bytes and the Merkle trees hash them.
//! - [`VersionVector::encode_context`] is the opaque string clients read and hand back.
//!
//! Both decoders reject garbage with a [`VersionError`] and never trust a length field beyond
//! the input that remains.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The most siblings an update leaves in a set. A flood of concurrent blind writes to one key
/// would otherwise grow it without bound; see [`SiblingSet::update`] for the policy.
pub const MAX_SIBLINGS: usize = 64;

/// Format byte that opens every encoded sibling set and causal context.
const FORMAT_V1: u8 = 1;

/// Errors from decoding a sibling set or a causal context. Each names what was being read and
/// the byte offset where decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionError {
    /// The input ended while `what` was being read, at byte `offset`.
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Byte offset in the (decoded) input.
        offset: usize,
    },
    /// The first byte is not a known format version.
    UnknownFormat(u8),
    /// A causal context string is not valid base64url (no padding).
    BadBase64(String),
    /// A field holds a value that a canonical encoding never produces.
    Malformed {
        /// What is wrong.
        what: &'static str,
        /// Byte offset in the (decoded) input.
        offset: usize,
    },
    /// Bytes remain after a complete value.
    TrailingBytes {
        /// Byte offset of the first extra byte.
        offset: usize,
    },
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionError::Truncated { what, offset } => {
                write!(f, "input ends inside {what} at byte {offset}")
            }
            VersionError::UnknownFormat(b) => write!(f, "unknown version format byte {b}"),
            VersionError::BadBase64(e) => write!(f, "causal context is not base64url: {e}"),
            VersionError::Malformed { what, offset } => {
                write!(f, "malformed version data at byte {offset}: {what}")
            }
            VersionError::TrailingBytes { offset } => {
                write!(f, "unexpected bytes after the end at byte {offset}")
            }
        }
    }
}

impl std::error::Error for VersionError {}

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Causality {
    /// The left one happened before the right one (the right one descends from it).
    Before,
    /// The left one descends from the right one.
    After,
    /// Both are the same.
    Equal,
    /// Neither descends from the other.
    Concurrent,
}

/// One event: the `counter`-th write that `actor` minted for a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The replica that minted the dot.
    pub actor: String,
    /// Its per-key counter, starting at 1.
    pub counter: u64,
}

impl Dot {
    /// A dot for `actor` at `counter`.
    pub fn new(actor: impl Into<String>, counter: u64) -> Self {
        Dot {
            actor: actor.into(),
            counter,
        }
    }
}

/// A version vector: actor -> counter.
///
/// Law: no entry holds 0 (an absent actor means 0), so equal vectors have equal maps, and the
/// derived `PartialEq` is causal equality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(BTreeMap<String, u64>);

impl VersionVector {
    /// The empty vector (nothing known).
    pub fn new() -> Self {
        VersionVector(BTreeMap::new())
    }

    /// Builds a vector from `(actor, counter)` pairs; zero counters are left out and a repeated
    /// actor keeps its largest counter.
    pub fn from_entries<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = (S, u64)>,
        S: Into<String>,
    {
        let mut vv = VersionVector::new();
        for (actor, counter) in entries {
            vv.raise(actor.into(), counter);
        }
        vv
    }

    /// The counter of `actor` (0 when absent).
    pub fn get(&self, actor: &str) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// Number of actors with a non-zero counter.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no actor has a non-zero counter.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, sorted by actor.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.0.iter().map(|(a, c)| (a.as_str(), *c))
    }

    /// Raises `actor`'s counter to at least `counter`.
    fn raise(&mut self, actor: String, counter: u64) {
        if counter == 0 {
            return;
        }
        let entry = self.0.entry(actor).or_insert(0);
        if *entry < counter {
            *entry = counter;
        }
    }

    /// Increments `actor`'s counter and returns the new dot.
    pub fn increment(&mut self, actor: &str) -> Dot {
        let entry = self.0.entry(actor.to_string()).or_insert(0);
        *entry = entry.saturating_add(1);
        Dot::new(actor, *entry)
    }

    /// Whether the dot is known: `dot.counter <= self[dot.actor]`.
    pub fn covers(&self, dot: &Dot) -> bool {
        dot.counter <= self.get(&dot.actor)
    }

    /// Pointwise maximum.
    ///
    /// Laws: commutative, associative, idempotent; the result descends from both inputs.
    pub fn merge(&self, other: &VersionVector) -> VersionVector {
        let mut out = self.clone();
        out.merge_in(other);
        out
    }

    /// In-place [`merge`](Self::merge).
    pub fn merge_in(&mut self, other: &VersionVector) {
        for (actor, counter) in &other.0 {
            match self.0.get_mut(actor) {
                Some(c) => {
                    if *c < *counter {
                        *c = *counter;
                    }
                }
                None => {
                    self.0.insert(actor.clone(), *counter);
                }
            }
        }
    }

    /// Whether every counter of `other` is at most the matching counter here.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(a, c)| self.get(a) >= *c)
    }

    /// How `self` relates to `other`.
    ///
    /// Laws (a partial order): reflexive (`Equal`), antisymmetric (`Before` one way is `After`
    /// the other way), transitive (`Before` twice is `Before`).
    pub fn compare(&self, other: &VersionVector) -> Causality {
        match (other.descends(self), self.descends(other)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (false, false) => Causality::Concurrent,
        }
    }

    /// Removes `actor`'s entry (used by pruning only).
    fn remove(&mut self, actor: &str) {
        self.0.remove(actor);
    }

    /// Appends the canonical binary form: count, then (actor length, actor bytes, counter)
    /// sorted by actor, all integers as LEB128 varints.
    fn encode_into(&self, out: &mut Vec<u8>) {
        put_varint(out, self.0.len() as u64);
        for (actor, counter) in &self.0 {
            put_varint(out, actor.len() as u64);
            out.extend_from_slice(actor.as_bytes());
            put_varint(out, *counter);
        }
    }

    /// Reads what [`encode_into`](Self::encode_into) wrote, rejecting non-canonical input
    /// (unsorted or repeated actors, zero counters).
    fn decode_from(r: &mut Reader<'_>) -> Result<VersionVector, VersionError> {
        let count = r.varint("vector length")?;
        let mut map = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..count {
            let offset = r.pos;
            let actor = r.string("actor")?;
            let counter = r.varint("counter")?;
            if counter == 0 {
                return Err(VersionError::Malformed {
                    what: "zero counter in a version vector",
                    offset,
                });
            }
            if let Some(prev) = &last {
                if prev.as_str() >= actor.as_str() {
                    return Err(VersionError::Malformed {
                        what: "version vector actors not in strictly ascending order",
                        offset,
                    });
                }
            }
            last = Some(actor.clone());
            map.insert(actor, counter);
        }
        Ok(VersionVector(map))
    }

    /// The opaque causal-context string clients read and hand back: base64url (no padding) of
    /// a format byte followed by the canonical vector. The empty vector is the empty string.
    pub fn encode_context(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        let mut bytes = vec![FORMAT_V1];
        self.encode_into(&mut bytes);
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

/// The causal context a client hands back, as the string [`VersionVector::encode_context`]
/// produced. An empty string is the empty context (a blind write).
///
/// Errors: [`VersionError`] for anything that encoding never produces; never panics.
pub fn decode_context(s: &str) -> Result<VersionVector, VersionError> {
    if s.is_empty() {
        return Ok(VersionVector::new());
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .map_err(|e| VersionError::BadBase64(e.to_string()))?;
    let mut r = Reader::new(&bytes);
    let format = r.byte("format byte")?;
    if format != FORMAT_V1 {
        return Err(VersionError::UnknownFormat(format));
    }
    let vv = VersionVector::decode_from(&mut r)?;
    r.finish()?;
    Ok(vv)
}

/// One version of a key's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sibling {
    /// The event that wrote it.
    pub dot: Dot,
    /// The value, or `None` for a tombstone (a versioned delete).
    pub value: Option<Vec<u8>>,
    /// Wall-clock time of the write at the replica that minted it, in milliseconds. Used only
    /// by opt-in last-writer-wins, the siblings cap and tombstone purging, never for causality.
    pub timestamp_ms: u64,
}

impl Sibling {
    /// Whether this sibling is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// What [`SiblingSet::update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// The dot minted for the new sibling.
    pub dot: Dot,
    /// How many older siblings the [`MAX_SIBLINGS`] cap dropped (the daemon counts these).
    pub dropped: usize,
}

/// Every version of one key that is not known to be overwritten, with the causal context.
///
/// Laws kept by every method:
/// - siblings are sorted by dot and unique (so the derived `PartialEq` and [`encode`](Self::encode)
///   are canonical);
/// - every sibling's dot is covered by `cc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SiblingSet {
    /// Every dot this replica knows of, seen or overwritten.
    cc: VersionVector,
    /// Live versions, sorted by dot.
    siblings: Vec<Sibling>,
}

impl SiblingSet {
    /// The state of a key never written.
    pub fn new() -> Self {
        SiblingSet::default()
    }

    /// The causal context: what a client gets back on read and hands back on write.
    pub fn context(&self) -> &VersionVector {
        &self.cc
    }

    /// All siblings, tombstones included, sorted by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// The live (non-tombstone) values, in dot order.
    pub fn values(&self) -> Vec<&[u8]> {
        self.siblings
            .iter()
            .filter_map(|s| s.value.as_deref())
            .collect()
    }

    /// Whether there is no sibling at all (not even a tombstone).
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty()
    }

    /// Whether no live value remains: every sibling is a tombstone, or there is none.
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// The largest sibling timestamp, if any sibling exists.
    pub fn newest_timestamp(&self) -> Option<u64> {
        self.siblings.iter().map(|s| s.timestamp_ms).max()
    }

    /// Applies a client write at replica `actor`: `value` is the new value (`None` deletes) and
    /// `ctx` the context the client read (empty for a blind write).
    ///
    /// Siblings whose dot `ctx` covers are overwritten; everything in `ctx` becomes causally
    /// before the new write; the new dot is `(actor, cc[actor] + 1)`. A blind write keeps every
    /// existing sibling, and two writes with the same `ctx` through the same actor both survive.
    ///
    /// Siblings cap: if more than [`MAX_SIBLINGS`] siblings would remain, the oldest ones other
    /// than the new write (by timestamp, then dot) are dropped until the cap holds. Their dots
    /// stay in `cc`, so a drop behaves like an overwrite and converges through [`sync`](Self::sync)
    /// like one; the number dropped is returned so it can be counted.
    pub fn update(
        &mut self,
        ctx: &VersionVector,
        actor: &str,
        value: Option<Vec<u8>>,
        now_ms: u64,
    ) -> UpdateOutcome {
        self.siblings.retain(|s| !ctx.covers(&s.dot));
        self.cc.merge_in(ctx);
        let dot = self.cc.increment(actor);
        let sibling = Sibling {
            dot: dot.clone(),
            value,
            timestamp_ms: now_ms,
        };
        // The new dot is above every dot of `actor` known here, but other actors sort after it,
        // so insert at its place to keep the dot order.
        let at = self.siblings.partition_point(|s| s.dot < sibling.dot);
        self.siblings.insert(at, sibling);
        let dropped = self.enforce_cap(&dot);
        UpdateOutcome { dot, dropped }
    }

    /// Drops the oldest siblings other than `keep` beyond [`MAX_SIBLINGS`]; returns how many.
    fn enforce_cap(&mut self, keep: &Dot) -> usize {
        if self.siblings.len() <= MAX_SIBLINGS {
            return 0;
        }
        let excess = self.siblings.len() - MAX_SIBLINGS;
        let mut by_age: Vec<(u64, &Dot)> = self
            .siblings
            .iter()
            .filter(|s| &s.dot != keep)
            .map(|s| (s.timestamp_ms, &s.dot))
            .collect();
        by_age.sort();
        let doomed: BTreeSet<Dot> = by_age
            .into_iter()
            .take(excess)
            .map(|(_, d)| d.clone())
            .collect();
        self.siblings.retain(|s| !doomed.contains(&s.dot));
        doomed.len()
    }

    /// Merges another replica's state for the same key into this one: a sibling stays if both
    /// hold it, or if one holds it and the other's `cc` does not cover its dot (the other has
    /// not seen it, rather than overwritten it); `cc` becomes the merge of both.
    ///
    /// Laws (on the observable result, e.g. [`encode`](Self::encode)): commutative, associative,
    /// idempotent, and a sibling that neither side's context overwrote is never dropped.
    pub fn sync(&mut self, other: &SiblingSet) {
        let mine = std::mem::take(&mut self.siblings);
        let mut out = Vec::with_capacity(mine.len().max(other.siblings.len()));
        let mut a = mine.into_iter().peekable();
        let mut b = other.siblings.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => match x.dot.cmp(&y.dot) {
                    std::cmp::Ordering::Equal => {
                        // Same dot means the same write; keep ours (identical by construction).
                        if let Some(x) = a.next() {
                            out.push(x);
                        }
                        b.next();
                    }
                    std::cmp::Ordering::Less => {
                        if let Some(x) = a.next() {
                            if !other.cc.covers(&x.dot) {
                                out.push(x);
                            }
                        }
                    }
                    std::cmp::Ordering::Greater => {
                        if let Some(y) = b.next() {
                            if !self.cc.covers(&y.dot) {
                                out.push(y.clone());
                            }
                        }
                    }
                },
                (Some(_), None) => {
                    if let Some(x) = a.next() {
                        if !other.cc.covers(&x.dot) {
                            out.push(x);
                        }
                    }
                }
                (None, Some(_)) => {
                    if let Some(y) = b.next() {
                        if !self.cc.covers(&y.dot) {
                            out.push(y.clone());
                        }
                    }
                }
                (None, None) => break,
            }
        }
        self.siblings = out;
        self.cc.merge_in(&other.cc);
    }

    /// [`sync`](Self::sync) returning a new set.
    pub fn synced(&self, other: &SiblingSet) -> SiblingSet {
        let mut out = self.clone();
        out.sync(other);
        out
    }

    /// Last writer wins, for users who opt in: the sibling with the largest timestamp, ties
    /// broken by the larger dot. `None` when there is no sibling. The winner may be a tombstone.
    pub fn lww(&self) -> Option<&Sibling> {
        self.siblings
            .iter()
            .max_by(|x, y| (x.timestamp_ms, &x.dot).cmp(&(y.timestamp_ms, &y.dot)))
    }

    /// Reconciles the siblings with `resolve`, which gets the live values in dot order and
    /// returns the value to keep (`None` to delete). Returns that value with the context to write
    /// it under, so that the write overwrites every sibling seen here.
    pub fn reconcile<F>(&self, resolve: F) -> (Option<Vec<u8>>, VersionVector)
    where
        F: FnOnce(Vec<&[u8]>) -> Option<Vec<u8>>,
    {
        (resolve(self.values()), self.cc.clone())
    }

    /// Whether the set holds only tombstones, the newest written at least `grace_ms` before
    /// `now_ms`: the daemon may then purge it once every replica has it.
    pub fn tombstone_only_older_than(&self, now_ms: u64, grace_ms: u64) -> bool {
        match self.newest_timestamp() {
            Some(newest) => self.is_deleted() && now_ms.saturating_sub(newest) >= grace_ms,
            None => false,
        }
    }

    /// Drops the context entries of actors that left the cluster, but only while the context is
    /// longer than `max_len`, and never an actor that a sibling's dot names (so the law "every
    /// dot is covered" holds). Returns how many entries were dropped.
    ///
    /// Remaining risk: a replica that still holds a sibling of a pruned actor which this set had
    /// overwritten would, on [`sync`](Self::sync), bring it back as a sibling (a resurrection, not
    /// a loss), because the pruned context no longer covers it. Pruning is therefore only for
    /// actors that can mint no more dots (their node left), and should run after anti-entropy
    /// has converged the key; pruning also takes the set outside the laws of `sync` (a pruned and
    /// an unpruned replica converge only after both prune).
    pub fn prune(&mut self, removed_actors: &BTreeSet<String>, max_len: usize) -> usize {
        if self.cc.len() <= max_len {
            return 0;
        }
        let carried: BTreeSet<&str> = self.siblings.iter().map(|s| s.dot.actor.as_str()).collect();
        let doomed: Vec<String> = self
            .cc
            .iter()
            .map(|(a, _)| a)
            .filter(|a| removed_actors.contains(*a) && !carried.contains(a))
            .map(str::to_string)
            .collect();
        for actor in &doomed {
            self.cc.remove(actor);
        }
        doomed.len()
    }

    /// Canonical binary form: format byte, context, sibling count, then per sibling (sorted by
    /// dot) the index of its actor in the context, its counter, its timestamp, a tag (0
    /// tombstone, 1 value) and for a value its length and bytes. Integers are LEB128 varints.
    pub fn encode(&self) -> Vec<u8> {
        let value_bytes: usize = self
            .siblings
            .iter()
            .map(|s| s.value.as_ref().map_or(0, Vec::len) + 24)
            .sum();
        let mut out = Vec::with_capacity(16 + self.cc.len() * 16 + value_bytes);
        out.push(FORMAT_V1);
        self.cc.encode_into(&mut out);
        put_varint(&mut out, self.siblings.len() as u64);
        // The context is sorted by actor; a dot's actor is stored as its position there.
        let index: BTreeMap<&str, usize> = self
            .cc
            .iter()
            .enumerate()
            .map(|(i, (a, _))| (a, i))
            .collect();
        for s in &self.siblings {
            let i = index.get(s.dot.actor.as_str()).copied().unwrap_or(0);
            put_varint(&mut out, i as u64);
            put_varint(&mut out, s.dot.counter);
            put_varint(&mut out, s.timestamp_ms);
            match &s.value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    put_varint(&mut out, v.len() as u64);
                    out.extend_from_slice(v);
                }
            }
        }
        out
    }

    /// Decodes what [`encode`](Self::encode) produced.
    ///
    /// Errors: [`VersionError`] for truncated input, trailing bytes, or anything a canonical
    /// encoding never holds (unsorted entries, a dot not covered by the context, zero
    /// counters). Never panics and never allocates more than the input's size.
    pub fn decode(bytes: &[u8]) -> Result<SiblingSet, VersionError> {
        let mut r = Reader::new(bytes);
        let format = r.byte("format byte")?;
        if format != FORMAT_V1 {
            return Err(VersionError::UnknownFormat(format));
        }
        let cc = VersionVector::decode_from(&mut r)?;
        let actors: Vec<&str> = cc.iter().map(|(a, _)| a).collect();
        let count = r.varint("sibling count")?;
        let mut siblings: Vec<Sibling> = Vec::new();
        for _ in 0..count {
            let offset = r.pos;
            let index = r.varint("dot actor index")?;
            let actor = usize::try_from(index)
                .ok()
                .and_then(|i| actors.get(i))
                .ok_or(VersionError::Malformed {
                    what: "dot actor index outside the context",
                    offset,
                })?;
            let counter = r.varint("dot counter")?;
            let dot = Dot::new(*actor, counter);
            if counter == 0 || !cc.covers(&dot) {
                return Err(VersionError::Malformed {
                    what: "dot counter zero or not covered by the context",
                    offset,
                });
            }
            if let Some(prev) = siblings.last() {
                if prev.dot >= dot {
                    return Err(VersionError::Malformed {
                        what: "siblings not in strictly ascending dot order",
                        offset,
                    });
                }
            }
            let timestamp_ms = r.varint("timestamp")?;
            let tag_offset = r.pos;
            let value = match r.byte("value tag")? {
                0 => None,
                1 => {
                    let len = r.varint("value length")?;
                    Some(r.bytes(len, "value")?.to_vec())
                }
                _ => {
                    return Err(VersionError::Malformed {
                        what: "value tag is neither 0 nor 1",
                        offset: tag_offset,
                    })
                }
            };
            siblings.push(Sibling {
                dot,
                value,
                timestamp_ms,
            });
        }
        r.finish()?;
        Ok(SiblingSet { cc, siblings })
    }
}

impl Serialize for SiblingSet {
    /// Serialized as its canonical bytes.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.encode())
    }
}

impl<'de> Deserialize<'de> for SiblingSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(deserializer)?;
        SiblingSet::decode(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Appends `v` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A bounds-checked cursor over input bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, VersionError> {
        let b = *self.buf.get(self.pos).ok_or(VersionError::Truncated {
            what,
            offset: self.pos,
        })?;
        self.pos += 1;
        Ok(b)
    }

    /// A minimal LEB128 varint of at most 10 bytes that fits in a u64.
    fn varint(&mut self, what: &'static str) -> Result<u64, VersionError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10u32 {
            let b = self.byte(what)?;
            let low = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(VersionError::Malformed {
                    what: "varint overflows 64 bits",
                    offset: start,
                });
            }
            value |= low << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(VersionError::Malformed {
                        what: "varint not in its shortest form",
                        offset: start,
                    });
                }
                return Ok(value);
            }
        }
        Err(VersionError::Malformed {
            what: "varint longer than 10 bytes",
            offset: start,
        })
    }

    /// `len` bytes, checked against what remains before anything is allocated.
    fn bytes(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], VersionError> {
        let remaining = self.buf.len() - self.pos;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= remaining)
            .ok_or(VersionError::Truncated {
                what,
                offset: self.pos,
            })?;
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    fn string(&mut self, what: &'static str) -> Result<String, VersionError> {
        let len = self.varint(what)?;
        let offset = self.pos;
        let raw = self.bytes(len, what)?;
        std::str::from_utf8(raw)
            .map(str::to_string)
            .map_err(|_| VersionError::Malformed {
                what: "actor is not UTF-8",
                offset,
            })
    }

    fn finish(&self) -> Result<(), VersionError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(VersionError::TrailingBytes { offset: self.pos })
        }
    }
}
