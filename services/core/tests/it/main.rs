//! Integration tests of the shared core against real Tansu, DynamoDB Local
//! and the dev schema registry.

mod codec;
mod consume;
mod deadletter;
mod follower;
mod pacing;
mod producer;
mod provision;
mod support;
