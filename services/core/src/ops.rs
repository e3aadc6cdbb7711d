//! The operations endpoints every service answers: `/healthz` (alive),
//! `/readyz` (its dependencies answer), `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;

/// One readiness check: `Ok` when the dependency answers.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The checks behind `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Vec<(&'static str, Probe)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.probes.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Readiness {
    /// No checks: always ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a named check.
    pub fn with(mut self, name: &'static str, probe: Probe) -> Self {
        self.probes.push((name, probe));
        self
    }

    /// Runs every check (concurrently, each bounded by 3 s).
    pub async fn check(&self) -> Vec<(&'static str, Result<(), String>)> {
        let checks = self.probes.iter().map(|(name, probe)| {
            let probe = probe.clone();
            async move {
                let result = match tokio::time::timeout(Duration::from_secs(3), probe()).await {
                    Ok(result) => result,
                    Err(_) => Err("timed out after 3s".to_owned()),
                };
                (*name, result)
            }
        });
        futures::future::join_all(checks).await
    }
}

/// Kafka answers a metadata request.
pub fn kafka_probe(config: &KafkaConfig) -> Probe {
    let config = config.clone();
    Arc::new(move || {
        let config = config.clone();
        Box::pin(async move {
            let admin = crate::kafka::admin(&config, "readiness").map_err(|e| e.to_string())?;
            tokio::task::spawn_blocking(move || {
                admin
                    .inner()
                    .fetch_metadata(None, Duration::from_secs(2))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        })
    })
}

/// DynamoDB answers a `ListTables`.
pub fn dynamo_probe(client: &aws_sdk_dynamodb::Client) -> Probe {
    let client = client.clone();
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            client
                .list_tables()
                .limit(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
        })
    })
}

/// Adds `/healthz`, `/readyz` and `/metrics` to an actix app.
pub fn configure(readiness: Readiness) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(readiness))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics));
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let results = readiness.check().await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let checks: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(name, result)| {
            let value = match result {
                Ok(()) => serde_json::json!({"status": "ok"}),
                Err(error) => serde_json::json!({"status": "failing", "error": error}),
            };
            (name.to_owned(), value)
        })
        .collect();
    let body = serde_json::json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks});
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics() -> HttpResponse {
    crate::telemetry::process_metrics();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::metrics().render())
}

/// An HTTP server started by a service, stopped by its shutdown token.
#[derive(Debug)]
pub struct RunningServer {
    /// The address it listens on (port 0 resolved).
    pub addr: SocketAddr,
    /// Resolves when the server has stopped.
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Starts a server with only the operations endpoints (for consumer services).
pub fn serve_ops(listen: &str, readiness: Readiness, shutdown: CancellationToken) -> std::io::Result<RunningServer> {
    let server = HttpServer::new(move || App::new().configure(configure(readiness.clone())))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(5)
        .bind(listen)?;
    Ok(spawn_until(server, shutdown))
}

/// Serves the operations endpoints while `work` runs (spawned here), and
/// stops them only once it has finished, so `/healthz` keeps answering while
/// a consumer service drains. The returned task ends with the work's result,
/// after the server stopped.
pub fn serve_during<W>(listen: &str, readiness: Readiness, work: W) -> std::io::Result<RunningServer>
where
    W: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let ops_shutdown = CancellationToken::new();
    let server = serve_ops(listen, readiness, ops_shutdown.clone())?;
    let work = tokio::spawn(work);
    let served = server.task;
    let task = tokio::spawn(async move {
        let worked = work.await;
        ops_shutdown.cancel();
        let served = served.await;
        worked.map_err(std::io::Error::other)??;
        served.map_err(std::io::Error::other)?
    });
    Ok(RunningServer {
        addr: server.addr,
        task,
    })
}

/// Runs a bound actix server until `shutdown` is cancelled, then stops it
/// gracefully (in-flight requests finish).
pub fn spawn_until<F, I, S, B>(server: HttpServer<F, I, S, B>, shutdown: CancellationToken) -> RunningServer
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_web::dev::ServiceFactory<actix_http::Request, Config = actix_web::dev::AppConfig> + 'static,
    S::Error: Into<actix_web::Error>,
    S::InitError: std::fmt::Debug,
    S::Response: Into<actix_web::dev::Response<B>>,
    B: actix_web::body::MessageBody + 'static,
{
    // Install the recorder now: what is counted before the first scrape counts.
    crate::telemetry::metrics();
    let addr = server
        .addrs()
        .first()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
    RunningServer {
        addr,
        task: tokio::spawn(server),
    }
}
