//! The shared core of Triggers: what every service needs and nothing
//! service-specific.
//!
//! - [`ids`]: prefixed, time-ordered ids (`evt_…`, `sub_…`).
//! - [`event`]: the event model (CloudEvents attribute names).
//! - [`matching`]: event type patterns and content filters.
//! - [`delivery`]: deliveries and outcomes.
//! - [`offsets`]: the contiguous done watermark for storing offsets.
//! - [`pacing`]: idle consumers pause their fetches (for Tansu, which does
//!   not long-poll) and wake when this process writes to their topics, and
//!   full ones pause theirs while they keep polling.
//! - [`consume`]: the at-least-once consume loop; [`quarantine`]: records
//!   that can never be processed, set aside with the reason; [`retry`]:
//!   retrying an effect until it succeeds, fails for good, or shutdown;
//!   [`handover`]: partitions taken away in a rebalance go over drained
//!   (waiting work stopped, running work finished, offsets committed).
//! - [`config`]: layered, validated configuration.
//! - [`kafka`]: client builders that keep the delivery guarantees
//!   (idempotent `acks=all` producer; consumers that store offsets only after
//!   the effect), and W3C trace context in record headers; [`msk_iam`]:
//!   IAM tokens for Amazon MSK.
//! - [`codec`]: Avro in Confluent wire format through a schema registry.
//! - [`dynamo`]: the DynamoDB client and table definitions, and what every
//!   store shares (typed, retriable-or-not [`dynamo::StoreError`]);
//!   [`pager`]: listing pages with opaque cursors, and whole-range reads.
//! - [`service`]: what router, persister and deliverer share at start-up
//!   (settings, errors, clients, the operations server).
//! - [`provision`]: idempotent creation of every topic and table.
//! - [`telemetry`], [`ops`]: logs, traces, metrics, health endpoints.
//! - [`eventstore`]: stored events and their delivery attempts (the events
//!   table); [`status`]: the life of an event, as the persister records it;
//!   [`deadletter`]: dead-lettered deliveries (listed, redriven);
//!   [`analytics`]: per-tenant counters and latency histograms the
//!   pipeline keeps as it runs (`GET /v1/analytics`).
//! - [`tenancy`], [`subscription`]: tenants, API keys and subscriptions;
//!   [`subscription_table`]: the in-memory table routers and deliverers
//!   match against, kept by [`follower`] from the subscriptions topic.
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token; [`gather`]:
//!   work taken from a channel in groups (the first item and what comes
//!   soon after).
#![forbid(unsafe_code)]

pub mod align;
pub mod analytics;
pub mod codec;
pub mod config;
pub mod consume;
pub mod deadletter;
pub mod delivery;
pub mod dynamo;
pub mod event;
pub mod eventstore;
pub mod follower;
pub mod gather;
pub mod handover;
pub mod ids;
pub mod kafka;
pub mod matching;
pub mod msk_iam;
pub mod offsets;
pub mod ops;
pub mod pacing;
pub mod pager;
pub mod provision;
pub mod quarantine;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod subscription;
pub mod subscription_table;
pub mod telemetry;
pub mod tenancy;

pub use tokio_util::sync::CancellationToken;
