//! Secrets Manager access with a warm-container cache; secret values never reach a log or error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::error::SyncError;

/// A cache of parsed secrets (JSON objects), refreshed after `ttl`.
pub struct SecretCache {
    client: aws_sdk_secretsmanager::Client,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Value, Instant)>>,
}

impl SecretCache {
    /// A cache over a client.
    pub fn new(client: aws_sdk_secretsmanager::Client, ttl: Duration) -> Self {
        SecretCache {
            client,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The secret's JSON object; `force` skips the cache (after a credential was refused).
    pub async fn get(&self, secret_id: &str, force: bool) -> Result<Value, SyncError> {
        if !force {
            if let Some((v, at)) = self.cache.lock().await.get(secret_id) {
                if at.elapsed() < self.ttl {
                    return Ok(v.clone());
                }
            }
        }
        let err = |detail: String| SyncError::Secret {
            secret_id: secret_id.to_string(),
            detail,
        };
        let out = self.client.get_secret_value().secret_id(secret_id).send().await.map_err(|e| {
            let code = e.as_service_error().and_then(|s| s.code()).unwrap_or_default().to_string();
            match code.as_str() {
                "ResourceNotFoundException" => err("no such secret in Secrets Manager (check `secret_id` and the region)".into()),
                "AccessDeniedException" => err("the function may not read this secret (its IAM policy allows only `assetsync/*`)".into()),
                _ => err(format!("could not be read: {}", DisplayErrorContext(e))),
            }
        })?;
        let text = out
            .secret_string()
            .ok_or_else(|| err("has no SecretString (binary secrets are not supported)".into()))?;
        let value: Value = serde_json::from_str(text).map_err(|e| {
            err(format!(
                "is not valid JSON (line {}, column {}); it must be a JSON object of the fields DESIGN.md lists for its source",
                e.line(),
                e.column()
            ))
        })?;
        if !value.is_object() {
            return Err(err(
                "must be a JSON object of fields, not a bare value".into()
            ));
        }
        self.cache
            .lock()
            .await
            .insert(secret_id.to_string(), (value.clone(), Instant::now()));
        Ok(value)
    }
}
