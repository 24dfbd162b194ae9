//! Counters: a positive-negative counter CRDT stored as the value of a sibling.
//!
//! Every replica that applies an increment adds it to its own entry (its actor, as for dots):
//! a total of increments and a total of decrements, both only growing. Two states merge by
//! taking each actor's larger totals, and the counter's value is the sum of increments minus
//! the sum of decrements. Merging is commutative, associative and idempotent, so replicas that
//! applied different increments converge on the same value, however the states travel.
//!
//! A counter is stored as a sibling marked as a counter (see
//! [`SiblingSet::increment`](crate::version::SiblingSet::increment)): concurrent increments on
//! two replicas become two counter siblings, which reads merge and the next increment replaces
//! by their merge. Hints, anti-entropy, streaming and export carry counters like any sibling.
//!
//! Encoding: format byte, entry count, then per entry (sorted by actor, then opening dot) the
//! actor's length and bytes, the opening dot's counter, the last dot's counter, the increments
//! and the decrements, all LEB128 varints; canonical, like sibling sets.

use std::collections::BTreeMap;
use std::fmt;

use crate::version::{put_varint, Reader, VersionError};

/// Format byte of an encoded counter.
const FORMAT_V1: u8 = 1;

/// A positive-negative counter: per entry (an actor and the dot that opened the entry), the
/// totals added and subtracted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    entries: BTreeMap<(String, u64), Totals>,
}

/// One entry's totals, and the counter of the dot that last changed them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    last: u64,
    up: u64,
    down: u64,
}

/// Why an increment was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterError {
    /// The key holds a value that is not a counter.
    NotACounter,
    /// The counter would leave the range of a signed 64-bit integer.
    Overflow,
    /// A stored counter does not decode.
    Corrupt(VersionError),
}

impl fmt::Display for CounterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CounterError::NotACounter => write!(
                f,
                "the key holds a value that is not a counter: delete it (with its context) first"
            ),
            CounterError::Overflow => {
                write!(f, "the counter would leave the range of a 64-bit integer")
            }
            CounterError::Corrupt(e) => write!(f, "the stored counter does not decode: {e}"),
        }
    }
}

impl std::error::Error for CounterError {}

impl Counter {
    /// A counter at zero.
    pub fn new() -> Self {
        Counter::default()
    }

    /// The counter's value: increments minus decrements over every actor, saturating at the
    /// bounds of an i64 (only concurrent increments near the bounds can get there).
    pub fn value(&self) -> i64 {
        let total = self.exact();
        i64::try_from(total).unwrap_or(if total < 0 { i64::MIN } else { i64::MAX })
    }

    fn exact(&self) -> i128 {
        self.entries
            .values()
            .map(|t| i128::from(t.up) - i128::from(t.down))
            .sum()
    }

    /// Adds `by` (negative to subtract) in the write `dot` of `actor`, whose previous write of
    /// the key was `latest` (0 for none). The entry `latest` last changed is continued;
    /// without one, `dot` opens a new entry. Refused, changing nothing, when the value would
    /// leave the i64 range.
    pub fn add(&mut self, actor: &str, latest: u64, dot: u64, by: i64) -> Result<(), CounterError> {
        let after = self.exact() + i128::from(by);
        if i64::try_from(after).is_err() {
            return Err(CounterError::Overflow);
        }
        let continued = self
            .entries
            .iter()
            .find(|((a, _), t)| a == actor && latest > 0 && t.last == latest)
            .map(|(k, t)| (k.clone(), *t));
        let (key, mut totals) =
            continued.unwrap_or_else(|| ((actor.to_string(), dot), Totals::default()));
        let magnitude = by.unsigned_abs();
        let slot = if by >= 0 {
            &mut totals.up
        } else {
            &mut totals.down
        };
        *slot = slot.checked_add(magnitude).ok_or(CounterError::Overflow)?;
        totals.last = dot;
        self.entries.insert(key, totals);
        Ok(())
    }

    /// Merges `other` into this counter: each entry's larger totals.
    pub fn merge(&mut self, other: &Counter) {
        for (key, theirs) in &other.entries {
            let mine = self.entries.entry(key.clone()).or_default();
            mine.last = mine.last.max(theirs.last);
            mine.up = mine.up.max(theirs.up);
            mine.down = mine.down.max(theirs.down);
        }
    }

    /// The canonical bytes of this counter.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.entries.len() * 24);
        out.push(FORMAT_V1);
        put_varint(&mut out, self.entries.len() as u64);
        for ((actor, opened), t) in &self.entries {
            put_varint(&mut out, actor.len() as u64);
            out.extend_from_slice(actor.as_bytes());
            put_varint(&mut out, *opened);
            put_varint(&mut out, t.last);
            put_varint(&mut out, t.up);
            put_varint(&mut out, t.down);
        }
        out
    }

    /// Decodes what [`encode`](Self::encode) produced; rejects anything else (unsorted or
    /// repeated entries, trailing bytes), never panics, never allocates beyond the input.
    pub fn decode(bytes: &[u8]) -> Result<Counter, VersionError> {
        let mut r = Reader::new(bytes);
        let format = r.byte("counter format byte")?;
        if format != FORMAT_V1 {
            return Err(VersionError::UnknownFormat(format));
        }
        let count = r.varint("counter entry count")?;
        let mut entries = BTreeMap::new();
        for _ in 0..count {
            let offset = r.pos();
            let actor = r.string("counter actor")?;
            let key = (actor, r.varint("counter entry dot")?);
            let last = r.varint("counter last dot")?;
            let up = r.varint("counter increments")?;
            let down = r.varint("counter decrements")?;
            if entries.last_key_value().is_some_and(|(k, _)| *k >= key) {
                return Err(VersionError::Malformed {
                    what: "counter entries not in strictly ascending order",
                    offset,
                });
            }
            entries.insert(key, Totals { last, up, down });
        }
        r.finish()?;
        Ok(Counter { entries })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn increments_and_decrements_add_up_per_entry() {
        let mut c = Counter::new();
        c.add("a", 0, 1, 5).unwrap();
        c.add("a", 1, 2, -2).unwrap();
        c.add("b", 0, 1, 10).unwrap();
        assert_eq!(c.value(), 13);
        assert_eq!(c.entries.len(), 2, "a continued its entry");
        assert_eq!(Counter::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn concurrent_increments_on_two_replicas_both_count_after_a_merge() {
        let mut base = Counter::new();
        base.add("a", 0, 1, 1).unwrap();
        let (mut x, mut y) = (base.clone(), base.clone());
        x.add("a", 1, 2, 2).unwrap();
        y.add("b", 0, 1, 3).unwrap();
        let mut m = x.clone();
        m.merge(&y);
        assert_eq!(m.value(), 6);
        // Merging a state that is already included changes nothing.
        m.merge(&base);
        m.merge(&x);
        assert_eq!(m.value(), 6);
    }

    #[test]
    fn a_replica_whose_latest_write_is_gone_opens_a_new_entry() {
        // a counted to 100 (its dots 1..=100); b added 6 on top, concurrently with a delete
        // that replaced a's writes. a's next increment (dot 102, after the delete's dot 101)
        // cannot see b's state: continuing its old entry from 0 would be hidden by the 100
        // that b's state still carries.
        let mut old = Counter::new();
        for d in 1..=100 {
            old.add("a", d - 1, d, 1).unwrap();
        }
        let mut survivor = old.clone();
        survivor.add("b", 0, 1, 6).unwrap();
        let mut fresh = Counter::new();
        fresh.add("a", 101, 102, 1).unwrap();
        let mut m = survivor.clone();
        m.merge(&fresh);
        assert_eq!(m.value(), 107, "both lineages count");
        // Once a sees the merge, it continues its newest entry.
        m.add("a", 102, 103, 1).unwrap();
        assert_eq!(m.value(), 108);
        assert_eq!(m.entries.len(), 3);
    }

    #[test]
    fn an_increment_that_leaves_the_i64_range_is_refused_and_changes_nothing() {
        let mut c = Counter::new();
        c.add("a", 0, 1, i64::MAX).unwrap();
        assert_eq!(c.add("b", 0, 1, 1), Err(CounterError::Overflow));
        assert_eq!(c.value(), i64::MAX);
        c.add("a", 1, 2, i64::MIN).unwrap();
        assert_eq!(c.value(), -1);
        c.add("b", 0, 1, i64::MIN + 1).unwrap();
        assert_eq!(c.value(), i64::MIN);
        assert_eq!(c.add("a", 2, 3, -1), Err(CounterError::Overflow));
    }

    #[test]
    fn garbage_and_non_canonical_encodings_are_rejected() {
        assert!(Counter::decode(&[]).is_err());
        assert!(Counter::decode(&[9, 0]).is_err());
        let mut c = Counter::new();
        c.add("a", 0, 1, 1).unwrap();
        let mut bytes = c.encode();
        bytes.push(0);
        assert!(matches!(
            Counter::decode(&bytes),
            Err(VersionError::TrailingBytes { .. })
        ));
        // The same entry twice.
        let twice = [1, 2, 1, b'a', 1, 1, 1, 0, 1, b'a', 1, 1, 2, 0];
        assert!(matches!(
            Counter::decode(&twice),
            Err(VersionError::Malformed { .. })
        ));
    }

    /// A counter built by increments through a few actors, each continuing its own latest.
    fn counter() -> impl Strategy<Value = Counter> {
        proptest::collection::vec((0..4u64, -100i64..100), 0..12).prop_map(|ops| {
            let mut c = Counter::new();
            let mut latest = [0u64; 4];
            for (a, by) in ops {
                let i = a as usize;
                if c.add(&format!("n{a}"), latest[i], latest[i] + 1, by)
                    .is_ok()
                {
                    latest[i] += 1;
                }
            }
            c
        })
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            a in counter(), b in counter(), c in counter()
        ) {
            let merged = |x: &Counter, y: &Counter| { let mut m = x.clone(); m.merge(y); m };
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            prop_assert_eq!(Counter::decode(&a.encode()).unwrap(), a);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Counter::decode(&bytes);
        }
    }
}
