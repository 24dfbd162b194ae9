//! Causal contexts as the SDK sees them: opaque strings it validates, compares and merges,
//! always through kv-core's codec, never by building one from parts.

use kv_core::version::{decode_context, Causality, VersionVector};

use crate::error::{Result, SdkError};

/// Checks that `context` is a string the servers produced (or empty, the blind context).
///
/// Errors: `bad_request` naming what is wrong, so a corrupt context fails before it travels.
pub fn check_context(context: &str) -> Result<VersionVector> {
    decode_context(context)
        .map_err(|e| SdkError::bad_request(format!("the causal context is corrupt: {e}")))
}

/// How context `a` relates to context `b`: `Before` when `b` has seen everything `a` has and
/// more, and so on (see [`Causality`]).
///
/// Errors: `bad_request` when either string is not a causal context.
pub fn compare(a: &str, b: &str) -> Result<Causality> {
    Ok(check_context(a)?.compare(&check_context(b)?))
}

/// The name `compareContexts` answers with.
pub fn causality_name(c: Causality) -> &'static str {
    match c {
        Causality::Before => "before",
        Causality::After => "after",
        Causality::Equal => "equal",
        Causality::Concurrent => "concurrent",
    }
}

/// The context that has seen everything each of `contexts` has seen: a write under it
/// replaces every version any of those reads returned.
///
/// Laws (from [`VersionVector::merge`]): the result does not depend on the order or on
/// repetitions of the inputs, and merging no contexts gives the empty (blind) context.
///
/// Errors: `bad_request` naming the first context (by position) that does not decode.
pub fn merge<'a>(contexts: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let mut out = VersionVector::new();
    for (i, c) in contexts.into_iter().enumerate() {
        let vv = decode_context(c)
            .map_err(|e| SdkError::bad_request(format!("causal context #{i} is corrupt: {e}")))?;
        out.merge_in(&vv);
    }
    Ok(out.encode_context())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(entries: &[(&str, u64)]) -> String {
        VersionVector::from_entries(entries.iter().map(|(a, c)| (*a, *c))).encode_context()
    }

    #[test]
    fn compares_old_and_new_contexts() {
        let old = ctx(&[("n1", 1)]);
        let new = ctx(&[("n1", 2), ("n2", 1)]);
        let other = ctx(&[("n2", 3)]);
        assert_eq!(compare(&old, &new).unwrap(), Causality::Before);
        assert_eq!(compare(&new, &old).unwrap(), Causality::After);
        assert_eq!(compare(&new, &new).unwrap(), Causality::Equal);
        assert_eq!(compare(&old, &other).unwrap(), Causality::Concurrent);
        assert_eq!(compare("", &old).unwrap(), Causality::Before);
        assert_eq!(causality_name(Causality::Concurrent), "concurrent");
    }

    #[test]
    fn corrupt_contexts_are_bad_requests() {
        for bad in ["!!!", "AAAA", "Ag", "not a context"] {
            let err = compare(bad, "").unwrap_err();
            assert_eq!(err.code, "bad_request", "{bad}");
            assert!(err.message.contains("corrupt"), "{}", err.message);
        }
        let err = merge(["", "zz!"]).unwrap_err();
        assert!(err.message.contains("#1"), "{}", err.message);
    }

    #[test]
    fn merge_covers_every_input_in_any_order() {
        let a = ctx(&[("n1", 2)]);
        let b = ctx(&[("n1", 1), ("n2", 4)]);
        let m = merge([a.as_str(), b.as_str()]).unwrap();
        assert_eq!(m, ctx(&[("n1", 2), ("n2", 4)]));
        assert_eq!(merge([b.as_str(), a.as_str(), a.as_str()]).unwrap(), m);
        assert_eq!(compare(&a, &m).unwrap(), Causality::Before);
        assert_eq!(compare(&b, &m).unwrap(), Causality::Before);
        assert_eq!(merge(std::iter::empty()).unwrap(), "");
    }
}
