//! One webhook request: signed (Standard Webhooks), through the SSRF
//! guard, its answer read up to a limit.

use std::sync::Arc;
use std::time::Duration;

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

/// The webhook body of one event (CloudEvents' structured JSON), borrowing
/// the event: its `data` is the payload's text as the producer wrote it
/// (member order, spacing and numbers kept), not a JSON tree written again.
/// The members are in the order `json!` wrote them before (sorted).
#[derive(Debug, serde::Serialize)]
pub(crate) struct EventBody<'a> {
    data: &'a triggers_core::event::Payload,
    datacontenttype: &'a str,
    id: String,
    source: &'a str,
    specversion: &'static str,
    subject: Option<&'a str>,
    time: String,
    #[serde(rename = "type")]
    event_type: &'a str,
}

/// The webhook body of `event`.
pub(crate) fn event_body(event: &triggers_core::event::Event) -> EventBody<'_> {
    EventBody {
        data: &event.data,
        datacontenttype: &event.datacontenttype,
        id: event.id.to_string(),
        source: &event.source,
        specversion: "1.0",
        subject: event.subject.as_deref(),
        time: rfc3339(event.time),
        event_type: &event.event_type,
    }
}

/// `body` as JSON text, written straight into a buffer.
pub(crate) fn json_text<T: serde::Serialize + ?Sized>(body: &T) -> Result<String, serde_json::Error> {
    let mut text = Vec::with_capacity(1024);
    serde_json::to_writer(&mut text, body)?;
    // serde_json writes UTF-8 only.
    Ok(String::from_utf8(text).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// The attempt that could not write its body (a JSON value that serde_json
/// cannot write; not seen: events' data is parsed JSON).
pub(crate) fn unwritable(error: &serde_json::Error) -> AttemptResult {
    AttemptResult {
        status: None,
        excerpt: None,
        error: Some(format!("cannot write the webhook body: {error}")),
        retry_after: None,
        latency_ms: 0,
    }
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
        let body = match json_text(&event_body(&delivery.event)) {
            Ok(body) => body,
            Err(e) => return unwritable(&e),
        };
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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use triggers_core::event::{Event, rfc3339};
    use triggers_core::ids::TenantId;

    use super::{event_body, json_text};

    /// The body as `json!` built it before `EventBody`: receivers verify
    /// signatures over these bytes, and API.md documents the members.
    fn as_before(event: &Event) -> String {
        json!({
            "id": event.id.to_string(), "type": event.event_type, "source": event.source,
            "specversion": "1.0", "time": rfc3339(event.time), "subject": event.subject,
            "datacontenttype": event.datacontenttype, "data": event.data,
        })
        .to_string()
    }

    #[test]
    fn webhook_bodies_are_the_bytes_json_wrote() -> Result<(), serde_json::Error> {
        let data = json!({
            "order": {"id": "o-1", "lines": [{"sku": "a\"b", "qty": 2}, {"sku": "é\u{1F600}\n", "qty": 1.5}]},
            "zeta": null, "alpha": true, "n": -17
        });
        let mut event = Event::new(TenantId::new(), "order.created", "/shop", data);
        assert_eq!(json_text(&event_body(&event))?, as_before(&event));
        event.subject = Some("orders/o-1".to_owned());
        event.data = json!("just a string").into();
        assert_eq!(json_text(&event_body(&event))?, as_before(&event));
        let batch = vec![event_body(&event), event_body(&event)];
        assert_eq!(
            json_text(&batch)?,
            format!("[{},{}]", as_before(&event), as_before(&event))
        );
        // The payload's text goes out as the producer wrote it.
        let written = "{\"z\": 1, \"a\": [1.50, 123456789012345678901234567890]}";
        event.data = triggers_core::event::Payload::from_text(written.to_owned())?;
        let body = json_text(&event_body(&event))?;
        assert!(
            body.starts_with(&format!("{{\"data\":{written},\"datacontenttype\"")),
            "{body}"
        );
        Ok(())
    }
}
