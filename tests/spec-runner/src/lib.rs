//! Conformance runner for MongoDB's unified-format driver specification
//! tests, driving a server through the official `mongodb` crate.
//!
//! Module map:
//! - [`spec`]: loading test files (extended JSON) and `runOnRequirements`.
//! - [`matcher`]: the unified-format matching rules and special operators.
//! - [`entities`]: clients (with command and CMAP monitoring), databases,
//!   collections, sessions, saved cursors and values.
//! - [`ops`]: operations on entities, mapped onto the driver's API.
//! - [`emulated`]: operations the driver has no API for (collection
//!   `bulkWrite`, `count`, `w: 0` writes), sent as the commands drivers send.
//! - [`runner`]: one test from `initialData` to `outcome`, the `testRunner`
//!   helpers, `expectError` and `expectEvents`.
//! - [`report`]: per-suite counts and the expected-pass list.
//! - [`server`]: the in-process `fake-mongod` used when no `--uri` is given.
//!
//! An operation or option the driver (or this runner) cannot express makes
//! the test a skip with a reason, never a pass.

pub mod emulated;
pub mod entities;
pub mod matcher;
pub mod ops;
pub mod report;
pub mod runner;
pub mod server;
pub mod spec;

/// Marks a test as skipped; carried through `anyhow` errors.
#[derive(Debug)]
pub struct Skip(pub String);

/// Returns early with a [`Skip`] error.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::Skip(format!($($arg)*))))
    };
}
