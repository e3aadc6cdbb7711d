use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use parking_lot::Mutex;
use rdkafka::Message;
use serde_json::{Value, json};
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::CommonConfig;
use triggers_core::delivery::Outcome;
use triggers_deliverer::DelivererConfig;
use triggers_stack::TestStack;
use triggers_stack::topics::read_topic;
use triggers_testkit::Api;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Checks a request's signature with an independent implementation of the
/// Standard Webhooks spec (the `standardwebhooks` crate).
pub fn verify(secret: &str, request: &Received) {
    let verifier = standardwebhooks::Webhook::new(secret).unwrap_or_else(|e| panic!("{e:?}"));
    let mut headers = http::HeaderMap::new();
    for (name, value) in &request.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(name.as_str()),
            http::HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    verifier
        .verify(&request.body, &headers)
        .unwrap_or_else(|e| panic!("signature rejected: {e:?}"));
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Scripted answers: a status and an optional `Retry-After`.
type Script = Arc<Mutex<VecDeque<(u16, Option<u64>)>>>;

/// A webhook receiver that answers from a script (then 200), optionally
/// after a delay, and keeps the most requests it had at once.
#[derive(Clone, Default)]
pub struct Receiver {
    pub received: Arc<Mutex<Vec<Received>>>,
    pub script: Script,
    pub always: Arc<Mutex<Option<u16>>>,
    pub delay: Arc<Mutex<Option<Duration>>>,
    pub concurrent: Arc<Mutex<(usize, usize)>>,
}

async fn receive(request: HttpRequest, body: web::Bytes, receiver: web::Data<Receiver>) -> HttpResponse {
    let delay = *receiver.delay.lock();
    if let Some(delay) = delay {
        {
            let mut concurrent = receiver.concurrent.lock();
            concurrent.0 += 1;
            concurrent.1 = concurrent.1.max(concurrent.0);
        }
        tokio::time::sleep(delay).await;
        receiver.concurrent.lock().0 -= 1;
    }
    receiver.received.lock().push(Received {
        at: Instant::now(),
        headers: request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: body.to_vec(),
    });
    let scripted = receiver.script.lock().pop_front();
    let (status, retry_after) = scripted.unwrap_or_else(|| (receiver.always.lock().unwrap_or(200), None));
    let mut response = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or_default());
    if let Some(seconds) = retry_after {
        response.insert_header(("retry-after", seconds.to_string()));
    }
    response.body("receiver says hi")
}

impl Receiver {
    pub fn start(&self) -> String {
        let data = web::Data::new(self.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                // The largest events (1 MiB) arrive whole.
                .app_data(web::PayloadConfig::new(8 << 20))
                .default_service(web::to(receive))
        })
        .workers(2)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        tokio::spawn(server.run());
        format!("http://{addr}/hook")
    }

    pub fn count(&self) -> usize {
        self.received.lock().len()
    }

    /// The most requests it was answering at once (with a delay set).
    pub fn most_at_once(&self) -> usize {
        self.concurrent.lock().1
    }

    /// The JSON bodies of the requests so far.
    pub fn bodies(&self) -> Vec<Value> {
        self.received
            .lock()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
            .collect()
    }

    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        while self.count() < count {
            assert!(
                Instant::now() < deadline,
                "receiver got {} of {count} requests",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.received.lock().clone()
    }
}

pub struct Env {
    _slice: triggers_testkit::Slice,
    pub deliverer: DelivererConfig,
    /// Stops the deliverer alone.
    pub deliverer_shutdown: CancellationToken,
    pub common: CommonConfig,
    pub api: Api,
    pub codec: AvroCodec,
    pub shutdown: CancellationToken,
}

impl std::ops::Deref for Env {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The deliverer configuration of the tests.
fn deliverer_config(namespace: &str) -> DelivererConfig {
    DelivererConfig {
        listen: "127.0.0.1:0".to_owned(),
        group_id: format!("{namespace}-deliverer"),
        allow_networks: vec!["127.0.0.0/8".to_owned()],
        only_allowed_networks: true,
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// Gateway, router, persister and deliverer on a slice of the shared stack.
pub async fn env() -> Env {
    env_with(|_| {}).await
}

/// [`env`] with the deliverer's configuration changed by `tune`.
pub async fn env_with(tune: impl FnOnce(&mut DelivererConfig)) -> Env {
    let slice = triggers_testkit::slice(TestStack::shared()).await;
    let (_, key) = slice.tenant_with_key(None).await;
    let (common, shutdown) = (slice.common.clone(), slice.shutdown.clone());
    let gateway = triggers_gateway::testing::start(&slice, shutdown.clone(), |_| {}).await;
    triggers_router::testing::start(&slice, shutdown.clone(), |_| {}).await;
    triggers_persister::testing::start(&slice, shutdown.clone(), |_| {}).await;
    let mut deliverer = deliverer_config(&slice.namespace);
    tune(&mut deliverer);
    let deliverer_shutdown = shutdown.child_token();
    triggers_deliverer::start(&common, &deliverer, deliverer_shutdown.clone())
        .await
        .expect("deliverer");
    let codec = AvroCodec::new(&common.schema_registry).unwrap();
    Env {
        _slice: slice,
        deliverer,
        deliverer_shutdown,
        common,
        api: Api::new(gateway.addr, key),
        codec,
        shutdown,
    }
}

impl Env {
    /// Stops the running deliverer at once (its in-flight work is dropped,
    /// as in a crash) and starts another one in the same group.
    pub async fn restart_deliverer(&mut self) {
        self.deliverer_shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.deliverer_shutdown = self.shutdown.child_token();
        // Its start is bounded (the follower's catch-up at 120 s): a start
        // that hangs fails here, not the whole test run.
        let start = triggers_deliverer::start(&self.common, &self.deliverer, self.deliverer_shutdown.clone());
        tokio::time::timeout(Duration::from_secs(180), start)
            .await
            .expect("the deliverer did not start within 180 s")
            .expect("deliverer");
    }

    /// Creates a subscription of every event type to `url`; (id, secret).
    pub async fn subscribe(&self, url: &str) -> (String, String) {
        self.subscribe_with(json!({"target_url": url, "event_types": ["*"]}))
            .await
    }

    /// Creates a subscription from `body`; (id, secret).
    pub async fn subscribe_with(&self, body: Value) -> (String, String) {
        let created = self.api.subscribe(body).await;
        (
            created["id"].as_str().unwrap_or_default().to_owned(),
            created["secret"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Ingests `events` in one batch request; their ids in order.
    pub async fn ingest_batch(&self, events: Vec<Value>) -> Vec<String> {
        let (status, answer) = self
            .call(
                reqwest::Method::POST,
                "/v1/events/batch",
                Some(json!({"events": events})),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        answer["results"]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"))
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned())
            .collect()
    }

    /// Sends `event` until `receiver` got a request (a new subscription
    /// reaches the router asynchronously); the id of the event it got.
    pub async fn ingest_until_received(&self, receiver: &Receiver, event: Value) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = Vec::new();
        while receiver.count() == 0 {
            assert!(Instant::now() < deadline, "the subscription never received anything");
            sent.push(self.ingest(event.clone()).await);
            let waited = Instant::now() + Duration::from_millis(500);
            while receiver.count() == 0 && Instant::now() < waited {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Every warm-up sent arrives before the caller scripts the receiver,
        // so a late one cannot take an answer meant for the test's events;
        // except one the router read before the subscription, which it
        // stored as unmatched.
        let mut pending = sent;
        loop {
            let received = events_in(&receiver.received.lock());
            pending.retain(|id| !received.iter().any(|e| e["id"].as_str() == Some(id.as_str())));
            let mut unmatched = Vec::new();
            for id in &pending {
                let (status, stored) = self.call(reqwest::Method::GET, &format!("/v1/events/{id}"), None).await;
                if status == 200 && stored["status"] == "unmatched" {
                    unmatched.push(id.clone());
                }
            }
            pending.retain(|id| !unmatched.contains(id));
            if pending.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "warm-up events still missing: {pending:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let first = receiver.received.lock()[0].clone();
        first.header("webhook-id").unwrap_or_default().to_owned()
    }

    /// The requests `receiver` got for event `id`, once there are `count`.
    pub async fn attempts_of(&self, receiver: &Receiver, id: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<Received> = receiver
                .received
                .lock()
                .iter()
                .filter(|r| r.header("webhook-id") == Some(id))
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} attempts for {id}",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The outcomes of event `id` so far.
    pub async fn outcomes_of(&self, id: &str) -> Vec<Outcome> {
        let mut found = Vec::new();
        for message in read_topic(
            &self.common.kafka.bootstrap_servers,
            &self.common.topics.outcomes(),
            usize::MAX,
            Duration::from_millis(800),
        )
        .await
        {
            let outcome: Outcome = self
                .codec
                .decode(Contract::Outcome, message.payload().unwrap_or_default())
                .await
                .unwrap();
            if outcome.event_id.to_string() == id {
                found.push(outcome);
            }
        }
        found
    }

    /// Waits until event `id` has an outcome for which `check` holds.
    pub async fn wait_outcome(&self, id: &str, check: impl Fn(&Outcome) -> bool, timeout: Duration) -> Vec<Outcome> {
        let deadline = Instant::now() + timeout;
        loop {
            let outcomes = self.outcomes_of(id).await;
            if outcomes.iter().any(&check) {
                return outcomes;
            }
            assert!(Instant::now() < deadline, "no such outcome for {id}: {outcomes:?}");
        }
    }
}

/// Every event in `requests`, single or batched.
pub fn events_in(requests: &[Received]) -> Vec<Value> {
    requests
        .iter()
        .flat_map(|r| match serde_json::from_slice(&r.body).unwrap_or(Value::Null) {
            Value::Array(events) => events,
            one => vec![one],
        })
        .collect()
}
