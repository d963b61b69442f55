//! The DynamoDB-backed [`StateStore`]: connector state shared by concurrent fetchers.

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::Value;

use crate::connectors::StateStore;
use crate::error::ConnectorError;
use crate::store::{is_condition_failed, n, s, Item, Store};

/// State of one connection (`S#<connection>` / key).
pub struct DynamoState {
    pub store: Store,
    pub connection: String,
}

fn value_of(item: &Item) -> Option<Value> {
    item.get("v")
        .and_then(|v| v.as_s().ok())
        .and_then(|t| serde_json::from_str(t).ok())
}

#[async_trait]
impl StateStore for DynamoState {
    async fn get(&self, key: &str) -> Result<Option<Value>, ConnectorError> {
        let item = self
            .store
            .get(&format!("S#{}", self.connection), key)
            .await
            .map_err(|e| ConnectorError::State(e.to_string()))?;
        Ok(item.as_ref().and_then(value_of))
    }

    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, Value>, ConnectorError> {
        let pk = format!("S#{}", self.connection);
        let ks: Vec<(String, String)> = keys.iter().map(|k| (pk.clone(), k.clone())).collect();
        let items = self
            .store
            .batch_get(&ks)
            .await
            .map_err(|e| ConnectorError::State(e.to_string()))?;
        Ok(items
            .into_iter()
            .filter_map(|((_, k), item)| value_of(&item).map(|v| (k, v)))
            .collect())
    }

    async fn put(
        &self,
        key: &str,
        value: &Value,
        expires_at: Option<i64>,
    ) -> Result<(), ConnectorError> {
        let mut req = self
            .store
            .ddb
            .put_item()
            .table_name(&self.store.table)
            .item("pk", s(format!("S#{}", self.connection)))
            .item("sk", s(key))
            .item("v", s(value.to_string()));
        if let Some(ver) = value.get("version").and_then(Value::as_i64) {
            req = req.item("version", n(ver));
        }
        if let Some(exp) = expires_at {
            req = req.item("expires_at", n(exp));
        }
        req.send()
            .await
            .map_err(|e| ConnectorError::State(crate::store::dyn_err("PutItem", e).to_string()))?;
        Ok(())
    }

    async fn put_if_version(
        &self,
        key: &str,
        value: &Value,
        expected: Option<i64>,
    ) -> Result<bool, ConnectorError> {
        let mut req = self
            .store
            .ddb
            .put_item()
            .table_name(&self.store.table)
            .item("pk", s(format!("S#{}", self.connection)))
            .item("sk", s(key))
            .item("v", s(value.to_string()));
        if let Some(ver) = value.get("version").and_then(Value::as_i64) {
            req = req.item("version", n(ver));
        }
        req = match expected {
            None => req.condition_expression("attribute_not_exists(pk)"),
            Some(v) => req
                .condition_expression("#ver = :v")
                .expression_attribute_names("#ver", "version")
                .expression_attribute_values(":v", n(v)),
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(ConnectorError::State(
                crate::store::dyn_err("PutItem", e).to_string(),
            )),
        }
    }
}
