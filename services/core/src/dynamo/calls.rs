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
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};

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
}
