//! The DynamoDB adapter: one table holds records, history, runs, page markers, leases and state.
//!
//! Item layout (`pk` / `sk`):
//! - `R#<Type>#<key>` / `#`: a register record ([`StoredRecord`]).
//! - `R#<Type>#<key>` / `H#<time>#<run>#<page>`: one change-history entry.
//! - `E#<email>` / `#`: people with that email, and devices waiting for such a person.
//! - `M#<connection>` / `<Type>#<key>`: membership, for the missing-device sweep.
//! - `RUN` / `<run_id>`: a run (the audit log); `P#<run_id>` / `<page_id>`: a page marker.
//! - `L#<connection>` / `#`: the run lease. `SEQ` / `asset_tag`: the asset tag sequence.
//! - `S#<connection>` / `<key>`: connector state (token and detail caches).

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, PutRequest, ReturnValue, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::AwsError;
use crate::register::StoredRecord;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// Turn an SDK error into ours, keeping the service's message.
pub fn dyn_err<
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
>(
    op: &'static str,
    e: SdkError<E, R>,
) -> AwsError {
    let detail = match e.as_service_error() {
        Some(se) => format!(
            "{}: {}",
            se.code().unwrap_or("error"),
            se.message().unwrap_or_default()
        ),
        None => DisplayErrorContext(&e).to_string(),
    };
    AwsError::Dynamo { op, detail }
}

/// Whether an SDK error is a failed condition.
pub fn is_condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| {
            c == "ConditionalCheckFailedException" || c == "TransactionCanceledException"
        })
}

/// String attribute value.
pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// Number attribute value.
pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The key of a register record.
pub fn record_pk(object_type: &str, key: &str) -> String {
    format!("R#{object_type}#{key}")
}

/// Serialise a value into an item (with pk/sk).
pub fn to_item<T: Serialize>(pk: &str, sk: &str, v: &T) -> Result<Item, AwsError> {
    let mut item: Item = serde_dynamo::to_item(v).map_err(|e| AwsError::Item(e.to_string()))?;
    item.insert("pk".into(), s(pk));
    item.insert("sk".into(), s(sk));
    Ok(item)
}

/// Deserialise an item.
pub fn from_item<T: DeserializeOwned>(mut item: Item) -> Result<T, AwsError> {
    item.remove("pk");
    item.remove("sk");
    serde_dynamo::from_item(item).map_err(|e| AwsError::Item(e.to_string()))
}

/// The table adapter.
#[derive(Clone)]
pub struct Store {
    pub ddb: Client,
    pub table: String,
}

impl Store {
    /// Wrap a client and table name.
    pub fn new(ddb: Client, table: impl Into<String>) -> Self {
        Store {
            ddb,
            table: table.into(),
        }
    }

    fn key(pk: &str, sk: &str) -> Item {
        HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
    }

    /// Read one item (strongly consistent).
    pub async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, AwsError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| dyn_err("GetItem", e))?;
        Ok(out.item)
    }

    /// Read many items by (pk, sk), 100 a request, retrying unprocessed keys.
    pub async fn batch_get(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), Item>, AwsError> {
        let mut found = HashMap::new();
        let mut unique: Vec<&(String, String)> = keys.iter().collect();
        unique.sort();
        unique.dedup();
        for chunk in unique.chunks(100) {
            let mut pending: Vec<Item> = chunk.iter().map(|(p, k)| Self::key(p, k)).collect();
            let mut tries = 0;
            while !pending.is_empty() {
                tries += 1;
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| AwsError::Item(e.to_string()))?;
                let out = self
                    .ddb
                    .batch_get_item()
                    .request_items(&self.table, ka)
                    .send()
                    .await
                    .map_err(|e| dyn_err("BatchGetItem", e))?;
                for item in out
                    .responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    if let (Some(AttributeValue::S(p)), Some(AttributeValue::S(k))) =
                        (item.get("pk"), item.get("sk"))
                    {
                        found.insert((p.clone(), k.clone()), item.clone());
                    }
                }
                if let Some(mut un) = out.unprocessed_keys {
                    if let Some(ka) = un.remove(&self.table) {
                        pending = ka.keys;
                    }
                }
                if !pending.is_empty() {
                    if tries > 8 {
                        return Err(AwsError::Dynamo {
                            op: "BatchGetItem",
                            detail: "keys stayed unprocessed after 8 tries".into(),
                        });
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50 << tries.min(6))).await;
                }
            }
        }
        Ok(found)
    }

    /// Write many items, 25 a request, retrying unprocessed items.
    pub async fn batch_put(&self, items: Vec<Item>) -> Result<(), AwsError> {
        for chunk in items.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|i| {
                    PutRequest::builder()
                        .set_item(Some(i.clone()))
                        .build()
                        .map(|p| WriteRequest::builder().put_request(p).build())
                        .map_err(|e| AwsError::Item(e.to_string()))
                })
                .collect::<Result<_, _>>()?;
            let mut tries = 0;
            while !pending.is_empty() {
                tries += 1;
                let out = self
                    .ddb
                    .batch_write_item()
                    .request_items(&self.table, std::mem::take(&mut pending))
                    .send()
                    .await
                    .map_err(|e| dyn_err("BatchWriteItem", e))?;
                if let Some(mut un) = out.unprocessed_items {
                    pending = un.remove(&self.table).unwrap_or_default();
                }
                if !pending.is_empty() {
                    if tries > 8 {
                        return Err(AwsError::Dynamo {
                            op: "BatchWriteItem",
                            detail: "items stayed unprocessed after 8 tries".into(),
                        });
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50 << tries.min(6))).await;
                }
            }
        }
        Ok(())
    }

    /// Query a whole partition (optionally from a sort-key prefix), newest first when `reverse`.
    pub async fn query(
        &self,
        pk: &str,
        sk_prefix: Option<&str>,
        reverse: bool,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, AwsError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .ddb
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .scan_index_forward(!reverse)
                .expression_attribute_values(":pk", s(pk))
                .set_exclusive_start_key(start.take());
            q = match sk_prefix {
                Some(p) => q
                    .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                    .expression_attribute_values(":p", s(p)),
                None => q.key_condition_expression("pk = :pk"),
            };
            if let Some(l) = limit {
                q = q.limit((l - out.len()).min(1000) as i32);
            }
            let page = q.send().await.map_err(|e| dyn_err("Query", e))?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if limit.is_none_or(|l| out.len() < l) => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Read register records by key.
    pub async fn records(
        &self,
        object_type: &str,
        keys: &[String],
    ) -> Result<HashMap<String, StoredRecord>, AwsError> {
        let ks: Vec<(String, String)> = keys
            .iter()
            .map(|k| (record_pk(object_type, k), "#".to_string()))
            .collect();
        let items = self.batch_get(&ks).await?;
        let mut out = HashMap::new();
        for (_, item) in items {
            let r: StoredRecord = from_item(item)?;
            out.insert(r.key.clone(), r);
        }
        Ok(out)
    }

    /// Read one register record.
    pub async fn record(
        &self,
        object_type: &str,
        key: &str,
    ) -> Result<Option<StoredRecord>, AwsError> {
        self.get(&record_pk(object_type, key), "#")
            .await?
            .map(from_item)
            .transpose()
    }

    /// Create a record unless one exists. Returns false when it already existed.
    pub async fn create_record(&self, r: &StoredRecord) -> Result<bool, AwsError> {
        let item = to_item(&record_pk(&r.object_type, &r.key), "#", r)?;
        match self
            .ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(dyn_err("PutItem", e)),
        }
    }

    /// Replace a record if its version is still `expected_ver`. Returns false on a lost race.
    pub async fn replace_record(
        &self,
        r: &StoredRecord,
        expected_ver: i64,
    ) -> Result<bool, AwsError> {
        let item = to_item(&record_pk(&r.object_type, &r.key), "#", r)?;
        match self
            .ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("ver = :v")
            .expression_attribute_values(":v", n(expected_ver))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(dyn_err("PutItem", e)),
        }
    }

    /// Take `count` numbers from a named sequence; returns the first.
    pub async fn take_sequence(&self, name: &str, count: u64) -> Result<u64, AwsError> {
        let out = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("SEQ", name)))
            .update_expression("ADD #n :c")
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":c", n(count))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| dyn_err("UpdateItem", e))?;
        let last: u64 = out
            .attributes
            .and_then(|a| {
                a.get("n")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
            })
            .ok_or_else(|| AwsError::Item("sequence has no number".into()))?;
        Ok(last + 1 - count)
    }

    /// Write several items in one transaction. Returns false when one of its conditions failed.
    pub async fn transact(
        &self,
        items: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<bool, AwsError> {
        match self
            .ddb
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(dyn_err("TransactWriteItems", e)),
        }
    }

    /// Delete an item if a condition holds (`None`: unconditionally).
    pub async fn delete(
        &self,
        pk: &str,
        sk: &str,
        condition: Option<(&str, Vec<(&str, AttributeValue)>)>,
    ) -> Result<bool, AwsError> {
        let mut req = self
            .ddb
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk, sk)));
        if let Some((cond, vals)) = condition {
            req = req.condition_expression(cond);
            for (k, v) in vals {
                req = req.expression_attribute_values(k, v);
            }
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(dyn_err("DeleteItem", e)),
        }
    }
}

/// An email index entry: the people with this email, and devices waiting for one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EmailEntry {
    /// Person key → status (`active`, `suspended`, ...), and the person's display name.
    #[serde(default)]
    pub persons: BTreeMap<String, PersonRef>,
    /// Hardware keys whose user email has no active person yet.
    #[serde(default)]
    pub waiting: BTreeMap<String, bool>,
}

/// What the email index remembers of a person.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PersonRef {
    pub status: String,
    #[serde(default)]
    pub name: Option<String>,
}

impl EmailEntry {
    /// The first active person, if any.
    pub fn active(&self) -> Option<(&String, &PersonRef)> {
        self.persons
            .iter()
            .find(|(_, p)| p.status.is_empty() || p.status == "active")
    }
}
