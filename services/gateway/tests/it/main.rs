//! The gateway against real Tansu, DynamoDB Local and the dev registry.

mod broker_outage;
mod errors;
mod ingest;
mod support;
mod tenancy;
