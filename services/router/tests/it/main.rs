//! The router against real Tansu, DynamoDB Local, the registry and the
//! gateway (for the subscriptions API).

mod kafka_native;
mod restart;
mod routing;
mod support;
