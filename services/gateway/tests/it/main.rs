//! The gateway against real Tansu, DynamoDB Local and the dev registry.

mod broker_outage;
mod errors;
mod idempotency;
mod ingest;
mod support;
mod tenancy;
