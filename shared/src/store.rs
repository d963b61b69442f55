//! The DynamoDB adapter: one table holds records, history, runs, page markers, leases and state.
//!
//! Item layout (`pk` / `sk`):
//! - `R#<Type>#<key>` / `#`: a register record ([`StoredRecord`]).
//! - `R#<Type>#<key>` / `H#<time>#<run>#<page>`: one change-history entry.
//! - `E#<email>` / `#`: people with that email, and devices waiting for such a person.
//! - `M#<connection>` / `<Type>#<key>`: membership, for the missing-device sweep (with the
//!   record's absence count, see `guard`).
//! - `G#<connection>` / `<Type>`: the missing guards' state (last complete run, breaker baseline).
//! - `RUN` / `<run_id>`: a run (the audit log); `P#<run_id>` / `<page_id>`: a page marker.
//! - `L#<connection>` / `#`: the run lease. `SEQ` / `asset_tag`: the asset tag sequence.
//! - `S#<connection>` / `<key>`: connector state (token and detail caches).

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, KeysAndAttributes, PutRequest, ReturnValue, WriteRequest,
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

/// Whether a conditional write was applied: `false` when its condition failed (an answer, not an
/// error), the error for anything else.
pub fn applied<
    T,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
>(
    op: &'static str,
    out: Result<T, SdkError<E, R>>,
) -> Result<bool, AwsError> {
    match out {
        Ok(_) => Ok(true),
        Err(e) if is_condition_failed(&e) => Ok(false),
        Err(e) => Err(dyn_err(op, e)),
    }
}

/// Whether an SDK error is a failed condition: `ConditionalCheckFailedException`, or a cancelled
/// transaction whose cancellation reasons say `ConditionalCheckFailed`. A transaction cancelled
/// for a conflict, throttling or a 5xx is not "already done": it must be retried.
pub fn is_condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    let Some(se) = e.as_service_error() else {
        return false;
    };
    match se.code() {
        Some("ConditionalCheckFailedException") => true,
        // The generic error carries the reasons only in its message ("... reasons [A, B]").
        Some("TransactionCanceledException") => se
            .message()
            .and_then(|m| m.rsplit_once('[').map(|(_, r)| r.to_string()))
            .is_some_and(|r| r.contains("ConditionalCheckFailed")),
        _ => false,
    }
}

/// Whether a failed TransactWriteItems was cancelled by a failed condition (typed reasons).
pub fn is_transaction_condition_failed<R>(
    e: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as T;
    match e.as_service_error() {
        Some(T::TransactionCanceledException(c)) => c
            .cancellation_reasons()
            .iter()
            .any(|r| r.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
}

/// Error codes of DynamoDB that a later attempt may not meet (besides the SDK's own list).
const TRANSIENT_CODES: &[&str] = &[
    "TransactionConflictException",
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
];

/// Classifies DynamoDB answers the SDK's standard retry leaves alone: `TransactionConflictException`
/// on single writes, and transactions cancelled for `TransactionConflict` (not for a condition).
#[derive(Debug, Default, Clone)]
pub struct ConflictRetry;

impl aws_smithy_runtime_api::client::retries::classifiers::ClassifyRetry for ConflictRetry {
    fn classify_retry(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::InterceptorContext,
    ) -> aws_smithy_runtime_api::client::retries::classifiers::RetryAction {
        use aws_smithy_runtime_api::client::retries::classifiers::RetryAction;
        let Some(resp) = ctx.response() else {
            return RetryAction::NoActionIndicated;
        };
        let Some(body) = resp.body().bytes() else {
            return RetryAction::NoActionIndicated;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return RetryAction::NoActionIndicated;
        };
        let ty = v.get("__type").and_then(|t| t.as_str()).unwrap_or_default();
        let code = ty.rsplit('#').next().unwrap_or_default();
        if TRANSIENT_CODES.contains(&code) {
            return RetryAction::transient_error();
        }
        if code == "TransactionCanceledException" {
            let reasons: Vec<&str> = v
                .get("CancellationReasons")
                .and_then(|r| r.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.get("Code").and_then(|c| c.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            let condition = reasons.contains(&"ConditionalCheckFailed");
            let transient = reasons.iter().any(|r| {
                matches!(
                    *r,
                    "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded"
                )
            });
            if transient && !condition {
                return RetryAction::transient_error();
            }
        }
        RetryAction::NoActionIndicated
    }

    fn name(&self) -> &'static str {
        "assetsync DynamoDB conflicts"
    }
}

/// The DynamoDB client configuration every handler uses: standard retries with backoff and jitter
/// (throttling, 5xx), more attempts than the default, and conflicts classified as retryable.
pub fn dynamo_config(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::config::Builder {
    let fast = std::env::var("ASSETSYNC_FAST_RETRY").is_ok();
    let retry = aws_sdk_dynamodb::config::retry::RetryConfig::standard()
        .with_max_attempts(10)
        .with_initial_backoff(std::time::Duration::from_millis(if fast { 5 } else { 50 }))
        .with_max_backoff(std::time::Duration::from_millis(if fast {
            200
        } else {
            5_000
        }));
    aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(retry)
        .retry_classifier(ConflictRetry)
}

/// Whether an error of ours is a permanent property of one record (too big, bad key), so the
/// record is an error of the run; anything else fails the page, which SQS redelivers.
pub fn is_record_error(e: &AwsError) -> bool {
    matches!(e, AwsError::Dynamo { detail, .. } if detail.starts_with("ValidationException"))
        || matches!(e, AwsError::Item(_))
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
    /// Pack ranges this process has seen (a range only grows, so a cached one that covers a
    /// page still does).
    pack_ranges: std::sync::Arc<std::sync::Mutex<HashMap<String, PageRange>>>,
}

impl Store {
    /// Wrap a client and table name.
    pub fn new(ddb: Client, table: impl Into<String>) -> Self {
        Store {
            ddb,
            table: table.into(),
            pack_ranges: Default::default(),
        }
    }

    /// An item (or key) of just `pk` and `sk`.
    pub fn key(pk: &str, sk: &str) -> Item {
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
        let requests = items
            .into_iter()
            .map(|i| {
                PutRequest::builder()
                    .set_item(Some(i))
                    .build()
                    .map(|p| WriteRequest::builder().put_request(p).build())
                    .map_err(|e| AwsError::Item(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.batch_write(requests).await
    }

    /// Delete many items by (pk, sk), 25 a request, retrying unprocessed ones.
    pub async fn batch_delete(&self, keys: &[(String, String)]) -> Result<(), AwsError> {
        let requests = keys
            .iter()
            .map(|(p, k)| {
                DeleteRequest::builder()
                    .set_key(Some(Self::key(p, k)))
                    .build()
                    .map(|d| WriteRequest::builder().delete_request(d).build())
                    .map_err(|e| AwsError::Item(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.batch_write(requests).await
    }

    async fn batch_write(&self, requests: Vec<WriteRequest>) -> Result<(), AwsError> {
        for chunk in requests.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk.to_vec();
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
        applied(
            "PutItem",
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await,
        )
    }

    /// Replace a record if its version is still `expected_ver`. Returns false on a lost race.
    pub async fn replace_record(
        &self,
        r: &StoredRecord,
        expected_ver: i64,
    ) -> Result<bool, AwsError> {
        let item = to_item(&record_pk(&r.object_type, &r.key), "#", r)?;
        applied(
            "PutItem",
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("ver = :v")
                .expression_attribute_values(":v", n(expected_ver))
                .send()
                .await,
        )
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
            Err(e) if is_transaction_condition_failed(&e) => Ok(false),
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
        applied("DeleteItem", req.send().await)
    }
}

/// An email index entry (`E#<email>` / `#`): the people with this email. Devices waiting for a
/// person of the email are items of their own beside it (`E#<email>` / `W#<key>`), so each is
/// written by one page only and in batches; see `Importer::settle_emails` for the protocol.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EmailEntry {
    /// Person key → status (`active`, `suspended`, ...), and the person's display name.
    #[serde(default)]
    pub persons: BTreeMap<String, PersonRef>,
    /// Hardware keys waiting, as earlier versions noted them in the item itself (read and
    /// cleared, never added to).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub waiting: BTreeMap<String, bool>,
    /// Not stored: the item did not exist when read.
    #[serde(skip)]
    pub absent: bool,
    /// Not stored: devices of this page to note waiting (as `W#<key>` items).
    #[serde(skip)]
    pub waiting_items: std::collections::BTreeSet<String>,
    /// Not stored: a person of this page is active here and the devices waiting must be looked
    /// for (the entry changed, or the page is a redelivery that may have stopped before).
    #[serde(skip)]
    pub recheck: bool,
}

/// What the email index remembers of a person.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PersonRef {
    pub status: String,
    #[serde(default)]
    pub name: Option<String>,
}

impl PersonRef {
    /// Whether devices are assigned to this person (no status counts as active).
    pub fn is_active(&self) -> bool {
        self.status.is_empty() || self.status == "active"
    }
}

impl EmailEntry {
    /// The first active person, if any.
    pub fn active(&self) -> Option<(&String, &PersonRef)> {
        self.persons.iter().find(|(_, p)| p.is_active())
    }
}

impl Store {
    /// Read a page pack.
    pub async fn pack(
        &self,
        connection: &str,
        object_type: &str,
        page_id: &str,
    ) -> Result<Option<crate::pages::Pack>, AwsError> {
        Ok(self
            .get(&crate::pages::pack_pk(connection, object_type), page_id)
            .await?
            .map(|i| decode_pack(&i)))
    }

    /// Write a page pack unless a newer run wrote this page's pack. Returns whether it was written.
    pub async fn put_pack(
        &self,
        connection: &str,
        object_type: &str,
        page_id: &str,
        pack: &crate::pages::Pack,
    ) -> Result<bool, AwsError> {
        let (va, d) = pack.encode();
        let item = HashMap::from([
            (
                "pk".to_string(),
                s(crate::pages::pack_pk(connection, object_type)),
            ),
            ("sk".to_string(), s(page_id)),
            ("run".to_string(), s(&pack.run)),
            ("va".to_string(), s(va)),
            ("d".to_string(), s(d)),
        ]);
        applied(
            "PutItem",
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk) OR #run <= :run")
                .expression_attribute_names("#run", "run")
                .expression_attribute_values(":run", s(&pack.run))
                .send()
                .await,
        )
    }

    /// Every page pack of a connection and object type: by key within its pack range (and
    /// `at_least`, the reading run's own pages), or by Query where no range is kept yet (a
    /// register from before ranges) or it spans more than [`MAX_IDS_BY_KEY`] ids. The Query
    /// path first opens the range, so each pack is either found by it or covered by a range
    /// raise its page makes after writing it (see [`Store::cover_pack`]).
    pub async fn packs_known(
        &self,
        connection: &str,
        object_type: &str,
        at_least: PageRange,
    ) -> Result<Vec<(String, crate::pages::Pack)>, AwsError> {
        let (rpk, rsk) = pack_range_key(connection, object_type);
        match self.get(&rpk, &rsk).await?.map(|i| PageRange::of(&i)) {
            Some(r) => {
                let r = r.union(at_least);
                if r.len() > MAX_IDS_BY_KEY {
                    return self.packs(connection, object_type).await;
                }
                let pk = crate::pages::pack_pk(connection, object_type);
                let keys: Vec<(String, String)> =
                    r.ids().into_iter().map(|id| (pk.clone(), id)).collect();
                let mut found: Vec<(String, crate::pages::Pack)> = self
                    .batch_get(&keys)
                    .await?
                    .into_iter()
                    .map(|((_, sk), i)| (sk, decode_pack(&i)))
                    .collect();
                found.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(found)
            }
            None => {
                // Opened by another sweep meanwhile is as good.
                let open = self
                    .ddb
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(PageRange::default().item(&rpk, &rsk)))
                    .condition_expression("attribute_not_exists(pk)")
                    .send()
                    .await;
                applied("PutItem", open)?;
                let found = self.packs(connection, object_type).await?;
                let mut r = at_least;
                for (sk, _) in &found {
                    if let Some(need) = PageRange::covering(sk) {
                        r = r.union(need);
                    }
                }
                self.raise_pack_range(connection, object_type, r).await?;
                Ok(found)
            }
        }
    }

    /// After writing the pack of a page's chunk: raise the connection's pack range to hold it
    /// (nothing while no range is kept: the sweep's Query finds every pack then).
    pub async fn cover_pack(
        &self,
        connection: &str,
        object_type: &str,
        page: u32,
        chunk: u32,
    ) -> Result<(), AwsError> {
        let need = PageRange::holding(page, chunk);
        let (rpk, rsk) = pack_range_key(connection, object_type);
        let cached = self
            .pack_ranges
            .lock()
            .ok()
            .and_then(|m| m.get(&rpk).copied());
        if cached.is_some_and(|c| c.covers(need)) {
            return Ok(());
        }
        let Some(r) = self.get(&rpk, &rsk).await?.map(|i| PageRange::of(&i)) else {
            return Ok(());
        };
        if !r.covers(need) {
            self.raise_pack_range(connection, object_type, need).await?;
        }
        if let Ok(mut m) = self.pack_ranges.lock() {
            m.insert(rpk, r.union(need));
        }
        Ok(())
    }

    /// Raise (never lower) an existing pack range to at least `to`.
    async fn raise_pack_range(
        &self,
        connection: &str,
        object_type: &str,
        to: PageRange,
    ) -> Result<(), AwsError> {
        let (rpk, rsk) = pack_range_key(connection, object_type);
        for (attr, v) in [("pages", to.pages), ("chunks", to.chunks)] {
            let out = self
                .ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(&rpk, &rsk)))
                .update_expression(format!("SET {attr} = :v"))
                .condition_expression(format!("attribute_exists(pk) AND {attr} < :v"))
                .expression_attribute_values(":v", n(v))
                .send()
                .await;
            // Not applied: the range is already that wide.
            applied("UpdateItem", out)?;
        }
        Ok(())
    }

    /// All page packs of a connection and object type (a Query).
    pub async fn packs(
        &self,
        connection: &str,
        object_type: &str,
    ) -> Result<Vec<(String, crate::pages::Pack)>, AwsError> {
        Ok(self
            .query(
                &crate::pages::pack_pk(connection, object_type),
                None,
                false,
                None,
            )
            .await?
            .into_iter()
            .map(|i| {
                let sk = i
                    .get("sk")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                (sk, decode_pack(&i))
            })
            .collect())
    }

    /// A record as the register shows it: stored attributes, with each connection's volatile
    /// values (check-in times) from its latest page pack where that connection owns them.
    pub async fn live_record(
        &self,
        object_type: &str,
        key: &str,
    ) -> Result<Option<StoredRecord>, AwsError> {
        let Some(mut rec) = self.record(object_type, key).await? else {
            return Ok(None);
        };
        let conns: Vec<(String, String)> = rec
            .w
            .iter()
            .map(|(c, m)| (c.clone(), m.pg.clone()))
            .collect();
        for (conn, pg) in conns {
            let mut vals = self
                .pack(&conn, object_type, &pg)
                .await?
                .map(|p| p.values(key))
                .unwrap_or_default();
            if vals.is_empty() {
                // The key moved to another page since its last record write.
                for (_, p) in self.packs(&conn, object_type).await? {
                    if p.entries.contains_key(key) {
                        vals = p.values(key);
                        break;
                    }
                }
            }
            for (a, v) in vals {
                if rec.p.get(&a).is_none_or(|p| p.c == conn) {
                    rec.a.insert(a, v);
                }
            }
        }
        Ok(Some(rec))
    }
}

/// Past this many page ids, a run's markers or a connection's packs are read by Query rather
/// than by key (50 BatchGetItem calls).
pub const MAX_IDS_BY_KEY: u64 = 5_000;

/// Where a connection's pack range lives: beside its guard state and grace.
fn pack_range_key(connection: &str, object_type: &str) -> (String, String) {
    (format!("G#{connection}"), format!("{object_type}#packs"))
}

/// Page ids ([`crate::event::page_id`]) of pages below `pages` and chunks below `chunks`: the
/// messages a run sent, or where every pack of a connection and object type lies (its pack
/// range, which only ever grows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRange {
    pub pages: u32,
    pub chunks: u32,
}

impl PageRange {
    /// The smallest range holding one page's chunk.
    pub fn holding(page: u32, chunk: u32) -> PageRange {
        PageRange {
            pages: page.saturating_add(1),
            chunks: chunk.saturating_add(1),
        }
    }

    /// The smallest range holding one page id (`None` for anything else).
    pub fn covering(page_id: &str) -> Option<PageRange> {
        let (p, c) = page_id.split_once('.')?;
        Some(PageRange::holding(p.parse().ok()?, c.parse().ok()?))
    }

    /// How many ids the range has.
    pub fn len(&self) -> u64 {
        u64::from(self.pages) * u64::from(self.chunks)
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every id of `other` lies in this range.
    pub fn covers(&self, other: PageRange) -> bool {
        self.pages >= other.pages && self.chunks >= other.chunks
    }

    /// The range holding both.
    pub fn union(self, other: PageRange) -> PageRange {
        PageRange {
            pages: self.pages.max(other.pages),
            chunks: self.chunks.max(other.chunks),
        }
    }

    /// Every page id of the range.
    pub fn ids(&self) -> Vec<String> {
        (0..self.pages)
            .flat_map(|p| (0..self.chunks).map(move |c| crate::event::page_id(p, c)))
            .collect()
    }

    fn of(item: &Item) -> PageRange {
        let num = |k: &str| {
            item.get(k)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        PageRange {
            pages: num("pages"),
            chunks: num("chunks"),
        }
    }

    fn item(&self, pk: &str, sk: &str) -> Item {
        let mut i = Store::key(pk, sk);
        i.insert("pages".into(), n(self.pages));
        i.insert("chunks".into(), n(self.chunks));
        i
    }
}

/// A page's announcement that it is about to create records with these keys, in one of the
/// object type's slots (`I#<Type>` / `slot#NN`). Creates are written in batches (unconditionally)
/// only by a page that, after announcing, saw no other live announcement sharing a key; see
/// `Importer::announce_creates` for the protocol and why it keeps one record per key.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateIntent {
    /// `<connection>#<run>#<page>#<nonce>`.
    pub id: String,
    pub keys: std::collections::BTreeSet<String>,
    /// Epoch milliseconds after which the announcing page writes no create any more.
    pub until_ms: i64,
    /// The page saw a sharing announcement: it creates only conditionally, never in batches.
    pub conditional: bool,
}

/// The partition of an object type's create announcements.
pub fn intent_pk(object_type: &str) -> String {
    format!("I#{object_type}")
}

/// Announcement slots per object type: far more than pages ever create at once (the importer
/// runs up to 5 × 4 pages; other connections and the console add a few). Fixed keys let every
/// page read all announcements with one BatchGetItem instead of a Query.
pub const INTENT_SLOTS: usize = 64;

/// The sort key of announcement slot `i`.
fn intent_slot(i: usize) -> String {
    format!("slot#{i:02}")
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Announce in a free slot (empty, or its page's announcement lapsed); returns the slot.
    /// Every slot taken means far more pages create at once than the importer runs: an error,
    /// and the page is retried.
    pub async fn claim_intent(
        &self,
        object_type: &str,
        i: &CreateIntent,
    ) -> Result<usize, AwsError> {
        let first = rand::random::<u32>() as usize;
        for step in 0..INTENT_SLOTS {
            let slot = (first + step) % INTENT_SLOTS;
            let out = self
                .intent_put(object_type, slot, i)
                // A lapsed announcement's page starts no create any more; a slot holding this
                // very announcement is one a retried request already claimed.
                .condition_expression("attribute_not_exists(pk) OR #until < :now OR iid = :id")
                .expression_attribute_names("#until", "until")
                .expression_attribute_values(":now", n(now_ms()))
                .expression_attribute_values(":id", s(&i.id))
                .send()
                .await;
            if applied("PutItem", out)? {
                return Ok(slot);
            }
        }
        Err(AwsError::Dynamo {
            op: "PutItem",
            detail: format!(
                "all {INTENT_SLOTS} create announcement slots of {object_type} are taken"
            ),
        })
    }

    /// Rewrite this page's announcement in its slot (still its own: a page gives up before its
    /// announcement can lapse).
    pub async fn put_intent(
        &self,
        object_type: &str,
        slot: usize,
        i: &CreateIntent,
    ) -> Result<(), AwsError> {
        self.intent_put(object_type, slot, i)
            .condition_expression("iid = :id")
            .expression_attribute_values(":id", s(&i.id))
            .send()
            .await
            .map_err(|e| dyn_err("PutItem", e))?;
        Ok(())
    }

    fn intent_put(
        &self,
        object_type: &str,
        slot: usize,
        i: &CreateIntent,
    ) -> aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder {
        let keys: Vec<&str> = i.keys.iter().map(String::as_str).collect();
        self.ddb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(intent_pk(object_type)))
            .item("sk", s(intent_slot(slot)))
            .item("iid", s(&i.id))
            .item("k", s(keys.join("\n")))
            .item("until", n(i.until_ms))
            .item("cond", AttributeValue::Bool(i.conditional))
            // A crashed page's announcement goes away (and lapses long before).
            .item("expires_at", n(i.until_ms / 1000 + 3600))
    }

    /// Every create announcement of an object type (its slots, strongly consistent).
    pub async fn intents(&self, object_type: &str) -> Result<Vec<CreateIntent>, AwsError> {
        let pk = intent_pk(object_type);
        let keys: Vec<(String, String)> = (0..INTENT_SLOTS)
            .map(|i| (pk.clone(), intent_slot(i)))
            .collect();
        let items = self.batch_get(&keys).await?;
        let mut out: Vec<CreateIntent> = items
            .values()
            .map(|i| {
                let get = |k: &str| i.get(k).and_then(|v| v.as_s().ok()).cloned();
                CreateIntent {
                    id: get("iid").unwrap_or_default(),
                    keys: get("k")
                        .unwrap_or_default()
                        .split('\n')
                        .filter(|k| !k.is_empty())
                        .map(str::to_string)
                        .collect(),
                    until_ms: i
                        .get("until")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    conditional: i
                        .get("cond")
                        .and_then(|v| v.as_bool().ok())
                        .copied()
                        .unwrap_or(true),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Withdraw a create announcement (its page wrote all it will write), if still its own.
    pub async fn delete_intent(
        &self,
        object_type: &str,
        slot: usize,
        id: &str,
    ) -> Result<(), AwsError> {
        let cond = ("iid = :id", vec![(":id", s(id))]);
        self.delete(&intent_pk(object_type), &intent_slot(slot), Some(cond))
            .await
            .map(|_| ())
    }

    /// Like [`Store::batch_put`], but no request starts at or after `until`: the items are
    /// unconditional creates, only safe while their page's announcement stands.
    pub async fn batch_put_until(
        &self,
        items: Vec<Item>,
        until: std::time::Instant,
    ) -> Result<(), AwsError> {
        for chunk in items.chunks(25) {
            if std::time::Instant::now() >= until {
                return Err(AwsError::Dynamo {
                    op: "BatchWriteItem",
                    detail: "the page's create announcement ran out before its creates were written; the page is retried".into(),
                });
            }
            self.batch_put(chunk.to_vec()).await?;
        }
        Ok(())
    }
}

fn decode_pack(i: &Item) -> crate::pages::Pack {
    let get = |k: &str| {
        i.get(k)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    crate::pages::Pack::decode(&get("run"), &get("va"), &get("d"))
}

/// Most people one email index item keeps.
pub const MAX_PERSONS: usize = 200;

/// Changes to one email index item, applied by attribute path so concurrent writers of other
/// people of the same email keep theirs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmailChange {
    pub set_persons: Vec<(String, PersonRef)>,
    pub remove_persons: Vec<String>,
    /// Devices an earlier version noted in the item's own `waiting` map, now settled.
    pub remove_waiting: Vec<String>,
}

impl EmailChange {
    /// What turns `old` into `new`.
    pub fn between(old: &EmailEntry, new: &EmailEntry) -> Self {
        EmailChange {
            set_persons: new
                .persons
                .iter()
                .filter(|(k, p)| old.persons.get(*k) != Some(p))
                .map(|(k, p)| (k.clone(), p.clone()))
                .collect(),
            remove_persons: old
                .persons
                .keys()
                .filter(|k| !new.persons.contains_key(*k))
                .cloned()
                .collect(),
            remove_waiting: old
                .waiting
                .keys()
                .filter(|k| !new.waiting.contains_key(*k))
                .cloned()
                .collect(),
        }
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.set_persons.is_empty()
            && self.remove_persons.is_empty()
            && self.remove_waiting.is_empty()
    }
}

/// The item key of an email's index entry.
pub fn email_key(email: &str) -> (String, String) {
    (format!("E#{email}"), "#".to_string())
}

/// The item key of a device noted waiting for an email.
pub fn waiting_key(email: &str, device: &str) -> (String, String) {
    (format!("E#{email}"), format!("W#{device}"))
}

impl Store {
    /// Devices waiting for an email in items of their own (strongly consistent).
    pub async fn waiting_items(&self, email: &str) -> Result<Vec<String>, AwsError> {
        Ok(self
            .query(&format!("E#{email}"), Some("W#"), false, None)
            .await?
            .iter()
            .filter_map(|i| i.get("sk").and_then(|v| v.as_s().ok()))
            .filter_map(|sk| sk.strip_prefix("W#").map(str::to_string))
            .collect())
    }

    /// Apply changes to `E#<email>` by attribute path (bounded: past [`MAX_PERSONS`] people,
    /// additions are dropped with a warning). `absent`: the item was not there when read, so
    /// it is first created with its people in one conditional request (by path if someone
    /// created it meanwhile).
    pub async fn update_email(
        &self,
        email: &str,
        change: EmailChange,
        absent: bool,
    ) -> Result<(), AwsError> {
        let (pk, sk) = email_key(email);
        let people = change
            .set_persons
            .into_iter()
            .map(|(k, p)| {
                serde_dynamo::to_attribute_value(&p)
                    .map(|v| (k, v))
                    .map_err(|e| AwsError::Item(e.to_string()))
            })
            .collect::<Result<Vec<(String, AttributeValue)>, _>>()?;
        if absent
            && change.remove_persons.is_empty()
            && change.remove_waiting.is_empty()
            && !people.is_empty()
            && people.len() <= MAX_PERSONS
        {
            let created = self
                .ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(&pk, &sk)))
                .update_expression("SET persons = :m")
                .condition_expression("attribute_not_exists(persons)")
                .expression_attribute_values(
                    ":m",
                    AttributeValue::M(people.iter().cloned().collect()),
                )
                .send()
                .await;
            if applied("UpdateItem", created)? {
                return Ok(());
            }
        }
        // Expressions are limited to 4 KB: at most 40 paths a request.
        let mut ops: Vec<(u8, String, Option<AttributeValue>)> =
            people.into_iter().map(|(k, v)| (0, k, Some(v))).collect();
        ops.extend(change.remove_persons.into_iter().map(|k| (1, k, None)));
        ops.extend(change.remove_waiting.into_iter().map(|k| (3, k, None)));
        for chunk in ops.chunks(40) {
            self.email_paths(email, chunk.to_vec()).await?;
        }
        Ok(())
    }

    async fn email_paths(
        &self,
        email: &str,
        mut ops: Vec<(u8, String, Option<AttributeValue>)>,
    ) -> Result<(), AwsError> {
        let (pk, sk) = email_key(email);
        for _ in 0..4 {
            if ops.is_empty() {
                return Ok(());
            }
            let mut sets = Vec::new();
            let mut removes = Vec::new();
            let mut req = self
                .ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(&pk, &sk)));
            let adds_persons = ops.iter().any(|o| o.0 == 0);
            let uses_persons = ops.iter().any(|o| o.0 <= 1);
            let uses_waiting = ops.iter().any(|o| o.0 == 3);
            for (i, (kind, key, v)) in ops.iter().enumerate() {
                let name = format!("#k{i}");
                req = req.expression_attribute_names(&name, key);
                match kind {
                    0 => {
                        sets.push(format!("persons.{name} = :v{i}"));
                        if let Some(v) = v {
                            req = req.expression_attribute_values(format!(":v{i}"), v.clone());
                        }
                    }
                    1 => removes.push(format!("persons.{name}")),
                    _ => removes.push(format!("waiting.{name}")),
                }
            }
            let mut expr = String::new();
            if !sets.is_empty() {
                expr.push_str("SET ");
                expr.push_str(&sets.join(", "));
            }
            if !removes.is_empty() {
                expr.push_str(" REMOVE ");
                expr.push_str(&removes.join(", "));
            }
            // A path into a map that does not exist is invalid: the maps must be there.
            let mut conds = Vec::new();
            if uses_persons {
                conds.push("attribute_exists(persons)".to_string());
            }
            if uses_waiting {
                conds.push("attribute_exists(waiting)".to_string());
            }
            if adds_persons {
                conds.push("size(persons) < :pcap".to_string());
                req = req.expression_attribute_values(":pcap", n(MAX_PERSONS));
            }
            let out = req
                .update_expression(expr.trim())
                .condition_expression(conds.join(" AND "))
                .send()
                .await;
            if applied("UpdateItem", out)? {
                return Ok(());
            }
            // Why: no item (or map) yet, or the cap reached.
            let cur = self.get(&pk, &sk).await?;
            let has = |a: &str| cur.as_ref().is_some_and(|i| i.contains_key(a));
            if uses_waiting && !has("waiting") {
                // Nothing of the old map is left to remove.
                ops.retain(|o| o.0 != 3);
                continue;
            }
            if uses_persons && !has("persons") {
                if !adds_persons {
                    // Nobody to remove.
                    ops.retain(|o| o.0 != 1);
                    continue;
                }
                self.ddb
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(Self::key(&pk, &sk)))
                    .update_expression("SET persons = if_not_exists(persons, :e)")
                    .expression_attribute_values(":e", AttributeValue::M(HashMap::new()))
                    .send()
                    .await
                    .map_err(|e| dyn_err("UpdateItem", e))?;
                continue;
            }
            let size = |a: &str| {
                cur.as_ref()
                    .and_then(|i| i.get(a))
                    .and_then(|v| v.as_m().ok())
                    .map_or(0, HashMap::len)
            };
            if size("persons") >= MAX_PERSONS {
                tracing::warn!(
                    email_len = email.len(),
                    "email index: too many people share one email; not adding more"
                );
                ops.retain(|o| o.0 != 0);
            }
        }
        Err(AwsError::Dynamo {
            op: "UpdateItem",
            detail: format!(
                "email index item E#… kept failing its conditions ({} changes)",
                ops.len()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_range_covers_the_ids_it_was_raised_for() {
        let a = PageRange::covering("000012.003").expect("an id");
        assert_eq!(
            a,
            PageRange {
                pages: 13,
                chunks: 4
            }
        );
        let b = PageRange::covering("000002.000").expect("an id");
        assert!(a.covers(b) && !b.covers(a));
        let u = b.union(PageRange {
            pages: 1,
            chunks: 2,
        });
        assert_eq!(
            u.ids(),
            [
                "000000.000",
                "000000.001",
                "000001.000",
                "000001.001",
                "000002.000",
                "000002.001"
            ]
        );
        assert_eq!(PageRange::holding(12, 3), a);
        assert_eq!(u.len(), 6);
        assert_eq!(PageRange::covering("garbage"), None);
        assert_eq!(PageRange::covering("1.x"), None);
    }
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_smithy_runtime_api::client::interceptors::context::{Input, InterceptorContext};
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn err(code: &str, message: &str) -> SdkError<PutItemError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(
            PutItemError::generic(meta),
            HttpResponse::new(StatusCode::try_from(400).unwrap(), SdkBody::empty()),
        )
    }

    #[test]
    fn only_a_failed_condition_means_already_done() {
        assert!(is_condition_failed(&err(
            "ConditionalCheckFailedException",
            "The conditional request failed"
        )));
        let reasons =
            "Transaction cancelled, please refer cancellation reasons for specific reasons";
        assert!(is_condition_failed(&err(
            "TransactionCanceledException",
            &format!("{reasons} [None, ConditionalCheckFailed]")
        )));
        assert!(!is_condition_failed(&err(
            "TransactionCanceledException",
            &format!("{reasons} [None, TransactionConflict]")
        )));
        for code in [
            "TransactionConflictException",
            "ThrottlingException",
            "ProvisionedThroughputExceededException",
            "InternalServerError",
        ] {
            assert!(!is_condition_failed(&err(code, "x")), "{code}");
        }
    }

    fn classify(status: u16, body: &str) -> RetryAction {
        let mut ctx = InterceptorContext::new(Input::doesnt_matter());
        ctx.set_response(HttpResponse::new(
            StatusCode::try_from(status).unwrap(),
            SdkBody::from(body.to_string()),
        ));
        ConflictRetry.classify_retry(&ctx)
    }

    #[test]
    fn conflicts_are_retried_conditions_are_not() {
        let ns = "com.amazonaws.dynamodb.v20120810#";
        assert_eq!(
            classify(
                400,
                &format!(
                    r#"{{"__type":"{ns}TransactionConflictException","message":"Transaction is ongoing for the item"}}"#
                )
            ),
            RetryAction::transient_error()
        );
        assert_eq!(
            classify(
                400,
                &format!(
                    r#"{{"__type":"{ns}TransactionCanceledException","message":"m","CancellationReasons":[{{"Code":"None"}},{{"Code":"TransactionConflict"}}]}}"#
                )
            ),
            RetryAction::transient_error()
        );
        assert_eq!(
            classify(
                400,
                &format!(
                    r#"{{"__type":"{ns}TransactionCanceledException","message":"m","CancellationReasons":[{{"Code":"ConditionalCheckFailed"}},{{"Code":"None"}}]}}"#
                )
            ),
            RetryAction::NoActionIndicated
        );
        assert_eq!(
            classify(
                400,
                &format!(
                    r#"{{"__type":"{ns}ConditionalCheckFailedException","message":"The conditional request failed"}}"#
                )
            ),
            RetryAction::NoActionIndicated
        );
    }
}
