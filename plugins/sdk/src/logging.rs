//! Logging into kiln's own log.

use crate::LogLevel;

/// Writes `message` into kiln's log at `level`.
pub fn log(level: LogLevel, message: &str) {
    crate::bindings::instruction::kiln::plugin::logging::log(level, message);
}

/// Logs a `format!` message at trace level.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log($crate::LogLevel::Trace, &::std::format!($($arg)+)) };
}

/// Logs a `format!` message at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log($crate::LogLevel::Debug, &::std::format!($($arg)+)) };
}

/// Logs a `format!` message at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log($crate::LogLevel::Info, &::std::format!($($arg)+)) };
}

/// Logs a `format!` message at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log($crate::LogLevel::Warn, &::std::format!($($arg)+)) };
}

/// Logs a `format!` message at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log($crate::LogLevel::Error, &::std::format!($($arg)+)) };
}
