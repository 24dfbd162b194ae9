//! kvd: the node daemon.
#![deny(clippy::unwrap_used)]

pub use kvd_storage as storage;
