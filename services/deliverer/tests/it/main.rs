//! The deliverer against real Tansu, DynamoDB Local, the registry, the gateway
//! and the router, with a programmable webhook receiver.

mod delivery;
mod support;
