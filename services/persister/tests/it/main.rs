//! The persister and the event APIs against real Tansu, DynamoDB Local, the
//! registry, the gateway and the router.

// A test crate: a panic is how a test fails (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod analytics;
mod listing;
mod poison;
mod store;
mod support;
