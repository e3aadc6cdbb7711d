//! One webhook request: signed (Standard Webhooks), through the SSRF
//! guard, its answer read up to a limit.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::Instrument;
use triggers_core::delivery::Delivery;
use triggers_core::event::{now_ms, rfc3339};
use triggers_core::subscription::Subscription;

use crate::config::DelivererConfig;
use crate::error::DelivererError;
use crate::state::Deliverer;
use crate::{signature, ssrf};

/// What one HTTP attempt gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// The status, if the endpoint answered.
    pub status: Option<u16>,
    /// The start of the body (at most 4 KB).
    pub excerpt: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// `Retry-After` in seconds, on 429 and 503.
    pub retry_after: Option<u64>,
    /// How long it took.
    pub latency_ms: i64,
}

/// The webhook body of one event.
pub(crate) fn event_body(event: &triggers_core::event::Event) -> serde_json::Value {
    json!({
        "id": event.id.to_string(), "type": event.event_type, "source": event.source,
        "specversion": "1.0", "time": rfc3339(event.time), "subject": event.subject,
        "datacontenttype": event.datacontenttype, "data": event.data,
    })
}

pub(crate) fn elapsed_ms(started: std::time::Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

impl Deliverer {
    /// The webhook request of one delivery.
    pub(crate) async fn post_one(
        &self,
        subscription: &Subscription,
        delivery: &Delivery,
        traceparent: Option<&[u8]>,
    ) -> AttemptResult {
        let body = event_body(&delivery.event).to_string();
        self.post(
            subscription,
            &delivery.event.id.to_string(),
            body,
            delivery.replay,
            traceparent,
        )
        .await
    }

    /// A signed webhook request with `webhook-id` = `id`.
    pub(crate) async fn post(
        &self,
        subscription: &Subscription,
        id: &str,
        body: String,
        replay: bool,
        traceparent: Option<&[u8]>,
    ) -> AttemptResult {
        let started = std::time::Instant::now();
        let failed = |error: String| AttemptResult {
            status: None,
            excerpt: None,
            error: Some(error),
            retry_after: None,
            latency_ms: elapsed_ms(started),
        };
        let url = match url::Url::parse(&subscription.target_url) {
            Ok(url) => url,
            Err(e) => return failed(format!("invalid target_url: {e}")),
        };
        if !ssrf::literal_ip_permitted(&url, &self.allow) {
            return failed(format!(
                "blocked by the SSRF guard: {} is not an allowed address",
                url.host_str().unwrap_or("")
            ));
        }
        // The HTTP client span; the webhook carries its context, so the
        // receiver joins the event's trace. In a trace that is not sampled
        // (no process span above) and untraced, the record's traceparent.
        let unsampled = traceparent.is_some_and(triggers_core::kafka::trace_headers::unsampled);
        let span = if unsampled {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                "webhook",
                otel.name = "POST",
                otel.kind = "client",
                http.request.method = "POST",
                server.address = %url.host_str().unwrap_or_default(),
                http.response.status_code = tracing::field::Empty,
                triggers.service = "deliverer",
            )
        };
        let mut trace_fields = triggers_core::kafka::trace_headers::fields_of(&span);
        if trace_fields.is_empty()
            && let Some(traceparent) = traceparent.and_then(|t| std::str::from_utf8(t).ok())
        {
            trace_fields.push(("traceparent".to_owned(), traceparent.to_owned()));
        }
        let timestamp = now_ms() / 1000;
        let signature = match signature::header(subscription.signing_secrets(now_ms()), id, timestamp, body.as_bytes())
        {
            Ok(signature) => signature,
            Err(e) => return failed(e.to_string()),
        };
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("user-agent", concat!("Triggers/", env!("CARGO_PKG_VERSION")));
        for (name, value) in &trace_fields {
            request = request.header(name.as_str(), value.as_str());
        }
        if replay {
            request = request.header("triggers-replay", "true");
        }
        let response = match request.body(body).send().instrument(span.clone()).await {
            Ok(response) => response,
            Err(e) => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    message.push_str(": ");
                    message.push_str(&inner.to_string());
                    source = inner.source();
                }
                return failed(message);
            }
        };
        let status = response.status().as_u16();
        span.record("http.response.status_code", status);
        let retry_after = (status == 429 || status == 503)
            .then(|| {
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            })
            .flatten();
        let excerpt = read_at_most(response, self.max_response_bytes).await;
        AttemptResult {
            status: Some(status),
            excerpt: (!excerpt.is_empty()).then_some(excerpt),
            error: (!(200..300).contains(&status)).then(|| format!("HTTP {status}")),
            retry_after,
            latency_ms: elapsed_ms(started),
        }
    }
}

async fn read_at_most(mut response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The HTTP client of webhook requests: every address through the SSRF
/// guard, no redirects followed, and no proxy from the environment
/// (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`): a proxy would resolve and
/// connect on the guard's behalf, so the guard would check nothing.
pub fn webhook_client(config: &DelivererConfig, allow: &ssrf::AllowList) -> Result<reqwest::Client, DelivererError> {
    reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(ssrf::GuardedResolver::new(allow.clone())))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(config.max_in_flight_per_subscription)
        .build()
        .map_err(DelivererError::HttpClient)
}
