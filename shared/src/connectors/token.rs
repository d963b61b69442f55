//! A process-wide cache of short-lived vendor tokens, so a warm Lambda reuses its token until
//! shortly before expiry, and a 401 can force exactly one re-authentication.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::error::ConnectorError;

struct Entry {
    token: SecretString,
    refresh_at: Instant,
}

static CACHE: LazyLock<Mutex<HashMap<String, Entry>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// When to refresh a token that lives `lifetime`: a minute early, or at 80% for short lifetimes.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    let early = Duration::from_secs(60);
    if lifetime > early * 5 {
        lifetime - early
    } else {
        lifetime.mul_f64(0.8)
    }
}

/// Return the cached token for `key`, or fetch one (`fetch` returns the token and its lifetime).
pub async fn get_or_fetch<F, Fut>(key: &str, fetch: F) -> Result<SecretString, ConnectorError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(SecretString, Duration), ConnectorError>>,
{
    if let Ok(cache) = CACHE.lock() {
        if let Some(e) = cache.get(key) {
            if Instant::now() < e.refresh_at {
                return Ok(e.token.clone());
            }
        }
    }
    let (token, lifetime) = fetch().await?;
    if let Ok(mut cache) = CACHE.lock() {
        cache.insert(
            key.to_string(),
            Entry {
                token: token.clone(),
                refresh_at: Instant::now() + refresh_margin(lifetime),
            },
        );
    }
    Ok(token)
}

/// Forget a token (after the vendor answered 401 with it).
pub fn invalidate(key: &str) {
    if let Ok(mut cache) = CACHE.lock() {
        cache.remove(key);
    }
}
