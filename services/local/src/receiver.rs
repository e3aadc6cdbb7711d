//! The demo webhook receiver: accepts every POST, prints what it received
//! and answers 204. A stand-in for the automation platform's endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use triggers_core::CancellationToken;
use triggers_core::ops::{RunningServer, spawn_until};

/// How many webhooks the receiver got.
#[derive(Debug, Clone, Default)]
pub struct Received(Arc<AtomicU64>);

impl Received {
    /// The count so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

async fn receive(request: HttpRequest, body: web::Bytes, received: web::Data<Received>) -> HttpResponse {
    let n = received.0.fetch_add(1, Ordering::Relaxed) + 1;
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let body = String::from_utf8_lossy(&body);
    tracing::info!(
        target: "demo_receiver",
        n,
        path = %request.path(),
        webhook_id = %header("webhook-id"),
        webhook_timestamp = %header("webhook-timestamp"),
        replay = %header("triggers-replay"),
        body = %body,
        "webhook received"
    );
    HttpResponse::NoContent().finish()
}

/// Starts the receiver on `listen`.
pub fn start(listen: &str, shutdown: CancellationToken) -> std::io::Result<(RunningServer, Received)> {
    let received = Received::default();
    let data = web::Data::new(received.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
            .default_service(web::to(receive))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(listen)?;
    Ok((spawn_until(server, shutdown), received))
}
