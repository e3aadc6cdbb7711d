//! The deliverer against real Tansu, DynamoDB Local, the registry, the gateway,
//! the router and the persister, with a programmable webhook receiver.

mod delivery;
mod flow;
mod proxy;
mod redelivery;
mod stall;
mod support;
mod trace;
