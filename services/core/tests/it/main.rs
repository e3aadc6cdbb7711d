//! Integration tests of the shared core against real Tansu, DynamoDB Local
//! and the dev schema registry.

// A test crate: a panic is how a test fails (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod capacity;
mod codec;
mod consume;
mod deadletter;
mod eventstore;
mod follower;
mod lean;
mod outbox;
mod pacing;
mod producer;
mod provision;
mod support;
