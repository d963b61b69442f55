//! ManageEngine Endpoint Central simulator (API 1.4), following vendor-apis.md §1.
//!
//! Serves, over a seeded fleet of any size:
//! - `POST /api/1.4/desktop/authentication`: on-premises login with `username` and the
//!   base64-encoded `password`, `auth_type` `local_authentication` / `ad_authentication` (+ `domainName`).
//!   Success puts the token at `message_response.authentication.auth_data.auth_token`; an account
//!   with two-factor authentication gets `two_factor_data` instead; wrong credentials get HTTP 200
//!   with `status: "error"`, `error_code` `10001` (the code third-party clients treat as bad credentials).
//! - a static console `api_token` (never expires; not affected by `Fault::ExpireTokens`).
//! - `POST /oauth/v2/token`: the Zoho accounts server (the tests use the simulator's own URL as
//!   `accounts_url`), `grant_type=refresh_token`; at most 10 access tokens per refresh token in
//!   10 minutes, the 11th answered HTTP 400 `{"error":"Access Denied", "error_description":
//!   "You have made too many requests continuously. ..."}`; wrong refresh token `{"error":"invalid_code"}`
//!   and wrong client `{"error":"invalid_client"}` with HTTP 200, as Zoho does.
//! - `GET /api/1.4/som/computers`, `GET /api/1.4/inventory/scancomputers` (`page` 1-based,
//!   `pagelimit` default 25, clamped to 1000; `residfilter`, `domainfilter`) and
//!   `GET /api/1.4/inventory/compdetailssummary?resid=ID`, in the 1.4 envelope.
//!   `Authorization: <token>` (login or console token) or `Authorization: Zoho-oauthtoken <token>`.
//!   A bad bare token is answered HTTP 200 `status: "error"`, `error_code` `10002` (as on-premises
//!   servers do per third-party clients); a bad Zoho token HTTP 401 with the same body; a missing
//!   header HTTP 401.
//!
//! Rate limit (per API path): 120 requests per minute, then a 5-minute lock (the block the
//! on-premises docs print). What a locked server answers is undocumented; this simulator answers,
//! by [`LockStyle`], HTTP 429 with `Retry-After` (seconds left) or HTTP 200, both with the body
//! `{"status":"error","error_code":"RATE_LIMIT_EXCEEDED","error_description":"API rate limit exceeded ...
//! access is locked for N seconds"}` (the code is invented, in the style of the newer docs' codes).
//!
//! The fleet: `som/computers` rows carry `managedcomputerextn.service_tag` on two computers in
//! three (some URL-encoded with a trailing `%20`), `scancomputers` rows never do; every computer's
//! detail summary carries `computer_hardware_summary.serial_number`. `last_successful_scan` is a
//! `scancomputers` field only; `som/computers` rows carry `agent_last_contact_time` and
//! `computer_status_update_time` (epoch ms), and a rescan (the agent contacting the server with new
//! inventory) moves both. Some serials are placeholders
//! ("To be filled by O.E.M.") or empty; several computers share an owner; names are partly unicode;
//! `--` appears for empty values as Endpoint Central prints it.

// `i % n` reads better than `is_multiple_of` here, and the workspace supports Rust 1.85.
#![allow(clippy::manual_is_multiple_of, clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::fleet::{self, mac, num, person, pick};
use super::{fault_response, serve, Control, SimHandle};

/// The per-API limit and lock a server enforces.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitCfg {
    pub requests: u32,
    pub window: Duration,
    pub lock: Duration,
}

impl RateLimitCfg {
    /// The documented block: 120 per minute, locked for 5 minutes.
    pub fn documented() -> Self {
        RateLimitCfg {
            requests: 120,
            window: Duration::from_secs(60),
            lock: Duration::from_secs(300),
        }
    }
}

/// How a locked API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockStyle {
    /// HTTP 429 with `Retry-After`.
    Http429,
    /// HTTP 200 with `status: "error"`.
    ErrorBody,
}

/// How the simulator is set up.
#[derive(Debug, Clone)]
pub struct EcSimConfig {
    pub seed: u64,
    pub devices: usize,
    pub username: String,
    pub password: String,
    /// The AD domain accepted with `ad_authentication`.
    pub domain: String,
    /// The login account has two-factor authentication on.
    pub two_factor: bool,
    pub api_token: String,
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// Server bug: answer page 1 whatever `page` says.
    pub ignore_page: bool,
    /// The largest `pagelimit` served (larger ones are clamped; the documented cap is 1000).
    pub max_pagelimit: usize,
    /// `None`: no limit.
    pub rate_limit: Option<RateLimitCfg>,
    pub lock_style: LockStyle,
    /// Zoho: access tokens per refresh token per window.
    pub zoho_refresh_cap: usize,
    pub zoho_window: Duration,
}

impl Default for EcSimConfig {
    fn default() -> Self {
        EcSimConfig {
            seed: 7,
            devices: 100,
            username: "admin".into(),
            password: "Pässw0rd!".into(),
            domain: "CORP".into(),
            two_factor: false,
            api_token: "9F1C2B7A-0D3E-4C55-8A1B-6E2F3C4D5A6B".into(),
            client_id: "1000.SIMCLIENT0000000000000000".into(),
            client_secret: "sim-client-secret".into(),
            refresh_token: "1000.simrefresh.token".into(),
            ignore_page: false,
            max_pagelimit: 1000,
            rate_limit: Some(RateLimitCfg::documented()),
            lock_style: LockStyle::Http429,
            zoho_refresh_cap: 10,
            zoho_window: Duration::from_secs(600),
        }
    }
}

/// One simulated computer: its list fields and its detail summary.
#[derive(Debug, Clone)]
pub struct EcDevice {
    pub fields: Map<String, Value>,
    pub detail: Value,
}

struct Window {
    start: Instant,
    count: u32,
    locked_until: Option<Instant>,
}

struct Inner {
    devices: Vec<EcDevice>,
    next_index: usize,
    ignore_page: bool,
    two_factor: bool,
    rate_limit: Option<RateLimitCfg>,
    lock_style: LockStyle,
    windows: HashMap<String, Window>,
    lock_answers: u64,
    zoho_issued: VecDeque<Instant>,
    zoho_refreshes: u64,
    zoho_refusals: u64,
    logins: u64,
    clock_ms: i64,
}

struct Shared {
    cfg: EcSimConfig,
    control: Control,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running simulator.
pub struct EndpointCentralSim {
    pub handle: SimHandle,
    shared: Arc<Shared>,
}

const PATH_LIST: &str = "/api/1.4/som/computers";
const PATH_SCAN: &str = "/api/1.4/inventory/scancomputers";
const PATH_DETAIL: &str = "/api/1.4/inventory/compdetailssummary";
const BASE_CLOCK_MS: i64 = 1_718_873_142_000;

const PREFIXES: &[&str] = &[
    "FIN-LT",
    "OPS-WS",
    "ENG-LT",
    "HR-LT",
    "LAB-PC",
    "MÜNCHEN-LT",
    "東京-WS",
    "SÃO-PAULO-LT",
];
/// (platform code, platform name, OS name, OS version, manufacturer, model, device type)
const MODELS: &[(u64, &str, &str, &str, &str, &str, &str)] = &[
    (
        1,
        "Windows",
        "Windows 11 Enterprise Edition (x64)",
        "10.0.22631",
        "HP",
        "HP EliteBook 840 G8",
        "Laptop",
    ),
    (
        1,
        "Windows",
        "Windows 10 Professional Edition (x64)",
        "10.0.19045",
        "Dell Inc.",
        "OptiPlex 7090",
        "Desktop",
    ),
    (
        1,
        "Windows",
        "Windows 11 Professional Edition (x64)",
        "10.0.22621",
        "LENOVO",
        "ThinkPad T14 Gen 3",
        "Laptop",
    ),
    (
        1,
        "Windows",
        "Windows Server 2022 Standard (x64)",
        "10.0.20348",
        "VMware, Inc.",
        "VMware Virtual Platform",
        "Virtual Machine",
    ),
    (
        2,
        "Mac",
        "macOS Sonoma",
        "14.5",
        "Apple Inc.",
        "MacBook Pro (14-inch, 2023)",
        "Laptop",
    ),
    (
        3,
        "Linux",
        "Ubuntu 22.04.4 LTS",
        "22.04",
        "LENOVO",
        "ThinkCentre M70q",
        "Desktop",
    ),
];
const CPUS: &[&str] = &[
    "Intel(R) Core(TM) i7-1185G7 @ 3.00GHz",
    "Intel(R) Core(TM) i5-10500 @ 3.10GHz",
    "Apple M3 Pro",
    "AMD Ryzen 7 PRO 5850U",
];

/// The true serial of computer `i` (`""` for none; placeholders included).
fn true_serial(i: usize) -> String {
    if i % 37 == 5 {
        "To be filled by O.E.M.".into()
    } else if i % 41 == 7 {
        String::new()
    } else {
        fleet::serial("5CG", i, 10)
    }
}

fn make_device(seed: u64, i: usize, total: usize) -> EcDevice {
    let rid = 30_001 + (i as u64) * 3;
    let name = format!("{}-{:04}", pick(seed, i, 1, PREFIXES), i);
    let (pcode, pname, os_name, os_version, make, model, dtype) = *pick(seed, i, 2, MODELS);
    let serial = true_serial(i);
    let people = (total * 2 / 3).max(1);
    let owner = person(i % people);
    let (owner_name, email) = if i % 10 == 3 {
        (String::new(), String::new())
    } else if i % 17 == 4 {
        ("--".to_string(), "--".to_string())
    } else if i % 6 == 1 {
        (owner.username.clone(), owner.email.to_uppercase())
    } else {
        (owner.username.clone(), owner.email.clone())
    };
    let mac_address = if i % 13 == 6 {
        "--".to_string()
    } else if i % 7 == 2 {
        format!("{},{}", mac(seed, i, true), mac(seed ^ 99, i, true))
    } else {
        mac(seed, i, true)
    };
    let ip = if i % 9 == 4 {
        format!(
            "10.20.{}.{},10.20.{}.{}",
            i / 250 % 250,
            i % 250 + 1,
            i / 250 % 250,
            (i + 1) % 250 + 1
        )
    } else {
        format!("10.20.{}.{}", i / 250 % 250, i % 250 + 1)
    };
    let scan = BASE_CLOCK_MS - num(seed, i, 3, 30 * 86_400) as i64 * 1000;
    let mut f = Map::new();
    f.insert("resource_id".into(), json!(rid));
    f.insert("resource_name".into(), json!(name));
    f.insert(
        "fqdn_name".into(),
        json!(format!("{}.corp.example.net", name.to_lowercase())),
    );
    f.insert(
        "domain_netbios_name".into(),
        json!(*pick(
            seed,
            i,
            4,
            &["CORP", "CORP", "CORP", "LAB", "WORKGROUP"]
        )),
    );
    f.insert("ip_address".into(), json!(ip));
    f.insert("mac_address".into(), json!(mac_address));
    f.insert("os_name".into(), json!(os_name));
    f.insert("os_platform".into(), json!(pcode));
    f.insert("os_platform_name".into(), json!(pname));
    f.insert("os_version".into(), json!(os_version));
    f.insert("service_pack".into(), json!("--"));
    f.insert("agent_version".into(), json!("11.3.2416.15"));
    f.insert(
        "agent_last_contact_time".into(),
        json!(scan + num(seed, i, 5, 86_400) as i64 * 1000),
    );
    f.insert(
        "agent_installed_on".into(),
        json!(BASE_CLOCK_MS - 400 * 86_400_000),
    );
    f.insert("last_successful_scan".into(), json!(scan));
    f.insert("computer_status_update_time".into(), json!(scan));
    f.insert(
        "computer_live_status".into(),
        json!(*pick(seed, i, 6, &[1, 1, 1, 2, 3])),
    );
    f.insert(
        "installation_status".into(),
        json!(*pick(seed, i, 7, &[22, 22, 22, 22, 21, 29])),
    );
    f.insert(
        "scan_status".into(),
        json!(*pick(seed, i, 8, &[2, 2, 2, 2, 0, 1, -1])),
    );
    f.insert("managedcomputer.friendly_name".into(), json!(name));
    f.insert("owner".into(), json!(owner_name));
    f.insert("owner_email_id".into(), json!(email));
    f.insert("branch_office_name".into(), json!("Local Office"));
    if i % 3 != 0 {
        let tag = if i % 11 == 2 {
            format!("{serial}%20")
        } else {
            serial.replace(' ', "%20")
        };
        f.insert("managedcomputerextn.service_tag".into(), json!(tag));
    }
    let warranty = if i % 4 == 0 {
        json!("--")
    } else {
        json!(BASE_CLOCK_MS + num(seed, i, 9, 1000) as i64 * 86_400_000)
    };
    let detail = json!({
        "computer_summary": {"computer_name": name, "resource_id": rid, "domain_name": f["domain_netbios_name"].clone(), "agent_version": "11.3.2416.15"},
        "computer_hardware_summary": {
            "serial_number": if serial.is_empty() { json!("--") } else { json!(serial) },
            "device_manufacturer": make, "device_model": model, "device_type": dtype,
            "processor": *pick(seed, i, 10, CPUS), "memory": format!("{} GB", 8 << num(seed, i, 11, 3)),
            "warranty_expiry_date": warranty,
        },
        "computer_os_summary": {"os_name": os_name, "os_version": os_version, "service_pack": "--"},
        "computer_disk_summary": {"total_size": "476.94 GB", "percent_free": 41.2, "percent_used": 58.8},
    });
    EcDevice { fields: f, detail }
}

fn envelope(entity: &str, response: Value) -> Value {
    json!({"message_type": entity, "message_version": "1.4", "status": "success", "message_response": response})
}

fn error_body(entity: &str, code: &str, description: &str) -> Value {
    json!({"message_type": entity, "message_version": "1.4", "status": "error", "error_code": code, "error_description": description})
}

enum Caller {
    /// A login or console token.
    Bare,
    Zoho,
}

impl Shared {
    /// Check the `Authorization` header of a data request.
    fn authorize(&self, headers: &HeaderMap, entity: &str) -> Result<Caller, Response> {
        let Some(v) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
        else {
            return Err((
                StatusCode::UNAUTHORIZED,
                Json(error_body(
                    entity,
                    "10002",
                    "Authentication token is missing",
                )),
            )
                .into_response());
        };
        if let Some(t) = v.strip_prefix("Zoho-oauthtoken ") {
            let t = t.trim();
            if t.starts_with("1000.") && self.control.token_valid(t) {
                return Ok(Caller::Zoho);
            }
            return Err((
                StatusCode::UNAUTHORIZED,
                Json(error_body(
                    entity,
                    "10002",
                    "Invalid or expired OAuth token",
                )),
            )
                .into_response());
        }
        if v == self.cfg.api_token || (v.starts_with("ec-") && self.control.token_valid(v)) {
            return Ok(Caller::Bare);
        }
        Err(Json(error_body(
            entity,
            "10002",
            "The authentication token is invalid or has expired",
        ))
        .into_response())
    }

    /// Count a request against its API's limit; `Some(response)` while locked.
    fn rate_limit(&self, api: &str, entity: &str) -> Option<Response> {
        let mut g = self.lock();
        let cfg = g.rate_limit?;
        let style = g.lock_style;
        let now = Instant::now();
        let w = g.windows.entry(api.to_string()).or_insert(Window {
            start: now,
            count: 0,
            locked_until: None,
        });
        let mut locked_for = None;
        if let Some(until) = w.locked_until {
            if now < until {
                locked_for = Some(until - now);
            } else {
                *w = Window {
                    start: now,
                    count: 0,
                    locked_until: None,
                };
            }
        }
        if locked_for.is_none() {
            if now.duration_since(w.start) >= cfg.window {
                *w = Window {
                    start: now,
                    count: 0,
                    locked_until: None,
                };
            }
            w.count += 1;
            if w.count > cfg.requests {
                w.locked_until = Some(now + cfg.lock);
                locked_for = Some(cfg.lock);
            }
        }
        let left = locked_for?;
        g.lock_answers += 1;
        let secs = left.as_secs_f64().ceil().max(1.0) as u64;
        let body = error_body(
            entity,
            "RATE_LIMIT_EXCEEDED",
            &format!(
                "API rate limit exceeded: more than {} requests in {} seconds; access is locked for {secs} seconds",
                cfg.requests,
                cfg.window.as_secs()
            ),
        );
        Some(match style {
            LockStyle::Http429 => {
                let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                if let Ok(v) = secs.to_string().parse() {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
            LockStyle::ErrorBody => Json(body).into_response(),
        })
    }
}

async fn login(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let entity = "authentication";
    s.lock().logins += 1;
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        s.control.count_token_request();
        return (
            StatusCode::BAD_REQUEST,
            Json(error_body(entity, "10003", "The request body is not JSON")),
        )
            .into_response();
    };
    let field = |n: &str| req.get(n).and_then(Value::as_str).unwrap_or("").to_string();
    let password = base64::engine::general_purpose::STANDARD
        .decode(field("password"))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let auth_type = field("auth_type");
    let type_ok = match auth_type.as_str() {
        "" | "local_authentication" => true,
        "ad_authentication" => field("domainName").eq_ignore_ascii_case(&s.cfg.domain),
        _ => false,
    };
    if field("username") != s.cfg.username || password != s.cfg.password || !type_ok {
        s.control.count_token_request();
        return Json(error_body(entity, "10001", "Invalid username or password")).into_response();
    }
    if s.lock().two_factor {
        s.control.count_token_request();
        return Json(envelope(
            entity,
            json!({"authentication": {"two_factor_data": {"unique_userID": "1801", "is_TwoFactor_Enabled": true, "OTP_Validation_Required": true, "remember_token_days": 120, "message": "Enter the OTP from your authenticator app"}}}),
        ))
        .into_response();
    }
    let (token, _) = s.control.issue_token("ec-", Duration::from_secs(86_400));
    Json(envelope(entity, json!({"authentication": {"auth_data": {"auth_token": token}, "user_data": {"user_name": s.cfg.username}}})))
        .into_response()
}

async fn zoho_token(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let mut p: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    for (k, v) in q {
        p.entry(k).or_insert(v);
    }
    let get = |n: &str| p.get(n).map(String::as_str).unwrap_or("");
    let refuse = |s: &Shared, v: Value| {
        s.control.count_token_request();
        s.lock().zoho_refusals += 1;
        Json(v).into_response()
    };
    if get("grant_type") != "refresh_token" {
        return refuse(&s, json!({"error": "unsupported_grant_type"}));
    }
    if get("client_id") != s.cfg.client_id || get("client_secret") != s.cfg.client_secret {
        return refuse(&s, json!({"error": "invalid_client"}));
    }
    if get("refresh_token") != s.cfg.refresh_token {
        return refuse(&s, json!({"error": "invalid_code"}));
    }
    {
        let mut g = s.lock();
        let now = Instant::now();
        while g
            .zoho_issued
            .front()
            .is_some_and(|t| now.duration_since(*t) >= s.cfg.zoho_window)
        {
            g.zoho_issued.pop_front();
        }
        if g.zoho_issued.len() >= s.cfg.zoho_refresh_cap {
            g.zoho_refusals += 1;
            drop(g);
            s.control.count_token_request();
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error_description": "You have made too many requests continuously. Please try again after some time.", "error": "Access Denied", "status": "failure"})),
            )
                .into_response();
        }
        g.zoho_issued.push_back(now);
        g.zoho_refreshes += 1;
    }
    let (token, life) = s.control.issue_token("1000.", Duration::from_secs(3600));
    Json(json!({"access_token": token, "expires_in": life.as_secs().max(1), "api_domain": "https://www.zohoapis.com", "token_type": "Bearer"}))
        .into_response()
}

/// Common steps of a data request: count and fault, authorize, rate-limit.
async fn gate(s: &Shared, path: &str, entity: &str, headers: &HeaderMap) -> Option<Response> {
    if let Some(r) = fault_response(s.control.on_data_request(path)).await {
        return Some(r);
    }
    if let Err(r) = s.authorize(headers, entity) {
        return Some(r);
    }
    s.rate_limit(path, entity)
}

async fn list(
    s: Arc<Shared>,
    path: &str,
    entity: &str,
    headers: HeaderMap,
    q: HashMap<String, String>,
) -> Response {
    if let Some(r) = gate(&s, path, entity, &headers).await {
        return r;
    }
    let g = s.lock();
    let mut page = q
        .get("page")
        .and_then(|p| p.trim().parse::<i64>().ok())
        .unwrap_or(1)
        .max(1) as usize;
    if g.ignore_page {
        page = 1;
    }
    let limit = q
        .get("pagelimit")
        .and_then(|p| p.trim().parse::<i64>().ok())
        .unwrap_or(25)
        .clamp(1, s.cfg.max_pagelimit.max(1) as i64) as usize;
    let resid = q.get("residfilter").and_then(|r| r.parse::<u64>().ok());
    let domain = q.get("domainfilter").cloned();
    let rows: Vec<&EcDevice> = g
        .devices
        .iter()
        .filter(|d| {
            resid.is_none_or(|r| d.fields.get("resource_id").and_then(Value::as_u64) == Some(r))
        })
        .filter(|d| {
            domain.as_deref().is_none_or(|dm| {
                d.fields.get("domain_netbios_name").and_then(Value::as_str) == Some(dm)
            })
        })
        .collect();
    let total = rows.len();
    let scan = entity == "scancomputers";
    let items: Vec<Value> = rows
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .map(|d| {
            let mut f = d.fields.clone();
            if scan {
                f.remove("managedcomputerextn.service_tag");
            } else {
                f.remove("scan_status");
                f.remove("managedcomputer.friendly_name");
                f.remove("last_successful_scan");
            }
            Value::Object(f)
        })
        .collect();
    let mut mr = Map::new();
    mr.insert(entity.into(), Value::Array(items));
    mr.insert("total".into(), json!(total));
    mr.insert("limit".into(), json!(limit));
    mr.insert("page".into(), json!(page));
    Json(envelope(entity, Value::Object(mr))).into_response()
}

async fn computers(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list(s, PATH_LIST, "computers", headers, q).await
}

async fn scancomputers(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list(s, PATH_SCAN, "scancomputers", headers, q).await
}

async fn detail(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let entity = "compdetailssummary";
    if let Some(r) = gate(&s, PATH_DETAIL, entity, &headers).await {
        return r;
    }
    let Some(rid) = q.get("resid").and_then(|r| r.trim().parse::<u64>().ok()) else {
        return Json(error_body(
            entity,
            "INVALID_INPUT",
            "resid is required and must be a number",
        ))
        .into_response();
    };
    let g = s.lock();
    match g
        .devices
        .iter()
        .find(|d| d.fields.get("resource_id").and_then(Value::as_u64) == Some(rid))
    {
        Some(d) => {
            let mut mr = Map::new();
            mr.insert(entity.into(), d.detail.clone());
            Json(envelope(entity, Value::Object(mr))).into_response()
        }
        None => Json(error_body(
            entity,
            "INVALID_RESOURCE",
            &format!("No computer with resource id {rid}"),
        ))
        .into_response(),
    }
}

/// How [`EndpointCentralSim::secret_for`] authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcAuth {
    Login,
    ApiToken,
    Zoho,
}

impl EndpointCentralSim {
    /// Start on a free loopback port.
    pub async fn start(cfg: EcSimConfig) -> anyhow::Result<Self> {
        let devices = (0..cfg.devices)
            .map(|i| make_device(cfg.seed, i, cfg.devices))
            .collect();
        let control = Control::default();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                devices,
                next_index: cfg.devices,
                ignore_page: cfg.ignore_page,
                two_factor: cfg.two_factor,
                rate_limit: cfg.rate_limit,
                lock_style: cfg.lock_style,
                windows: HashMap::new(),
                lock_answers: 0,
                zoho_issued: VecDeque::new(),
                zoho_refreshes: 0,
                zoho_refusals: 0,
                logins: 0,
                clock_ms: BASE_CLOCK_MS,
            }),
            cfg,
            control: control.clone(),
        });
        let router = Router::new()
            .route("/api/1.4/desktop/authentication", post(login))
            .route("/oauth/v2/token", post(zoho_token))
            .route(PATH_LIST, get(computers))
            .route(PATH_SCAN, get(scancomputers))
            .route(PATH_DETAIL, get(detail))
            .with_state(shared.clone());
        let handle = serve(router, control).await?;
        Ok(EndpointCentralSim { handle, shared })
    }

    /// The simulator's URL (also the Zoho `accounts_url`).
    pub fn base_url(&self) -> &str {
        &self.handle.base_url
    }

    /// Fault injection and request counters.
    pub fn control(&self) -> &Control {
        &self.handle.control
    }

    /// The on-premises login secret (username + password).
    pub fn secret(&self) -> Value {
        self.secret_for(EcAuth::Login)
    }

    /// A secret using the given credentials.
    pub fn secret_for(&self, auth: EcAuth) -> Value {
        let c = &self.shared.cfg;
        match auth {
            EcAuth::Login => {
                json!({"base_url": self.base_url(), "username": c.username, "password": c.password})
            }
            EcAuth::ApiToken => json!({"base_url": self.base_url(), "api_token": c.api_token}),
            EcAuth::Zoho => json!({
                "base_url": self.base_url(), "client_id": c.client_id, "client_secret": c.client_secret,
                "refresh_token": c.refresh_token, "accounts_url": self.base_url()
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.shared.lock())
    }

    /// Computers in the fleet.
    pub fn device_count(&self) -> usize {
        self.with(|g| g.devices.len())
    }

    /// A copy of computer `i` (by position).
    pub fn device(&self, i: usize) -> EcDevice {
        self.with(|g| g.devices[i].clone())
    }

    /// The `resource_id` of computer `i`.
    pub fn resource_id(&self, i: usize) -> u64 {
        self.with(|g| {
            g.devices[i].fields["resource_id"]
                .as_u64()
                .unwrap_or_default()
        })
    }

    /// The normalised serial of computer `i` (`None` for none or a placeholder).
    pub fn serial(&self, i: usize) -> Option<String> {
        self.with(|g| {
            let s = g.devices[i]
                .detail
                .pointer("/computer_hardware_summary/serial_number")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            assetsync::normalize::serial(&s)
        })
    }

    /// Advance the server clock and mark computer `i` as freshly scanned.
    fn bump_scan(g: &mut Inner, i: usize) {
        g.clock_ms += 3_600_000;
        let t = g.clock_ms;
        let f = &mut g.devices[i].fields;
        f.insert("last_successful_scan".into(), json!(t));
        f.insert("agent_last_contact_time".into(), json!(t));
        f.insert("computer_status_update_time".into(), json!(t));
    }

    /// A new OS version, as an inventory scan reports it (list and detail; the scan time moves).
    pub fn set_os_version(&self, i: usize, v: &str) {
        self.with(|g| {
            g.devices[i].fields.insert("os_version".into(), json!(v));
            g.devices[i].detail["computer_os_summary"]["os_version"] = json!(v);
            Self::bump_scan(g, i);
        })
    }

    /// A new model in the detail summary, as a rescan reports it.
    pub fn set_model(&self, i: usize, v: &str) {
        self.with(|g| {
            g.devices[i].detail["computer_hardware_summary"]["device_model"] = json!(v);
            Self::bump_scan(g, i);
        })
    }

    /// A new serial number in the detail summary (a board swap), as a rescan reports it.
    pub fn set_detail_serial(&self, i: usize, v: &str) {
        self.with(|g| {
            g.devices[i].detail["computer_hardware_summary"]["serial_number"] = json!(v);
            Self::bump_scan(g, i);
        })
    }

    /// Set a list field without a rescan.
    pub fn set_field(&self, i: usize, name: &str, v: Value) {
        self.with(|g| {
            g.devices[i].fields.insert(name.into(), v);
        })
    }

    /// Remove a list field (e.g. `managedcomputerextn.service_tag`).
    pub fn remove_field(&self, i: usize, name: &str) {
        self.with(|g| {
            g.devices[i].fields.remove(name);
        })
    }

    /// A rescan without changes (the scan time moves).
    pub fn rescan(&self, i: usize) {
        self.with(|g| Self::bump_scan(g, i))
    }

    /// Add a computer (appended); returns its position.
    pub fn add_device(&self) -> usize {
        let (seed, n) = (self.shared.cfg.seed, self.shared.cfg.devices);
        self.with(|g| {
            let d = make_device(seed, g.next_index, n.max(g.next_index + 1));
            g.next_index += 1;
            g.devices.push(d);
            g.devices.len() - 1
        })
    }

    /// Remove computer `i` (later positions shift down).
    pub fn remove_device(&self, i: usize) {
        self.with(|g| {
            g.devices.remove(i);
        })
    }

    pub fn set_ignore_page(&self, on: bool) {
        self.with(|g| g.ignore_page = on)
    }

    pub fn set_two_factor(&self, on: bool) {
        self.with(|g| g.two_factor = on)
    }

    pub fn set_rate_limit(&self, rl: Option<RateLimitCfg>, style: LockStyle) {
        self.with(|g| {
            g.rate_limit = rl;
            g.lock_style = style;
            g.windows.clear();
        })
    }

    /// Detail summary requests served (faulted ones included).
    pub fn detail_requests(&self) -> u64 {
        self.control().requests_to(PATH_DETAIL)
    }

    /// List page requests served (both listings).
    pub fn list_requests(&self) -> u64 {
        self.control().requests_to(PATH_LIST) + self.control().requests_to(PATH_SCAN)
    }

    /// Requests answered with the rate-limit lock.
    pub fn lock_answers(&self) -> u64 {
        self.with(|g| g.lock_answers)
    }

    /// Access tokens Zoho issued.
    pub fn zoho_refreshes(&self) -> u64 {
        self.with(|g| g.zoho_refreshes)
    }

    /// Zoho token requests refused (bad credentials or over the cap).
    pub fn zoho_refusals(&self) -> u64 {
        self.with(|g| g.zoho_refusals)
    }

    /// Login requests (successful or not).
    pub fn logins(&self) -> u64 {
        self.with(|g| g.logins)
    }

    /// Every request the vendor saw: data, login and token requests.
    pub fn total_requests(&self) -> u64 {
        self.control().data_requests() + self.control().token_requests()
    }
}
