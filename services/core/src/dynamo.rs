//! The DynamoDB client (with endpoint override for DynamoDB Local) and the
//! definition of every table.
//!
//! Tenant isolation lives in the keys: every partition key starts with the
//! tenant id (`ten_…` or `ten_…#…`), so no query can cross tenants. The one
//! exception is the API key table, keyed by the SHA-256 of the key, because
//! the key is what tells which tenant is asking.
//!
//! Also what every store module shares: [`StoreError`], [`ListError`] and
//! the attribute helpers.

use std::collections::HashMap;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};

use crate::config::DynamoConfig;

mod calls;
mod lean;

pub use calls::{Get, Inserted, ItemCalls, ItemClient, Put, Update, insert_statement};
pub(crate) use calls::{UNIT_BYTES, attribute_size, write_batch};
pub use lean::{ClientError, LeanClient};

/// The attribute every table uses for item expiry (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// A DynamoDB client for `config` (static credentials when given, else the
/// default AWS chain, which includes IRSA on EKS).
pub async fn client(config: &DynamoConfig) -> Client {
    let shared = shared_config(config).await;
    let config = aws_sdk_dynamodb::config::Builder::from(&shared)
        .interceptor(CallMetrics)
        .build();
    Client::from_conf(config)
}

/// The AWS configuration of `config`: region, credentials (static, or the
/// default chain), endpoint and timeouts.
async fn shared_config(config: &DynamoConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(config.region.clone()));
    if let (Some(key), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(key, secret, None, None, "triggers-config"));
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .operation_attempt_timeout(config.attempt_timeout)
        .operation_timeout(config.call_timeout)
        .build();
    loader.timeout_config(timeouts).load().await
}

/// Times every DynamoDB call: `triggers_dynamodb_request_duration_seconds`
/// by operation and result (`ok`, `error`; retries included). Errors by
/// code are counted where they are handled ([`StoreError`]).
///
/// Also asks every data-plane call for the capacity it consumed
/// (`ReturnConsumedCapacity=TOTAL`, free of charge) and records it:
/// `triggers_dynamodb_capacity_units` (per call and table; its `_sum` is the
/// units consumed) by operation, table and `read`/`write` — the figures the capacity model (docs/capacity.md) is
/// built from. A call that fails (a conditional check, say) reports no
/// capacity; DynamoDB still charges it, at least one unit.
#[derive(Debug)]
struct CallMetrics;

/// The data-plane operations: whether the output holds one
/// `ConsumedCapacity` or a list, module, input, output, read or write.
macro_rules! with_capacity {
    ($apply:ident!($($args:tt)*)) => {
        $apply!($($args)*;
            one put_item PutItemInput PutItemOutput "write";
            one update_item UpdateItemInput UpdateItemOutput "write";
            one delete_item DeleteItemInput DeleteItemOutput "write";
            one get_item GetItemInput GetItemOutput "read";
            one query QueryInput QueryOutput "read";
            one scan ScanInput ScanOutput "read";
            many batch_write_item BatchWriteItemInput BatchWriteItemOutput "write";
            // The services batch only writes (`INSERT`s) this way.
            many batch_execute_statement BatchExecuteStatementInput BatchExecuteStatementOutput "write";
            many batch_get_item BatchGetItemInput BatchGetItemOutput "read";
            many transact_write_items TransactWriteItemsInput TransactWriteItemsOutput "write";
            many transact_get_items TransactGetItemsInput TransactGetItemsOutput "read"
        )
    };
}

/// Sets `ReturnConsumedCapacity=TOTAL` on a data-plane input (unless the
/// caller chose otherwise).
macro_rules! ask_capacity {
    ($input:expr; $($shape:ident $module:ident $in:ident $out:ident $kind:literal);*) => {
        $(
            if let Some(input) = $input.downcast_mut::<aws_sdk_dynamodb::operation::$module::$in>() {
                input.return_consumed_capacity.get_or_insert(ReturnConsumedCapacity::Total);
                return;
            }
        )*
    };
}

/// The capacity a data-plane output reports, as (table, units, kind).
macro_rules! read_capacity {
    ($output:expr; $($shape:ident $module:ident $in:ident $out:ident $kind:literal);*) => {
        $(
            if let Some(output) = $output.downcast_ref::<aws_sdk_dynamodb::operation::$module::$out>() {
                return read_capacity!(@$shape output, $kind);
            }
        )*
        return Vec::new()
    };
    (@one $output:ident, $kind:literal) => {
        $output.consumed_capacity.iter().map(|c| units(c, $kind)).collect()
    };
    (@many $output:ident, $kind:literal) => {
        $output.consumed_capacity.iter().flatten().map(|c| units(c, $kind)).collect()
    };
}

/// (table, units, `read`/`write`) of one `ConsumedCapacity`.
fn units(capacity: &aws_sdk_dynamodb::types::ConsumedCapacity, kind: &'static str) -> (String, f64, &'static str) {
    let specific = match kind {
        "read" => capacity.read_capacity_units,
        _ => capacity.write_capacity_units,
    };
    (
        capacity.table_name.clone().unwrap_or_default(),
        specific.or(capacity.capacity_units).unwrap_or_default(),
        kind,
    )
}

fn ask_for_capacity(input: &mut aws_smithy_runtime_api::client::interceptors::context::Input) {
    use aws_sdk_dynamodb::types::ReturnConsumedCapacity;
    with_capacity!(ask_capacity!(input));
}

fn consumed_capacity(
    output: &aws_smithy_runtime_api::client::interceptors::context::Output,
) -> Vec<(String, f64, &'static str)> {
    with_capacity!(read_capacity!(output));
}

#[derive(Debug, Clone, Copy)]
struct Started(std::time::Instant);

impl aws_smithy_types::config_bag::Storable for Started {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for CallMetrics {
    fn name(&self) -> &'static str {
        "TriggersCallMetrics"
    }

    fn read_before_execution(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        cfg.interceptor_state().store_put(Started(std::time::Instant::now()));
        Ok(())
    }

    fn modify_before_serialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextMut<
            '_,
        >,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        ask_for_capacity(context.input_mut());
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map_or_else(|| "unknown".to_owned(), |m| m.name().to_owned());
        let result = match context.output_or_error() {
            Some(Ok(output)) => {
                for (table, units, kind) in consumed_capacity(output) {
                    metrics::histogram!(
                        "triggers_dynamodb_capacity_units",
                        "operation" => operation.clone(),
                        "table" => table,
                        "capacity" => kind
                    )
                    .record(units);
                }
                "ok"
            }
            _ => "error",
        };
        if let Some(Started(at)) = cfg.load::<Started>() {
            metrics::histogram!(
                "triggers_dynamodb_request_duration_seconds",
                "operation" => operation,
                "result" => result
            )
            .record(at.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

/// The physical names of the tables of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// Events: `pk` = tenant, `sk` = `e#<event id>`, plus `c#<event id>#<n>`
    /// chunk items for large payloads (`eventstore`).
    pub events: String,
    /// Delivery attempts: `pk` = tenant, `sk` =
    /// `<event id>#<subscription id>#<attempt, 5 digits>#<kind>`
    /// (`eventstore`); and the dead letters listed by `GET /v1/dlq`,
    /// `sk` = `dlq#<event id>#<subscription id>` (`deadletter`).
    pub attempts: String,
    /// Subscriptions: `pk` = tenant, `sk` = subscription id.
    pub subscriptions: String,
    /// API keys: `pk` = SHA-256 of the key (hex); index `by_tenant`.
    pub api_keys: String,
    /// Idempotency records: `pk` = `tenant#idempotency-key`, 24 h TTL.
    pub idempotency: String,
    /// Tenants: `pk` = tenant id.
    pub tenants: String,
    /// Analytics counters: `pk` = tenant, `sk` = `m#<minute>#<scope>` or
    /// `h#<hour>#<scope>` (`analytics`).
    pub analytics: String,
}

impl Tables {
    /// The table names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            events: format!("{prefix}events"),
            attempts: format!("{prefix}attempts"),
            subscriptions: format!("{prefix}subscriptions"),
            api_keys: format!("{prefix}api_keys"),
            idempotency: format!("{prefix}idempotency"),
            tenants: format!("{prefix}tenants"),
            analytics: format!("{prefix}analytics"),
        }
    }

    /// Every table with its keys and indexes.
    pub fn specs(&self) -> Vec<TableSpec> {
        vec![
            TableSpec::new(&self.events, "pk", Some("sk")).index("inbox", "inbox_pk", Some("sk")),
            TableSpec::new(&self.attempts, "pk", Some("sk")),
            TableSpec::new(&self.subscriptions, "pk", Some("sk")),
            TableSpec::new(&self.api_keys, "pk", None).index("by_tenant", "tenant", Some("key_id")),
            TableSpec::new(&self.idempotency, "pk", None),
            TableSpec::new(&self.tenants, "pk", None),
            TableSpec::new(&self.analytics, "pk", Some("sk")),
        ]
    }
}

/// The shape of one table: string keys, on-demand billing, TTL on
/// [`TTL_ATTRIBUTE`], global indexes projecting every attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Table name.
    pub name: String,
    /// Partition key attribute.
    pub partition_key: String,
    /// Sort key attribute, if any.
    pub sort_key: Option<String>,
    /// Global secondary indexes: (name, partition key, sort key).
    pub indexes: Vec<(String, String, Option<String>)>,
}

impl TableSpec {
    fn new(name: &str, partition_key: &str, sort_key: Option<&str>) -> Self {
        Self {
            name: name.to_owned(),
            partition_key: partition_key.to_owned(),
            sort_key: sort_key.map(str::to_owned),
            indexes: Vec::new(),
        }
    }

    fn index(mut self, name: &str, partition_key: &str, sort_key: Option<&str>) -> Self {
        self.indexes
            .push((name.to_owned(), partition_key.to_owned(), sort_key.map(str::to_owned)));
        self
    }

    /// The `CreateTable` request for this spec.
    pub fn create_request(
        &self,
        client: &Client,
    ) -> Result<
        aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder,
        aws_sdk_dynamodb::error::BuildError,
    > {
        let mut attributes: Vec<&str> = vec![&self.partition_key];
        attributes.extend(self.sort_key.as_deref());
        for (_, pk, sk) in &self.indexes {
            attributes.push(pk);
            attributes.extend(sk.as_deref());
        }
        attributes.sort_unstable();
        attributes.dedup();

        let mut request = client
            .create_table()
            .table_name(&self.name)
            .billing_mode(BillingMode::PayPerRequest);
        for attribute in attributes {
            request = request.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attribute)
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            );
        }
        for element in key_schema(&self.partition_key, self.sort_key.as_deref())? {
            request = request.key_schema(element);
        }
        for (name, pk, sk) in &self.indexes {
            let mut index = GlobalSecondaryIndex::builder()
                .index_name(name)
                .projection(Projection::builder().projection_type(ProjectionType::All).build());
            for element in key_schema(pk, sk.as_deref())? {
                index = index.key_schema(element);
            }
            request = request.global_secondary_indexes(index.build()?);
        }
        Ok(request)
    }
}

fn key_schema(
    partition_key: &str,
    sort_key: Option<&str>,
) -> Result<Vec<KeySchemaElement>, aws_sdk_dynamodb::error::BuildError> {
    let mut elements = vec![
        KeySchemaElement::builder()
            .attribute_name(partition_key)
            .key_type(KeyType::Hash)
            .build()?,
    ];
    if let Some(sort_key) = sort_key {
        elements.push(
            KeySchemaElement::builder()
                .attribute_name(sort_key)
                .key_type(KeyType::Range)
                .build()?,
        );
    }
    Ok(elements)
}

// Attribute and error helpers of every store module.

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn get_s(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

pub(crate) fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

pub(crate) fn store_error<E>(operation: &'static str, table: &str, error: E) -> StoreError
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    StoreError::new(operation, table, error)
}

/// The error code of a write its condition refused.
const CONDITIONAL_CHECK_FAILED: &str = "ConditionalCheckFailedException";

/// Whether a write was refused by its condition (a version moved on, an
/// item that must or must not exist).
pub(crate) fn is_conditional<E, R>(error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    matches!(
        error,
        aws_sdk_dynamodb::error::SdkError::ServiceError(e) if e.err().code() == Some(CONDITIONAL_CHECK_FAILED)
    )
}

/// A conditional write's result: `true` when it was made, `false` when its
/// condition refused it, else the failure as a [`StoreError`].
pub(crate) fn conditional<O, E, R>(
    result: Result<O, aws_sdk_dynamodb::error::SdkError<E, R>>,
    operation: &'static str,
    table: &str,
) -> Result<bool, StoreError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
    aws_sdk_dynamodb::error::SdkError<E, R>:
        std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_conditional(&e) => Ok(false),
        Err(e) => Err(store_error(operation, table, e)),
    }
}

/// A listing could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// DynamoDB failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cursor was not made by this store.
    #[error("invalid cursor")]
    BadCursor,
}

/// What kind of failure a [`StoreError`] is, which decides whether the same
/// request is worth sending again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// DynamoDB asked for less traffic (throughput, throttling, request
    /// limit): retry with backoff.
    Throttled,
    /// DynamoDB refused the request as malformed (`ValidationException`,
    /// `SerializationException`): it will be refused again.
    Invalid,
    /// The item is over DynamoDB's 400 KB limit: it will never fit.
    TooLarge,
    /// A conditional write lost to concurrent writers more often than it
    /// tries: worth trying again later.
    Contended,
    /// Stored data this code cannot read back (chunks that do not inflate):
    /// reading it again gives the same bytes.
    Corrupt,
    /// The caller's IAM identity may not make this call
    /// (`AccessDeniedException`): retried, since nothing else can be
    /// written either until an operator grants it, but a caller with
    /// another way to the same writes takes that instead (the persister's
    /// batched creates).
    Denied,
    /// Any other service-side error (5xx, internal): retry.
    Service,
    /// The request did not reach DynamoDB or no answer came back (connect,
    /// timeout, I/O): retry.
    Transport,
}

impl StoreErrorKind {
    fn label(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::Contended => "contended",
            Self::Corrupt => "corrupt",
            Self::Denied => "denied",
            Self::Service => "service",
            Self::Transport => "transport",
        }
    }
}

/// A DynamoDB call failed: which call on which table, what kind of failure,
/// and the SDK's error as its source.
#[derive(Debug, Clone, thiserror::Error)]
#[error("DynamoDB {operation} on `{table}` failed ({}): {detail}", kind.label())]
pub struct StoreError {
    operation: &'static str,
    table: String,
    kind: StoreErrorKind,
    /// The service's error code and message, or for a transport failure its
    /// innermost cause: what an operator needs from the log line.
    detail: String,
    #[source]
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

/// DynamoDB error codes that the same request will always get again.
const PERMANENT_CODES: &[&str] = &["ValidationException", "SerializationException"];

/// The kind of failure a DynamoDB error code means (no code: the request
/// got no answer).
fn kind_of(code: Option<&str>) -> StoreErrorKind {
    match code {
        Some("ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded") => {
            StoreErrorKind::Throttled
        }
        Some(code) if PERMANENT_CODES.contains(&code) => StoreErrorKind::Invalid,
        Some("AccessDeniedException") => StoreErrorKind::Denied,
        Some(_) => StoreErrorKind::Service,
        None => StoreErrorKind::Transport,
    }
}

impl StoreError {
    /// Wraps an SDK error with what was being done; counted in
    /// `triggers_dynamodb_errors_total` by operation and kind.
    pub fn new<E>(operation: &'static str, table: &str, error: E) -> Self
    where
        E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
    {
        let kind = kind_of(error.code());
        metrics::counter!("triggers_dynamodb_errors_total", "operation" => operation, "kind" => kind.label())
            .increment(1);
        let detail = match (error.code(), error.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => {
                // A transport failure says little at the top ("dispatch
                // failure"); its innermost cause says what happened.
                let mut innermost: &dyn std::error::Error = &error;
                while let Some(inner) = innermost.source() {
                    innermost = inner;
                }
                innermost.to_string()
            }
        };
        Self {
            operation,
            table: table.to_owned(),
            kind,
            detail,
            source: Some(std::sync::Arc::new(error)),
        }
    }

    /// A failure found by this code rather than the SDK's.
    pub fn found(operation: &'static str, table: &str, kind: StoreErrorKind, detail: impl Into<String>) -> Self {
        metrics::counter!("triggers_dynamodb_errors_total", "operation" => operation, "kind" => kind.label())
            .increment(1);
        Self {
            operation,
            table: table.to_owned(),
            kind,
            detail: detail.into(),
            source: None,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether sending the same request again may succeed. `false` for an
    /// item over 400 KB, an invalid attribute or data that cannot be read:
    /// retrying those would only hold up what follows them.
    pub fn is_retriable(&self) -> bool {
        !matches!(
            self.kind,
            StoreErrorKind::Invalid | StoreErrorKind::TooLarge | StoreErrorKind::Corrupt
        )
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::error::{ErrorMetadata, SdkError};
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_smithy_runtime_api::http::Response;

    use super::*;

    fn service_error(code: &str) -> PutItemError {
        PutItemError::generic(ErrorMetadata::builder().code(code).message("the detail").build())
    }

    #[test]
    fn kinds_decide_whether_to_retry() {
        let cases = [
            ("ValidationException", StoreErrorKind::Invalid, false),
            ("SerializationException", StoreErrorKind::Invalid, false),
            (
                "ProvisionedThroughputExceededException",
                StoreErrorKind::Throttled,
                true,
            ),
            ("ThrottlingException", StoreErrorKind::Throttled, true),
            ("InternalServerError", StoreErrorKind::Service, true),
            ("AccessDeniedException", StoreErrorKind::Denied, true),
        ];
        for (code, kind, retriable) in cases {
            let error = StoreError::new("PutItem", "t_events", service_error(code));
            assert_eq!(error.kind(), kind, "{code}");
            assert_eq!(error.is_retriable(), retriable, "{code}");
            assert_eq!(
                error.to_string(),
                format!(
                    "DynamoDB PutItem on `t_events` failed ({}): {code}: the detail",
                    kind.label()
                )
            );
        }
        for (kind, retriable) in [
            (StoreErrorKind::TooLarge, false),
            (StoreErrorKind::Corrupt, false),
            (StoreErrorKind::Contended, true),
        ] {
            assert_eq!(
                StoreError::found("UpdateItem", "t", kind, "x").is_retriable(),
                retriable
            );
        }
    }

    #[test]
    fn a_transport_failure_keeps_its_source_and_names_its_cause() {
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let error: SdkError<PutItemError, Response> = SdkError::timeout_error(cause);
        let error = StoreError::new("PutItem", "t_events", error);
        assert_eq!(error.kind(), StoreErrorKind::Transport);
        assert!(error.is_retriable());
        assert!(
            error.to_string().ends_with("(transport): connection refused"),
            "{error}"
        );
        let source = std::error::Error::source(&error).expect("the SDK error is the source");
        assert!(source.source().is_some(), "the chain goes on below the SDK error");
    }
}
