//! A DynamoDB client without the AWS SDK's orchestrator, for the few item
//! calls of the persister's hot path ([`ItemCalls`]).
//!
//! The SDK's client spends 250–290 µs of CPU on a conditional
//! `UpdateItem` of a 1.5 KB item, most of it in its orchestrator
//! (interceptors, config bags, endpoint resolution, the identity cache,
//! shape serialisers); the same request written directly as JSON, signed
//! with `aws-sigv4` and sent over reqwest's pooled connections costs
//! 95–115 µs (loadtest/RESULTS.md, "What a DynamoDB client without the
//! SDK's orchestrator costs"). At about one call per event that is a third
//! of the persister's CPU.
//!
//! What it keeps from the SDK: credentials come from the same provider
//! chain (static keys, environment, IRSA web identity, ECS/EKS Pod
//! Identity, IMDS), fetched again five minutes before they expire; the
//! request is signed with SigV4 the same way; each attempt and each call
//! has the `dynamodb.attempt_timeout` and `dynamodb.call_timeout` of the
//! SDK's client; throttling, 5xx and transport failures are tried again up
//! to three attempts with jittered exponential backoff (the SDK's standard
//! mode); errors become the same [`StoreError`] kinds; and every call is
//! timed and its consumed capacity recorded in the same metrics
//! (`triggers_dynamodb_request_duration_seconds`,
//! `triggers_dynamodb_capacity_units`).
//!
//! What it leaves out: endpoint rules beyond `dynamodb.<region>.amazonaws.com`
//! (`.com.cn` in China; FIPS and dual-stack endpoints need
//! `dynamodb.endpoint`), and the SDK's client-side rate limiting (adaptive
//! retry mode, which the services do not use).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_dynamodb::error::{ErrorMetadata, ProvideErrorMetadata};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine as _;
use serde::Deserialize;

use super::calls::{Get, Inserted, ItemCalls, Put, Update, answered, create_units, insert_statement};
use super::{CONDITIONAL_CHECK_FAILED, StoreError, StoreErrorKind, kind_of};
use crate::config::DynamoConfig;
use crate::pager::Item;

/// The lean client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The AWS configuration has no credential provider.
    #[error("no AWS credential provider for DynamoDB")]
    NoCredentials,
    /// The endpoint is not an http(s) URL with a host.
    #[error("the DynamoDB endpoint `{0}` is not an http(s) URL with a host")]
    Endpoint(String),
    /// The HTTP client could not be built (TLS roots).
    #[error("the HTTP client for DynamoDB could not be built")]
    Http(#[source] reqwest::Error),
}

/// Attempts per call, the first included (the SDK's standard mode).
const MAX_ATTEMPTS: u32 = 3;
/// The first retry waits up to this long (full jitter), doubling after.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Credentials are fetched again this long before they expire.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(5 * 60);

/// A DynamoDB client for the item calls of [`ItemCalls`].
#[derive(Debug)]
pub struct LeanClient {
    http: reqwest::Client,
    /// The endpoint, with its path (`https://dynamodb.eu-west-1.amazonaws.com/`).
    url: String,
    region: String,
    identities: Identities,
    attempt_timeout: Duration,
    call_timeout: Duration,
}

impl LeanClient {
    /// A client for `config`'s endpoint (or the region's), with the
    /// credentials of the SDK's chain.
    pub async fn new(config: &DynamoConfig) -> Result<Self, ClientError> {
        let shared = super::shared_config(config).await;
        let provider = shared.credentials_provider().ok_or(ClientError::NoCredentials)?;
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| shared.endpoint_url().map(str::to_owned))
            .unwrap_or_else(|| regional_endpoint(&config.region));
        let url = url::Url::parse(&endpoint)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .ok_or_else(|| ClientError::Endpoint(endpoint.clone()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            // DynamoDB closes idle connections after about a minute.
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(ClientError::Http)?;
        Ok(Self {
            http,
            url: url.into(),
            region: config.region.clone(),
            identities: Identities::new(provider),
            attempt_timeout: config.attempt_timeout,
            call_timeout: config.call_timeout,
        })
    }

    /// Makes `operation` with `body`, retried as the SDK's standard mode
    /// does; times it and records its consumed capacity.
    async fn call(&self, operation: &'static str, table: &str, body: Vec<u8>) -> Result<Answer, Refused> {
        let started = Instant::now();
        let result = self.attempts(operation, &body, started).await;
        let outcome = match result {
            Ok(bytes) => match serde_json::from_slice::<Answer>(&bytes) {
                Ok(answer) => Ok(answer),
                Err(e) => Err(WireError::unreadable(&e)),
            },
            Err(e) => Err(e),
        };
        let label = if outcome.is_ok() { "ok" } else { "error" };
        metrics::histogram!(
            "triggers_dynamodb_request_duration_seconds",
            "operation" => operation,
            "result" => label
        )
        .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(answer) => {
                let kind = if operation == "GetItem" { "read" } else { "write" };
                for capacity in answer.consumed_capacity.iter().flat_map(Capacities::each) {
                    metrics::histogram!(
                        "triggers_dynamodb_capacity_units",
                        "operation" => operation,
                        "table" => capacity.table_name.clone().unwrap_or_default(),
                        "capacity" => kind
                    )
                    .record(capacity.units(kind));
                }
                Ok(answer)
            }
            Err(e) if e.code() == Some(CONDITIONAL_CHECK_FAILED) => Err(Refused::Condition),
            Err(e) => Err(Refused::Failed(StoreError::new(operation, table, e))),
        }
    }

    /// The answer's body after at most [`MAX_ATTEMPTS`] attempts within the
    /// call timeout.
    async fn attempts(&self, operation: &'static str, body: &[u8], started: Instant) -> Result<Vec<u8>, WireError> {
        let mut attempt = 1;
        loop {
            let result = match tokio::time::timeout(self.attempt_timeout, self.attempt(operation, body)).await {
                Ok(result) => result,
                Err(_) => Err(WireError::timeout(self.attempt_timeout)),
            };
            let error = match result {
                Ok(bytes) => return Ok(bytes),
                Err(error) => error,
            };
            if attempt >= MAX_ATTEMPTS || !error.is_transient() {
                return Err(error);
            }
            let ceiling = BACKOFF_BASE.saturating_mul(1 << (attempt - 1)).as_millis();
            let backoff = Duration::from_millis(rand::random_range(0..=ceiling).try_into().unwrap_or(0));
            // The next attempt must be able to finish within the call's time.
            if started.elapsed() + backoff + self.attempt_timeout > self.call_timeout {
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    /// One signed request and its answer's body.
    async fn attempt(&self, operation: &'static str, body: &[u8]) -> Result<Vec<u8>, WireError> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let identity = self.identities.current().await?;
        let target = format!("DynamoDB_20120810.{operation}");
        // `host` is signed from the URL; reqwest sends the same.
        let headers = [
            ("content-type", "application/x-amz-json-1.0"),
            ("x-amz-target", target.as_str()),
        ];
        let signed = {
            let params = aws_sigv4::sign::v4::SigningParams::builder()
                .identity(&identity)
                .region(&self.region)
                .name("dynamodb")
                .time(SystemTime::now())
                .settings(SigningSettings::default())
                .build()
                .map_err(|e| WireError::signing(&e))?
                .into();
            let request = SignableRequest::new("POST", &self.url, headers.into_iter(), SignableBody::Bytes(body))
                .map_err(|e| WireError::signing(&e))?;
            sign(request, &params)
                .map_err(|e| WireError::signing(&e))?
                .into_parts()
                .0
        };
        let mut request = self.http.post(&self.url);
        for (name, value) in headers.into_iter().chain(signed.headers()) {
            request = request.header(name, value);
        }
        let response = request.body(body.to_vec()).send().await.map_err(WireError::transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(WireError::transport)?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(WireError::service(status.as_u16(), &bytes))
        }
    }
}

impl ItemCalls for LeanClient {
    async fn update(&self, request: Update<'_>) -> Result<bool, StoreError> {
        let mut body = Json::object();
        body.field("TableName").string(request.table);
        body.field("Key").item(&request.key);
        body.field("UpdateExpression").string(&request.update);
        body.field("ConditionExpression").string(request.condition);
        body.names(&request.names);
        body.values(&request.values);
        body.field("ReturnConsumedCapacity").string("TOTAL");
        let body = body.finish("UpdateItem", request.table)?;
        match self.call("UpdateItem", request.table, body).await {
            Ok(_) => Ok(true),
            Err(Refused::Condition) => Ok(false),
            Err(Refused::Failed(e)) => Err(e),
        }
    }

    async fn get(&self, request: Get<'_>) -> Result<Option<Item>, StoreError> {
        let mut body = Json::object();
        body.field("TableName").string(request.table);
        body.field("Key").item(&request.key);
        body.field("ProjectionExpression").string(request.projection);
        body.field("ConsistentRead").boolean(request.consistent);
        body.field("ReturnConsumedCapacity").string("TOTAL");
        let body = body.finish("GetItem", request.table)?;
        match self.call("GetItem", request.table, body).await {
            Ok(answer) => match answer.item {
                None => Ok(None),
                Some(item) => read_item(item)
                    .map(Some)
                    .ok_or_else(|| unreadable("GetItem", request.table)),
            },
            Err(Refused::Condition) => Ok(None),
            Err(Refused::Failed(e)) => Err(e),
        }
    }

    async fn put(&self, request: Put<'_>) -> Result<bool, StoreError> {
        let mut body = Json::object();
        body.field("TableName").string(request.table);
        body.field("Item").item(&request.item);
        if let Some(condition) = request.condition {
            body.field("ConditionExpression").string(condition);
        }
        body.values(&request.values);
        body.field("ReturnConsumedCapacity").string("TOTAL");
        let body = body.finish("PutItem", request.table)?;
        match self.call("PutItem", request.table, body).await {
            Ok(_) => Ok(true),
            Err(Refused::Condition) => Ok(false),
            Err(Refused::Failed(e)) => Err(e),
        }
    }

    async fn batch_put(&self, table: &str, items: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let mut body = Json::object();
        body.field("RequestItems").open();
        body.field(table).open_list();
        for item in &items {
            body.element().open();
            body.field("PutRequest").open();
            body.field("Item").item(item);
            body.close();
            body.close();
        }
        body.close_list();
        body.close();
        body.field("ReturnConsumedCapacity").string("TOTAL");
        let body = body.finish("BatchWriteItem", table)?;
        match self.call("BatchWriteItem", table, body).await {
            Ok(mut answer) => answer
                .unprocessed_items
                .remove(table)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|write| write.put_request)
                .map(|put| read_item(put.item).ok_or_else(|| unreadable("BatchWriteItem", table)))
                .collect(),
            // A batch has no condition.
            Err(Refused::Condition) => Err(unreadable("BatchWriteItem", table)),
            Err(Refused::Failed(e)) => Err(e),
        }
    }

    async fn insert_batch(&self, table: &str, items: Vec<&Item>) -> Result<Vec<Inserted>, StoreError> {
        let units: Vec<f64> = items.iter().copied().map(create_units).collect();
        let mut body = Json::object();
        body.field("Statements").open_list();
        for item in items {
            let (statement, parameters) = insert_statement(table, item);
            body.element().open();
            body.field("Statement").string(&statement);
            body.field("Parameters").open_list();
            for parameter in parameters {
                body.element().value(parameter);
            }
            body.close_list();
            body.close();
        }
        body.close_list();
        body.field("ReturnConsumedCapacity").string("TOTAL");
        let body = body.finish("BatchExecuteStatement", table)?;
        match self.call("BatchExecuteStatement", table, body).await {
            Ok(answer) => {
                let errors = answer
                    .responses
                    .into_iter()
                    .map(|response| response.error.map(|e| e.code.unwrap_or_default()))
                    .collect();
                answered(table, &units, errors, answer.consumed_capacity.is_some())
            }
            // Statements fail one by one, in the answer.
            Err(Refused::Condition) => Err(unreadable("BatchExecuteStatement", table)),
            Err(Refused::Failed(e)) => Err(e),
        }
    }
}

/// `https://dynamodb.<region>.amazonaws.com` (`.com.cn` in China).
fn regional_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://dynamodb.{region}.{suffix}")
}

/// How a call ended other than with an answer.
enum Refused {
    /// The write's condition refused it.
    Condition,
    /// Anything else.
    Failed(StoreError),
}

fn unreadable(operation: &'static str, table: &str) -> StoreError {
    StoreError::found(
        operation,
        table,
        StoreErrorKind::Service,
        "DynamoDB's answer holds an attribute value this client cannot read",
    )
}

/// A failed attempt: DynamoDB's error code and message, or the cause it
/// was not reached.
#[derive(Debug)]
struct WireError {
    meta: ErrorMetadata,
    /// The HTTP status of an error answer.
    status: Option<u16>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl WireError {
    fn transport(error: reqwest::Error) -> Self {
        Self {
            meta: ErrorMetadata::default(),
            status: None,
            source: Some(Box::new(error)),
        }
    }

    fn timeout(after: Duration) -> Self {
        let cause = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}", humantime::format_duration(after)),
        );
        Self {
            meta: ErrorMetadata::default(),
            status: None,
            source: Some(Box::new(cause)),
        }
    }

    fn signing(error: &dyn std::fmt::Display) -> Self {
        Self::coded("SigningFailure", error.to_string())
    }

    fn unreadable(error: &serde_json::Error) -> Self {
        Self::coded(
            "UnreadableAnswer",
            format!("DynamoDB's answer is not what was expected: {error}"),
        )
    }

    fn coded(code: &str, message: String) -> Self {
        Self {
            meta: ErrorMetadata::builder().code(code).message(message).build(),
            status: None,
            source: None,
        }
    }

    /// An error answer: `{"__type": "…#Code", "message": "…"}`.
    fn service(status: u16, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Body {
            #[serde(rename = "__type")]
            kind: Option<String>,
            #[serde(alias = "Message")]
            message: Option<String>,
        }
        let parsed: Option<Body> = serde_json::from_slice(body).ok();
        let code = parsed
            .as_ref()
            .and_then(|b| b.kind.as_deref())
            .map(|kind| kind.rsplit('#').next().unwrap_or(kind).to_owned())
            .unwrap_or_else(|| format!("HttpStatus{status}"));
        let mut meta = ErrorMetadata::builder().code(code);
        if let Some(message) = parsed.and_then(|b| b.message) {
            meta = meta.message(message);
        }
        Self {
            meta: meta.build(),
            status: Some(status),
            source: None,
        }
    }

    /// Whether another attempt may succeed: throttling, a 5xx, or no answer
    /// (as the SDK's standard retry mode decides).
    fn is_transient(&self) -> bool {
        match kind_of(self.code()) {
            StoreErrorKind::Throttled | StoreErrorKind::Transport => true,
            StoreErrorKind::Service => self.status.is_some_and(|s| s >= 500),
            _ => false,
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code(), self.message()) {
            (Some(code), Some(message)) => write!(f, "{code}: {message}"),
            (Some(code), None) => f.write_str(code),
            _ => f.write_str("no answer from DynamoDB"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl ProvideErrorMetadata for WireError {
    fn meta(&self) -> &ErrorMetadata {
        &self.meta
    }
}

/// The credentials of the SDK's provider chain, fetched again
/// [`CREDENTIALS_MARGIN`] before they expire (one fetch at a time; a
/// failed refresh keeps using credentials that have not expired yet).
#[derive(Debug)]
struct Identities {
    provider: SharedCredentialsProvider,
    current: parking_lot::Mutex<Option<(Option<SystemTime>, Identity)>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl Identities {
    fn new(provider: SharedCredentialsProvider) -> Self {
        Self {
            provider,
            current: parking_lot::Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The current identity if it is good for at least `margin` more.
    fn good_for(&self, margin: Duration) -> Option<Identity> {
        let now = SystemTime::now();
        match &*self.current.lock() {
            Some((expiry, identity)) if expiry.is_none_or(|at| at > now + margin) => Some(identity.clone()),
            _ => None,
        }
    }

    async fn current(&self) -> Result<Identity, WireError> {
        if let Some(identity) = self.good_for(CREDENTIALS_MARGIN) {
            return Ok(identity);
        }
        let _refreshing = self.refreshing.lock().await;
        if let Some(identity) = self.good_for(CREDENTIALS_MARGIN) {
            return Ok(identity);
        }
        match self.provider.provide_credentials().await {
            Ok(credentials) => {
                let identity = Identity::from(credentials.clone());
                *self.current.lock() = Some((credentials.expiry(), identity.clone()));
                Ok(identity)
            }
            Err(e) => match self.good_for(Duration::ZERO) {
                Some(identity) => {
                    tracing::warn!(
                        error = %aws_smithy_types::error::display::DisplayErrorContext(&e),
                        "DynamoDB credentials could not be refreshed; the current ones have not expired yet"
                    );
                    Ok(identity)
                }
                None => Err(WireError {
                    meta: ErrorMetadata::default(),
                    status: None,
                    source: Some(Box::new(e)),
                }),
            },
        }
    }
}

/// What DynamoDB answers to the calls made here (fields of other calls
/// absent).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Answer {
    consumed_capacity: Option<Capacities>,
    item: Option<HashMap<String, serde_json::Value>>,
    unprocessed_items: HashMap<String, Vec<WireWrite>>,
    responses: Vec<WireStatement>,
}

/// One statement's answer in a `BatchExecuteStatement`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireStatement {
    error: Option<WireStatementError>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireStatementError {
    code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireWrite {
    put_request: Option<WirePut>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WirePut {
    item: HashMap<String, serde_json::Value>,
}

/// One `ConsumedCapacity` (item calls) or a list (batches).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Capacities {
    One(Capacity),
    Many(Vec<Capacity>),
}

impl Capacities {
    fn each(&self) -> &[Capacity] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Capacity {
    table_name: Option<String>,
    capacity_units: Option<f64>,
    read_capacity_units: Option<f64>,
    write_capacity_units: Option<f64>,
}

impl Capacity {
    fn units(&self, kind: &str) -> f64 {
        let specific = if kind == "read" {
            self.read_capacity_units
        } else {
            self.write_capacity_units
        };
        specific.or(self.capacity_units).unwrap_or_default()
    }
}

/// An item in DynamoDB's JSON read back; `None` if a value is not one.
fn read_item(item: HashMap<String, serde_json::Value>) -> Option<Item> {
    item.into_iter()
        .map(|(name, value)| Some((name, read_value(value)?)))
        .collect()
}

fn read_value(value: serde_json::Value) -> Option<AttributeValue> {
    use serde_json::Value;
    let Value::Object(map) = value else { return None };
    let (tag, inner) = map.into_iter().next()?;
    let strings = |inner: Value| -> Option<Vec<String>> {
        match inner {
            Value::Array(values) => values
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    };
    let blob = |text: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .map(Blob::new)
    };
    Some(match (tag.as_str(), inner) {
        ("S", Value::String(s)) => AttributeValue::S(s),
        ("N", Value::String(n)) => AttributeValue::N(n),
        ("B", Value::String(b)) => AttributeValue::B(blob(&b)?),
        ("BOOL", Value::Bool(b)) => AttributeValue::Bool(b),
        ("NULL", _) => AttributeValue::Null(true),
        ("M", Value::Object(m)) => AttributeValue::M(read_item(m.into_iter().collect())?),
        ("L", Value::Array(l)) => AttributeValue::L(l.into_iter().map(read_value).collect::<Option<_>>()?),
        ("SS", inner) => AttributeValue::Ss(strings(inner)?),
        ("NS", inner) => AttributeValue::Ns(strings(inner)?),
        ("BS", inner) => AttributeValue::Bs(strings(inner)?.iter().map(|b| blob(b)).collect::<Option<_>>()?),
        _ => return None,
    })
}

/// A request body written straight into bytes, in DynamoDB's JSON.
struct Json {
    out: Vec<u8>,
    /// Whether the innermost open object or list has a member yet.
    started: Vec<bool>,
    /// A value this writer cannot write was met.
    unsupported: bool,
}

impl Json {
    fn object() -> Self {
        let mut json = Self {
            out: Vec::with_capacity(2048),
            started: Vec::new(),
            unsupported: false,
        };
        json.open();
        json
    }

    /// The separator before the next member of the innermost object or list.
    fn member(&mut self) {
        if let Some(started) = self.started.last_mut() {
            if *started {
                self.out.push(b',');
            }
            *started = true;
        }
    }

    /// `"name":`, ready for its value.
    fn field(&mut self, name: &str) -> &mut Self {
        self.member();
        self.string(name);
        self.out.push(b':');
        self
    }

    /// The next element of a list, ready for its value.
    fn element(&mut self) -> &mut Self {
        self.member();
        self
    }

    fn string(&mut self, text: &str) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.out, text);
    }

    fn boolean(&mut self, value: bool) {
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn open(&mut self) {
        self.out.push(b'{');
        self.started.push(false);
    }

    fn close(&mut self) {
        self.out.push(b'}');
        self.started.pop();
    }

    fn open_list(&mut self) {
        self.out.push(b'[');
        self.started.push(false);
    }

    fn close_list(&mut self) {
        self.out.push(b']');
        self.started.pop();
    }

    fn item(&mut self, item: &Item) {
        self.open();
        for (name, value) in item {
            self.field(name).value(value);
        }
        self.close();
    }

    fn names(&mut self, names: &HashMap<String, String>) {
        if names.is_empty() {
            return;
        }
        self.field("ExpressionAttributeNames").open();
        for (placeholder, name) in names {
            self.field(placeholder).string(name);
        }
        self.close();
    }

    fn values(&mut self, values: &HashMap<String, AttributeValue>) {
        if values.is_empty() {
            return;
        }
        self.field("ExpressionAttributeValues").item(values);
    }

    fn strings<'a>(&mut self, values: impl Iterator<Item = &'a str>) {
        self.open_list();
        for value in values {
            self.element().string(value);
        }
        self.close_list();
    }

    fn blob(&mut self, bytes: &Blob) {
        self.out.push(b'"');
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes.as_ref());
        self.out.extend_from_slice(encoded.as_bytes());
        self.out.push(b'"');
    }

    /// `{"S":"…"}` and the other shapes of an attribute value.
    fn value(&mut self, value: &AttributeValue) {
        self.open();
        match value {
            AttributeValue::S(text) => self.field("S").string(text),
            AttributeValue::N(number) => self.field("N").string(number),
            AttributeValue::B(bytes) => self.field("B").blob(bytes),
            AttributeValue::Bool(b) => self.field("BOOL").boolean(*b),
            AttributeValue::Null(_) => self.field("NULL").boolean(true),
            AttributeValue::M(map) => self.field("M").item(map),
            AttributeValue::L(list) => {
                self.field("L").open_list();
                for element in list {
                    self.element().value(element);
                }
                self.close_list();
            }
            AttributeValue::Ss(set) => self.field("SS").strings(set.iter().map(String::as_str)),
            AttributeValue::Ns(set) => self.field("NS").strings(set.iter().map(String::as_str)),
            AttributeValue::Bs(set) => {
                self.field("BS").open_list();
                for bytes in set {
                    self.element().blob(bytes);
                }
                self.close_list();
            }
            _ => self.unsupported = true,
        }
        self.close();
    }

    /// The body, or an error naming the value it could not write.
    fn finish(mut self, operation: &'static str, table: &str) -> Result<Vec<u8>, StoreError> {
        self.close();
        if self.unsupported {
            return Err(StoreError::found(
                operation,
                table,
                StoreErrorKind::Invalid,
                "an attribute value of a kind this client cannot write",
            ));
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use aws_credential_types::Credentials;

    use super::*;

    fn written(build: impl FnOnce(&mut Json)) -> serde_json::Value {
        let mut json = Json::object();
        build(&mut json);
        let bytes = json.finish("PutItem", "t").unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }

    #[test]
    fn every_kind_of_value_is_written_as_dynamodb_json_and_reads_back() {
        let item: Item = HashMap::from([
            (
                "s".to_owned(),
                AttributeValue::S("a \"quoted\" \\ line\nbreak é".to_owned()),
            ),
            ("n".to_owned(), AttributeValue::N("-12.5".to_owned())),
            ("b".to_owned(), AttributeValue::B(Blob::new(vec![0, 1, 254, 255]))),
            ("t".to_owned(), AttributeValue::Bool(true)),
            ("z".to_owned(), AttributeValue::Null(true)),
            (
                "m".to_owned(),
                AttributeValue::M(HashMap::from([("x".to_owned(), AttributeValue::N("1".to_owned()))])),
            ),
            (
                "l".to_owned(),
                AttributeValue::L(vec![AttributeValue::S("x".to_owned()), AttributeValue::Bool(false)]),
            ),
            (
                "ss".to_owned(),
                AttributeValue::Ss(vec!["a".to_owned(), "b".to_owned()]),
            ),
            (
                "ns".to_owned(),
                AttributeValue::Ns(vec!["1".to_owned(), "2".to_owned()]),
            ),
            (
                "bs".to_owned(),
                AttributeValue::Bs(vec![Blob::new(vec![7]), Blob::new(vec![])]),
            ),
        ]);
        let value = written(|json| json.field("Item").item(&item));
        assert_eq!(value["Item"]["s"]["S"], "a \"quoted\" \\ line\nbreak é");
        assert_eq!(value["Item"]["b"]["B"], "AAH+/w==");
        assert_eq!(value["Item"]["z"]["NULL"], true);
        assert_eq!(value["Item"]["l"]["L"][1]["BOOL"], false);
        let serde_json::Value::Object(map) = value["Item"].clone() else {
            panic!("no item in {value}");
        };
        assert_eq!(read_item(map.into_iter().collect()), Some(item));
    }

    #[test]
    fn members_are_separated_and_empty_placeholders_left_out() {
        let value = written(|json| {
            json.field("TableName").string("t");
            json.names(&HashMap::new());
            json.values(&HashMap::new());
            json.names(&HashMap::from([("#a".to_owned(), "a".to_owned())]));
            json.field("ConsistentRead").boolean(true);
        });
        assert_eq!(
            value,
            serde_json::json!({"TableName": "t", "ExpressionAttributeNames": {"#a": "a"}, "ConsistentRead": true})
        );
    }

    #[test]
    fn error_answers_give_their_code_and_whether_to_try_again() {
        let conditional = WireError::service(
            400,
            br#"{"__type":"com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException","message":"The conditional request failed"}"#,
        );
        assert_eq!(conditional.code(), Some(CONDITIONAL_CHECK_FAILED));
        assert_eq!(conditional.message(), Some("The conditional request failed"));
        assert!(!conditional.is_transient());
        let throttled = WireError::service(
            400,
            br#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","Message":"slow down"}"#,
        );
        assert!(throttled.is_transient());
        assert_eq!(
            throttled.to_string(),
            "ProvisionedThroughputExceededException: slow down"
        );
        let missing = WireError::service(
            400,
            br#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","message":"no table"}"#,
        );
        assert!(!missing.is_transient());
        let internal = WireError::service(500, b"<html>bad gateway</html>");
        assert_eq!(internal.code(), Some("HttpStatus500"));
        assert!(internal.is_transient());
        let error = StoreError::new("UpdateItem", "t", internal);
        assert_eq!(error.kind(), StoreErrorKind::Service);
        let timeout = StoreError::new("UpdateItem", "t", WireError::timeout(Duration::from_secs(10)));
        assert_eq!(timeout.kind(), StoreErrorKind::Transport);
        assert!(
            timeout.to_string().ends_with("(transport): no answer within 10s"),
            "{timeout}"
        );
    }

    #[test]
    fn answers_give_capacity_unprocessed_items_and_the_item() {
        let answer: Answer = serde_json::from_str(
            r#"{"ConsumedCapacity":[{"TableName":"t","CapacityUnits":3.0}],
                "UnprocessedItems":{"t":[{"PutRequest":{"Item":{"pk":{"S":"a"}}}}]}}"#,
        )
        .unwrap_or_default();
        let capacity: Vec<f64> = answer
            .consumed_capacity
            .iter()
            .flat_map(Capacities::each)
            .map(|c| c.units("write"))
            .collect();
        assert_eq!(capacity, [3.0]);
        assert_eq!(answer.unprocessed_items["t"].len(), 1);
        let one: Answer = serde_json::from_str(
            r#"{"ConsumedCapacity":{"TableName":"t","CapacityUnits":0.5},"Item":{"version":{"N":"2"}}}"#,
        )
        .unwrap_or_default();
        assert_eq!(one.consumed_capacity.iter().flat_map(Capacities::each).count(), 1);
        assert_eq!(
            one.item.and_then(read_item),
            Some(HashMap::from([(
                "version".to_owned(),
                AttributeValue::N("2".to_owned())
            )]))
        );
    }

    /// A provider of credentials good for `lifetime` (`None`: forever)
    /// that fails once `fails_from` calls were made.
    #[derive(Debug)]
    struct Provider {
        calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        lifetime: Option<Duration>,
        fails_from: usize,
    }

    impl ProvideCredentials for Provider {
        fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let result = if call >= self.fails_from {
                Err(aws_credential_types::provider::error::CredentialsError::provider_error(
                    "STS is down",
                ))
            } else {
                let expiry = self.lifetime.map(|lifetime| SystemTime::now() + lifetime);
                Ok(Credentials::new(format!("AK{call}"), "secret", None, expiry, "test"))
            };
            aws_credential_types::provider::future::ProvideCredentials::ready(result)
        }
    }

    fn counted(lifetime: Option<Duration>, fails_from: usize) -> (Identities, impl Fn() -> usize) {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let provider = Provider {
            calls: calls.clone(),
            lifetime,
            fails_from,
        };
        let count = move || calls.load(std::sync::atomic::Ordering::SeqCst);
        (Identities::new(SharedCredentialsProvider::new(provider)), count)
    }

    fn key_of(identity: &Identity) -> Option<String> {
        identity.data::<Credentials>().map(|c| c.access_key_id().to_owned())
    }

    #[tokio::test]
    async fn credentials_are_fetched_again_only_when_about_to_expire() {
        // Static keys and long-lived credentials: fetched once.
        for lifetime in [None, Some(Duration::from_secs(3_600))] {
            let (identities, calls) = counted(lifetime, usize::MAX);
            for _ in 0..3 {
                assert!(identities.current().await.is_ok());
            }
            assert_eq!(calls(), 1, "{lifetime:?}");
        }
        // Within the margin of their expiry: fetched again on every use.
        let (identities, calls) = counted(Some(Duration::from_secs(60)), usize::MAX);
        let first = identities.current().await.ok();
        let second = identities.current().await.ok();
        assert_eq!(calls(), 2);
        assert_eq!(first.as_ref().and_then(key_of).as_deref(), Some("AK0"));
        assert_eq!(second.as_ref().and_then(key_of).as_deref(), Some("AK1"));
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_credentials_that_have_not_expired() {
        let (identities, calls) = counted(Some(Duration::from_secs(60)), 1);
        assert!(identities.current().await.is_ok());
        let kept = identities.current().await.ok();
        assert_eq!(calls(), 2);
        assert_eq!(kept.as_ref().and_then(key_of).as_deref(), Some("AK0"));

        // Expired and not refreshed: the call fails, as a transport failure
        // that keeps the provider's error.
        let (expired, calls) = counted(Some(Duration::ZERO), 1);
        assert!(expired.current().await.is_ok());
        let error = expired
            .current()
            .await
            .err()
            .map(|e| StoreError::new("UpdateItem", "t", e));
        let error = error.unwrap_or_else(|| panic!("expired credentials were used"));
        assert_eq!(error.kind(), StoreErrorKind::Transport);
        assert!(error.to_string().contains("STS is down"), "{error}");
        assert_eq!(calls(), 2);
    }

    #[test]
    fn endpoints_follow_the_region() {
        assert_eq!(
            regional_endpoint("eu-west-1"),
            "https://dynamodb.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            regional_endpoint("cn-north-1"),
            "https://dynamodb.cn-north-1.amazonaws.com.cn"
        );
    }
}
