//! The HTTP client every connector uses: timeouts, retries with backoff and jitter on 5xx and
//! network errors, `Retry-After` on 429, a client-side rate limit, and counters for the run.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use url::Url;

use crate::error::ConnectorError;

/// Counters a run reports: requests made, retries, and time spent waiting on throttling.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    pub throttle_wait_ms: AtomicU64,
}

/// A snapshot of [`HttpStats`].
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct HttpCounts {
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    pub throttle_wait_ms: u64,
}

impl HttpStats {
    /// Read the counters.
    pub fn snapshot(&self) -> HttpCounts {
        HttpCounts {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            throttle_wait_ms: self.throttle_wait_ms.load(Ordering::Relaxed),
        }
    }
}

/// A vendor's published limits, enforced client-side.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Requests allowed per `per`.
    pub requests: u32,
    pub per: Duration,
    /// Requests in flight at once (Jamf advises at most 5).
    pub concurrency: usize,
}

/// How a [`VendorHttp`] is built.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Short vendor name used in errors (`Jamf Pro`, `Kandji`, ...).
    pub vendor: &'static str,
    pub timeout: Duration,
    pub max_attempts: u32,
    /// Upper bound of a single wait (a longer `Retry-After` is capped, then counted as a retry).
    pub max_wait: Duration,
    pub rate_limit: Option<RateLimit>,
    /// Extra CA certificate (PEM) to trust, for on-premises servers with a private CA.
    pub ca_cert_pem: Option<String>,
}

impl HttpOptions {
    /// Sensible defaults for a vendor.
    pub fn new(vendor: &'static str) -> Self {
        let fast = std::env::var("ASSETSYNC_FAST_RETRY").is_ok();
        HttpOptions {
            vendor,
            timeout: Duration::from_secs(if fast { 5 } else { 30 }),
            max_attempts: 6,
            max_wait: Duration::from_secs(if fast { 2 } else { 120 }),
            rate_limit: None,
            ca_cert_pem: None,
        }
    }
}

/// The shared vendor HTTP client.
#[derive(Clone)]
pub struct VendorHttp {
    client: reqwest::Client,
    opts: HttpOptions,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    inflight: Option<Arc<Semaphore>>,
    stats: Arc<HttpStats>,
}

impl VendorHttp {
    /// Build a client for one vendor.
    pub fn new(opts: HttpOptions) -> Result<Self, ConnectorError> {
        let mut builder = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("assetsync/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &opts.ca_cert_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                ConnectorError::Config(format!("ca_cert is not a PEM certificate: {e}"))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| ConnectorError::Config(format!("cannot build the HTTP client: {e}")))?;
        let limiter = opts.rate_limit.and_then(|rl| {
            let n = NonZeroU32::new(rl.requests)?;
            let period = rl.per.checked_div(rl.requests)?;
            Quota::with_period(period).map(|q| {
                Arc::new(RateLimiter::direct(
                    q.allow_burst(n.min(NonZeroU32::new(10).unwrap_or(n))),
                ))
            })
        });
        let inflight = opts
            .rate_limit
            .map(|rl| Arc::new(Semaphore::new(rl.concurrency.max(1))));
        Ok(VendorHttp {
            client,
            opts,
            limiter,
            inflight,
            stats: Arc::new(HttpStats::default()),
        })
    }

    /// The underlying client, to build requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The vendor name used in errors.
    pub fn vendor(&self) -> &'static str {
        self.opts.vendor
    }

    /// The run's counters.
    pub fn stats(&self) -> &Arc<HttpStats> {
        &self.stats
    }

    /// Send a request, retrying 429 (honouring `Retry-After`), 5xx and network errors.
    /// Returns the response for 2xx; any other status becomes a typed error
    /// (401 → [`ConnectorError::Auth`], 403 → [`ConnectorError::Forbidden`]).
    pub async fn send(
        &self,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, ConnectorError> {
        let vendor = self.opts.vendor;
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(
                if std::env::var("ASSETSYNC_FAST_RETRY").is_ok() {
                    20
                } else {
                    500
                },
            ))
            .with_max_delay(self.opts.max_wait)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let req = build()
                .build()
                .map_err(|e| ConnectorError::Config(format!("bad request: {e}")))?;
            let path = req.url().path().to_string();
            if let Some(l) = &self.limiter {
                let start = std::time::Instant::now();
                l.until_ready().await;
                let waited = start.elapsed();
                if waited > Duration::from_millis(5) {
                    self.stats
                        .throttle_wait_ms
                        .fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
                }
            }
            let _permit = match &self.inflight {
                Some(s) => Some(
                    s.clone()
                        .acquire_owned()
                        .await
                        .map_err(|e| ConnectorError::Config(e.to_string()))?,
                ),
                None => None,
            };
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let result = self.client.execute(req).await;
            drop(_permit);
            let next_wait = backoff.next().unwrap_or(self.opts.max_wait);
            let (wait, detail) = match result {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                    self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    let wait = retry_after(&resp)
                        .unwrap_or(next_wait)
                        .min(self.opts.max_wait);
                    self.stats
                        .throttle_wait_ms
                        .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
                    (wait, format!("HTTP 429 {}", body_excerpt(resp).await))
                }
                Ok(resp)
                    if resp.status().is_server_error()
                        || resp.status() == StatusCode::REQUEST_TIMEOUT =>
                {
                    let status = resp.status();
                    let wait = retry_after(&resp)
                        .unwrap_or(next_wait)
                        .min(self.opts.max_wait);
                    (
                        wait,
                        format!("HTTP {} {}", status.as_u16(), body_excerpt(resp).await),
                    )
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let detail = body_excerpt(resp).await;
                    return Err(match status {
                        401 => ConnectorError::Auth {
                            vendor,
                            detail: format!("HTTP 401 for {path}: {detail}"),
                        },
                        403 => ConnectorError::Forbidden {
                            vendor,
                            path,
                            detail,
                        },
                        _ => ConnectorError::Status {
                            vendor,
                            status,
                            path,
                            detail,
                        },
                    });
                }
                Err(e) => (
                    next_wait,
                    format!("network error: {}", redact_url(&e.to_string())),
                ),
            };
            // A wait that would outlast the page's time budget ends the retries now: the fetcher
            // retries the page later from its checkpoint (a delayed continuation).
            let past_budget = crate::connectors::page_deadline()
                .is_some_and(|d| std::time::Instant::now() + wait >= d);
            if attempt >= self.opts.max_attempts || past_budget {
                return Err(ConnectorError::Exhausted {
                    vendor,
                    path,
                    attempts: attempt,
                    detail,
                });
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(vendor, path = %path, attempt, wait_ms = wait.as_millis() as u64, detail = %detail, "retrying vendor request");
            tokio::time::sleep(wait).await;
        }
    }

    /// Send and parse a JSON body.
    pub async fn json<T: DeserializeOwned>(
        &self,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<T, ConnectorError> {
        let resp = self.send(build).await?;
        parse_json(self.opts.vendor, resp).await
    }
}

/// Parse a response body as JSON, naming the path on failure.
pub async fn parse_json<T: DeserializeOwned>(
    vendor: &'static str,
    resp: Response,
) -> Result<T, ConnectorError> {
    let path = resp.url().path().to_string();
    let bytes = resp.bytes().await.map_err(|e| ConnectorError::Exhausted {
        vendor,
        path: path.clone(),
        attempts: 1,
        detail: format!("reading the body failed: {e}"),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ConnectorError::Malformed {
        vendor,
        path,
        detail: e.to_string(),
    })
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

async fn body_excerpt(resp: Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    let mut s: String = text.chars().take(300).collect();
    if text.len() > 300 {
        s.push('…');
    }
    s
}

/// Strip the query string from URLs in an error text (queries may carry tokens).
fn redact_url(s: &str) -> String {
    s.split_whitespace()
        .map(|w| match w.find('?') {
            Some(i) if w.contains("://") => format!("{}?…", &w[..i]),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Check a base URL: https, or plain http only on a loopback address (tests and simulators).
pub fn check_base_url(raw: &str, field: &str) -> Result<Url, ConnectorError> {
    let url = Url::parse(raw.trim())
        .map_err(|e| ConnectorError::Config(format!("`{field}` {raw:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(ConnectorError::Config(format!(
                "`{field}` must use https (plain http is allowed only for loopback test servers): {raw}"
            )))
        }
        s => return Err(ConnectorError::Config(format!("`{field}` has unsupported scheme `{s}`: {raw}"))),
    }
    if url.host_str().is_none() {
        return Err(ConnectorError::Config(format!(
            "`{field}` has no host: {raw}"
        )));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Join a base URL and a path, keeping the base's own path prefix.
pub fn join(base: &Url, path: &str) -> Url {
    let mut u = base.clone();
    let prefix = base.path().trim_end_matches('/');
    u.set_path(&format!("{}/{}", prefix, path.trim_start_matches('/')));
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert!(check_base_url("https://acme.jamfcloud.com", "tenant_url").is_ok());
        assert!(check_base_url("http://127.0.0.1:8080", "tenant_url").is_ok());
        assert!(check_base_url("http://localhost:1", "x").is_ok());
        let e = check_base_url("http://acme.jamfcloud.com", "tenant_url").unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        assert!(check_base_url("not a url", "x").is_err());
    }

    #[test]
    fn join_keeps_prefix() {
        let b = Url::parse("https://h/api/").unwrap();
        assert_eq!(join(&b, "/v1/x").as_str(), "https://h/api/v1/x");
    }
}
