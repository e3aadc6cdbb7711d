//! The router against real Tansu, DynamoDB Local, the registry and the
//! gateway (for the subscriptions API).

// A test crate: a panic is how a test fails (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kafka_native;
mod restart;
mod routing;
mod support;
