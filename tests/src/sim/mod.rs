//! Vendor simulators: each serves a vendor's auth and paged listings as vendor-apis.md
//! describes, over a seeded synthetic fleet of any size, with fault injection.

pub mod endpoint_central;
pub mod fleet;
pub mod intune;
pub mod jamf;
pub mod jumpcloud;
pub mod kandji;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::task::JoinHandle;

/// A fault the next data request (not a token request) will meet.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 429 with an optional `Retry-After` in seconds.
    TooManyRequests { retry_after: Option<u64> },
    /// A 5xx status.
    ServerError(u16),
    /// Hold the request this long before answering normally (clients should time out).
    Delay(Duration),
    /// A 200 whose body is not JSON.
    MalformedJson,
    /// Every issued token stops working now (the next data request gets 401).
    ExpireTokens,
}

#[derive(Default)]
struct ControlState {
    /// (requests to let through first, fault)
    faults: VecDeque<(u64, Fault)>,
    data_requests: u64,
    token_requests: u64,
    by_path: HashMap<String, u64>,
    tokens: HashMap<String, Instant>,
    token_lifetime: Option<Duration>,
    next_token: u64,
}

/// The handle tests use to steer a simulator and read what it saw.
#[derive(Clone, Default)]
pub struct Control(Arc<Mutex<ControlState>>);

impl Control {
    fn state(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inject a fault into the next data request.
    pub fn inject(&self, fault: Fault) {
        self.state().faults.push_back((0, fault));
    }

    /// Inject a fault after `n` more data requests have passed.
    pub fn inject_after(&self, n: u64, fault: Fault) {
        let mut s = self.state();
        let at = s.data_requests + n;
        s.faults.push_back((at, fault));
    }

    /// Tokens issued from now on live this long (default: the vendor's usual).
    pub fn set_token_lifetime(&self, d: Duration) {
        self.state().token_lifetime = Some(d);
    }

    /// Invalidate every token issued so far.
    pub fn expire_tokens(&self) {
        self.state().tokens.clear();
    }

    /// Data requests served (token requests excluded).
    pub fn data_requests(&self) -> u64 {
        self.state().data_requests
    }

    /// Token requests served.
    pub fn token_requests(&self) -> u64 {
        self.state().token_requests
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> u64 {
        self.state()
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Issue a token that lives `default_lifetime` unless a test set another.
    pub fn issue_token(&self, prefix: &str, default_lifetime: Duration) -> (String, Duration) {
        let mut s = self.state();
        s.token_requests += 1;
        s.next_token += 1;
        let life = s.token_lifetime.unwrap_or(default_lifetime);
        let tok = format!("{prefix}{:08x}{:016x}", s.next_token, rand::random::<u64>());
        s.tokens.insert(tok.clone(), Instant::now() + life);
        (tok, life)
    }

    /// Count a token request that did not issue a token (refused credentials).
    pub fn count_token_request(&self) {
        self.state().token_requests += 1;
    }

    /// Whether a token is known and unexpired.
    pub fn token_valid(&self, token: &str) -> bool {
        self.state()
            .tokens
            .get(token)
            .is_some_and(|exp| Instant::now() < *exp)
    }

    /// Register a token that never expires (static API keys are checked by the simulator itself).
    pub fn add_static_token(&self, token: &str) {
        self.state().tokens.insert(
            token.to_string(),
            Instant::now() + Duration::from_secs(86400 * 365),
        );
    }

    /// Call at the start of every data request: counts it and returns the fault to apply, if any.
    /// `ExpireTokens` is applied here (tokens cleared) and reported so the handler answers 401.
    pub fn on_data_request(&self, path: &str) -> Option<Fault> {
        let mut s = self.state();
        s.data_requests += 1;
        *s.by_path.entry(path.to_string()).or_default() += 1;
        let n = s.data_requests;
        let idx = s.faults.iter().position(|(at, _)| *at < n)?;
        let (_, f) = s.faults.remove(idx)?;
        if f == Fault::ExpireTokens {
            s.tokens.clear();
        }
        Some(f)
    }
}

/// Apply a fault: `Some(response)` to answer with instead of the real one.
/// `Delay` sleeps and returns `None` (the real answer follows, late).
pub async fn fault_response(fault: Option<Fault>) -> Option<Response> {
    match fault? {
        Fault::TooManyRequests { retry_after } => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                "{\"error\":\"rate limit exceeded\"}",
            )
                .into_response();
            if let Some(s) = retry_after {
                if let Ok(v) = s.to_string().parse() {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            Some(r)
        }
        Fault::ServerError(code) => Some(
            (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "upstream error",
            )
                .into_response(),
        ),
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::MalformedJson => Some(
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"results\": [ {\"id\": 1,, oops"))
                .unwrap_or_default(),
        ),
        Fault::ExpireTokens => None,
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, tok) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| tok.trim().to_string())
}

/// A running simulator; the server stops when this is dropped.
pub struct SimHandle {
    pub base_url: String,
    pub control: Control,
    task: JoinHandle<()>,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve a router on a free loopback port.
pub async fn serve(router: Router, control: Control) -> anyhow::Result<SimHandle> {
    // Simulators speak plain http on loopback, which connectors accept only with this setting.
    assetsync::http::allow_loopback_http();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle {
        base_url: format!("http://{addr}"),
        control,
        task,
    })
}
