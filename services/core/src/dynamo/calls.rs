//! The item calls of the persister's hot path (conditional updates, reads
//! of one item, puts and batched puts) as plain requests, made either
//! through the AWS SDK's client or through [`LeanClient`]: the same
//! requests, the same [`StoreError`]s, the same metrics.
//!
//! The event store's writes are generic over [`ItemCalls`], so the API and
//! the tests keep the SDK's client while the persister, which makes about
//! one such call per event, uses the lean one (`dynamodb.lean_client`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, BatchStatementRequest, PutRequest, WriteRequest};

use super::lean::{ClientError, LeanClient};
use super::{StoreError, conditional, store_error};
use crate::config::DynamoConfig;
use crate::pager::Item;

/// An `UpdateItem` under a condition.
#[derive(Debug, Clone)]
pub struct Update<'a> {
    /// The table.
    pub table: &'a str,
    /// The item's key.
    pub key: Item,
    /// `SET …` / `REMOVE …`.
    pub update: String,
    /// The condition; a write it refuses is `Ok(false)`.
    pub condition: &'a str,
    /// `#name` placeholders.
    pub names: HashMap<String, String>,
    /// `:value` placeholders.
    pub values: HashMap<String, AttributeValue>,
}

/// A `GetItem` of some attributes.
#[derive(Debug, Clone)]
pub struct Get<'a> {
    /// The table.
    pub table: &'a str,
    /// The item's key.
    pub key: Item,
    /// The attributes read (none of them reserved words).
    pub projection: &'a str,
    /// A strongly consistent read.
    pub consistent: bool,
}

/// A `PutItem`, perhaps under a condition.
#[derive(Debug, Clone)]
pub struct Put<'a> {
    /// The table.
    pub table: &'a str,
    /// The whole item.
    pub item: Item,
    /// The condition, if any; a write it refuses is `Ok(false)`.
    pub condition: Option<&'a str>,
    /// `:value` placeholders of the condition.
    pub values: HashMap<String, AttributeValue>,
}

/// What became of one `INSERT` of an [`ItemCalls::insert_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The item was created.
    Created,
    /// An item with its key exists already; nothing was written.
    Exists,
    /// The statement failed on its own (its error code: throttled, too
    /// large, …); nothing was written.
    Failed(String),
}

impl Inserted {
    /// The outcome of a statement that failed with `code`.
    pub fn of_code(code: &str) -> Self {
        if code == "DuplicateItem" {
            Self::Exists
        } else {
            Self::Failed(code.to_owned())
        }
    }
}

/// The item bytes one write unit covers.
pub(crate) const UNIT_BYTES: usize = 1024;

/// The write units DynamoDB charges for creating `item` in the events table
/// by its sizing rule: one per started KiB of the item (attribute names and
/// values), as much again when it enters the `inbox` index (which projects
/// every attribute).
pub(super) fn create_units(item: &Item) -> f64 {
    let size: usize = item.iter().map(|(name, value)| attribute_size(name, value)).sum();
    let units = size.div_ceil(UNIT_BYTES).max(1) as f64;
    if item.contains_key("inbox_pk") {
        2.0 * units
    } else {
        units
    }
}

/// The bytes DynamoDB counts for an attribute: its name and its value.
pub(crate) fn attribute_size(name: &str, value: &AttributeValue) -> usize {
    name.len() + value_size(value)
}

/// The bytes DynamoDB counts for an attribute value.
fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(text) => text.len(),
        // About one byte per two significant digits, plus one.
        AttributeValue::N(number) => number.trim_start_matches(['-', '0']).len().div_ceil(2) + 1,
        AttributeValue::B(bytes) => bytes.as_ref().len(),
        AttributeValue::Ss(texts) => texts.iter().map(String::len).sum(),
        AttributeValue::Ns(numbers) => numbers.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        AttributeValue::Bs(blobs) => blobs.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(name, v)| 1 + name.len() + value_size(v))
                .sum::<usize>()
        }
        AttributeValue::L(list) => 3 + list.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        _ => 1,
    }
}

/// Records the write units of the items a `BatchExecuteStatement` created
/// when DynamoDB did not report them: DynamoDB Local reports no consumed
/// capacity for PartiQL calls (DynamoDB does, and then this records
/// nothing), and the capacity model's figures come from these metrics.
fn record_unreported_units(table: &str, created: impl Iterator<Item = f64>) {
    let histogram = metrics::histogram!(
        "triggers_dynamodb_capacity_units",
        "operation" => "BatchExecuteStatement",
        "table" => table.to_owned(),
        "capacity" => "write"
    );
    for units in created {
        histogram.record(units);
    }
}

/// What a batch of `INSERT`s did, from its answers' errors (one per
/// statement, in order: the code of a failed one, empty when it has none):
/// per item, in order, what became of it. When DynamoDB did not report
/// the capacity consumed, records the created items' `units`
/// ([`record_unreported_units`]).
pub(super) fn answered(
    table: &str,
    units: &[f64],
    errors: Vec<Option<String>>,
    reported: bool,
) -> Result<Vec<Inserted>, StoreError> {
    if errors.len() != units.len() {
        return Err(StoreError::found(
            "BatchExecuteStatement",
            table,
            super::StoreErrorKind::Service,
            format!("{} answers to {} statements", errors.len(), units.len()),
        ));
    }
    let inserted: Vec<Inserted> = errors
        .into_iter()
        .map(|error| error.map_or(Inserted::Created, |code| Inserted::of_code(&code)))
        .collect();
    if !reported {
        record_unreported_units(table, created_units(&inserted, units));
    }
    Ok(inserted)
}

/// The units of the created items of a batch.
fn created_units<'a>(inserted: &'a [Inserted], units: &'a [f64]) -> impl Iterator<Item = f64> + 'a {
    inserted
        .iter()
        .zip(units)
        .filter(|(inserted, _)| **inserted == Inserted::Created)
        .map(|(_, units)| *units)
}

/// The PartiQL `INSERT` of `item` into `table` and its parameters, in
/// the statement's order. An `INSERT` is refused when an item with the key
/// exists (`DuplicateItem`): a create under `attribute_not_exists`.
/// Attribute names are written as string literals, so none is reserved.
pub fn insert_statement<'a>(table: &str, item: &'a Item) -> (String, Vec<&'a AttributeValue>) {
    let mut statement = format!("INSERT INTO \"{table}\" VALUE {{");
    let mut parameters = Vec::with_capacity(item.len());
    for (i, (name, value)) in item.iter().enumerate() {
        if i > 0 {
            statement.push_str(", ");
        }
        statement.push('\'');
        // A quote inside a PartiQL string literal is doubled.
        if name.contains('\'') {
            statement.push_str(&name.replace('\'', "''"));
        } else {
            statement.push_str(name);
        }
        statement.push_str("': ?");
        parameters.push(value);
    }
    statement.push('}');
    (statement, parameters)
}

/// The item calls the event store's writes make.
pub trait ItemCalls: Send + Sync {
    /// `false` when the condition refused the write.
    fn update(&self, request: Update<'_>) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The item, if there is one.
    fn get(&self, request: Get<'_>) -> impl Future<Output = Result<Option<Item>, StoreError>> + Send;

    /// `false` when the condition refused the write.
    fn put(&self, request: Put<'_>) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// One `BatchWriteItem` of at most 25 puts into `table`; the items
    /// DynamoDB left unprocessed.
    fn batch_put(&self, table: &str, items: Vec<Item>) -> impl Future<Output = Result<Vec<Item>, StoreError>> + Send;

    /// One `BatchExecuteStatement` of at most 25 PartiQL `INSERT`s into
    /// `table` ([`insert_statement`]): per item, in order, what became of
    /// it. Each statement stands alone (no transaction).
    fn insert_batch(
        &self,
        table: &str,
        items: Vec<&Item>,
    ) -> impl Future<Output = Result<Vec<Inserted>, StoreError>> + Send;
}

impl ItemCalls for Client {
    async fn update(&self, request: Update<'_>) -> Result<bool, StoreError> {
        let Update {
            table,
            key,
            update,
            condition,
            names,
            values,
        } = request;
        let result = self
            .update_item()
            .table_name(table)
            .set_key(Some(key))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names((!names.is_empty()).then_some(names))
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .send()
            .await;
        conditional(result, "UpdateItem", table)
    }

    async fn get(&self, request: Get<'_>) -> Result<Option<Item>, StoreError> {
        let output = self
            .get_item()
            .table_name(request.table)
            .set_key(Some(request.key))
            .projection_expression(request.projection)
            .consistent_read(request.consistent)
            .send()
            .await
            .map_err(|e| store_error("GetItem", request.table, e))?;
        Ok(output.item)
    }

    async fn put(&self, request: Put<'_>) -> Result<bool, StoreError> {
        let Put {
            table,
            item,
            condition,
            values,
        } = request;
        let result = self
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_owned))
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .send()
            .await;
        conditional(result, "PutItem", table)
    }

    async fn batch_put(&self, table: &str, items: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let requests: Vec<WriteRequest> = items
            .into_iter()
            .filter_map(|item| {
                let put = PutRequest::builder().set_item(Some(item)).build().ok()?;
                Some(WriteRequest::builder().put_request(put).build())
            })
            .collect();
        Ok(write_batch(self, table, requests)
            .await?
            .into_iter()
            .filter_map(|request| request.put_request.map(|put| put.item))
            .collect())
    }

    async fn insert_batch(&self, table: &str, items: Vec<&Item>) -> Result<Vec<Inserted>, StoreError> {
        let units: Vec<f64> = items.iter().copied().map(create_units).collect();
        let statements = items
            .into_iter()
            .map(|item| {
                let (statement, parameters) = insert_statement(table, item);
                BatchStatementRequest::builder()
                    .statement(statement)
                    .set_parameters(Some(parameters.into_iter().cloned().collect()))
                    .build()
                    .map_err(|e| {
                        StoreError::found(
                            "BatchExecuteStatement",
                            table,
                            super::StoreErrorKind::Invalid,
                            e.to_string(),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .batch_execute_statement()
            .set_statements(Some(statements))
            .send()
            .await
            .map_err(|e| store_error("BatchExecuteStatement", table, e))?;
        let errors = output
            .responses
            .unwrap_or_default()
            .into_iter()
            .map(|response| {
                response
                    .error
                    .map(|e| e.code.map(|c| c.as_str().to_owned()).unwrap_or_default())
            })
            .collect();
        answered(table, &units, errors, output.consumed_capacity.is_some())
    }
}

/// One `BatchWriteItem` of `requests` into `table`; the requests DynamoDB
/// left unprocessed.
pub(crate) async fn write_batch(
    client: &Client,
    table: &str,
    requests: Vec<WriteRequest>,
) -> Result<Vec<WriteRequest>, StoreError> {
    let output = client
        .batch_write_item()
        .request_items(table, requests)
        .send()
        .await
        .map_err(|e| store_error("BatchWriteItem", table, e))?;
    Ok(output
        .unprocessed_items
        .and_then(|mut u| u.remove(table))
        .unwrap_or_default())
}

/// The client the persister makes its item calls with: the lean one
/// (`dynamodb.lean_client`, the default) or the SDK's.
#[derive(Debug, Clone)]
pub enum ItemClient {
    /// The AWS SDK's client.
    Sdk(Client),
    /// [`LeanClient`].
    Lean(Arc<LeanClient>),
}

impl ItemClient {
    /// The client `config` asks for; `sdk` is used when it asks for the SDK's.
    pub async fn new(config: &DynamoConfig, sdk: &Client) -> Result<Self, ClientError> {
        if config.lean_client {
            Ok(Self::Lean(Arc::new(LeanClient::new(config).await?)))
        } else {
            Ok(Self::Sdk(sdk.clone()))
        }
    }
}

impl ItemCalls for ItemClient {
    async fn update(&self, request: Update<'_>) -> Result<bool, StoreError> {
        match self {
            Self::Sdk(client) => client.update(request).await,
            Self::Lean(client) => client.update(request).await,
        }
    }

    async fn get(&self, request: Get<'_>) -> Result<Option<Item>, StoreError> {
        match self {
            Self::Sdk(client) => client.get(request).await,
            Self::Lean(client) => client.get(request).await,
        }
    }

    async fn put(&self, request: Put<'_>) -> Result<bool, StoreError> {
        match self {
            Self::Sdk(client) => client.put(request).await,
            Self::Lean(client) => client.put(request).await,
        }
    }

    async fn batch_put(&self, table: &str, items: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        match self {
            Self::Sdk(client) => client.batch_put(table, items).await,
            Self::Lean(client) => client.batch_put(table, items).await,
        }
    }

    async fn insert_batch(&self, table: &str, items: Vec<&Item>) -> Result<Vec<Inserted>, StoreError> {
        match self {
            Self::Sdk(client) => client.insert_batch(table, items).await,
            Self::Lean(client) => client.insert_batch(table, items).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insert_names_each_attribute_once_with_its_parameter_in_order() {
        let item: Item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("t".to_owned())),
            ("status".to_owned(), AttributeValue::S("delivered".to_owned())),
            ("it's".to_owned(), AttributeValue::N("1".to_owned())),
        ]);
        let (statement, parameters) = insert_statement("p_events", &item);
        let body = statement
            .strip_prefix("INSERT INTO \"p_events\" VALUE {")
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or_else(|| panic!("{statement}"));
        let names: Vec<String> = body
            .split(", ")
            .map(|pair| {
                let name = pair.strip_suffix(": ?").unwrap_or_else(|| panic!("{pair}"));
                name[1..name.len() - 1].replace("''", "'")
            })
            .collect();
        assert_eq!(names.len(), parameters.len());
        for (name, parameter) in names.iter().zip(&parameters) {
            assert_eq!(item.get(name), Some(*parameter), "{name}");
        }
        assert!(statement.contains("'it''s': ?"), "{statement}");
    }

    #[test]
    fn a_create_costs_a_unit_per_started_kib_and_as_much_again_in_the_inbox() {
        let mut item: Item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("t".repeat(10))),
            ("data".to_owned(), AttributeValue::S("x".repeat(1000))),
            ("version".to_owned(), AttributeValue::N("0".to_owned())),
        ]);
        // 2 + 10 + 4 + 1000 + 7 + 1 bytes.
        assert_eq!(create_units(&item), 1.0);
        item.insert("data".to_owned(), AttributeValue::S("x".repeat(1010)));
        assert_eq!(create_units(&item), 2.0);
        item.insert("inbox_pk".to_owned(), AttributeValue::S("t".to_owned()));
        assert_eq!(create_units(&item), 4.0);
        let inserted = [Inserted::Created, Inserted::Exists, Inserted::Created];
        assert_eq!(
            created_units(&inserted, &[1.0, 2.0, 3.0]).collect::<Vec<_>>(),
            [1.0, 3.0]
        );
    }

    #[test]
    fn a_duplicate_item_is_an_existing_one_and_other_codes_failures() {
        assert_eq!(Inserted::of_code("DuplicateItem"), Inserted::Exists);
        assert_eq!(
            Inserted::of_code("ThrottlingError"),
            Inserted::Failed("ThrottlingError".to_owned())
        );
    }
}
