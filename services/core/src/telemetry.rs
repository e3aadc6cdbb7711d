//! Structured logs (`tracing`), Prometheus metrics, and OpenTelemetry trace
//! export over OTLP/HTTP when an endpoint is configured. W3C trace context is
//! the global propagator, so [`crate::kafka::trace_headers`] and HTTP
//! `traceparent` headers agree.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("telemetry.log_level: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// The OTLP exporter could not be built.
    #[error("telemetry.otlp_endpoint: {0}")]
    Otlp(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps trace export alive; flushes pending spans when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}

/// Installs logging (and trace export) for the process. Call once, from `main`.
pub fn init(config: &TelemetryConfig, service: &str) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    metrics();
    let filter = EnvFilter::builder().parse(&config.log_level)?;

    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build();
            // A trace is kept or not as a whole: a record's or a request's
            // sampled parent decides; new traces are sampled at the ratio.
            let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(config.trace_sample_ratio),
            ));
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_sampler(sampler)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    // The pipeline's spans (one per request, record and webhook) are at
    // DEBUG: with the usual log level and no OTLP endpoint no layer wants
    // them, so they cost next to nothing. With an endpoint they are
    // exported whatever the log level: only Triggers' own, DEBUG and up.
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service.to_owned()))
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                metadata.target().starts_with("triggers") && *metadata.level() <= tracing::Level::DEBUG
            }))
    });

    let registry = tracing_subscriber::registry().with(otel_layer);
    match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_filter(filter),
            )
            .try_init()?,
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().compact().with_filter(filter))
            .try_init()?,
    }
    Ok(TelemetryGuard { provider })
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// Every service in the process (the local runner runs them all) reports to
/// it, which is how the `metrics` facade works: there is one recorder.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            // From acceptance to a 2xx: seconds normally, hours through the retry tiers.
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("triggers_delivery_e2e_seconds".to_owned()),
                    &[
                        0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3_600.0, 86_400.0,
                    ],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Suffix("batch_size".to_owned()),
                    &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0],
                )
            })
            // Capacity units one DynamoDB call consumed (½ = an eventually
            // consistent read of up to 4 KB; 1 = a write of up to 1 KB).
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("triggers_dynamodb_capacity_units".to_owned()),
                    &[0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0],
                )
            })
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness's); then
        // this handle still renders what it records itself.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!("triggers_build_info", "Build information; always 1.");
    metrics::counter!("triggers_build_info", "version" => env!("CARGO_PKG_VERSION")).absolute(1);
}

/// The CPU time (user and system) this process used so far, from
/// `/proc/self/stat` (Linux; elsewhere `None`), to 10 ms.
pub fn process_cpu_time() -> Option<Duration> {
    // Fields 14 and 15: user and system time in clock ticks (100 per second
    // on Linux); after the command name in parentheses.
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Some(Duration::from_millis(ticks * 10))
}

/// Updates the process's CPU time, resident memory and start time from
/// `/proc` (Linux; elsewhere nothing), for a scrape: `process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_start_time_seconds`.
pub fn process_metrics() {
    static START: OnceLock<f64> = OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    metrics::gauge!("process_start_time_seconds").set(start);
    if let Some(cpu) = process_cpu_time() {
        metrics::counter!("process_cpu_seconds_total").absolute(cpu.as_secs());
    }
    // Second field of /proc/self/statm: resident pages (4 KiB).
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(pages) = statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok())
    {
        metrics::gauge!("process_resident_memory_bytes").set((pages * 4096) as f64);
    }
}
