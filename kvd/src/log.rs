//! Logging to standard error: one line per event with a UTC timestamp, a level and the node id.
//!
//! A daemon's log is read by people and by `grep`; a single line per event with a stable shape
//! is all it needs, so this is a few lines instead of a logging framework.

use std::sync::OnceLock;

static NODE: OnceLock<String> = OnceLock::new();

/// Names the node in every later line.
pub fn set_node(id: &str) {
    let _ = NODE.set(id.to_string());
}

/// Writes one log line. Use the [`info!`](crate::info), [`warn!`](crate::warn) and
/// [`error!`](crate::error) macros.
pub fn write(level: &str, message: std::fmt::Arguments<'_>) {
    let ms = crate::now_ms();
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let node = NODE.get().map(String::as_str).unwrap_or("-");
    eprintln!("{h:02}:{m:02}:{s:02}.{millis:03} {level:5} [{node}] {message}");
}

/// Logs at INFO.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::write("INFO", format_args!($($t)*)) };
}

/// Logs at WARN.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::write("WARN", format_args!($($t)*)) };
}

/// Logs at ERROR.
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::write("ERROR", format_args!($($t)*)) };
}
