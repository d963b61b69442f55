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

/// The longest a vendor token is trusted, whatever its `expires_in` says (a day).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A vendor's token lifetime, clamped to [`MAX_TOKEN_LIFETIME`] (a huge `expires_in` must not
/// overflow `Instant + Duration`, nor keep a token for ever).
pub fn clamp_lifetime(lifetime: Duration) -> Duration {
    lifetime.min(MAX_TOKEN_LIFETIME)
}

/// A vendor's `expires_in` seconds, clamped to [`MAX_TOKEN_LIFETIME`].
pub fn lifetime_secs(expires_in: u64) -> Duration {
    clamp_lifetime(Duration::from_secs(expires_in))
}

/// The instant to refresh a token that lives `lifetime` (clamped), never overflowing.
pub fn refresh_at(lifetime: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(refresh_margin(lifetime)).unwrap_or(now)
}

/// When to refresh a token that lives `lifetime` (clamped to [`MAX_TOKEN_LIFETIME`]): a minute
/// early, or at 80% for short lifetimes.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    let lifetime = clamp_lifetime(lifetime);
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
                refresh_at: refresh_at(lifetime),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_lifetimes_are_clamped_not_panicking() {
        assert_eq!(
            refresh_margin(Duration::MAX),
            MAX_TOKEN_LIFETIME - Duration::from_secs(60)
        );
        assert_eq!(lifetime_secs(u64::MAX), MAX_TOKEN_LIFETIME);
        let at = refresh_at(Duration::MAX);
        assert!(at <= Instant::now() + MAX_TOKEN_LIFETIME);
        assert_eq!(
            refresh_margin(Duration::from_secs(100)),
            Duration::from_secs(80)
        );
    }

    #[tokio::test]
    async fn a_token_with_a_huge_expires_in_is_cached() {
        let key = "test|huge-expires-in";
        let t = get_or_fetch(key, || async {
            Ok((SecretString::from("t1".to_string()), Duration::MAX))
        })
        .await
        .unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&t), "t1");
        invalidate(key);
    }
}
