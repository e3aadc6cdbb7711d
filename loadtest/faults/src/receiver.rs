//! The webhook endpoint under test: records every event it is sent (how
//! often, when first), checks that `webhook-id` names the event, and can be
//! taken down (its listener closed: connections refused), brought back on
//! the same port, or made slow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

/// One event as the endpoint saw it.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Webhooks that carried it (more than one: a duplicate).
    pub count: u32,
    /// When the first one arrived.
    pub first: Instant,
}

#[derive(Debug, Default)]
struct State {
    slow: AtomicBool,
    seen: Mutex<HashMap<String, Seen>>,
    /// Webhooks whose `webhook-id` was not the event's id.
    mismatched: AtomicU64,
    /// Webhooks with a body that is not an event.
    unreadable: AtomicU64,
}

impl State {
    fn seen(&self) -> MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long a slow endpoint takes to answer.
pub const SLOW: Duration = Duration::from_secs(5);

/// The endpoint.
#[derive(Debug)]
pub struct Receiver {
    port: u16,
    state: Arc<State>,
    handle: Option<ServerHandle>,
}

async fn receive(request: HttpRequest, body: web::Bytes, state: web::Data<Arc<State>>) -> HttpResponse {
    if state.slow.load(Ordering::Relaxed) {
        tokio::time::sleep(SLOW).await;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        state.unreadable.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::BadRequest().finish();
    };
    let events = match value {
        serde_json::Value::Array(events) => events,
        event => vec![event],
    };
    let webhook_id = request.headers().get("webhook-id").and_then(|v| v.to_str().ok());
    let now = Instant::now();
    let mut seen = state.seen();
    for event in &events {
        let Some(id) = event.get("id").and_then(|id| id.as_str()) else {
            state.unreadable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if events.len() == 1 && webhook_id != Some(id) {
            state.mismatched.fetch_add(1, Ordering::Relaxed);
        }
        seen.entry(id.to_owned())
            .and_modify(|s| s.count += 1)
            .or_insert(Seen { count: 1, first: now });
    }
    HttpResponse::NoContent().finish()
}

impl Receiver {
    /// Starts the endpoint on `127.0.0.1:port`.
    pub fn start(port: u16) -> anyhow::Result<Self> {
        let mut receiver = Self {
            port,
            state: Arc::default(),
            handle: None,
        };
        receiver.up()?;
        Ok(receiver)
    }

    /// Opens the listener again (on the same port).
    pub fn up(&mut self) -> anyhow::Result<()> {
        if self.handle.is_some() {
            return Ok(());
        }
        let data = web::Data::new(self.state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
                .default_service(web::to(receive))
        })
        .workers(2)
        .max_connections(100_000)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(("127.0.0.1", self.port))?
        .run();
        self.handle = Some(server.handle());
        tokio::spawn(server);
        Ok(())
    }

    /// Closes the listener and drops open connections: the endpoint is down.
    pub async fn down(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop(false).await;
        }
    }

    /// Makes every answer take [`SLOW`] (or not).
    pub fn slow(&self, slow: bool) {
        self.state.slow.store(slow, Ordering::Relaxed);
    }

    /// When `id` was first delivered, and how often.
    pub fn seen(&self, id: &str) -> Option<Seen> {
        self.state.seen().get(id).copied()
    }

    /// Webhooks whose `webhook-id` was not their event's id, and bodies
    /// that were not events.
    pub fn anomalies(&self) -> (u64, u64) {
        (
            self.state.mismatched.load(Ordering::Relaxed),
            self.state.unreadable.load(Ordering::Relaxed),
        )
    }
}
