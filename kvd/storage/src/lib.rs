//! kvd-storage: the LSM engine every replica persists through (re-exported as `kvd::storage`).
#![deny(clippy::unwrap_used)]
