//! The deliverer against real Tansu, DynamoDB Local, the registry, the gateway,
//! the router and the persister, with a programmable webhook receiver.

// A test crate: a panic is how a test fails (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod delivery;
mod flow;
mod payload;
mod proxy;
mod redelivery;
mod stall;
mod support;
mod trace;
