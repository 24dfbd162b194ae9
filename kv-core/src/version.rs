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

use crate::b64url;
use crate::counter::{Counter, CounterError};
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
/// Laws: entries are sorted by actor, each actor once, and no entry holds 0 (an absent actor
/// means 0), so equal vectors have equal entries, and the derived `PartialEq` is causal
/// equality. A sorted vector, not a map: a vector holds a handful of actors, and a map's
/// node allocation and walk cost more than the search (JSON still shows a map).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "BTreeMap<String, u64>", into = "BTreeMap<String, u64>")]
pub struct VersionVector(Vec<(String, u64)>);

impl From<BTreeMap<String, u64>> for VersionVector {
    /// Drops zero entries, keeping the law.
    fn from(map: BTreeMap<String, u64>) -> Self {
        VersionVector(map.into_iter().filter(|(_, c)| *c > 0).collect())
    }
}

impl From<VersionVector> for BTreeMap<String, u64> {
    fn from(vv: VersionVector) -> Self {
        vv.0.into_iter().collect()
    }
}

impl fmt::Display for VersionVector {
    /// The seed's notation: `[Sx:2,Sy:1]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, (actor, counter)) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{actor}:{counter}")?;
        }
        write!(f, "]")
    }
}

impl VersionVector {
    /// The empty vector (nothing known).
    pub fn new() -> Self {
        VersionVector(Vec::new())
    }

    /// Where `actor` is, or where it would go.
    fn find(&self, actor: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(a, _)| a.as_str().cmp(actor))
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
        self.find(actor).map_or(0, |i| self.0[i].1)
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
        match self.find(&actor) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(counter),
            Err(i) => self.0.insert(i, (actor, counter)),
        }
    }

    /// Increments `actor`'s counter and returns the new dot.
    pub fn increment(&mut self, actor: &str) -> Dot {
        let counter = match self.find(actor) {
            Ok(i) => {
                let c = &mut self.0[i].1;
                *c = c.saturating_add(1);
                *c
            }
            Err(i) => {
                self.0.insert(i, (actor.to_string(), 1));
                1
            }
        };
        Dot::new(actor, counter)
    }

    /// Adds `dot` to the vector: raises its actor's counter to at least the dot's.
    pub fn witness(&mut self, dot: &Dot) {
        match self.find(&dot.actor) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(dot.counter),
            Err(_) => self.raise(dot.actor.clone(), dot.counter),
        }
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
            match self.find(actor) {
                Ok(i) => self.0[i].1 = self.0[i].1.max(*counter),
                Err(i) => self.0.insert(i, (actor.clone(), *counter)),
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
        if let Ok(i) = self.find(actor) {
            self.0.remove(i);
        }
    }

    /// Appends the canonical binary form: count, then (actor length, actor bytes, counter)
    /// sorted by actor, all integers as LEB128 varints.
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_witnessing_into(out, None);
    }

    /// [`encode_into`](Self::encode_into) of the vector with `dot` witnessed (see
    /// [`witness`](Self::witness)), without making that vector.
    fn encode_witnessing_into(&self, out: &mut Vec<u8>, dot: Option<&Dot>) {
        let entry = |out: &mut Vec<u8>, actor: &str, counter: u64| {
            put_varint(out, actor.len() as u64);
            out.extend_from_slice(actor.as_bytes());
            put_varint(out, counter);
        };
        let Some(dot) = dot else {
            put_varint(out, self.0.len() as u64);
            for (actor, counter) in &self.0 {
                entry(out, actor, *counter);
            }
            return;
        };
        let at = self.find(&dot.actor);
        put_varint(out, (self.0.len() + usize::from(at.is_err())) as u64);
        let i = match at {
            Ok(i) | Err(i) => i,
        };
        for (actor, counter) in &self.0[..i] {
            entry(out, actor, *counter);
        }
        let rest = match at {
            Ok(i) => {
                entry(out, &dot.actor, self.0[i].1.max(dot.counter));
                &self.0[i + 1..]
            }
            Err(i) => {
                entry(out, &dot.actor, dot.counter);
                &self.0[i..]
            }
        };
        for (actor, counter) in rest {
            entry(out, actor, *counter);
        }
    }

    /// Reads what [`encode_into`](Self::encode_into) wrote, rejecting non-canonical input
    /// (unsorted or repeated actors, zero counters).
    fn decode_from(r: &mut Reader<'_>) -> Result<VersionVector, VersionError> {
        decode_entries(r, str::to_string).map(VersionVector)
    }

    /// The opaque causal-context string clients read and hand back: base64url (no padding) of
    /// a format byte followed by the canonical vector. The empty vector is the empty string.
    pub fn encode_context(&self) -> String {
        self.encode_context_witnessing(None)
    }

    /// The [`encode_context`](Self::encode_context) of this vector with `dot` witnessed (see
    /// [`witness`](Self::witness)), without making that vector.
    pub fn encode_context_witnessing(&self, dot: Option<&Dot>) -> String {
        if self.is_empty() && dot.is_none() {
            return String::new();
        }
        thread_local! {
            /// The binary form before base64, kept for its allocation (one per answer).
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| {
            let mut bytes = scratch.borrow_mut();
            bytes.clear();
            // Format byte, count, and per actor its length, bytes and counter (varints).
            bytes.push(FORMAT_V1);
            self.encode_witnessing_into(&mut bytes, dot);
            b64url::encode(&bytes)
        })
    }
}

/// The entries of an encoded version vector (see `VersionVector::encode_into`), each actor
/// made by `make` from the input's string (owned, or the borrowed string itself). Rejects
/// non-canonical input (unsorted or repeated actors, zero counters).
fn decode_entries<'a, A: AsRef<str>>(
    r: &mut Reader<'a>,
    make: impl Fn(&'a str) -> A,
) -> Result<Vec<(A, u64)>, VersionError> {
    let count = r.varint("vector length")?;
    let mut map: Vec<(A, u64)> = Vec::with_capacity(count.min(64) as usize);
    for _ in 0..count {
        let offset = r.pos;
        let actor = r.str("actor")?;
        let counter = r.varint("counter")?;
        if counter == 0 {
            return Err(VersionError::Malformed {
                what: "zero counter in a version vector",
                offset,
            });
        }
        // Strictly ascending: the previous actor is the map's last key.
        if map.last().is_some_and(|(prev, _)| prev.as_ref() >= actor) {
            return Err(VersionError::Malformed {
                what: "version vector actors not in strictly ascending order",
                offset,
            });
        }
        map.push((make(actor), counter));
    }
    Ok(map)
}

/// The causal context a client hands back, as the string [`VersionVector::encode_context`]
/// produced. An empty string is the empty context (a blind write).
///
/// Errors: [`VersionError`] for anything that encoding never produces; never panics.
pub fn decode_context(s: &str) -> Result<VersionVector, VersionError> {
    if s.is_empty() {
        return Ok(VersionVector::new());
    }
    // Most contexts name a few actors: those decode on the stack.
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let room = b64url::decoded_len(s.len());
    let buf = if room <= stack.len() {
        &mut stack[..]
    } else {
        heap.resize(room, 0);
        &mut heap[..]
    };
    let len = b64url::decode_to_slice(s.as_bytes(), buf)
        .map_err(|e| VersionError::BadBase64(e.to_string()))?;
    let mut r = Reader::new(&buf[..len]);
    let format = r.byte("format byte")?;
    if format != FORMAT_V1 {
        return Err(VersionError::UnknownFormat(format));
    }
    let vv = VersionVector::decode_from(&mut r)?;
    r.finish()?;
    // Law: one string per context (string equality is context equality). The empty vector
    // is only ever the empty string, never a format byte with a zero count.
    if vv.is_empty() {
        return Err(VersionError::Malformed {
            what: "the empty context is the empty string",
            offset: 1,
        });
    }
    Ok(vv)
}

/// How the context `a` relates to the context `b`, both as strings from
/// [`VersionVector::encode_context`] (what the SDK's `compareContexts` answers).
///
/// Errors: [`VersionError`] when either string does not decode.
pub fn compare_contexts(a: &str, b: &str) -> Result<Causality, VersionError> {
    Ok(decode_context(a)?.compare(&decode_context(b)?))
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
    /// For a value written with a time to live: when it expires, on the minting replica's wall
    /// clock, in milliseconds. From then on it reads as deleted (it is still a version: a
    /// write must overwrite it, and it is purged like a tombstone). Always `None` on a
    /// tombstone.
    pub expires_at_ms: Option<u64>,
    /// Whether the value is the state of a counter ([`Counter`]), written by an increment,
    /// rather than bytes a client wrote. Never set on a tombstone.
    pub counter: bool,
}

impl Sibling {
    /// Whether this sibling is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The value, if this sibling is a value that has not expired at `now_ms`.
    pub fn live_value(&self, now_ms: u64) -> Option<&[u8]> {
        match self.expires_at_ms {
            Some(at) if at <= now_ms => None,
            _ => self.value.as_deref(),
        }
    }

    /// Since when this sibling is dead at `now_ms` (a tombstone since its write, an expired
    /// value since its expiry); `None` while it is a live value.
    pub fn dead_since(&self, now_ms: u64) -> Option<u64> {
        match (&self.value, self.expires_at_ms) {
            (None, _) => Some(self.timestamp_ms),
            (Some(_), Some(at)) if at <= now_ms => Some(at),
            (Some(_), _) => None,
        }
    }
}

/// Whether `s` holds exactly `value`, with no expiry and not as a counter: what a plain write
/// of `value` replaces (see [`SiblingSet::update`]).
fn same_plain_value(s: &Sibling, value: Option<&[u8]>) -> bool {
    !s.counter && s.expires_at_ms.is_none() && s.value.as_deref() == value
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

    /// The siblings that are live values at `now_ms` (neither tombstones nor expired), in dot
    /// order: what a read answers.
    pub fn live_siblings(&self, now_ms: u64) -> impl Iterator<Item = &Sibling> {
        self.siblings
            .iter()
            .filter(move |s| s.live_value(now_ms).is_some())
    }

    /// The live values at `now_ms`, in dot order (see [`live_siblings`](Self::live_siblings)).
    pub fn live_values(&self, now_ms: u64) -> Vec<&[u8]> {
        self.siblings
            .iter()
            .filter_map(|s| s.live_value(now_ms))
            .collect()
    }

    /// When every sibling is dead at `now_ms` (tombstones and expired values): since when the
    /// last one is dead. `None` while a live value remains or when there is no sibling.
    pub fn dead_since(&self, now_ms: u64) -> Option<u64> {
        let mut newest = None;
        for s in &self.siblings {
            let since = s.dead_since(now_ms)?;
            newest = Some(newest.map_or(since, |n: u64| n.max(since)));
        }
        newest
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
    /// existing sibling, and two writes with the same `ctx` through the same actor both survive,
    /// with one exception: a value write also replaces a sibling holding the very same bytes
    /// (neither of them expiring, nor a counter). Keeping it would show one value twice: a
    /// retried put, or an import over the data it was exported from, would add a sibling each
    /// time. Its dot is in `cc`, so the replacement converges like an overwrite.
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
        self.update_expiring(ctx, actor, value, now_ms, None)
    }

    /// [`update`](Self::update) with a time to live: a value written with `ttl_ms` expires
    /// `ttl_ms` after `now_ms` (ignored for a delete).
    ///
    /// Values that have expired by `now_ms` are dropped too, whatever `ctx` covers: their dots
    /// stay in `cc`, so the drop converges through [`sync`](Self::sync) like an overwrite, and
    /// blind writes of expiring values do not pile up hidden siblings.
    pub fn update_expiring(
        &mut self,
        ctx: &VersionVector,
        actor: &str,
        value: Option<Vec<u8>>,
        now_ms: u64,
        ttl_ms: Option<u64>,
    ) -> UpdateOutcome {
        self.apply_write(ctx, actor, value, now_ms, ttl_ms, false)
    }

    /// Applies an increment of the key's counter by `by` at replica `actor`: the live counter
    /// siblings are merged, `by` is added to the merge, and the result is written over
    /// everything this replica holds of the key (the write's context is the whole `cc`), so
    /// counter siblings do not pile up. Increments that this replica has not seen stay
    /// siblings of the result, and reads merge them in.
    ///
    /// Refused, changing nothing: when the key holds a live value that is not a counter (a
    /// put, even concurrent with increments, makes the key a value until it is deleted or
    /// overwritten), or when the counter would leave the i64 range. Tombstones and expired
    /// values do not count: a deleted key starts again from 0.
    pub fn increment(
        &mut self,
        actor: &str,
        by: i64,
        now_ms: u64,
    ) -> Result<UpdateOutcome, CounterError> {
        if self
            .siblings
            .iter()
            .any(|s| !s.counter && s.live_value(now_ms).is_some())
        {
            return Err(CounterError::NotACounter);
        }
        let mut counter = self
            .counter(now_ms)
            .map_err(CounterError::Corrupt)?
            .unwrap_or_default();
        let latest = self.cc.get(actor);
        counter.add(actor, latest, latest + 1, by)?;
        let ctx = self.cc.clone();
        let value = Some(counter.encode());
        Ok(self.apply_write(&ctx, actor, value, now_ms, None, true))
    }

    /// The merge of the live counter siblings, `None` when there is none.
    ///
    /// Errors: a counter sibling whose value does not decode.
    pub fn counter(&self, now_ms: u64) -> Result<Option<Counter>, VersionError> {
        let mut merged: Option<Counter> = None;
        for s in self.siblings.iter().filter(|s| s.counter) {
            if let Some(v) = s.live_value(now_ms) {
                merged
                    .get_or_insert_with(Counter::new)
                    .merge(&Counter::decode(v)?);
            }
        }
        Ok(merged)
    }

    fn apply_write(
        &mut self,
        ctx: &VersionVector,
        actor: &str,
        value: Option<Vec<u8>>,
        now_ms: u64,
        ttl_ms: Option<u64>,
        counter: bool,
    ) -> UpdateOutcome {
        let plain = value.is_some() && ttl_ms.is_none() && !counter;
        self.siblings.retain(|s| {
            !ctx.covers(&s.dot)
                && s.expires_at_ms.is_none_or(|at| at > now_ms)
                && !(plain && same_plain_value(s, value.as_deref()))
        });
        self.cc.merge_in(ctx);
        let dot = self.cc.increment(actor);
        let expires_at_ms = match &value {
            Some(_) => ttl_ms.map(|t| now_ms.saturating_add(t)),
            None => None,
        };
        let sibling = Sibling {
            dot: dot.clone(),
            counter: counter && value.is_some(),
            value,
            timestamp_ms: now_ms,
            expires_at_ms,
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
    /// tombstone, 1 value, 2 value with an expiry time, 3 counter) and for a value its expiry
    /// time (tag 2) and its length and bytes. Integers are LEB128 varints.
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
        // The context is sorted by actor; a dot's actor is stored as its position there. A
        // context names few actors (the replicas that minted), so a scan beats building a map.
        let index = |actor: &str| self.cc.iter().position(|(a, _)| a == actor);
        for s in &self.siblings {
            // Law: every dot is covered by `cc`, so its actor has an index.
            debug_assert!(
                self.cc.covers(&s.dot),
                "sibling dot not covered by the context"
            );
            let i = index(&s.dot.actor).unwrap_or(0);
            put_varint(&mut out, i as u64);
            put_varint(&mut out, s.dot.counter);
            put_varint(&mut out, s.timestamp_ms);
            match (&s.value, s.expires_at_ms) {
                (None, _) => out.push(TAG_TOMBSTONE),
                (Some(v), expires) => {
                    match expires {
                        None if s.counter => out.push(TAG_COUNTER),
                        None => out.push(TAG_VALUE),
                        Some(at) => {
                            out.push(TAG_EXPIRING);
                            put_varint(&mut out, at);
                        }
                    }
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
        let mut siblings = Vec::new();
        let cc = parse_set(bytes, str::to_string, |cc, s| {
            siblings.push(Sibling {
                dot: Dot::new(cc[s.actor].0.as_str(), s.counter),
                value: (s.tag != TAG_TOMBSTONE).then(|| s.value.to_vec()),
                timestamp_ms: s.timestamp_ms,
                expires_at_ms: s.expires_at_ms,
                counter: s.tag == TAG_COUNTER,
            })
        })?;
        Ok(SiblingSet {
            cc: VersionVector(cc),
            siblings,
        })
    }

    /// [`update_expiring`](Self::update_expiring) on the set encoded as `old` (`None`: a key
    /// never written), answered encoded: the same bytes as decoding `old`, updating and
    /// encoding, and the same outcome, without copying the siblings that stay (their encoding
    /// is copied whole) or building the set. A replica's write path, which stores bytes only.
    ///
    /// Errors: those of [`decode`](Self::decode) for `old`.
    pub fn update_encoded(
        old: Option<&[u8]>,
        ctx: &VersionVector,
        actor: &str,
        value: Option<&[u8]>,
        now_ms: u64,
        ttl_ms: Option<u64>,
    ) -> Result<(Vec<u8>, UpdateOutcome), VersionError> {
        let mut siblings = Vec::new();
        let old_cc = match old {
            Some(bytes) => parse_set(bytes, |a| a, |_, s| siblings.push(s))?,
            None => Vec::new(),
        };
        // What `apply_write` retains: not overwritten by `ctx`, not expired, not a plain value
        // equal to a plain value written now.
        let plain = value.is_some() && ttl_ms.is_none();
        let keep = |s: &RawSibling<'_>| {
            s.counter > ctx.get(old_cc[s.actor].0)
                && s.expires_at_ms.is_none_or(|at| at > now_ms)
                && !(plain && s.tag == TAG_VALUE && Some(s.value) == value)
        };
        let kept = siblings.iter().filter(|s| keep(s)).count();
        if kept >= MAX_SIBLINGS {
            // The cap drops siblings: the rare case, taken the long way.
            let mut set = match old {
                Some(bytes) => SiblingSet::decode(bytes)?,
                None => SiblingSet::new(),
            };
            let outcome =
                set.update_expiring(ctx, actor, value.map(<[u8]>::to_vec), now_ms, ttl_ms);
            return Ok((set.encode(), outcome));
        }
        // The new context: the stored one merged with the writer's (both sorted by actor),
        // then the writer's dot.
        let mut cc: Vec<(&str, u64)> = Vec::with_capacity(old_cc.len() + ctx.len() + 1);
        let (mut ours, mut theirs) = (old_cc.iter().peekable(), ctx.iter().peekable());
        loop {
            let next = match (ours.peek(), theirs.peek()) {
                (Some(&&(a, c)), Some(&(b, d))) => match a.cmp(b) {
                    std::cmp::Ordering::Less => ours.next().map(|_| (a, c)),
                    std::cmp::Ordering::Greater => theirs.next().map(|_| (b, d)),
                    std::cmp::Ordering::Equal => {
                        theirs.next();
                        ours.next().map(|_| (a, c.max(d)))
                    }
                },
                (Some(_), None) => ours.next().copied(),
                (None, Some(_)) => theirs.next(),
                (None, None) => break,
            };
            cc.extend(next);
        }
        let counter = match cc.binary_search_by(|(a, _)| (*a).cmp(actor)) {
            Ok(i) => {
                cc[i].1 = cc[i].1.saturating_add(1);
                cc[i].1
            }
            Err(i) => {
                cc.insert(i, (actor, 1));
                1
            }
        };
        // A dot's actor as its position in the new context, which holds every stored actor
        // and the writer.
        let index = |a: &str| cc.binary_search_by(|(x, _)| (*x).cmp(a)).unwrap_or(0);

        let mut out = Vec::with_capacity(
            old.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + 32 * (cc.len() + 1),
        );
        out.push(FORMAT_V1);
        put_varint(&mut out, cc.len() as u64);
        for (a, c) in &cc {
            put_varint(&mut out, a.len() as u64);
            out.extend_from_slice(a.as_bytes());
            put_varint(&mut out, *c);
        }
        put_varint(&mut out, kept as u64 + 1);
        // The new sibling goes before the first one whose dot is not below its own.
        let write_new = |out: &mut Vec<u8>| {
            put_varint(out, index(actor) as u64);
            put_varint(out, counter);
            put_varint(out, now_ms);
            match value {
                None => out.push(TAG_TOMBSTONE),
                Some(v) => {
                    match ttl_ms {
                        None => out.push(TAG_VALUE),
                        Some(t) => {
                            out.push(TAG_EXPIRING);
                            put_varint(out, now_ms.saturating_add(t));
                        }
                    }
                    put_varint(out, v.len() as u64);
                    out.extend_from_slice(v);
                }
            }
        };
        let mut pending = true;
        for s in siblings.iter().filter(|s| keep(s)) {
            let a = old_cc[s.actor].0;
            if pending && (a, s.counter) >= (actor, counter) {
                write_new(&mut out);
                pending = false;
            }
            put_varint(&mut out, index(a) as u64);
            out.extend_from_slice(s.tail);
        }
        if pending {
            write_new(&mut out);
        }
        let outcome = UpdateOutcome {
            dot: Dot::new(actor, counter),
            dropped: 0,
        };
        Ok((out, outcome))
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

/// Value tags of the encoding (see [`SiblingSet::encode`]).
const TAG_TOMBSTONE: u8 = 0;
const TAG_VALUE: u8 = 1;
const TAG_EXPIRING: u8 = 2;
const TAG_COUNTER: u8 = 3;

/// One sibling of an encoded set, read in place by [`parse_set`].
struct RawSibling<'a> {
    /// Its dot's actor, as a position in the set's context.
    actor: usize,
    counter: u64,
    timestamp_ms: u64,
    tag: u8,
    expires_at_ms: Option<u64>,
    /// The value's bytes (empty for a tombstone).
    value: &'a [u8],
    /// Its encoding after the actor's position: counter, timestamp, tag, expiry, value.
    tail: &'a [u8],
}

/// Reads an encoded sibling set in place, checked as [`SiblingSet::decode`] checks it: calls
/// `sibling` on each sibling in order, then gives the context, its actors made by `make` (see
/// [`decode_entries`]).
fn parse_set<'a, A: AsRef<str>>(
    bytes: &'a [u8],
    make: impl Fn(&'a str) -> A,
    mut sibling: impl FnMut(&[(A, u64)], RawSibling<'a>),
) -> Result<Vec<(A, u64)>, VersionError> {
    let mut r = Reader::new(bytes);
    let format = r.byte("format byte")?;
    if format != FORMAT_V1 {
        return Err(VersionError::UnknownFormat(format));
    }
    let cc = decode_entries(&mut r, make)?;
    let count = r.varint("sibling count")?;
    // The previous sibling's dot: its actor's position and its counter.
    let mut prev: Option<(usize, u64)> = None;
    for _ in 0..count {
        let offset = r.pos;
        let index = r.varint("dot actor index")?;
        let actor = usize::try_from(index)
            .ok()
            .filter(|i| *i < cc.len())
            .ok_or(VersionError::Malformed {
                what: "dot actor index outside the context",
                offset,
            })?;
        let tail_start = r.pos;
        let counter = r.varint("dot counter")?;
        if counter == 0 || counter > cc[actor].1 {
            return Err(VersionError::Malformed {
                what: "dot counter zero or not covered by the context",
                offset,
            });
        }
        if let Some((prev_actor, prev_counter)) = prev {
            if (cc[prev_actor].0.as_ref(), prev_counter) >= (cc[actor].0.as_ref(), counter) {
                return Err(VersionError::Malformed {
                    what: "siblings not in strictly ascending dot order",
                    offset,
                });
            }
        }
        prev = Some((actor, counter));
        let timestamp_ms = r.varint("timestamp")?;
        let tag_offset = r.pos;
        let tag = r.byte("value tag")?;
        let (value, expires_at_ms) = match tag {
            TAG_TOMBSTONE => (&[][..], None),
            TAG_VALUE..=TAG_COUNTER => {
                let expires = match tag {
                    TAG_EXPIRING => Some(r.varint("expiry time")?),
                    _ => None,
                };
                let len = r.varint("value length")?;
                (r.bytes(len, "value")?, expires)
            }
            _ => {
                return Err(VersionError::Malformed {
                    what: "value tag is not 0, 1, 2 or 3",
                    offset: tag_offset,
                })
            }
        };
        let raw = RawSibling {
            actor,
            counter,
            timestamp_ms,
            tag,
            expires_at_ms,
            value,
            tail: &bytes[tail_start..r.pos],
        };
        sibling(&cc, raw);
    }
    r.finish()?;
    Ok(cc)
}

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A bounds-checked cursor over input bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The offset of the next byte to read.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn byte(&mut self, what: &'static str) -> Result<u8, VersionError> {
        let b = *self.buf.get(self.pos).ok_or(VersionError::Truncated {
            what,
            offset: self.pos,
        })?;
        self.pos += 1;
        Ok(b)
    }

    /// A minimal LEB128 varint of at most 10 bytes that fits in a u64.
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, VersionError> {
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

    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, VersionError> {
        self.str(what).map(str::to_string)
    }

    /// A length-prefixed UTF-8 string, borrowed from the input.
    pub(crate) fn str(&mut self, what: &'static str) -> Result<&'a str, VersionError> {
        let len = self.varint(what)?;
        let offset = self.pos;
        let raw = self.bytes(len, what)?;
        std::str::from_utf8(raw).map_err(|_| VersionError::Malformed {
            what: "actor is not UTF-8",
            offset,
        })
    }

    pub(crate) fn finish(&self) -> Result<(), VersionError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(VersionError::TrailingBytes { offset: self.pos })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use proptest::prelude::*;

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        VersionVector::from_entries(entries.iter().map(|(a, c)| (*a, *c)))
    }

    fn val(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn increment_and_witness_only_ever_raise_counters() {
        let mut v = vv(&[("a", 2)]);
        assert_eq!(v.increment("a"), Dot::new("a", 3));
        assert_eq!(v.increment("b"), Dot::new("b", 1));
        v.witness(&Dot::new("a", 1));
        v.witness(&Dot::new("c", 4));
        v.witness(&Dot::new("b", 5));
        assert_eq!(v, vv(&[("a", 3), ("b", 5), ("c", 4)]));
        // Witnessing a dot is merging the one-entry vector of it.
        let mut w = vv(&[("a", 3)]);
        w.merge_in(&vv(&[("c", 4)]));
        let mut x = vv(&[("a", 3)]);
        x.witness(&Dot::new("c", 4));
        assert_eq!(w, x);
    }

    /// The seed's example, written with contexts: each write returns the context the writer
    /// would read back.
    #[test]
    fn seed_example_d1_to_d5() {
        // D1: a client writes through Sx.
        let mut sx = SiblingSet::new();
        sx.update(&VersionVector::new(), "Sx", val("D1"), 1);
        let d1 = sx.context().clone();
        assert_eq!(d1, vv(&[("Sx", 1)]));
        // D2: read D1, write through Sx.
        sx.update(&d1, "Sx", val("D2"), 2);
        let d2 = sx.context().clone();
        assert_eq!(d2, vv(&[("Sx", 2)]));
        assert_eq!(sx.values(), vec![b"D2".as_slice()]);
        // D3 through Sy and D4 through Sz, both from D2's context.
        let mut sy = sx.clone();
        let mut sz = sx.clone();
        sy.update(&d2, "Sy", val("D3"), 3);
        sz.update(&d2, "Sz", val("D4"), 4);
        let d3 = sy.context().clone();
        let d4 = sz.context().clone();
        assert_eq!(d3, vv(&[("Sx", 2), ("Sy", 1)]));
        assert_eq!(d4, vv(&[("Sx", 2), ("Sz", 1)]));
        assert_eq!(d3.compare(&d4), Causality::Concurrent);
        assert_eq!(d2.compare(&d3), Causality::Before);
        assert_eq!(d1.compare(&d2), Causality::Before);
        // A read that reaches both sees two siblings.
        let mut read = sy.synced(&sz);
        assert_eq!(read.values(), vec![b"D3".as_slice(), b"D4".as_slice()]);
        // The client resolves them and writes D5 through Sx.
        let (resolved, ctx) = read.reconcile(|vals| Some(vals.concat()));
        read.update(&ctx, "Sx", resolved, 5);
        let d5 = read.context().clone();
        assert_eq!(d5, vv(&[("Sx", 3), ("Sy", 1), ("Sz", 1)]));
        assert_eq!(read.values(), vec![b"D3D4".as_slice()]);
        assert_eq!(d5.compare(&d3), Causality::After);
        assert_eq!(d5.compare(&d4), Causality::After);
        // Sy and Sz learn D5 through sync and drop their old siblings.
        sy.sync(&read);
        sz.sync(&read);
        assert_eq!(sy, read);
        assert_eq!(sz, read);
    }

    #[test]
    fn seed_comparisons() {
        assert_eq!(
            vv(&[("s0", 1), ("s1", 1)]).compare(&vv(&[("s0", 1), ("s1", 2)])),
            Causality::Before
        );
        assert_eq!(
            vv(&[("s0", 1), ("s1", 2)]).compare(&vv(&[("s0", 1), ("s1", 1)])),
            Causality::After
        );
        assert_eq!(
            vv(&[("s0", 1), ("s1", 2)]).compare(&vv(&[("s0", 2), ("s1", 1)])),
            Causality::Concurrent
        );
        assert_eq!(
            vv(&[("s0", 1)]).compare(&vv(&[("s0", 1)])),
            Causality::Equal
        );
        assert_eq!(
            VersionVector::new().compare(&vv(&[("s0", 1)])),
            Causality::Before
        );
    }

    /// A write of bytes a concurrent sibling already holds replaces it instead of showing the
    /// value twice; values that expire and counters are left alone, and other replicas drop the
    /// replaced sibling when they sync.
    #[test]
    fn a_write_of_the_same_bytes_replaces_the_equal_sibling() {
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), "A", val("x"), 1);
        s.update(&VersionVector::new(), "A", val("y"), 2);
        let other = s.clone();
        // A blind retry of x: still x and y, x now at the new dot.
        let out = s.update(&VersionVector::new(), "B", val("x"), 3);
        assert_eq!(s.values(), vec![b"y".as_slice(), b"x".as_slice()]);
        assert!(s.siblings().iter().any(|x| x.dot == out.dot));
        assert_eq!(other.synced(&s).encode(), s.encode());
        // A value with a time to live is a different version, and is not replaced either.
        s.update_expiring(&VersionVector::new(), "A", val("y"), 4, Some(1000));
        assert_eq!(s.values().len(), 3);
        s.update(&VersionVector::new(), "A", val("y"), 5);
        assert_eq!(s.values().len(), 3, "only the plain y is replaced");
        // A tombstone does not replace a tombstone (reads show neither).
        let mut d = SiblingSet::new();
        d.update(&VersionVector::new(), "A", None, 1);
        d.update(&VersionVector::new(), "A", None, 2);
        assert_eq!(d.siblings().len(), 2);
    }

    /// Two clients read the same version and both write through the same coordinator: plain
    /// vector clocks would make the second write overwrite the first; here both survive.
    #[test]
    fn same_coordinator_concurrent_writes_both_survive() {
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), "A", val("v0"), 1);
        let read = s.context().clone();
        s.update(&read, "A", val("client1"), 2);
        s.update(&read, "A", val("client2"), 3);
        assert_eq!(
            s.values(),
            vec![b"client1".as_slice(), b"client2".as_slice()]
        );
        assert_eq!(s.context(), &vv(&[("A", 3)]));
        // A client that read both and writes back overwrites both.
        let ctx = s.context().clone();
        s.update(&ctx, "A", val("merged"), 4);
        assert_eq!(s.values(), vec![b"merged".as_slice()]);
    }

    #[test]
    fn blind_write_keeps_existing_value_as_sibling() {
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), "A", val("x"), 1);
        s.update(&VersionVector::new(), "B", val("y"), 2);
        assert_eq!(s.values().len(), 2);
        s.update(&VersionVector::new(), "A", val("z"), 3);
        assert_eq!(s.values().len(), 3);
    }

    #[test]
    fn delete_is_a_versioned_tombstone() {
        let mut a = SiblingSet::new();
        a.update(&VersionVector::new(), "A", val("x"), 10);
        let mut b = a.clone();
        let ctx = a.context().clone();
        a.update(&ctx, "A", None, 20);
        assert!(a.is_deleted());
        assert!(!a.is_empty());
        assert!(a.values().is_empty());
        // The tombstone wins over the older copy held elsewhere: no resurrection.
        b.sync(&a);
        assert!(b.is_deleted());
        assert!(!b.tombstone_only_older_than(25, 10));
        assert!(b.tombstone_only_older_than(30, 10));
        // A concurrent write is kept next to the tombstone.
        let mut c = SiblingSet::new();
        c.update(&VersionVector::new(), "C", val("late"), 21);
        b.sync(&c);
        assert!(!b.is_deleted());
        assert!(!b.tombstone_only_older_than(1_000, 10));
    }

    #[test]
    fn an_expiring_value_reads_as_deleted_from_its_expiry_and_dies_like_a_tombstone() {
        let mut a = SiblingSet::new();
        a.update_expiring(&VersionVector::new(), "A", val("session"), 1_000, Some(500));
        assert_eq!(a.live_values(1_499), vec![b"session".as_slice()]);
        assert!(a.live_values(1_500).is_empty());
        assert_eq!(a.live_siblings(1_500).count(), 0);
        assert_eq!(a.dead_since(1_499), None);
        assert_eq!(a.dead_since(2_000), Some(1_500));
        assert!(!a.is_deleted(), "still a value, only expired");
        // It is a version: it survives encoding and sync.
        let decoded = SiblingSet::decode(&a.encode()).unwrap();
        assert_eq!(decoded, a);
        assert_eq!(decoded.siblings()[0].expires_at_ms, Some(1_500));
        let mut b = SiblingSet::new();
        b.sync(&a);
        assert_eq!(b, a);
        // A blind write after the expiry: the expired value goes (its dot stays known, as
        // for an overwrite), the new one is live.
        a.update(&VersionVector::new(), "A", val("new"), 3_000);
        assert_eq!(a.siblings().len(), 1);
        assert_eq!(a.live_values(3_000), vec![b"new".as_slice()]);
        assert_eq!(a.dead_since(3_000), None);
        // A replica that still holds the expired value drops it on sync, as an overwrite.
        assert_eq!(b.synced(&a).siblings(), a.siblings());
        // Blind writes of expiring values never pile up more than the live ones.
        let mut c = SiblingSet::new();
        for t in 0..100u64 {
            c.update_expiring(
                &VersionVector::new(),
                "A",
                val("tick"),
                t * 1_000,
                Some(1_500),
            );
        }
        assert_eq!(c.siblings().len(), 2, "the one still live and the new one");
        // A delete with the read's context replaces both.
        let ctx = a.context().clone();
        a.update(&ctx, "B", None, 4_000);
        assert_eq!(a.siblings().len(), 1);
        assert_eq!(a.dead_since(4_000), Some(4_000));
        // A delete never carries an expiry.
        let mut d = SiblingSet::new();
        d.update_expiring(&VersionVector::new(), "A", None, 1, Some(5));
        assert_eq!(d.siblings()[0].expires_at_ms, None);
        assert_eq!(d.encode(), {
            let mut plain = SiblingSet::new();
            plain.update(&VersionVector::new(), "A", None, 1);
            plain.encode()
        });
    }

    #[test]
    fn lww_picks_latest_timestamp_then_largest_dot() {
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), "A", val("old"), 5);
        s.update(&VersionVector::new(), "B", val("new"), 9);
        s.update(&VersionVector::new(), "C", val("tie"), 9);
        assert_eq!(s.lww().unwrap().value, val("tie"));
        assert_eq!(s.newest_timestamp(), Some(9));
        assert!(SiblingSet::new().lww().is_none());
    }

    #[test]
    fn siblings_cap_drops_oldest_and_reports() {
        let mut s = SiblingSet::new();
        for i in 0..MAX_SIBLINGS as u64 {
            let out = s.update(&VersionVector::new(), "A", val(&i.to_string()), 1_000 + i);
            assert_eq!(out.dropped, 0);
        }
        // An old clock on the newest write must not drop the write itself.
        let out = s.update(&VersionVector::new(), "B", val("skewed"), 1);
        assert_eq!(out.dropped, 1);
        assert_eq!(s.siblings().len(), MAX_SIBLINGS);
        assert!(s.siblings().iter().any(|x| x.dot == out.dot));
        assert!(!s.values().contains(&b"0".as_slice()));
        // The dropped dot stays covered, so a replica still holding it drops it on sync.
        let mut other = SiblingSet::new();
        other.update(&VersionVector::new(), "A", val("0"), 1_000);
        other.sync(&s);
        assert_eq!(other, s);
    }

    /// `update_encoded` against decode, update, encode.
    fn check_update_encoded(
        old: &SiblingSet,
        ctx: &VersionVector,
        actor: &str,
        value: Option<&[u8]>,
        now_ms: u64,
        ttl_ms: Option<u64>,
    ) {
        let mut want = old.clone();
        let outcome = want.update_expiring(ctx, actor, value.map(<[u8]>::to_vec), now_ms, ttl_ms);
        let stored =
            (!old.is_empty() || old.context() != &VersionVector::new()).then(|| old.encode());
        let got = SiblingSet::update_encoded(stored.as_deref(), ctx, actor, value, now_ms, ttl_ms);
        assert_eq!(got.unwrap(), (want.encode(), outcome));
    }

    #[test]
    fn an_update_of_the_encoded_set_is_the_update_of_the_set() {
        let none = VersionVector::new();
        let mut s = SiblingSet::new();
        check_update_encoded(&s, &none, "b", Some(b"v"), 5, None);
        s.update(&none, "b", val("v1"), 1);
        s.update(&none, "d", val("v2"), 2);
        s.update_expiring(&none, "a", val("short"), 3, Some(10));
        let ctx = s.context().clone();
        // A new actor sorts first, between and last; the context may name actors the set
        // does not; a write may cover everything, part or nothing.
        for actor in ["a", "c", "e", "b"] {
            for ctx in [
                none.clone(),
                ctx.clone(),
                vv(&[("b", 1), ("z", 3)]),
                vv(&[("c", 9)]),
            ] {
                for value in [None, Some(&b"v1"[..]), Some(&b"new"[..])] {
                    for ttl in [None, Some(4)] {
                        for now in [4, 13, 100] {
                            check_update_encoded(&s, &ctx, actor, value, now, ttl);
                        }
                    }
                }
            }
        }
        // At the cap, the oldest sibling goes, as in `update`.
        let mut full = SiblingSet::new();
        for i in 0..MAX_SIBLINGS as u64 {
            full.update(&none, "A", val(&i.to_string()), 1_000 + i);
        }
        check_update_encoded(&full, &none, "B", Some(b"skewed"), 1, None);
        check_update_encoded(&full, &none, "A", Some(b"3"), 2_000, None);
        // Stored bytes that do not decode fail as decoding fails.
        let mut bad = s.encode();
        bad.push(0);
        assert_eq!(
            SiblingSet::update_encoded(Some(&bad), &none, "a", None, 1, None).unwrap_err(),
            SiblingSet::decode(&bad).unwrap_err()
        );
    }

    #[test]
    fn prune_only_removed_actors_without_siblings_past_threshold() {
        let mut s = SiblingSet::new();
        for actor in ["gone1", "gone2", "kept"] {
            let ctx = s.context().clone();
            s.update(&ctx, actor, val(actor), 1);
        }
        // Now only "kept" has a sibling; gone2 stays as it is not in the removed set.
        s.update(&VersionVector::new(), "gone1", val("late"), 2);
        let removed: BTreeSet<String> = ["gone1", "gone2", "nobody"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(s.clone().prune(&removed, 3), 0, "not past the threshold");
        let mut p = s.clone();
        // gone1 still names a sibling ("late"), so only gone2 goes.
        assert_eq!(p.prune(&removed, 2), 1);
        assert_eq!(p.context().get("gone2"), 0);
        assert_eq!(p.context().get("gone1"), 2);
        assert_eq!(p.siblings(), s.siblings());
        assert!(SiblingSet::decode(&p.encode()).is_ok());
    }

    #[test]
    fn encode_is_canonical_and_round_trips() {
        let mut a = SiblingSet::new();
        a.update(&VersionVector::new(), "zeta", val("1"), 1);
        a.update(&VersionVector::new(), "alpha", None, 2);
        let mut b = SiblingSet::new();
        b.update(&VersionVector::new(), "alpha", None, 2);
        let mut z = SiblingSet::new();
        z.update(&VersionVector::new(), "zeta", val("1"), 1);
        b.sync(&z);
        assert_eq!(a.encode(), b.encode());
        assert_eq!(SiblingSet::decode(&a.encode()).unwrap(), a);
        assert_eq!(
            SiblingSet::decode(&SiblingSet::new().encode()).unwrap(),
            SiblingSet::new()
        );
    }

    #[test]
    fn decode_rejects_garbage_and_every_truncation() {
        let mut a = SiblingSet::new();
        a.update(&VersionVector::new(), "node-1#3", val("hello"), 123_456);
        a.update(&VersionVector::new(), "node-2#1", None, 99);
        let bytes = a.encode();
        for cut in 0..bytes.len() {
            assert!(
                SiblingSet::decode(&bytes[..cut]).is_err(),
                "prefix {cut} accepted"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            SiblingSet::decode(&extra),
            Err(VersionError::TrailingBytes {
                offset: bytes.len()
            })
        );
        assert_eq!(
            SiblingSet::decode(&[7]),
            Err(VersionError::UnknownFormat(7))
        );
        // A huge length field with no bytes behind it is an error, not an allocation.
        let mut huge = vec![FORMAT_V1, 1];
        put_varint(&mut huge, u64::MAX);
        assert!(matches!(
            SiblingSet::decode(&huge),
            Err(VersionError::Truncated { .. })
        ));
        // A non-minimal varint is rejected (canonical form only).
        assert!(SiblingSet::decode(&[FORMAT_V1, 0x80, 0x00, 0x00]).is_err());
    }

    #[test]
    fn context_string_round_trips_and_rejects_garbage() {
        let ctx = vv(&[("n1#1", 3), ("n2#1", 1_000_000)]);
        let s = ctx.encode_context();
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode_context(&s).unwrap(), ctx);
        assert_eq!(VersionVector::new().encode_context(), "");
        assert_eq!(decode_context("").unwrap(), VersionVector::new());
        assert!(matches!(
            decode_context("!!!"),
            Err(VersionError::BadBase64(_))
        ));
        assert!(decode_context("AA").is_err());
        assert!(decode_context(&s[..s.len() - 2]).is_err());
        // The empty vector has one string, "": format byte 1 with a zero count ("AQA") is not
        // a second spelling of it.
        assert_eq!(URL_SAFE_NO_PAD.encode([FORMAT_V1, 0]), "AQA");
        assert!(matches!(
            decode_context("AQA"),
            Err(VersionError::Malformed { offset: 1, .. })
        ));
    }

    #[test]
    fn display_and_compare_contexts() {
        let d3 = vv(&[("Sx", 2), ("Sy", 1)]);
        assert_eq!(d3.to_string(), "[Sx:2,Sy:1]");
        let d5 = vv(&[("Sx", 3), ("Sy", 1), ("Sz", 1)]);
        assert_eq!(
            compare_contexts(&d3.encode_context(), &d5.encode_context()),
            Ok(Causality::Before)
        );
        assert_eq!(compare_contexts("", ""), Ok(Causality::Equal));
        assert!(compare_contexts("%", "").is_err());
    }

    #[test]
    fn serde_of_vectors_drops_zero_entries() {
        let v: VersionVector = serde_json::from_str(r#"{"a":0,"b":2}"#).unwrap();
        assert_eq!(v, vv(&[("b", 2)]));
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"b":2}"#);
    }

    #[test]
    fn serde_uses_canonical_bytes() {
        let mut a = SiblingSet::new();
        a.update(&VersionVector::new(), "A", val("x"), 1);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<SiblingSet>(&json).unwrap(), a);
        assert!(serde_json::from_str::<SiblingSet>("[9,9]").is_err());
    }

    #[test]
    fn increments_merge_their_siblings_and_refuse_a_key_holding_a_value() {
        let (mut a, mut b) = (SiblingSet::new(), SiblingSet::new());
        a.increment("a", 2, 1).unwrap();
        b.sync(&a);
        // Concurrent increments on two replicas: two counter siblings, read as their merge.
        a.increment("a", 3, 2).unwrap();
        b.increment("b", -1, 3).unwrap();
        let mut read = a.synced(&b);
        assert_eq!(read.siblings().len(), 2);
        assert_eq!(read.counter(4).unwrap().unwrap().value(), 4);
        // The next increment replaces both by one.
        read.increment("b", 10, 5).unwrap();
        assert_eq!(read.siblings().len(), 1);
        assert!(read.siblings()[0].counter);
        assert_eq!(read.counter(6).unwrap().unwrap().value(), 14);
        assert_eq!(SiblingSet::decode(&read.encode()).unwrap(), read);
        // A put concurrent with the counter makes the key a value: increments are refused.
        let mut v = read.clone();
        v.update(&VersionVector::new(), "a", Some(b"x".to_vec()), 7);
        assert_eq!(v.increment("a", 1, 8), Err(CounterError::NotACounter));
        // Deleted with the read's context, it counts from zero again.
        let ctx = v.context().clone();
        v.update(&ctx, "a", None, 9);
        v.increment("a", 5, 10).unwrap();
        assert_eq!(v.counter(11).unwrap().unwrap().value(), 5);
        assert_eq!(SiblingSet::new().counter(0).unwrap(), None);
    }

    // ---- properties ----

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0..4usize, 0..4u64), 0..5).prop_map(|es| {
            VersionVector::from_entries(es.into_iter().map(|(a, c)| (["a", "b", "c", "d"][a], c)))
        })
    }

    /// One step of a simulated cluster of three replicas ("r0".."r2") of one key.
    #[derive(Debug, Clone)]
    enum Op {
        /// A write at replica `at` with no context, expiring `ttl` after it when given.
        Blind {
            at: usize,
            value: u8,
            ttl: Option<u8>,
        },
        /// A write (or delete) at `at` with the context read from replica `from`.
        Write {
            at: usize,
            from: usize,
            value: Option<u8>,
        },
        /// Replica `at` syncs with replica `from`.
        Sync { at: usize, from: usize },
        /// An increment of the key's counter at `at` (refused while it holds a value).
        Incr { at: usize, by: i8 },
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, any::<u8>(), proptest::option::of(any::<u8>()))
                .prop_map(|(at, value, ttl)| Op::Blind { at, value, ttl }),
            (0..3usize, 0..3usize, proptest::option::of(any::<u8>()))
                .prop_map(|(at, from, value)| Op::Write { at, from, value }),
            (0..3usize, 0..3usize).prop_map(|(at, from)| Op::Sync { at, from }),
            (0..3usize, any::<i8>()).prop_map(|(at, by)| Op::Incr { at, by }),
        ]
    }

    /// Runs the ops; returns the three replicas, every dot written and the dots that some
    /// write's context overwrote.
    fn simulate(ops: &[Op]) -> (Vec<SiblingSet>, BTreeSet<Dot>, BTreeSet<Dot>) {
        let actors = ["r0", "r1", "r2"];
        let mut reps = vec![SiblingSet::new(); 3];
        let mut written = BTreeSet::new();
        let mut overwritten = BTreeSet::new();
        for (t, op) in ops.iter().enumerate() {
            let (at, ctx, value, ttl) = match op {
                Op::Blind { at, value, ttl } => (
                    *at,
                    VersionVector::new(),
                    Some(vec![*value]),
                    ttl.map(u64::from),
                ),
                Op::Write { at, from, value } => (
                    *at,
                    reps[*from].context().clone(),
                    value.map(|v| vec![v]),
                    None,
                ),
                Op::Sync { at, from } => {
                    let other = reps[*from].clone();
                    reps[*at].sync(&other);
                    continue;
                }
                Op::Incr { at, by } => {
                    // An increment writes over everything its replica holds.
                    let ctx = reps[*at].context().clone();
                    if let Ok(out) = reps[*at].increment(actors[*at], i64::from(*by), t as u64) {
                        overwritten.extend(written.iter().filter(|d| ctx.covers(d)).cloned());
                        written.insert(out.dot);
                    }
                    continue;
                }
            };
            overwritten.extend(written.iter().filter(|d| ctx.covers(d)).cloned());
            // A write also drops what expired at its replica by then: an overwrite too.
            overwritten.extend(
                reps[at]
                    .siblings()
                    .iter()
                    .filter(|s| s.expires_at_ms.is_some_and(|e| e <= t as u64))
                    .map(|s| s.dot.clone()),
            );
            // And a plain value write replaces a plain sibling of the same bytes.
            if ttl.is_none() && value.is_some() {
                overwritten.extend(
                    reps[at]
                        .siblings()
                        .iter()
                        .filter(|s| same_plain_value(s, value.as_deref()))
                        .map(|s| s.dot.clone()),
                );
            }
            let out = reps[at].update_expiring(&ctx, actors[at], value, t as u64, ttl);
            assert_eq!(out.dropped, 0);
            written.insert(out.dot);
        }
        (reps, written, overwritten)
    }

    proptest! {
        #[test]
        fn prop_a_context_witnessing_a_dot_is_the_context_of_the_witnessed_vector(
            v in arb_vv(),
            actor in 0..5usize,
            counter in 1..6u64,
        ) {
            let dot = Dot::new(["a", "b", "c", "d", "e"][actor], counter);
            let mut witnessed = v.clone();
            witnessed.witness(&dot);
            prop_assert_eq!(v.encode_context_witnessing(Some(&dot)), witnessed.encode_context());
            prop_assert_eq!(v.encode_context_witnessing(None), v.encode_context());
        }

        #[test]
        fn prop_version_vectors_form_a_partial_order(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            prop_assert_eq!(a.compare(&a), Causality::Equal);
            let flipped = match a.compare(&b) {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), flipped);
            if a.compare(&b) == Causality::Equal {
                prop_assert_eq!(&a, &b);
            }
            let le = |x: &VersionVector, y: &VersionVector| {
                matches!(x.compare(y), Causality::Before | Causality::Equal)
            };
            if le(&a, &b) && le(&b, &c) {
                prop_assert!(le(&a, &c));
            }
            let m = a.merge(&b);
            prop_assert!(le(&a, &m) && le(&b, &m));
            prop_assert_eq!(&m, &b.merge(&a));
            prop_assert_eq!(m.merge(&c), a.merge(&b.merge(&c)));
            prop_assert_eq!(a.merge(&a), a.clone());
        }

        #[test]
        fn prop_sync_is_commutative_associative_idempotent(ops in proptest::collection::vec(arb_op(), 0..40)) {
            let (reps, _, _) = simulate(&ops);
            let (a, b, c) = (&reps[0], &reps[1], &reps[2]);
            prop_assert_eq!(a.synced(b).encode(), b.synced(a).encode());
            prop_assert_eq!(a.synced(b).synced(c).encode(), a.synced(&b.synced(c)).encode());
            prop_assert_eq!(a.synced(a).encode(), a.encode());
            prop_assert_eq!(a.synced(&SiblingSet::new()).encode(), a.encode());
        }

        #[test]
        fn prop_sync_keeps_exactly_the_non_overwritten_writes(ops in proptest::collection::vec(arb_op(), 0..40)) {
            let (reps, written, overwritten) = simulate(&ops);
            let all = reps[0].synced(&reps[1]).synced(&reps[2]);
            let kept: BTreeSet<Dot> = all.siblings().iter().map(|s| s.dot.clone()).collect();
            let expected: BTreeSet<Dot> = written.difference(&overwritten).cloned().collect();
            prop_assert_eq!(kept, expected);
            // Pairwise: a sibling of one side survives unless the other side overwrote it.
            let ab = reps[0].synced(&reps[1]);
            for s in reps[0].siblings() {
                let other_has = reps[1].siblings().contains(s);
                if other_has || !reps[1].context().covers(&s.dot) {
                    prop_assert!(ab.siblings().contains(s));
                }
            }
        }

        #[test]
        fn prop_encode_round_trips(ops in proptest::collection::vec(arb_op(), 0..30)) {
            let (reps, _, _) = simulate(&ops);
            for r in &reps {
                prop_assert_eq!(&SiblingSet::decode(&r.encode()).unwrap(), r);
                prop_assert_eq!(&decode_context(&r.context().encode_context()).unwrap(), r.context());
            }
        }

        #[test]
        fn prop_an_update_of_the_encoded_set_is_the_update_of_the_set(
            ops in proptest::collection::vec(arb_op(), 0..30),
            at in 0..3usize,
            ctx in arb_vv(),
            actor in 0..6usize,
            value in proptest::option::of(any::<u8>()),
            ttl in proptest::option::of(0..20u64),
            now in 0..40u64,
        ) {
            let (reps, _, _) = simulate(&ops);
            let actor = ["a", "b", "r0", "r1", "r2", "z"][actor];
            let value = value.map(|v| [v]);
            for ctx in [ctx, reps[(at + 1) % 3].context().clone()] {
                check_update_encoded(&reps[at], &ctx, actor, value.as_ref().map(|v| &v[..]), now, ttl);
            }
        }

        #[test]
        fn prop_a_counter_counts_every_increment_once_replicas_sync(
            ops in proptest::collection::vec(
                prop_oneof![
                    (0..3usize, any::<i8>()).prop_map(|(at, by)| Op::Incr { at, by }),
                    (0..3usize, 0..3usize).prop_map(|(at, from)| Op::Sync { at, from }),
                ],
                0..60,
            )
        ) {
            let (reps, _, _) = simulate(&ops);
            let total: i64 = ops
                .iter()
                .map(|op| match op { Op::Incr { by, .. } => i64::from(*by), _ => 0 })
                .sum();
            let all = reps[0].synced(&reps[1]).synced(&reps[2]);
            let value = all.counter(0).unwrap().map_or(0, |c| c.value());
            prop_assert_eq!(value, total);
            // However the states met, at most one counter sibling per replica remains.
            prop_assert!(all.siblings().len() <= 3);
        }

        #[test]
        fn prop_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), s in ".{0,40}") {
            let mut framed = vec![FORMAT_V1];
            framed.extend_from_slice(&bytes);
            for input in [&bytes, &framed] {
                let updated = SiblingSet::update_encoded(Some(input), &VersionVector::new(), "a", None, 1, None);
                match SiblingSet::decode(input) {
                    // Whatever decodes is canonical: it encodes back to the same bytes.
                    Ok(set) => {
                        prop_assert_eq!(&set.encode(), input);
                        prop_assert!(updated.is_ok());
                    }
                    Err(e) => prop_assert_eq!(updated.unwrap_err(), e),
                }
            }
            let _ = decode_context(&s);
            let _ = decode_context(&URL_SAFE_NO_PAD.encode(&bytes));
        }
    }
}
