//! The SDK's error: a code a program can branch on and a sentence for a human.
//!
//! Codes are the wire protocol's (`bad_request`, `too_large`, `unauthorized`, `unavailable`,
//! `timeout`, `overloaded`, `internal`) when the server answered with one, plus two of the
//! SDK's own: `bad_response` (a frame from the server that does not decode) and `conflict`
//! (used by the JS client when `update` runs out of retries).

use std::fmt;

use kv_core::wire::{ErrorCode, WireError};

/// An error with a protocol-style code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkError {
    /// Machine-readable code, e.g. `"bad_request"`.
    pub code: String,
    /// What happened, for a human.
    pub message: String,
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SdkError>;

impl SdkError {
    /// An error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        SdkError {
            code: code.into(),
            message: message.into(),
        }
    }

    /// A `bad_request` error: the caller passed something the protocol cannot carry.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest.as_str(), message)
    }

    /// A `bad_response` error: the server sent a frame this SDK cannot decode.
    pub fn bad_response(message: impl Into<String>) -> Self {
        Self::new("bad_response", message)
    }
}

impl From<WireError> for SdkError {
    fn from(e: WireError) -> Self {
        SdkError::new(e.code.as_str(), e.message)
    }
}

impl fmt::Display for SdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for SdkError {}
