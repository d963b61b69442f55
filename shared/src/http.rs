//! The HTTP client every connector uses: timeouts, retries with backoff and jitter on 5xx and
//! network errors, `Retry-After` on 429, a client-side rate limit, and counters for the run.
//!
//! Security rules enforced here, for every vendor:
//! - base URLs are https; plain http only to a loopback address, and only when
//!   [`ALLOW_LOOPBACK_HTTP_ENV`] is `1` (tests, the local stack) or [`allow_loopback_http`] was
//!   called. The template never sets it, so in AWS the Lambda runtime API on 127.0.0.1:9001 (or
//!   any other http URL) is refused.
//! - redirects are followed only to the same origin (scheme, host and port) over https, so
//!   `x-api-key`, `Authorization` and token bodies holding `client_secret` never leave the host
//!   they were meant for, nor downgrade to http. Any other redirect is an error naming its target.
//! - response bodies are read up to [`HttpOptions::max_body_bytes`]; a larger one is an error
//!   naming the limit, never an out-of-memory Lambda.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Environment variable that, set to `1`, lets base URLs use plain http on loopback addresses.
/// Tests and the local stack set it; the template never does.
pub const ALLOW_LOOPBACK_HTTP_ENV: &str = "ASSETSYNC_ALLOW_LOOPBACK_HTTP";

/// The default cap on one response body (a 1,000-record page of the widest vendor is a few MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Redirects followed at most per request (same-origin https only).
const MAX_REDIRECTS: usize = 5;

/// Bytes of an error body kept for a message.
const EXCERPT_READ_BYTES: usize = 16 * 1024;

static LOOPBACK_HTTP: AtomicBool = AtomicBool::new(false);

/// Allow plain http to loopback addresses in this process (the local stack's in-process runs).
pub fn allow_loopback_http() {
    LOOPBACK_HTTP.store(true, Ordering::Relaxed);
}

/// Whether plain http to loopback is allowed: [`allow_loopback_http`] was called, or
/// [`ALLOW_LOOPBACK_HTTP_ENV`] is `1`.
pub fn loopback_http_allowed() -> bool {
    // The crate's own unit tests build connectors against loopback mock servers.
    cfg!(test)
        || LOOPBACK_HTTP.load(Ordering::Relaxed)
        || std::env::var(ALLOW_LOOPBACK_HTTP_ENV).is_ok_and(|v| v.trim() == "1")
}

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
    /// Largest response body read; a larger one is an error naming this limit.
    pub max_body_bytes: usize,
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
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
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
            .redirect(redirect_policy())
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
                Ok(resp) if resp.status().is_redirection() => {
                    // Only same-origin https redirects are followed (redirect_policy); this one was not.
                    return Err(ConnectorError::Status {
                        vendor,
                        status: resp.status().as_u16(),
                        path,
                        detail: format!(
                            "redirected to {}, which is not followed (only same-host https redirects are, so credentials never reach another host or plain http): set the base URL to the address that answers",
                            redirect_target(&resp)
                        ),
                    });
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
        let bytes = read_body(self.opts.vendor, resp, self.opts.max_body_bytes).await?;
        parse_json_bytes(self.opts.vendor, &bytes.path, &bytes.bytes)
    }

    /// Read a response body within this client's size limit.
    pub async fn body(&self, resp: Response) -> Result<Vec<u8>, ConnectorError> {
        Ok(read_body(self.opts.vendor, resp, self.opts.max_body_bytes)
            .await?
            .bytes)
    }
}

/// A body read in full, with the path it came from.
struct Body {
    path: String,
    bytes: Vec<u8>,
}

/// Read a body chunk by chunk, failing as soon as it passes `limit` bytes.
async fn read_body(
    vendor: &'static str,
    mut resp: Response,
    limit: usize,
) -> Result<Body, ConnectorError> {
    let path = resp.url().path().to_string();
    let too_large = |path: &str| {
        ConnectorError::Malformed {
        vendor,
        path: path.to_string(),
        detail: format!(
            "the response body is larger than the {} limit on one response; use a smaller `config:page_size`",
            human_bytes(limit)
        ),
    }
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large(&path));
    }
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > limit {
                    return Err(too_large(&path));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ConnectorError::Exhausted {
                    vendor,
                    path,
                    attempts: 1,
                    detail: format!("reading the body failed: {}", redact_url(&e.to_string())),
                })
            }
        }
    }
    Ok(Body { path, bytes })
}

fn human_bytes(n: usize) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

fn parse_json_bytes<T: DeserializeOwned>(
    vendor: &'static str,
    path: &str,
    bytes: &[u8],
) -> Result<T, ConnectorError> {
    serde_json::from_slice(bytes).map_err(|e| ConnectorError::Malformed {
        vendor,
        path: path.to_string(),
        detail: e.to_string(),
    })
}

/// Parse a response body as JSON (read within [`DEFAULT_MAX_BODY_BYTES`]), naming the path on failure.
pub async fn parse_json<T: DeserializeOwned>(
    vendor: &'static str,
    resp: Response,
) -> Result<T, ConnectorError> {
    let body = read_body(vendor, resp, DEFAULT_MAX_BODY_BYTES).await?;
    parse_json_bytes(vendor, &body.path, &body.bytes)
}

/// Follow a redirect only to the same origin over https (or loopback http when allowed);
/// reqwest hands any other 3xx back as the response, which [`VendorHttp::send`] turns into an error.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.stop();
        }
        let same_origin = attempt
            .previous()
            .last()
            .is_some_and(|prev| prev.origin() == attempt.url().origin());
        let scheme_ok = match attempt.url().scheme() {
            "https" => true,
            "http" => is_loopback(attempt.url()) && loopback_http_allowed(),
            _ => false,
        };
        if same_origin && scheme_ok {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Where a refused redirect pointed: scheme, host, port and path only (a query may hold tokens).
fn redirect_target(resp: &Response) -> String {
    let Some(loc) = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return "(no Location header)".into();
    };
    match resp.url().join(loc) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(an unparsable Location header)".into(),
    }
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        // try_from: a huge or non-finite value must not panic; the caller caps the wait.
        return (secs >= 0.0).then(|| Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

async fn body_excerpt(mut resp: Response) -> String {
    // Only the start of an error body is kept, so only that much is read.
    let mut bytes = Vec::new();
    while bytes.len() < EXCERPT_READ_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut s: String = text.chars().take(300).collect();
    if text.chars().nth(300).is_some() {
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

/// Check a base URL from a secret: https, or plain http to a loopback address when
/// [`loopback_http_allowed`]. Errors name the field, never its value (a URL may carry credentials).
pub fn check_base_url(raw: &str, field: &str) -> Result<Url, ConnectorError> {
    check_base_url_with(raw, field, loopback_http_allowed())
}

fn check_base_url_with(raw: &str, field: &str, loopback_ok: bool) -> Result<Url, ConnectorError> {
    let url = Url::parse(raw.trim()).map_err(|e| {
        ConnectorError::Config(format!(
            "the secret field `{field}` is not a URL ({e}); it must be an https:// address"
        ))
    })?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) && loopback_ok => {}
        "http" if is_loopback(&url) => {
            return Err(ConnectorError::Config(format!(
                "the secret field `{field}` must use https: plain http to a loopback address is allowed only for tests and the local stack ({ALLOW_LOOPBACK_HTTP_ENV}=1)"
            )))
        }
        "http" => {
            return Err(ConnectorError::Config(format!(
                "the secret field `{field}` must use https (plain http is refused)"
            )))
        }
        _ => {
            return Err(ConnectorError::Config(format!(
                "the secret field `{field}` has an unsupported scheme; it must be an https:// address"
            )))
        }
    }
    if url.host_str().is_none() {
        return Err(ConnectorError::Config(format!(
            "the secret field `{field}` has no host"
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
        let e = check_base_url("http://acme.jamfcloud.com", "tenant_url").unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        assert!(
            !e.to_string().contains("acme"),
            "the value is not quoted: {e}"
        );
        assert!(check_base_url("not a url", "x").is_err());
    }

    #[test]
    fn loopback_http_needs_the_setting() {
        // The Lambda runtime API's address, as a misconfigured secret could name it.
        let e = check_base_url_with("http://127.0.0.1:9001", "base_url", false).unwrap_err();
        assert!(e.to_string().contains(ALLOW_LOOPBACK_HTTP_ENV), "{e}");
        assert!(check_base_url_with("http://localhost:1", "x", false).is_err());
        assert!(check_base_url_with("http://127.0.0.1:8080", "tenant_url", true).is_ok());
        assert!(check_base_url_with("http://localhost:1", "x", true).is_ok());
        assert!(check_base_url_with("http://10.0.0.1:80", "x", true).is_err());
    }

    fn response_with(header: &str, value: &str) -> Response {
        let r = http::Response::builder()
            .status(429)
            .header(header, value)
            .body(Vec::<u8>::new())
            .unwrap();
        Response::from(r)
    }

    #[test]
    fn huge_retry_after_does_not_panic() {
        assert_eq!(
            retry_after(&response_with("retry-after", "1e300")),
            Some(Duration::MAX)
        );
        assert_eq!(
            retry_after(&response_with("retry-after", "2")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(human_bytes(32 * 1024 * 1024), "32 MiB");
    }

    #[test]
    fn refused_redirect_target_drops_query_and_credentials() {
        let r = http::Response::builder()
            .status(302)
            .header("location", "http://u:p@evil.example/next?token=abc")
            .body(Vec::<u8>::new())
            .unwrap();
        let t = redirect_target(&Response::from(r));
        assert_eq!(t, "http://evil.example/next");
    }

    #[test]
    fn join_keeps_prefix() {
        let b = Url::parse("https://h/api/").unwrap();
        assert_eq!(join(&b, "/v1/x").as_str(), "https://h/api/v1/x");
    }
}
