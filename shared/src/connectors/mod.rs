//! The one connector interface every source implements, and the dispatch from a source kind.
//!
//! A connector turns a secret and a connection's options into pages of raw JSON records.
//! Mapping, de-duplication and everything the register does happen outside it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ConnectorError;
use crate::event::{ObjectType, SourceKind};
use crate::http::HttpCounts;

pub mod endpoint_central;
pub mod intune;
pub mod jamf;
pub mod jumpcloud;
pub mod kandji;
pub mod secret_fields;
pub mod token;

/// Where a connector stands in its listing; opaque to everything but the connector.
/// It travels in the run record and on the fetch queue, so it must be small JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub Value);

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Raw vendor records (a connector may add fields from detail calls; it says which in its docs).
    pub records: Vec<Value>,
    /// Where the next page starts; `None` at the documented end of data.
    pub next: Option<Cursor>,
    /// The total the vendor reported for the whole listing, when it reports one.
    pub total: Option<u64>,
    /// Which of several vendor API versions served the page, when the connector chooses among
    /// them (Jamf's `computers-inventory`); the run records it.
    pub served_by: Option<String>,
}

/// What `test` reports when the connection works.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TestReport {
    /// A short human line: what was reached and with which permissions.
    pub message: String,
    /// The first record, raw, if the listing had one.
    pub sample: Option<Value>,
}

/// Small persistent state a connector may keep per connection (token caches, detail caches).
/// Backed by DynamoDB in production so concurrent fetchers share it.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Read one value.
    async fn get(&self, key: &str) -> Result<Option<Value>, ConnectorError>;
    /// Read many values at once (missing keys are absent from the result).
    async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, Value>, ConnectorError>;
    /// Write one value (optionally expiring at a Unix time).
    async fn put(
        &self,
        key: &str,
        value: &Value,
        expires_at: Option<i64>,
    ) -> Result<(), ConnectorError>;
    /// Write `value` only if the stored value's `version` field equals `expected_version`
    /// (`None`: only if absent). Returns false when someone else wrote first.
    async fn put_if_version(
        &self,
        key: &str,
        value: &Value,
        expected_version: Option<i64>,
    ) -> Result<bool, ConnectorError>;
}

/// An in-memory [`StateStore`] for unit tests and `sample`/`test` actions.
#[derive(Default)]
pub struct MemoryState(tokio::sync::Mutex<std::collections::HashMap<String, Value>>);

#[async_trait]
impl StateStore for MemoryState {
    async fn get(&self, key: &str) -> Result<Option<Value>, ConnectorError> {
        Ok(self.0.lock().await.get(key).cloned())
    }
    async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, Value>, ConnectorError> {
        let m = self.0.lock().await;
        Ok(keys
            .iter()
            .filter_map(|k| m.get(k).map(|v| (k.clone(), v.clone())))
            .collect())
    }
    async fn put(
        &self,
        key: &str,
        value: &Value,
        _expires_at: Option<i64>,
    ) -> Result<(), ConnectorError> {
        self.0.lock().await.insert(key.to_string(), value.clone());
        Ok(())
    }
    async fn put_if_version(
        &self,
        key: &str,
        value: &Value,
        expected: Option<i64>,
    ) -> Result<bool, ConnectorError> {
        let mut m = self.0.lock().await;
        let cur = m
            .get(key)
            .and_then(|v| v.get("version"))
            .and_then(Value::as_i64);
        if cur != expected {
            return Ok(false);
        }
        m.insert(key.to_string(), value.clone());
        Ok(true)
    }
}

/// Everything a connector is built from besides its secret.
#[derive(Clone)]
pub struct ConnectorContext {
    /// The connection name (for state keys and messages).
    pub connection: String,
    pub object_type: ObjectType,
    /// `config:` lines of the mapping (`api`, `filter`, `page_size`, `version`, `key`, ...).
    pub config: std::collections::BTreeMap<String, String>,
    pub state: Arc<dyn StateStore>,
}

tokio::task_local! {
    static PAGE_DEADLINE: Option<std::time::Instant>;
}

/// Run a connector's `fetch_page` under a time budget: connectors and their HTTP retries read it
/// with [`page_deadline`] and return what they have (or a retryable error) before it passes.
pub async fn with_page_deadline<F: std::future::Future>(
    deadline: Option<std::time::Instant>,
    f: F,
) -> F::Output {
    PAGE_DEADLINE.scope(deadline, f).await
}

/// When the page being fetched must be back (the invocation's deadline less its reserve).
pub fn page_deadline() -> Option<std::time::Instant> {
    PAGE_DEADLINE.try_with(|d| *d).ok().flatten()
}

impl ConnectorContext {
    /// The current page's time budget (see [`with_page_deadline`]).
    pub fn page_deadline(&self) -> Option<std::time::Instant> {
        page_deadline()
    }

    /// A `config:` value.
    pub fn config(&self, name: &str) -> Option<&str> {
        self.config.get(name).map(String::as_str)
    }

    /// `config:page_size`, bounded by the vendor's maximum.
    pub fn page_size(&self, default: u32, max: u32) -> Result<u32, ConnectorError> {
        match self.config("page_size") {
            None => Ok(default.min(max)),
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ConnectorError::Config(format!(
                    "config:page_size={s} must be a number from 1 to {max}"
                ))),
            },
        }
    }
}

/// The connector interface.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Fetch the page at `cursor` (`None`: the first page).
    async fn fetch_page(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError>;

    /// Authenticate and fetch at most one record; a failure is explained in words.
    async fn test(&self) -> Result<TestReport, ConnectorError>;

    /// The vendor's own id of a raw record.
    fn source_id(&self, raw: &Value) -> Option<String>;

    /// When the source last heard from the record's device (to choose among duplicates).
    fn checked_in(&self, raw: &Value) -> Option<DateTime<Utc>>;

    /// For `Software` records: the hardware key of the device the record belongs to.
    fn parent_key(&self, _raw: &Value) -> Option<String> {
        None
    }

    /// Request counters for the run summary.
    fn http_counts(&self) -> HttpCounts;
}

/// Build the connector for a source from its secret (the parsed JSON of the secret string).
pub async fn build(
    source: SourceKind,
    secret: &Value,
    ctx: ConnectorContext,
) -> Result<Box<dyn Connector>, ConnectorError> {
    Ok(match source {
        SourceKind::Jamf => Box::new(jamf::Jamf::new(secret, ctx)?),
        SourceKind::EndpointCentral => endpoint_central::EndpointCentral::new(secret, ctx)?,
        SourceKind::Jumpcloud => jumpcloud::JumpCloud::new(secret, ctx)?,
        SourceKind::Intune => intune::Intune::new(secret, ctx)?,
        SourceKind::Kandji => kandji::Kandji::new(secret, ctx)?,
    })
}

/// The default mapping of a source for an object type and `config:api` listing
/// (a zero-config connection works).
pub fn default_mapping(
    source: SourceKind,
    object_type: ObjectType,
    api: Option<&str>,
) -> Result<&'static str, ConnectorError> {
    let m = match source {
        SourceKind::Jamf => jamf::default_mapping(object_type, api),
        SourceKind::EndpointCentral => endpoint_central::default_mapping(object_type, api),
        SourceKind::Jumpcloud => jumpcloud::default_mapping(object_type, api),
        SourceKind::Intune => intune::default_mapping(object_type, api),
        SourceKind::Kandji => kandji::default_mapping(object_type, api),
    };
    m.ok_or_else(|| {
        ConnectorError::Config(format!(
            "{source} has no default mapping for {object_type}; give a `mapping` in the event"
        ))
    })
}

/// Deserialize a secret into a connector's typed secret, naming the missing or wrong field and
/// the expected type, never a value (serde's own messages quote values; see [`secret_fields`]).
pub fn parse_secret<T: serde::de::DeserializeOwned>(
    source: SourceKind,
    secret: &Value,
    expected: &str,
) -> Result<T, ConnectorError> {
    if !secret.is_object() {
        return Err(ConnectorError::Config(format!(
            "the {source} secret must be a JSON object with {expected}"
        )));
    }
    secret_fields::from_value(secret).map_err(|e| {
        if e.path.is_empty() {
            ConnectorError::Config(format!(
                "the {source} secret {}; it needs {expected}",
                e.message
            ))
        } else {
            ConnectorError::Config(format!(
                "the {source} secret field `{}` {}; it needs {expected}",
                e.field(),
                e.message
            ))
        }
    })
}

/// Require a non-empty string field of a secret.
pub fn require(source: SourceKind, field: &str, value: &str) -> Result<(), ConnectorError> {
    if value.trim().is_empty() {
        return Err(ConnectorError::Config(format!(
            "the {source} secret field `{field}` is empty"
        )));
    }
    Ok(())
}

/// A [`StateStore`] for actions that promise to write nothing (`sample`): reads see the
/// connection's stored state (a warm detail cache still saves vendor calls), writes stay in
/// memory for the rest of the invocation and never reach the inner store.
pub struct ReadOnlyState {
    inner: Arc<dyn StateStore>,
    local: MemoryState,
}

impl ReadOnlyState {
    /// Wrap the connection's store.
    pub fn new(inner: Arc<dyn StateStore>) -> Self {
        ReadOnlyState {
            inner,
            local: MemoryState::default(),
        }
    }
}

#[async_trait]
impl StateStore for ReadOnlyState {
    async fn get(&self, key: &str) -> Result<Option<Value>, ConnectorError> {
        match self.local.get(key).await? {
            Some(v) => Ok(Some(v)),
            None => self.inner.get(key).await,
        }
    }
    async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, Value>, ConnectorError> {
        let mut out = self.inner.get_many(keys).await?;
        out.extend(self.local.get_many(keys).await?);
        Ok(out)
    }
    async fn put(
        &self,
        key: &str,
        value: &Value,
        expires_at: Option<i64>,
    ) -> Result<(), ConnectorError> {
        self.local.put(key, value, expires_at).await
    }
    async fn put_if_version(
        &self,
        key: &str,
        value: &Value,
        expected: Option<i64>,
    ) -> Result<bool, ConnectorError> {
        let cur = self
            .get(key)
            .await?
            .and_then(|v| v.get("version").and_then(Value::as_i64));
        if cur != expected {
            return Ok(false);
        }
        self.local.put(key, value, None).await?;
        Ok(true)
    }
}
