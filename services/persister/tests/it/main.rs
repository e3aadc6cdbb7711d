//! The persister and the event APIs against real Tansu, DynamoDB Local, the
//! registry, the gateway and the router.

mod analytics;
mod listing;
mod poison;
mod store;
mod support;
