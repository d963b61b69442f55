//! JumpCloud simulator: v1 `GET /api/systems` and `GET /api/systemusers`, v2
//! `GET /api/v2/systeminsights/system_info`, as vendor-apis.md §2 and JumpCloud's docs describe.
//!
//! - Auth: `x-api-key` (wrong or missing → 401 `{"error":"Unauthorized","message":"Unauthorized:
//!   api key user not found"}`), or `Authorization: Bearer <token>` from a service account:
//!   `POST /oauth2/token` (standing in for `admin-oauth.id.jumpcloud.com/oauth2/token`) takes
//!   `Authorization: Basic base64(client_id:client_secret)` and the form
//!   `grant_type=client_credentials&scope=api`, and answers `{"access_token": "ory_at_…",
//!   "token_type": "bearer", "expires_in": 3599, "scope": "api"}`; wrong client credentials are
//!   401 `{"error": "invalid_client", …}` (the Ory-style OAuth error body). Tokens live an hour
//!   (tests may shorten it); an expired one is 401. In multi-tenant mode a missing `x-org-id` → 401 `{"message":
//!   "Unauthorized: no organization selected"}`; a malformed one → 400; an unknown one → 404.
//!   `Fault::ExpireTokens` resets the API key (the old one stops working, as a reset does).
//! - v1 lists: `limit` (default 10, above 100 → 400 `request parameter "limit" exceeds maximum
//!   value of 100`), `skip`, `sort` (space/comma separated, `-` descending), `fields` (projection,
//!   `_id` always kept), `filter` (`filter[n]` → AND, `filter[or][n]` → OR, as the v1 reference
//!   documents; a plain `filter` is one filter, and when repeated only the last counts, as a
//!   scalar query parameter reads) with
//!   `$eq $ne $in $nin $gt $gte $lt $lte $sw` (`|`-separated terms, `\|` escapes), envelope
//!   `{"totalCount", "results"}` where `totalCount` counts the filtered set.
//! - v2 System Insights: bare array, `limit` (default 10, max 10000), `skip`, `filter` with v2
//!   operators (no `$`) on `system_id` / `cpu_subtype` only.
//! - Fleet: systems with and without serials (absent, empty, "To be filled by O.E.M."; some only
//!   in System Insights), users ACTIVATED / SUSPENDED / STAGED (some legacy ones with only the
//!   `suspended` flag), departments including Finance, managers as user ids, devices sharing a
//!   primary user, primary users that were deleted, unicode names. Person `i` is
//!   [`fleet::person`]`(i)`, so emails match the other simulators.

#![allow(clippy::result_large_err)] // handlers return ready-made error responses

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::{fault_response, fleet, serve, Control, Fault, SimHandle};

/// How a simulated tenant is built.
#[derive(Debug, Clone)]
pub struct JumpCloudConfig {
    pub seed: u64,
    pub systems: usize,
    pub users: usize,
    pub api_key: String,
    /// The organization id (24 hex).
    pub org_id: String,
    /// Multi-tenant (MTP) admin: every request must carry `x-org-id`.
    pub multi_tenant: bool,
    /// Serve System Insights (`false`: the v2 route answers 403 as for a tenant without it).
    pub insights: bool,
    /// The service account's OAuth client credentials.
    pub client_id: String,
    pub client_secret: String,
}

impl Default for JumpCloudConfig {
    fn default() -> Self {
        JumpCloudConfig {
            seed: 42,
            systems: 250,
            users: 200,
            api_key: "jcsim-0123456789abcdef0123456789abcdef01234567".into(),
            org_id: "5f9e8d7c6b5a4f3e2d1c0b9a".into(),
            multi_tenant: false,
            insights: true,
            client_id: "b3f6c1d2-7e8a-4c5b-9d0e-1f2a3b4c5d6e".into(),
            client_secret: "jcsim-sa-secret-Qm9ndXNTZWNyZXQ".into(),
        }
    }
}

struct Inner {
    seed: u64,
    systems: Vec<Value>,
    users: Vec<Value>,
    /// `system_id` → `system_info` row.
    system_info: HashMap<String, Value>,
    api_key: String,
    client_id: String,
    client_secret: String,
    org_id: String,
    multi_tenant: bool,
    insights: bool,
    /// (path, raw query) of data requests, most recent last (bounded).
    queries: Vec<(String, String)>,
    next_system: usize,
    key_resets: u64,
}

#[derive(Clone)]
struct App {
    inner: Arc<Mutex<Inner>>,
    control: Control,
}

/// A running JumpCloud simulator.
pub struct JumpCloudSim {
    pub handle: SimHandle,
    inner: Arc<Mutex<Inner>>,
}

const DEPARTMENTS: &[&str] = &[
    "Finance",
    "Engineering",
    "Sales",
    "IT",
    "Operations",
    "Marketing",
    "Human Resources",
    "Legal",
];
const TITLES: &[&str] = &[
    "Engineer",
    "Analyst",
    "Manager",
    "Controller",
    "Designer",
    "Administrator",
    "Consultant",
];
const LOCATIONS: &[&str] = &[
    "Berlin",
    "London",
    "New York",
    "São Paulo",
    "Tokyo",
    "Zürich",
];

/// Whether `i` is a multiple of `n` (the fleet's "every n-th device" rule).
fn every(i: usize, n: usize) -> bool {
    i.checked_rem(n) == Some(0)
}

/// The `_id` of user `i`.
pub fn user_id(seed: u64, i: usize) -> String {
    fleet::hex_id(seed ^ 0x00A1_1CE5, i, 24)
}

/// The `_id` of system `i`.
pub fn system_id(seed: u64, i: usize) -> String {
    fleet::hex_id(seed ^ 0x5E75_0000, i, 24)
}

/// What `primarySystemUser` of system `i` points at: `Some(Some(user index))`, a deleted user
/// (`Some(None)`), or nobody (`None`).
pub fn primary_user(i: usize, users: usize) -> Option<Option<usize>> {
    if users == 0 || i % 10 == 4 || i % 31 == 13 {
        None
    } else if i % 97 == 50 {
        Some(None)
    } else {
        Some(Some((i / 2) % users))
    }
}

fn user_record(seed: u64, i: usize, n: usize, org: &str) -> Value {
    let p = fleet::person(i);
    let email = if every(i, 13) {
        // Some directories keep mixed case; the register lower-cases.
        let (local, domain) = p.email.split_once('@').unwrap_or((&p.email, "example.com"));
        format!(
            "{}{}@{}",
            local[..1].to_uppercase(),
            &local[1..],
            domain.to_uppercase()
        )
    } else {
        p.email.clone()
    };
    let (state, activated, suspended) = if i % 17 == 5 {
        ("SUSPENDED", true, true)
    } else if i % 23 == 7 {
        ("STAGED", false, false)
    } else {
        ("ACTIVATED", true, false)
    };
    let manager = if every(i, 10) || n < 2 {
        None
    } else if every(i, 2) {
        Some((i / 10) * 10)
    } else {
        Some(((i / 10) * 10 + 537) % n)
    }
    .filter(|m| *m != i);
    let location = *fleet::pick(seed, i, 3, LOCATIONS);
    let mut u = json!({
        "_id": user_id(seed, i),
        "username": p.username,
        "email": email,
        "firstname": p.first,
        "lastname": p.last,
        "displayname": format!("{} {}", p.first, p.last),
        "state": state,
        "activated": activated,
        "suspended": suspended,
        "account_locked": false,
        "employeeIdentifier": format!("E{i:05}"),
        "department": *fleet::pick(seed, i, 1, DEPARTMENTS),
        "jobTitle": *fleet::pick(seed, i, 2, TITLES),
        "location": location,
        "addresses": [{"type": "work", "locality": location, "country": "XX"}],
        "created": format!("2021-{:02}-{:02}T10:00:00.000Z", 1 + i % 12, 1 + i % 28),
        "organization": org,
    });
    let o = u.as_object_mut().expect("object");
    if let Some(m) = manager {
        o.insert("manager".into(), json!(user_id(seed, m)));
    }
    if i % 29 == 11 {
        // A legacy record: no `state`, only the flags.
        o.remove("state");
        if every(i, 2) {
            o.insert("suspended".into(), json!(true));
        }
    }
    if i % 19 == 3 {
        o.remove("location");
    }
    u
}

fn system_record(seed: u64, i: usize, users: usize, org: &str) -> (Value, Option<Value>) {
    let kind = fleet::num(seed, i, 11, 10);
    let (os, family, version, arch, prefix) = match kind {
        0..=4 => (
            "Mac OS X",
            "darwin",
            *fleet::pick(seed, i, 12, &["13.6.7", "14.5", "15.1"]),
            "arm64",
            "C02",
        ),
        5..=8 => (
            "Windows",
            "windows",
            *fleet::pick(seed, i, 13, &["10 Pro", "11 Pro", "11 Enterprise"]),
            "x64",
            "PF",
        ),
        _ => ("Ubuntu", "linux", "22.04", "x86_64", "LX"),
    };
    let (vendor, model) = match kind {
        0..=4 => (
            "Apple Inc.",
            *fleet::pick(
                seed,
                i,
                14,
                &["MacBookPro18,3", "MacBookAir10,1", "Mac14,2", "iMac21,1"],
            ),
        ),
        5..=8 => *fleet::pick(
            seed,
            i,
            15,
            &[
                ("LENOVO", "20XW0055GE"),
                ("Dell Inc.", "Latitude 5440"),
                ("HP", "HP EliteBook 840 G8"),
            ],
        ),
        _ => ("Dell Inc.", "OptiPlex 7090"),
    };
    let serial = fleet::serial(prefix, i, 12);
    let p = fleet::person(i % 97);
    let display = match i % 6 {
        0 => format!(
            "{}'s {}",
            p.first,
            if kind <= 4 { "MacBook" } else { "Laptop" }
        ),
        _ => format!(
            "{}-{:04}",
            if kind <= 4 {
                "MBP"
            } else if kind <= 8 {
                "WIN"
            } else {
                "LNX"
            },
            i
        ),
    };
    let minutes = (i as i64) * 7;
    let last = chrono::DateTime::parse_from_rfc3339("2024-06-20T09:14:03.512Z")
        .map(|d| d - chrono::Duration::minutes(minutes))
        .ok();
    let last = last
        .map(|d| {
            d.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string()
        })
        .unwrap_or_default();
    let nics = if i % 25 == 11 {
        json!([])
    } else {
        json!([
            {"name": "lo0", "address": "127.0.0.1", "family": "IPv4", "internal": true},
            {"name": "en0", "address": format!("fe80::{:x}", i + 1), "family": "IPv6", "internal": false},
            {"name": "en0", "address": format!("10.{}.{}.{}", (i / 65536) % 256, (i / 256) % 256, i % 256), "family": "IPv4", "internal": false}
        ])
    };
    let mut s = json!({
        "_id": system_id(seed, i),
        "displayName": display,
        "hostname": format!("host-{i:05}.corp.example"),
        "os": os,
        "osFamily": family,
        "version": version,
        "arch": arch,
        "serialNumber": serial,
        "hwVendor": vendor,
        "agentVersion": "1.163.0",
        "active": !every(i, 4),
        "created": "2023-11-02T15:40:11.000Z",
        "lastContact": last,
        "networkInterfaces": nics,
        "organization": org,
        "fde": {"active": !every(i, 3), "keyPresent": !every(i, 3)},
    });
    let o = s.as_object_mut().expect("object");
    match primary_user(i, users) {
        None if i % 31 == 13 => {}
        None => {
            o.insert("primarySystemUser".into(), json!({"id": null}));
        }
        Some(None) => {
            o.insert(
                "primarySystemUser".into(),
                json!({"id": fleet::hex_id(seed ^ 0xDEAD, i, 24)}),
            );
        }
        Some(Some(u)) => {
            o.insert("primarySystemUser".into(), json!({"id": user_id(seed, u)}));
        }
    }
    let mut info_serial = serial.clone();
    match i % 50 {
        3 => {
            // No serial on the v1 record; System Insights has one (except for every other one).
            o.remove("serialNumber");
            if i % 100 == 53 {
                info_serial = String::new();
            }
        }
        7 => {
            o.insert("serialNumber".into(), json!("To be filled by O.E.M."));
            info_serial = "To be filled by O.E.M.".into();
        }
        9 => {
            o.insert("serialNumber".into(), json!(""));
            info_serial = String::new();
        }
        _ => {}
    }
    let info = (i % 20 != 19).then(|| {
        json!({
            "system_id": system_id(seed, i),
            "collection_time": "2024-06-20T09:00:00.000Z",
            "computer_name": format!("host-{i:05}"),
            "hostname": format!("host-{i:05}.corp.example"),
            "hardware_model": model,
            "hardware_serial": info_serial,
            "hardware_vendor": vendor,
            "hardware_version": "",
            "cpu_brand": if kind <= 4 { "Apple M1 Pro" } else { "Intel(R) Core(TM) i7-1185G7" },
            "cpu_subtype": if kind <= 4 { "ARM64E" } else { "Intel x86-64h Haswell" },
            "cpu_type": arch,
            "physical_memory": "17179869184",
            "uuid": fleet::uuid(seed, i),
        })
    });
    (s, info)
}

impl JumpCloudSim {
    /// Build the fleet and start serving on a loopback port.
    pub async fn start(cfg: JumpCloudConfig) -> anyhow::Result<Self> {
        let mut systems = Vec::with_capacity(cfg.systems);
        let mut system_info = HashMap::new();
        for i in 0..cfg.systems {
            let (s, info) = system_record(cfg.seed, i, cfg.users, &cfg.org_id);
            if let Some(info) = info {
                system_info.insert(system_id(cfg.seed, i), info);
            }
            systems.push(s);
        }
        let users = (0..cfg.users)
            .map(|i| user_record(cfg.seed, i, cfg.users, &cfg.org_id))
            .collect();
        let inner = Arc::new(Mutex::new(Inner {
            seed: cfg.seed,
            systems,
            users,
            system_info,
            api_key: cfg.api_key.clone(),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            org_id: cfg.org_id.clone(),
            multi_tenant: cfg.multi_tenant,
            insights: cfg.insights,
            queries: Vec::new(),
            next_system: cfg.systems,
            key_resets: 0,
        }));
        let control = Control::default();
        let app = App {
            inner: inner.clone(),
            control: control.clone(),
        };
        let router = Router::new()
            .route("/api/systems", get(list_systems))
            .route("/api/systemusers", get(list_users))
            .route("/api/v2/systeminsights/system_info", get(system_info_route))
            .route("/oauth2/token", axum::routing::post(oauth_token))
            .with_state(app);
        let handle = serve(router, control).await?;
        Ok(JumpCloudSim { handle, inner })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fault and counter handle.
    pub fn control(&self) -> &Control {
        &self.handle.control
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> &str {
        &self.handle.base_url
    }

    /// The secret pointing at this simulator (with `org_id` in multi-tenant mode).
    pub fn secret(&self) -> Value {
        let s = self.lock();
        let mut v = json!({"api_key": s.api_key, "base_url": self.handle.base_url});
        if s.multi_tenant {
            v["org_id"] = json!(s.org_id);
        }
        v
    }

    /// A secret for the service account (client credentials) instead of the API key.
    pub fn service_account_secret(&self) -> Value {
        let s = self.lock();
        let mut v = json!({
            "client_id": s.client_id,
            "client_secret": s.client_secret,
            "base_url": self.handle.base_url,
            "token_url": format!("{}/oauth2/token", self.handle.base_url),
        });
        if s.multi_tenant {
            v["org_id"] = json!(s.org_id);
        }
        v
    }

    /// The organization id.
    pub fn org_id(&self) -> String {
        self.lock().org_id.clone()
    }

    /// Switch multi-tenant (MTP) mode.
    pub fn set_multi_tenant(&self, on: bool) {
        self.lock().multi_tenant = on;
    }

    /// Serve System Insights or not (403).
    pub fn set_insights(&self, on: bool) {
        self.lock().insights = on;
    }

    /// Reset the API key (the old one is refused from now on); returns the new key.
    pub fn reset_api_key(&self) -> String {
        let mut s = self.lock();
        reset_key(&mut s)
    }

    /// Make `key` the valid API key (e.g. put back the one the secret holds).
    pub fn set_api_key(&self, key: &str) {
        self.lock().api_key = key.to_string();
    }

    /// How often the key was reset (also by `Fault::ExpireTokens`).
    pub fn key_resets(&self) -> u64 {
        self.lock().key_resets
    }

    pub fn device_count(&self) -> usize {
        self.lock().systems.len()
    }

    pub fn user_count(&self) -> usize {
        self.lock().users.len()
    }

    /// System `i` (by position), raw.
    pub fn system(&self, i: usize) -> Value {
        self.lock().systems[i].clone()
    }

    /// User `i` (by position), raw.
    pub fn user(&self, i: usize) -> Value {
        self.lock().users[i].clone()
    }

    /// Every system, raw.
    pub fn systems(&self) -> Vec<Value> {
        self.lock().systems.clone()
    }

    /// Every user, raw.
    pub fn users(&self) -> Vec<Value> {
        self.lock().users.clone()
    }

    /// The lower-cased email of system `i`'s primary user, if it has a live one.
    pub fn primary_email(&self, i: usize) -> Option<String> {
        let s = self.lock();
        let uid = s
            .systems
            .get(i)?
            .get("primarySystemUser")?
            .get("id")?
            .as_str()?
            .to_string();
        s.users
            .iter()
            .find(|u| u["_id"] == uid.as_str())
            .and_then(|u| u["email"].as_str())
            .map(|e| e.to_lowercase())
    }

    /// The System Insights model of system `i`, if it has a row.
    pub fn model(&self, i: usize) -> Option<String> {
        let s = self.lock();
        let id = s.systems.get(i)?.get("_id")?.as_str()?.to_string();
        s.system_info
            .get(&id)?
            .get("hardware_model")?
            .as_str()
            .map(str::to_string)
    }

    pub fn set_os_version(&self, i: usize, v: &str) {
        self.set_field(i, "version", json!(v));
    }

    /// Set a top-level field of system `i`.
    pub fn set_field(&self, i: usize, name: &str, v: Value) {
        if let Some(o) = self
            .lock()
            .systems
            .get_mut(i)
            .and_then(Value::as_object_mut)
        {
            o.insert(name.into(), v);
        }
    }

    /// Remove a top-level field of system `i`.
    pub fn remove_field(&self, i: usize, name: &str) {
        if let Some(o) = self
            .lock()
            .systems
            .get_mut(i)
            .and_then(Value::as_object_mut)
        {
            o.remove(name);
        }
    }

    /// Set a top-level field of user `i`.
    pub fn set_user_field(&self, i: usize, name: &str, v: Value) {
        if let Some(o) = self.lock().users.get_mut(i).and_then(Value::as_object_mut) {
            o.insert(name.into(), v);
        }
    }

    /// Add a system generated like the others; returns its position.
    pub fn add_device(&self) -> usize {
        let mut s = self.lock();
        let i = s.next_system;
        s.next_system += 1;
        let (sys, info) = system_record(s.seed, i, s.users.len(), &s.org_id.clone());
        if let Some(info) = info {
            let id = system_id(s.seed, i);
            s.system_info.insert(id, info);
        }
        s.systems.push(sys);
        s.systems.len() - 1
    }

    /// Remove the system at position `i`.
    pub fn remove_device(&self, i: usize) -> Value {
        let mut s = self.lock();
        let v = s.systems.remove(i);
        if let Some(id) = v.get("_id").and_then(Value::as_str) {
            s.system_info.remove(id);
        }
        v
    }

    /// The (path, raw query) of data requests so far (the last 10,000).
    pub fn queries(&self) -> Vec<(String, String)> {
        self.lock().queries.clone()
    }

    /// Data requests served so far (all routes, faults included).
    pub fn requests(&self) -> u64 {
        self.handle.control.data_requests()
    }
}

fn reset_key(s: &mut Inner) -> String {
    s.key_resets += 1;
    s.api_key = format!(
        "jcsim-reset{}-{}",
        s.key_resets,
        fleet::hex_id(s.seed ^ s.key_resets, 0, 32)
    );
    s.api_key.clone()
}

fn error(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// Faults, counting, auth and org checks shared by every route.
async fn admit(app: &App, path: &str, headers: &HeaderMap, query: &str) -> Result<(), Response> {
    let fault = app.control.on_data_request(path);
    {
        let mut s = app.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.queries.len() >= 10_000 {
            s.queries.remove(0);
        }
        s.queries.push((path.to_string(), query.to_string()));
        if fault == Some(Fault::ExpireTokens) {
            reset_key(&mut s);
        }
    }
    if let Some(r) = fault_response(fault).await {
        return Err(r);
    }
    let s = app.inner.lock().unwrap_or_else(|p| p.into_inner());
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bearer_ok = super::bearer(headers).is_some_and(|t| app.control.token_valid(&t));
    if !bearer_ok && (key.is_empty() || key != s.api_key) {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            json!({"error": "Unauthorized", "message": "Unauthorized: api key user not found"}),
        ));
    }
    match headers
        .get("x-org-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        None | Some("") if s.multi_tenant => Err(error(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Unauthorized: no organization selected"}),
        )),
        None | Some("") => Ok(()),
        Some(o) if o.len() != 24 || !o.chars().all(|c| c.is_ascii_hexdigit()) => Err(error(
            StatusCode::BAD_REQUEST,
            json!({"message": "Bad Request: invalid organization id in x-org-id"}),
        )),
        Some(o) if o != s.org_id => Err(error(
            StatusCode::NOT_FOUND,
            json!({"message": "Not Found: organization not found"}),
        )),
        Some(_) => Ok(()),
    }
}

/// `POST /oauth2/token`: client credentials in HTTP Basic, `grant_type=client_credentials`.
async fn oauth_token(
    State(app): State<App>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    use base64::Engine;
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let basic = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let (id, secret) = {
        let s = app.inner.lock().unwrap_or_else(|p| p.into_inner());
        (s.client_id.clone(), s.client_secret.clone())
    };
    if basic.as_deref() != Some(format!("{id}:{secret}").as_str()) {
        app.control.count_token_request();
        return error(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client", "error_description": "Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method)."}),
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        app.control.count_token_request();
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "unsupported_grant_type", "error_description": "The authorization grant type is not supported by the authorization server."}),
        );
    }
    let (tok, life) = app
        .control
        .issue_token("ory_at_", std::time::Duration::from_secs(3600));
    Json(json!({
        "access_token": tok,
        "token_type": "bearer",
        "expires_in": life.as_secs().saturating_sub(1),
        "scope": form.get("scope").cloned().unwrap_or_else(|| "api".into()),
    }))
    .into_response()
}

fn bad_request(msg: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        json!({"message": format!("Bad Request: {msg}")}),
    )
}

/// A record's field (dotted path) as a string, the way the API compares filter values.
fn field_str(v: &Value, path: &str) -> Option<String> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = cur.get(seg)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Split `a|b\|c` into terms (`\|` is a literal bar).
fn terms(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                if let Some(last) = out.last_mut() {
                    last.push('|');
                }
            }
            '|' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out.into_iter().map(|t| t.trim().to_string()).collect()
}

fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.cmp(b),
    }
}

/// One filter `field:op:value`; `dollar` for v1 (`$eq`) or v2 (`eq`) operators.
struct Filter {
    field: String,
    op: String,
    value: String,
}

fn parse_filter(raw: &str, dollar: bool) -> Result<Filter, String> {
    let mut parts = raw.splitn(3, ':');
    let field = parts.next().unwrap_or("").trim().to_string();
    let op = parts
        .next()
        .ok_or_else(|| format!("invalid filter {raw:?}"))?
        .trim();
    let value = parts
        .next()
        .ok_or_else(|| format!("invalid filter {raw:?}"))?
        .to_string();
    let op = if dollar {
        op.strip_prefix('$')
            .ok_or_else(|| format!("invalid filter operator {op:?} (v1 operators start with $)"))?
    } else {
        if op.starts_with('$') {
            return Err(format!(
                "invalid filter operator {op:?} (v2 operators have no $)"
            ));
        }
        op
    };
    let known: &[&str] = if dollar {
        &["eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "sw"]
    } else {
        &["eq", "ne", "in", "gt", "ge", "lt", "le", "search"]
    };
    if field.is_empty() || !known.contains(&op) {
        return Err(format!("invalid filter {raw:?}"));
    }
    Ok(Filter {
        field,
        op: op.to_string(),
        value,
    })
}

impl Filter {
    fn matches(&self, rec: &Value) -> bool {
        let v = field_str(rec, &self.field);
        let cmp = |pred: fn(std::cmp::Ordering) -> bool| {
            v.as_deref().is_some_and(|v| pred(compare(v, &self.value)))
        };
        match self.op.as_str() {
            "eq" => v.as_deref() == Some(self.value.as_str()),
            "ne" => v.as_deref() != Some(self.value.as_str()),
            "in" => v.is_some_and(|v| terms(&self.value).contains(&v)),
            "nin" => !v.is_some_and(|v| terms(&self.value).contains(&v)),
            "sw" => v.is_some_and(|v| terms(&self.value).iter().any(|t| v.starts_with(t.as_str()))),
            "search" => v.is_some_and(|v| v.to_lowercase().contains(&self.value.to_lowercase())),
            "gt" => cmp(|o| o.is_gt()),
            "gte" | "ge" => cmp(|o| o.is_ge()),
            "lt" => cmp(|o| o.is_lt()),
            "lte" | "le" => cmp(|o| o.is_le()),
            _ => false,
        }
    }
}

struct ListParams {
    limit: usize,
    skip: usize,
    sort: Vec<(String, bool)>,
    fields: Vec<String>,
    and: Vec<Filter>,
    or: Vec<Filter>,
}

fn parse_number(
    pairs: &[(String, String)],
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, Response> {
    match pairs.iter().rev().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, v)) => {
            let n: i64 = v.trim().parse().map_err(|_| {
                bad_request(&format!("request parameter \"{name}\" must be an integer"))
            })?;
            if n < 0 {
                return Err(bad_request(&format!(
                    "request parameter \"{name}\" must be at least 0"
                )));
            }
            if n as usize > max {
                return Err(bad_request(&format!(
                    "request parameter \"{name}\" exceeds maximum value of {max}"
                )));
            }
            Ok(if n == 0 && name == "limit" {
                default
            } else {
                n as usize
            })
        }
    }
}

fn parse_list(query: &str, max_limit: usize, dollar: bool) -> Result<ListParams, Response> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let limit = parse_number(&pairs, "limit", 10, max_limit)?;
    let skip = parse_number(&pairs, "skip", 0, usize::MAX)?;
    let split = |v: &str| {
        v.split([' ', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let sort = pairs
        .iter()
        .filter(|(k, _)| k == "sort")
        .flat_map(|(_, v)| split(v))
        .map(|f| match f.strip_prefix('-') {
            Some(n) => (n.to_string(), true),
            None => (f, false),
        })
        .collect();
    let fields = pairs
        .iter()
        .filter(|(k, _)| k == "fields")
        .flat_map(|(_, v)| split(v))
        .collect();
    let (mut and, mut or) = (Vec::new(), Vec::new());
    // v1: a plain `filter` is a scalar (the last one wins); several are sent indexed.
    let last_plain = pairs.iter().rposition(|(k, _)| k == "filter");
    for (n, (k, v)) in pairs.iter().enumerate() {
        if dollar && k == "filter" && Some(n) != last_plain {
            continue;
        }
        let target = if k == "filter"
            || (k.starts_with("filter[") && k[7..].trim_end_matches(']').parse::<u32>().is_ok())
        {
            &mut and
        } else if k.starts_with("filter[or][") {
            &mut or
        } else {
            continue;
        };
        // v2 also accepts several comma-separated filters in one parameter; v1 does not split.
        let raws: Vec<&str> = if dollar {
            vec![v.as_str()]
        } else {
            v.split(',').collect()
        };
        for raw in raws {
            target.push(parse_filter(raw.trim(), dollar).map_err(|m| bad_request(&m))?);
        }
    }
    Ok(ListParams {
        limit,
        skip,
        sort,
        fields,
        and,
        or,
    })
}

fn sort_key_cmp(a: &Value, b: &Value, sort: &[(String, bool)]) -> std::cmp::Ordering {
    for (field, desc) in sort {
        let (x, y) = (field_str(a, field), field_str(b, field));
        let o = match (x, y) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.cmp(&y),
        };
        let o = if *desc { o.reverse() } else { o };
        if o.is_ne() {
            return o;
        }
    }
    std::cmp::Ordering::Equal
}

fn select(records: &[Value], p: &ListParams) -> (usize, Vec<Value>) {
    let mut hits: Vec<&Value> = records
        .iter()
        .filter(|r| {
            p.and.iter().all(|f| f.matches(r))
                && (p.or.is_empty() || p.or.iter().any(|f| f.matches(r)))
        })
        .collect();
    if !p.sort.is_empty() {
        hits.sort_by(|a, b| sort_key_cmp(a, b, &p.sort));
    }
    let total = hits.len();
    let page = hits
        .into_iter()
        .skip(p.skip)
        .take(p.limit)
        .map(|r| {
            if p.fields.is_empty() {
                return r.clone();
            }
            let mut o = Map::new();
            if let Some(id) = r.get("_id") {
                o.insert("_id".into(), id.clone());
            }
            for f in &p.fields {
                if let Some(v) = r.get(f) {
                    o.insert(f.clone(), v.clone());
                }
            }
            Value::Object(o)
        })
        .collect();
    (total, page)
}

async fn v1_list(
    app: App,
    path: &str,
    headers: HeaderMap,
    query: Option<String>,
    users: bool,
) -> Response {
    let query = query.unwrap_or_default();
    if let Err(r) = admit(&app, path, &headers, &query).await {
        return r;
    }
    let p = match parse_list(&query, 100, true) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let s = app.inner.lock().unwrap_or_else(|p| p.into_inner());
    let (total, results) = select(if users { &s.users } else { &s.systems }, &p);
    Json(json!({"totalCount": total, "results": results})).into_response()
}

async fn list_systems(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    v1_list(app, "/api/systems", headers, q, false).await
}

async fn list_users(State(app): State<App>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    v1_list(app, "/api/systemusers", headers, q, true).await
}

async fn system_info_route(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let path = "/api/v2/systeminsights/system_info";
    let query = q.unwrap_or_default();
    if let Err(r) = admit(&app, path, &headers, &query).await {
        return r;
    }
    let p = match parse_list(&query, 10_000, false) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Some(f) = p
        .and
        .iter()
        .chain(&p.or)
        .find(|f| f.field != "system_id" && f.field != "cpu_subtype")
    {
        return bad_request(&format!(
            "invalid filter field {:?}: valid filter fields are system_id and cpu_subtype",
            f.field
        ));
    }
    let s = app.inner.lock().unwrap_or_else(|p| p.into_inner());
    if !s.insights {
        return error(
            StatusCode::FORBIDDEN,
            json!({"message": "Forbidden: System Insights is not enabled for this organization"}),
        );
    }
    // Rows in the order of the systems they describe.
    let rows: Vec<Value> = s
        .systems
        .iter()
        .filter_map(|sys| sys.get("_id").and_then(Value::as_str))
        .filter_map(|id| s.system_info.get(id).cloned())
        .collect();
    let (_, page) = select(&rows, &p);
    Json(Value::Array(page)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_terms() {
        assert_eq!(
            terms("Finance|IT|Shipping & Receiving"),
            vec!["Finance", "IT", "Shipping & Receiving"]
        );
        assert_eq!(terms("Finance \\| Sales|IT"), vec!["Finance | Sales", "IT"]);
        let rec = json!({"department": "Finance", "active": true, "n": 5});
        assert!(parse_filter("department:$eq:Finance", true)
            .unwrap()
            .matches(&rec));
        assert!(parse_filter("department:$in:IT|Finance", true)
            .unwrap()
            .matches(&rec));
        assert!(!parse_filter("department:$nin:IT|Finance", true)
            .unwrap()
            .matches(&rec));
        assert!(parse_filter("active:$eq:true", true).unwrap().matches(&rec));
        assert!(parse_filter("n:$gte:5", true).unwrap().matches(&rec));
        assert!(parse_filter("department:eq:Finance", true).is_err());
        assert!(parse_filter("department:$eq:Finance", false).is_err());
        assert!(parse_filter("department:in:Finance|IT", false)
            .unwrap()
            .matches(&rec));
    }
}
