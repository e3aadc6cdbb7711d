//! The gateway against real Tansu, DynamoDB Local and the dev registry.

// A test crate: a panic is how a test fails (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod broker_outage;
mod errors;
mod idempotency;
mod ingest;
mod support;
mod tenancy;
