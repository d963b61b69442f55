//! Kandji (Iru) simulator, written from the public API docs (vendor-apis.md §5 and the sources it
//! names), not from our connector.
//!
//! - Auth: a static tenant token, `Authorization: Bearer <token>`; anything else is 401
//!   (`{"detail": ...}`). [`KandjiSim::deny`] makes an endpoint answer 403 as a token without that
//!   permission gets. [`KandjiSim::rotate_token`] revokes the token and issues a new one.
//! - `GET /api/v1/devices`: bare JSON array, `limit` (hard upper limit 300: larger values are
//!   clamped, missing/invalid/0 fall back to 300, as DRF's limit/offset paging does), 0-based
//!   `offset`, `ordering=<f>[,<f>]` with `-` for descending over the documented fields (unknown
//!   fields are ignored, as DRF's ordering filter does), and the main documented filters.
//! - `GET /api/v1/devices/{id}/details` and `/apps`; an unknown id is a 404 with an HTML body.
//! - `GET /api/v1/prism/apps`: one row per device × app, `limit` ≤ 300, in one of three envelopes:
//!   [`PrismMode::Published`] (the default) is the body Kandji's API reference publishes for
//!   "Prism: Applications", both paging styles at once: `{"offset": <as sent, else null>, "limit",
//!   "total", "data", "cursor": null}` (MScottBlake/kandji-openapi `PrismApplications200Response`:
//!   `offset`, `limit`, `total`, `data`, `cursor`), paged by `offset`, while a non-empty `cursor`
//!   (which only a cursor-style answer hands out) pages by cursor; [`PrismMode::Cursor`]
//!   `{"data", "cursor"}` (kandji-inc/support `prism_pagination_with_limit_and_cursor_example.py`,
//!   whose first call sends `cursor=` empty) or [`PrismMode::Offset`]
//!   `{"offset", "limit", "total", "data"}` (older docs).
//! - `GET /api/v1/users`: DRF cursor paging, 300 a page, `{"next", "previous", "results"}`; `next` is
//!   an absolute URL on the documented non-API host `<sub>.kandji.io` (`<sub>.eu.kandji.io` in EU),
//!   which does not resolve here: a client that follows the host instead of taking the cursor fails.
//!   Filters `email` (contains), `id`, `integration_id`, `archived`.
//! - Rate limit: 10,000 requests per hour per tenant (configurable window for tests); past it, 429
//!   with Kong's body and, by default, no `Retry-After` (Kandji documents none). Successful answers
//!   carry Kong's `X-RateLimit-Limit-Hour` / `X-RateLimit-Remaining-Hour`, as the Postman examples show.
//! - Faults through [`Control`]: 429 with Retry-After, 5xx, delay, malformed JSON, token expiry
//!   (which for Kandji means revocation: every later call is 401 until [`KandjiSim::rotate_token`]).
//!
//! The fleet: Macs, iPhones, iPads and Apple TVs; devices assigned to people of
//! [`fleet::person`] (so emails match other simulators; several devices share a person; some
//! emails in mixed case), unassigned ones with `"user": ""`, a few without serial or with an OEM
//! placeholder, unicode names and app names.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

use super::{bearer, fault_response, fleet, serve, Control, SimHandle};

/// Which Prism envelope `/prism/apps` answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrismMode {
    /// The published body: `offset`, `limit`, `total`, `data` and `"cursor": null` together.
    Published,
    /// `{"data": [...], "cursor": "..."|null}`.
    Cursor,
    /// `{"offset", "limit", "total", "data"}`.
    Offset,
}

/// An endpoint whose permission a token can lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    DeviceList,
    DeviceDetails,
    DeviceApps,
    Prism,
    Users,
}

/// How a simulator is built.
#[derive(Debug, Clone)]
pub struct KandjiSimConfig {
    pub devices: usize,
    /// People in the directory (`/users`), `fleet::person(0..users)`; devices are assigned from them.
    pub users: usize,
    pub seed: u64,
    pub subdomain: String,
    /// `us` or `eu` (decides the host of the users `next` links).
    pub region: String,
    pub api_token: String,
    /// Requests allowed per `rate_window` (Kandji: 10,000 an hour).
    pub hourly_limit: usize,
    pub rate_window: Duration,
    /// `Retry-After` seconds on the rate-limit 429 (`None`: none, as documented).
    pub rate_retry_after: Option<u64>,
    pub prism_mode: PrismMode,
    /// Apps per Apple device are 1..=this (capped by the catalogue; Windows and Android have none in Prism).
    pub max_apps_per_device: usize,
    /// Added to Prism's `total` (rows the export counts but no page delivers, as when rows vanish
    /// between pages), so a client's check of its count against `total` can be exercised.
    pub prism_total_extra: usize,
}

impl Default for KandjiSimConfig {
    fn default() -> Self {
        KandjiSimConfig {
            devices: 100,
            users: 60,
            seed: 42,
            subdomain: "accuhive".into(),
            region: "us".into(),
            api_token: "3f9c1a7e-54b2-4d8e-a6c0-9b1e2d3f4a5b".into(),
            hourly_limit: 10_000,
            rate_window: Duration::from_secs(3600),
            rate_retry_after: None,
            prism_mode: PrismMode::Published,
            max_apps_per_device: 8,
            prism_total_extra: 0,
        }
    }
}

/// Requests served per endpoint (successful or not, after faults).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub devices: u64,
    pub details: u64,
    pub device_apps: u64,
    pub prism: u64,
    pub users: u64,
    pub unauthorized: u64,
    pub rate_limited: u64,
}

struct SimDevice {
    list: Value,
    mac: String,
    ip: String,
    apps: Vec<Value>,
}

struct Fleet {
    cfg: KandjiSimConfig,
    devices: Vec<SimDevice>,
    users: Vec<Value>,
    next_device: usize,
    next_user: usize,
    token: String,
    token_serial: u64,
    window: VecDeque<Instant>,
    denied: std::collections::HashSet<Perm>,
    counts: Counts,
}

#[derive(Clone)]
struct AppState {
    fleet: Arc<Mutex<Fleet>>,
    control: Control,
}

/// A running Kandji simulator.
pub struct KandjiSim {
    pub handle: SimHandle,
    fleet: Arc<Mutex<Fleet>>,
}

const MAX_LIMIT: usize = 300;
const USERS_PAGE: usize = 300;
const ORDERINGS: &[&str] = &[
    "asset_tag",
    "blueprint_id",
    "device_id",
    "device_name",
    "last_check_in",
    "model",
    "platform",
    "os_version",
    "serial_number",
    "user",
];
const BLUEPRINTS: &[(&str, &str)] = &[
    ("5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d", "Engineering"),
    ("9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a", "Shared iPads"),
    ("3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a9f", "Sales & Support"),
    ("7e6d5c4b-3a29-4180-8f7e-6d5c4b3a2918", "Équipe Paris"),
];
const DEPARTMENTS: &[&str] = &[
    "Engineering",
    "Sales",
    "Support",
    "Finance",
    "Marketing",
    "Operations",
    "Recherche & Développement",
];
const TITLES: &[&str] = &[
    "Engineer",
    "Account Executive",
    "Support Specialist",
    "Analyst",
    "Designer",
    "Manager",
    "Directrice",
];

/// (name, bundle_id, versions, source); an empty bundle id is a package without one.
const MAC_APPS: &[(&str, &str, &[&str], &str)] = &[
    (
        "Safari",
        "com.apple.Safari",
        &["17.5", "18.0", "18.1"],
        "Apple",
    ),
    (
        "Google Chrome",
        "com.google.Chrome",
        &["126.0.6478.127", "131.0.6778.86"],
        "Other",
    ),
    (
        "Slack",
        "com.tinyspeck.slackmacgap",
        &["4.39.95", "4.41.97"],
        "Kandji",
    ),
    ("zoom.us", "us.zoom.xos", &["6.1.1", "6.2.11"], "Kandji"),
    (
        "Microsoft Word",
        "com.microsoft.Word",
        &["16.86", "16.91"],
        "Kandji",
    ),
    (
        "1Password 7",
        "com.agilebits.onepassword7",
        &["7.9.11"],
        "App Store",
    ),
    (
        "Pixelmator Pro",
        "com.pixelmatorteam.pixelmator.x",
        &["3.6.5"],
        "App Store",
    ),
    ("微信", "com.tencent.xinWeChat", &["3.8.8"], "App Store"),
    ("Café ☕ Timer", "", &["1.2", "1.3"], "Other"),
    (
        "Xcode",
        "com.apple.dt.Xcode",
        &["15.4", "16.1"],
        "App Store",
    ),
    (
        "Visual Studio Code",
        "com.microsoft.VSCode",
        &["1.90.2", "1.95.3"],
        "Other",
    ),
    ("Okta Verify", "com.okta.mobile", &["9.22.0"], "Kandji"),
];
const MOBILE_APPS: &[(&str, &str, &[&str], &str)] = &[
    (
        "Slack",
        "com.tinyspeck.chatlyio",
        &["24.06.10", "24.11.20"],
        "App Store",
    ),
    ("Okta Verify", "com.okta.mobile", &["9.22.0"], "App Store"),
    (
        "Microsoft Outlook",
        "com.microsoft.Office.Outlook",
        &["4.2424.0", "4.2446.1"],
        "App Store",
    ),
    (
        "Zoom Workplace",
        "us.zoom.videomeetings",
        &["6.1.0", "6.2.10"],
        "App Store",
    ),
    (
        "WhatsApp",
        "net.whatsapp.WhatsApp",
        &["24.12.79"],
        "App Store",
    ),
    (
        "Notion – notes, docs, tasks",
        "notion.id",
        &["1.48.0"],
        "App Store",
    ),
];
const TV_APPS: &[(&str, &str, &[&str], &str)] =
    &[("Zoom Rooms", "us.zoom.zoomrooms", &["6.1.0"], "App Store")];

fn platform_of(seed: u64, i: usize) -> &'static str {
    match fleet::num(seed, i, 0x91A7, 40) {
        0..=23 => "Mac",
        24..=31 => "iPhone",
        32..=36 => "iPad",
        37 => "AppleTV",
        // Iru also manages Windows and Android once enabled ("polymorphic" list).
        38 => "Windows",
        _ => "Android",
    }
}

fn ts_us(secs: i64, micros: u32) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(secs, micros * 1000)
        .single()
        .unwrap_or_default()
}

/// `2024-07-23T14:11:37.150080Z` (list and Prism).
fn iso(d: chrono::DateTime<Utc>) -> String {
    d.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// `2024-01-26 16:15:36.087016+00:00` (enrollment dates).
fn spaced(d: chrono::DateTime<Utc>) -> String {
    d.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string()
}

fn user_id(seed: u64, j: usize) -> String {
    fleet::uuid(seed ^ 0x5151_5151, j)
}

fn full_name(p: &fleet::Person) -> String {
    format!("{} {}", p.first, p.last)
}

/// The person a device is assigned to, or `None` (unassigned: `"user": ""`).
fn assignee(seed: u64, i: usize, platform: &str, users: usize) -> Option<usize> {
    if users == 0 || platform == "AppleTV" || i % 9 == 4 {
        return None;
    }
    // Every fifth device shares its neighbour's person (a laptop and a phone, say).
    let j = if i % 5 == 1 { i - 1 } else { i };
    let _ = seed;
    Some(j % users)
}

#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` is newer than the workspace's rust-version
fn make_device(seed: u64, i: usize, users: usize, max_apps: usize) -> SimDevice {
    let platform = platform_of(seed, i);
    let (models, oses, prefix): (&[&str], &[&str], &str) = match platform {
        "Mac" => (
            &[
                "MacBook Pro (14-inch, Nov 2023)",
                "MacBook Air (M2, 2022)",
                "MacBook Air (M1, 2020)",
                "Mac mini (2023)",
                "iMac (24-inch, M3, 2023)",
                "Mac Studio (2023)",
            ],
            &["14.5", "14.6.1", "15.1", "13.6.7"],
            "C02",
        ),
        "iPhone" => (
            &["iPhone 15 Pro", "iPhone 14", "iPhone SE (3rd generation)"],
            &["17.5.1", "18.1", "17.6"],
            "F2L",
        ),
        "iPad" => (
            &[
                "iPad (10th generation)",
                "iPad Air (5th generation)",
                "iPad Pro (11-inch) (4th generation)",
            ],
            &["17.5.1", "18.1"],
            "DMP",
        ),
        "Windows" => (
            &[
                "Latitude 7440",
                "ThinkPad X1 Carbon Gen 11",
                "Surface Laptop 5",
            ],
            &["10.0.22631", "10.0.19045"],
            "5CG",
        ),
        "Android" => (&["Pixel 8", "Galaxy S23"], &["14", "13"], "R58"),
        _ => (&["Apple TV 4K (3rd generation)"], &["17.5", "18.0"], "DY3"),
    };
    let model = *fleet::pick(seed, i, 0x30DE, models);
    let os = *fleet::pick(seed, i, 0x0505, oses);
    let serial = if i % 53 == 17 {
        String::new()
    } else if i % 71 == 5 {
        "To be filled by O.E.M.".to_string()
    } else {
        fleet::serial(prefix, i, 12)
    };
    let (bp_id, bp_name) = *fleet::pick(seed, i, 0xB1E, BLUEPRINTS);
    let who = assignee(seed, i, platform, users);
    let user = match who {
        None => Value::String(String::new()),
        Some(j) => {
            let p = fleet::person(j);
            let email = if i % 11 == 0 {
                // Mixed case, as directories sometimes deliver it.
                let mut c = p.email.chars();
                c.next()
                    .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                    .unwrap_or_default()
                    .replace("@example.com", "@Example.com")
            } else {
                p.email.clone()
            };
            json!({"email": email, "name": full_name(&p), "id": user_id(seed, j), "is_archived": false})
        }
    };
    let short = model.split(" (").next().unwrap_or(model);
    let device_name = match who {
        Some(j) => {
            let p = fleet::person(j);
            let apostrophe = if i % 2 == 0 { "'" } else { "’" };
            format!("{}{apostrophe}s {short}", p.first)
        }
        None => match platform {
            "AppleTV" => format!("Salle de réunion « Apple TV » {i}"),
            "iPad" => format!("Front Desk iPad {i}"),
            "iPhone" => format!("Loaner iPhone {i}"),
            "Windows" => format!("KIOSK-{i:04}"),
            "Android" => format!("Scanner {i}"),
            _ => format!("Build Mac {i}"),
        },
    };
    let base = 1_717_200_000i64; // 2024-06-01
    let check_in = ts_us(
        base + (i as i64) * 2221 % 2_000_000,
        (fleet::num(seed, i, 0xC4EC, 1_000_000)) as u32,
    );
    let enrolled = ts_us(
        base - 20_000_000 + (i as i64) * 977 % 10_000_000,
        (fleet::num(seed, i, 0xE4, 1_000_000)) as u32,
    );
    let asset_tag = if i % 3 == 0 {
        String::new()
    } else {
        format!("{}-{:04}", if platform == "Mac" { "MAC" } else { "MOB" }, i)
    };
    let is_mac = platform == "Mac";
    let list = json!({
        "device_id": fleet::uuid(seed, i),
        "device_name": device_name,
        "model": model,
        "serial_number": serial,
        "platform": platform,
        "os_version": os,
        "supplemental_build_version": if is_mac { "23F79" } else { "" },
        "supplemental_os_version_extra": "",
        "last_check_in": iso(check_in),
        "user": user,
        "asset_tag": asset_tag,
        "blueprint_id": bp_id,
        "blueprint_name": bp_name,
        "mdm_enabled": true,
        "agent_installed": is_mac,
        "is_missing": false,
        "is_removed": false,
        "agent_version": if is_mac { "4.6.1 (5301)" } else { "" },
        "first_enrollment": spaced(enrolled),
        "last_enrollment": spaced(enrolled),
        "lost_mode_status": "",
        "tags": if is_mac { json!(["laptop"]) } else { json!([]) },
    });
    // Prism's apps cover macOS, iOS, iPadOS and tvOS only.
    let catalog = match platform {
        "Mac" => MAC_APPS,
        "AppleTV" => TV_APPS,
        "iPhone" | "iPad" => MOBILE_APPS,
        _ => &[],
    };
    SimDevice {
        mac: fleet::mac(seed, i, true),
        ip: format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256),
        apps: make_apps(seed, i, catalog, is_mac, max_apps),
        list,
    }
}

fn make_apps(
    seed: u64,
    i: usize,
    catalog: &[(&str, &str, &[&str], &str)],
    is_mac: bool,
    max_apps: usize,
) -> Vec<Value> {
    let max = catalog.len();
    if max == 0 {
        return Vec::new();
    }
    let n = (1 + fleet::num(seed, i, 0xA995, max_apps.max(1) as u64) as usize).min(max);
    let start = fleet::num(seed, i, 0x5747, max as u64) as usize;
    (0..n)
        .map(|k| {
            let (name, bundle, versions, source) = catalog[(start + k) % max];
            let version = *fleet::pick(seed, i * 31 + k, 0x7E5, versions);
            let mut app = json!({
                "app_id": format!("{}", 10_000 + (start + k) % max),
                "app_name": name,
                "bundle_id": bundle,
                "bundle_size": format!("{}", 1_000_000 + fleet::num(seed, i * 31 + k, 0xB5, 900_000_000)),
                "version": version,
                "source": source,
                "creation_date": "2024-03-12T10:01:02Z",
                "modification_date": "2024-05-30T16:20:00Z",
            });
            if is_mac {
                app["path"] = json!(format!("/Applications/{name}.app"));
                app["signature"] = json!(if source == "Apple" { "Software Signing" } else { "Developer ID Application" });
                app["process"] = json!(name);
            }
            app
        })
        .collect()
}

fn make_user(seed: u64, j: usize) -> Value {
    let p = fleet::person(j);
    let created = ts_us(
        1_690_000_000 + (j as i64) * 3607,
        (j as u32 * 7919) % 1_000_000,
    );
    json!({
        "id": user_id(seed, j),
        "email": p.email,
        "name": full_name(&p),
        "active": j % 23 != 7,
        "archived": j % 31 == 9,
        "department": fleet::pick(seed, j, 0xDE97, DEPARTMENTS),
        "job_title": fleet::pick(seed, j, 0x717E, TITLES),
        "device_count": 0,
        "created_at": iso(created),
        "updated_at": iso(created + chrono::Duration::days(30)),
        "integration": {"id": 1, "name": "Okta", "uuid": fleet::uuid(seed ^ 0x1A7, 0), "type": "okta"},
    })
}

impl Fleet {
    fn lock(m: &Mutex<Fleet>) -> MutexGuard<'_, Fleet> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn html_404() -> Response {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Body::from("<!doctype html>\n<html lang=\"en\"><head><title>Not Found</title></head><body><h1>Not Found</h1><p>The requested resource was not found on this server.</p></body></html>"))
        .unwrap_or_default()
}

/// Faults, then the hourly budget, then the token, then the permission. `Ok(remaining)`.
async fn gate(
    st: &AppState,
    headers: &HeaderMap,
    path: &str,
    perm: Perm,
) -> Result<usize, Response> {
    if let Some(r) = fault_response(st.control.on_data_request(path)).await {
        return Err(r);
    }
    let mut f = Fleet::lock(&st.fleet);
    let now = Instant::now();
    let window = f.cfg.rate_window;
    while f
        .window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        f.window.pop_front();
    }
    let limit = f.cfg.hourly_limit;
    if f.window.len() >= limit {
        f.counts.rate_limited += 1;
        let mut r = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"message": "API rate limit exceeded"}),
        );
        let reset = f
            .window
            .front()
            .map(|t| {
                window
                    .saturating_sub(now.duration_since(*t))
                    .as_secs()
                    .max(1)
            })
            .unwrap_or(1);
        r.headers_mut()
            .insert("X-RateLimit-Limit-Hour", HeaderValue::from(limit as u64));
        r.headers_mut()
            .insert("X-RateLimit-Remaining-Hour", HeaderValue::from(0u64));
        r.headers_mut()
            .insert("RateLimit-Reset", HeaderValue::from(reset));
        if let Some(s) = f.cfg.rate_retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        return Err(r);
    }
    f.window.push_back(now);
    let remaining = limit - f.window.len();
    let token_ok = bearer(headers).is_some_and(|t| t == f.token && st.control.token_valid(&t));
    if !token_ok {
        f.counts.unauthorized += 1;
        let detail = if headers.contains_key(header::AUTHORIZATION) {
            "Invalid token."
        } else {
            "Authentication credentials were not provided."
        };
        return Err(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"detail": detail}),
        ));
    }
    match perm {
        Perm::DeviceList => f.counts.devices += 1,
        Perm::DeviceDetails => f.counts.details += 1,
        Perm::DeviceApps => f.counts.device_apps += 1,
        Perm::Prism => f.counts.prism += 1,
        Perm::Users => f.counts.users += 1,
    }
    if f.denied.contains(&perm) {
        return Err(json_response(
            StatusCode::FORBIDDEN,
            &json!({"detail": "You do not have permission to perform this action."}),
        ));
    }
    Ok(remaining)
}

fn ok(body: &Value, limit: usize, remaining: usize) -> Response {
    let mut r = json_response(StatusCode::OK, body);
    let h = r.headers_mut();
    h.insert("X-RateLimit-Limit-Hour", HeaderValue::from(limit as u64));
    h.insert(
        "X-RateLimit-Remaining-Hour",
        HeaderValue::from(remaining as u64),
    );
    h.insert("RateLimit-Limit", HeaderValue::from(limit as u64));
    h.insert("RateLimit-Remaining", HeaderValue::from(remaining as u64));
    r
}

/// DRF limit semantics: a positive integer, clamped to the maximum; anything else is the default.
fn parse_limit(q: &HashMap<String, String>) -> usize {
    match q.get("limit").and_then(|l| l.trim().parse::<usize>().ok()) {
        Some(n) if n > 0 => n.min(MAX_LIMIT),
        _ => MAX_LIMIT,
    }
}

fn parse_offset(q: &HashMap<String, String>) -> usize {
    q.get("offset")
        .and_then(|o| o.trim().parse::<usize>().ok())
        .unwrap_or(0)
}

fn sort_value(d: &Value, field: &str) -> String {
    match field {
        "user" => d
            .get("user")
            .and_then(|u| u.get("email"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_lowercase(),
        f => match d.get(f) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        },
    }
}

fn contains_ci(hay: Option<&str>, needle: &str) -> bool {
    hay.is_some_and(|h| h.to_lowercase().contains(&needle.to_lowercase()))
}

fn device_matches(d: &Value, q: &HashMap<String, String>) -> bool {
    let s = |k: &str| d.get(k).and_then(Value::as_str);
    let email = d
        .get("user")
        .and_then(|u| u.get("email"))
        .and_then(Value::as_str);
    q.iter().all(|(k, v)| match k.as_str() {
        "serial_number" | "device_name" | "model" | "os_version" => contains_ci(s(k), v),
        "device_id" | "platform" | "blueprint_id" | "asset_tag" => s(k) == Some(v.as_str()),
        "user_email" => contains_ci(email, v),
        "user_email_exact" => email == Some(v.as_str()),
        "user_id" => {
            d.get("user")
                .and_then(|u| u.get("id"))
                .and_then(Value::as_str)
                == Some(v.as_str())
        }
        _ => true,
    })
}

async fn list_devices(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let remaining = match gate(&st, &headers, "/api/v1/devices", Perm::DeviceList).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let f = Fleet::lock(&st.fleet);
    let mut rows: Vec<&Value> = f
        .devices
        .iter()
        .map(|d| &d.list)
        .filter(|d| device_matches(d, &q))
        .collect();
    if let Some(ordering) = q.get("ordering") {
        let keys: Vec<(String, bool)> = ordering
            .split(',')
            .map(str::trim)
            .filter_map(|k| {
                let (desc, name) = k.strip_prefix('-').map(|n| (true, n)).unwrap_or((false, k));
                ORDERINGS.contains(&name).then(|| (name.to_string(), desc))
            })
            .collect();
        rows.sort_by(|a, b| {
            for (k, desc) in &keys {
                let o = sort_value(a, k).cmp(&sort_value(b, k));
                let o = if *desc { o.reverse() } else { o };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    let limit = parse_limit(&q);
    let offset = parse_offset(&q);
    let page: Vec<Value> = rows.into_iter().skip(offset).take(limit).cloned().collect();
    ok(&Value::Array(page), f.cfg.hourly_limit, remaining)
}

fn details_of(d: &SimDevice) -> Value {
    let l = &d.list;
    let s = |k: &str| l.get(k).cloned().unwrap_or(Value::Null);
    let assigned = l
        .get("user")
        .and_then(|u| u.get("name"))
        .cloned()
        .unwrap_or(json!(""));
    let is_mac = l.get("platform").and_then(Value::as_str) == Some("Mac");
    let mut v = json!({
        "general": {
            "device_id": s("device_id"), "device_name": s("device_name"), "last_enrollment": s("last_enrollment"),
            "first_enrollment": s("first_enrollment"), "model": s("model"), "platform": s("platform"),
            "os_version": s("os_version"), "system_version": s("os_version"), "boot_volume": if is_mac { "Macintosh HD" } else { "" },
            "time_since_boot": "3 days", "last_user": assigned, "asset_tag": s("asset_tag"), "assigned_user": assigned,
            "blueprint_name": s("blueprint_name"), "blueprint_uuid": s("blueprint_id"),
        },
        "mdm": {"mdm_enabled": "True", "supervised": "True", "install_date": s("first_enrollment"), "last_check_in": s("last_check_in")},
        "hardware_overview": {
            "model_name": s("model"), "model_identifier": if is_mac { "Mac14,5" } else { "iPhone15,2" },
            "processor_name": if is_mac { "Apple M2 Pro" } else { "" }, "serial_number": s("serial_number"),
            "udid": fleet::uuid(0xD1D, l.get("device_id").and_then(Value::as_str).map(str::len).unwrap_or(0)).to_uppercase(),
        },
        "network": {
            "local_hostname": l.get("device_name").and_then(Value::as_str).unwrap_or("").replace(' ', "-"),
            "mac_address": d.mac, "ip_address": d.ip, "public_ip": "203.0.113.10",
        },
        "users": {"regular_users": [{"username": "user", "uid": "501", "name": assigned}],
                  "system_users": (0..40).map(|k| json!({"username": format!("_svc{k}"), "uid": format!("{}", 200 + k)})).collect::<Vec<_>>()},
        "installed_profiles": (0..15).map(|k| json!({"name": format!("Profile {k}"), "uuid": fleet::uuid(7, k), "verified": "verified"})).collect::<Vec<_>>(),
        "volumes": [{"name": "Macintosh HD", "format": "APFS", "capacity": "494.38 GB", "available": "301.1 GB"}],
    });
    if is_mac {
        v["kandji_agent"] = json!({"agent_installed": "True", "install_date": s("first_enrollment"), "last_check_in": s("last_check_in"), "agent_version": s("agent_version")});
    }
    v
}

async fn device_details(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/api/v1/devices/{id}/details");
    let remaining = match gate(&st, &headers, &path, Perm::DeviceDetails).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let f = Fleet::lock(&st.fleet);
    match f
        .devices
        .iter()
        .find(|d| d.list.get("device_id").and_then(Value::as_str) == Some(id.as_str()))
    {
        Some(d) => ok(&details_of(d), f.cfg.hourly_limit, remaining),
        None => html_404(),
    }
}

async fn device_apps(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/api/v1/devices/{id}/apps");
    let remaining = match gate(&st, &headers, &path, Perm::DeviceApps).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let f = Fleet::lock(&st.fleet);
    match f
        .devices
        .iter()
        .find(|d| d.list.get("device_id").and_then(Value::as_str) == Some(id.as_str()))
    {
        Some(d) => ok(
            &json!({"device_id": id, "apps": d.apps}),
            f.cfg.hourly_limit,
            remaining,
        ),
        None => html_404(),
    }
}

fn prism_rows(f: &Fleet) -> Vec<Value> {
    let mut rows = Vec::new();
    for d in &f.devices {
        let l = &d.list;
        let email = l
            .get("user")
            .and_then(|u| u.get("email"))
            .cloned()
            .unwrap_or(json!(""));
        for a in &d.apps {
            rows.push(json!({
                "device_id": l["device_id"], "device__name": l["device_name"], "device__family": l["platform"],
                "device__user_email": email, "blueprint_id": l["blueprint_id"], "blueprint_name": l["blueprint_name"],
                "serial_number": l["serial_number"], "name": a["app_name"], "bundle_id": a["bundle_id"], "version": a["version"],
                "source": a["source"], "path": a.get("path").cloned().unwrap_or(json!("")),
                "signature": a.get("signature").cloned().unwrap_or(json!("")), "bundle_size": a["bundle_size"],
                "creation_date": a["creation_date"], "modification_date": a["modification_date"],
                "last_collected_at": l["last_check_in"],
            }));
        }
    }
    rows
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> Option<String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

async fn prism_apps(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let remaining = match gate(&st, &headers, "/api/v1/prism/apps", Perm::Prism).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let f = Fleet::lock(&st.fleet);
    let mut rows = prism_rows(&f);
    if let Some(fams) = q.get("device_families") {
        let fams: Vec<&str> = fams.split(',').map(str::trim).collect();
        rows.retain(|r| {
            r.get("device__family")
                .and_then(Value::as_str)
                .is_some_and(|p| fams.contains(&p))
        });
    }
    if let Some(bps) = q.get("blueprint_ids") {
        let bps: Vec<&str> = bps.split(',').map(str::trim).collect();
        rows.retain(|r| {
            r.get("blueprint_id")
                .and_then(Value::as_str)
                .is_some_and(|p| bps.contains(&p))
        });
    }
    if let Some(filter) = q.get("filter") {
        match serde_json::from_str::<Value>(filter) {
            Ok(Value::Object(_)) => {}
            _ => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "filter must be a JSON object"}),
                )
            }
        }
    }
    let limit = parse_limit(&q);
    let total = rows.len() + f.cfg.prism_total_extra;
    let cursor_sent = q.get("cursor").is_some_and(|c| !c.is_empty());
    let body = match f.cfg.prism_mode {
        PrismMode::Published if !cursor_sent => {
            let offset = q.get("offset").map(|_| parse_offset(&q));
            let data: Vec<Value> = rows
                .into_iter()
                .skip(offset.unwrap_or(0))
                .take(limit)
                .collect();
            json!({"offset": offset, "limit": limit, "total": total, "data": data, "cursor": null})
        }
        PrismMode::Offset => {
            let offset = parse_offset(&q);
            let data: Vec<Value> = rows.into_iter().skip(offset).take(limit).collect();
            json!({"offset": offset, "limit": limit, "total": total, "data": data})
        }
        PrismMode::Cursor | PrismMode::Published => {
            let start = match q
                .get("cursor")
                .map(String::as_str)
                .filter(|c| !c.is_empty())
            {
                None => 0,
                Some(c) => match unb64(c)
                    .and_then(|s| s.strip_prefix("p=").and_then(|n| n.parse::<usize>().ok()))
                {
                    Some(n) => n,
                    None => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            &json!({"error": "Invalid cursor"}),
                        )
                    }
                },
            };
            let data: Vec<Value> = rows.into_iter().skip(start).take(limit).collect();
            let end = start + data.len();
            // A full page gets a cursor even at the very end (the next answer is then empty).
            let cursor = if data.len() == limit {
                json!(b64(&format!("p={end}")))
            } else {
                Value::Null
            };
            json!({"data": data, "cursor": cursor})
        }
    };
    ok(&body, f.cfg.hourly_limit, remaining)
}

async fn list_users(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let remaining = match gate(&st, &headers, "/api/v1/users", Perm::Users).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let f = Fleet::lock(&st.fleet);
    let mut users: Vec<&Value> = f
        .users
        .iter()
        .filter(|u| {
            let s = |k: &str| u.get(k).and_then(Value::as_str);
            q.iter().all(|(k, v)| match k.as_str() {
                "email" => contains_ci(s("email"), v),
                "id" => s("id") == Some(v.as_str()),
                "integration_id" => {
                    u.get("integration")
                        .and_then(|i| i.get("uuid"))
                        .and_then(Value::as_str)
                        == Some(v.as_str())
                }
                "archived" => {
                    u.get("archived")
                        .and_then(Value::as_bool)
                        .map(|b| b.to_string())
                        == Some(v.to_lowercase())
                }
                _ => true,
            })
        })
        .collect();
    // DRF cursor paging over a stable ordering (here: id); the cursor encodes the last position.
    users.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let after = match q
        .get("cursor")
        .map(String::as_str)
        .filter(|c| !c.is_empty())
    {
        None => None,
        Some(c) => match unb64(c).and_then(|s| s.strip_prefix("p=").map(str::to_string)) {
            Some(p) => Some(p),
            None => {
                return json_response(StatusCode::NOT_FOUND, &json!({"detail": "Invalid cursor"}))
            }
        },
    };
    let start = after
        .as_deref()
        .map(|p| users.partition_point(|u| u["id"].as_str().unwrap_or("") <= p))
        .unwrap_or(0);
    let page: Vec<Value> = users
        .iter()
        .skip(start)
        .take(USERS_PAGE)
        .map(|u| {
            let mut u = (*u).clone();
            let id = u["id"].as_str().unwrap_or("").to_string();
            let count = f
                .devices
                .iter()
                .filter(|d| {
                    d.list
                        .get("user")
                        .and_then(|x| x.get("id"))
                        .and_then(Value::as_str)
                        == Some(id.as_str())
                })
                .count();
            u["device_count"] = json!(count);
            u
        })
        .collect();
    let host = if f.cfg.region == "eu" {
        format!("https://{}.eu.kandji.io", f.cfg.subdomain)
    } else {
        format!("https://{}.kandji.io", f.cfg.subdomain)
    };
    let link = |cursor: String| -> String {
        let mut u = url::Url::parse(&format!("{host}/api/v1/users")).expect("static URL");
        {
            let mut qp = u.query_pairs_mut();
            let mut keys: Vec<&String> = q.keys().filter(|k| *k != "cursor").collect();
            keys.sort();
            for k in keys {
                qp.append_pair(k, &q[k]);
            }
            qp.append_pair("cursor", &cursor);
        }
        u.to_string()
    };
    let next = if start + page.len() < users.len() {
        page.last()
            .and_then(|u| u["id"].as_str())
            .map(|id| json!(link(b64(&format!("p={id}")))))
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let previous = if start > 0 {
        json!(link(b64(&format!(
            "r=1&p={}",
            users[start]["id"].as_str().unwrap_or("")
        ))))
    } else {
        Value::Null
    };
    ok(
        &json!({"next": next, "previous": previous, "results": page}),
        f.cfg.hourly_limit,
        remaining,
    )
}

impl KandjiSim {
    /// Build the fleet and serve it on a loopback port.
    pub async fn start(cfg: KandjiSimConfig) -> anyhow::Result<Self> {
        let devices = (0..cfg.devices)
            .map(|i| make_device(cfg.seed, i, cfg.users, cfg.max_apps_per_device))
            .collect();
        let users = (0..cfg.users).map(|j| make_user(cfg.seed, j)).collect();
        let control = Control::default();
        control.add_static_token(&cfg.api_token);
        let fleet = Arc::new(Mutex::new(Fleet {
            token: cfg.api_token.clone(),
            token_serial: 0,
            next_device: cfg.devices,
            next_user: cfg.users,
            devices,
            users,
            window: VecDeque::new(),
            denied: Default::default(),
            counts: Counts::default(),
            cfg,
        }));
        let state = AppState {
            fleet: fleet.clone(),
            control: control.clone(),
        };
        let router = Router::new()
            .route("/api/v1/devices", get(list_devices))
            .route("/api/v1/devices/{id}/details", get(device_details))
            .route("/api/v1/devices/{id}/apps", get(device_apps))
            .route("/api/v1/prism/apps", get(prism_apps))
            .route("/api/v1/users", get(list_users))
            .fallback(|| async { html_404() })
            .with_state(state);
        let handle = serve(router, control).await?;
        Ok(KandjiSim { handle, fleet })
    }

    fn fleet(&self) -> MutexGuard<'_, Fleet> {
        Fleet::lock(&self.fleet)
    }

    /// The fault-injection and counting handle.
    pub fn control(&self) -> &Control {
        &self.handle.control
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.handle.base_url
    }

    /// The secret JSON of a connection to this simulator (current token).
    pub fn secret(&self) -> Value {
        let f = self.fleet();
        json!({"subdomain": f.cfg.subdomain, "region": f.cfg.region, "api_token": f.token, "base_url": self.handle.base_url})
    }

    /// Requests served per endpoint.
    pub fn counts(&self) -> Counts {
        self.fleet().counts.clone()
    }

    /// Revoke the current token (every later call is 401) and issue a new one; returns it.
    pub fn rotate_token(&self) -> String {
        let mut f = self.fleet();
        f.token_serial += 1;
        f.token = format!("{}-r{}", f.cfg.api_token, f.token_serial);
        self.handle.control.expire_tokens();
        self.handle.control.add_static_token(&f.token);
        f.token.clone()
    }

    /// Revoke the token without issuing another (as the ExpireTokens fault does).
    pub fn revoke_token(&self) {
        self.handle.control.expire_tokens();
    }

    /// Make an endpoint answer 403 (the token lacks that permission), or allow it again.
    pub fn deny(&self, perm: Perm, denied: bool) {
        let mut f = self.fleet();
        if denied {
            f.denied.insert(perm);
        } else {
            f.denied.remove(&perm);
        }
    }

    /// Change the hourly budget (and its window, so tests need not wait an hour).
    pub fn set_rate_limit(&self, requests: usize, window: Duration, retry_after: Option<u64>) {
        let mut f = self.fleet();
        f.cfg.hourly_limit = requests;
        f.cfg.rate_window = window;
        f.cfg.rate_retry_after = retry_after;
        f.window.clear();
    }

    /// Switch the Prism envelope.
    pub fn set_prism_mode(&self, mode: PrismMode) {
        self.fleet().cfg.prism_mode = mode;
    }

    /// Make Prism's `total` exceed the rows it serves by `extra`.
    pub fn set_prism_total_extra(&self, extra: usize) {
        self.fleet().cfg.prism_total_extra = extra;
    }

    pub fn device_count(&self) -> usize {
        self.fleet().devices.len()
    }

    pub fn user_count(&self) -> usize {
        self.fleet().users.len()
    }

    /// Rows of the Prism apps export (device × app).
    pub fn app_count(&self) -> usize {
        self.fleet().devices.iter().map(|d| d.apps.len()).sum()
    }

    /// Apps rows of devices that have a usable serial (what a register can key).
    pub fn keyed_app_count(&self) -> usize {
        self.fleet()
            .devices
            .iter()
            .filter(|d| has_serial(&d.list))
            .map(|d| d.apps.len())
            .sum()
    }

    /// Device `i` as `/devices` lists it.
    pub fn device(&self, i: usize) -> Value {
        self.fleet().devices[i].list.clone()
    }

    /// All devices as listed.
    pub fn devices(&self) -> Vec<Value> {
        self.fleet()
            .devices
            .iter()
            .map(|d| d.list.clone())
            .collect()
    }

    /// User `j` as `/users` lists it.
    pub fn user(&self, j: usize) -> Value {
        self.fleet().users[j].clone()
    }

    /// The MAC address `/details` reports for device `i`.
    pub fn mac(&self, i: usize) -> String {
        self.fleet().devices[i].mac.clone()
    }

    /// Devices with a real serial (not empty, not a placeholder).
    pub fn serials(&self) -> Vec<String> {
        self.fleet()
            .devices
            .iter()
            .filter(|d| has_serial(&d.list))
            .filter_map(|d| d.list["serial_number"].as_str().map(str::to_string))
            .collect()
    }

    pub fn set_os_version(&self, i: usize, v: &str) {
        self.fleet().devices[i].list["os_version"] = json!(v);
    }

    /// Set any list field of device `i`.
    pub fn set_field(&self, i: usize, name: &str, v: Value) {
        self.fleet().devices[i].list[name] = v;
    }

    /// Remove a list field of device `i` (the API stops reporting it).
    pub fn remove_field(&self, i: usize, name: &str) {
        if let Some(o) = self.fleet().devices[i].list.as_object_mut() {
            o.remove(name);
        }
    }

    pub fn set_mac(&self, i: usize, mac: &str) {
        self.fleet().devices[i].mac = mac.to_string();
    }

    /// Set the version of app `k` of device `i`.
    pub fn set_app_version(&self, i: usize, k: usize, v: &str) {
        self.fleet().devices[i].apps[k]["version"] = json!(v);
    }

    /// Enroll a new device; returns its index.
    pub fn add_device(&self) -> usize {
        let mut f = self.fleet();
        let n = f.next_device;
        f.next_device += 1;
        let d = make_device(f.cfg.seed, n, f.cfg.users, f.cfg.max_apps_per_device);
        f.devices.push(d);
        f.devices.len() - 1
    }

    /// Remove device `i` (later indices shift down); returns its list record.
    pub fn remove_device(&self, i: usize) -> Value {
        self.fleet().devices.remove(i).list
    }

    /// Add a directory user (the next `fleet::person`); returns its index.
    pub fn add_user(&self) -> usize {
        let mut f = self.fleet();
        let n = f.next_user;
        f.next_user += 1;
        let u = make_user(f.cfg.seed, n);
        f.users.push(u);
        f.users.len() - 1
    }

    pub fn set_user_field(&self, j: usize, name: &str, v: Value) {
        self.fleet().users[j][name] = v;
    }
}

fn has_serial(d: &Value) -> bool {
    d.get("serial_number")
        .and_then(Value::as_str)
        .is_some_and(|s| {
            let s = s.trim();
            !s.is_empty() && s != "To be filled by O.E.M."
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_has_the_variants_tests_need() {
        let devices: Vec<SimDevice> = (0..300).map(|i| make_device(42, i, 200, 8)).collect();
        let plat = |p: &str| devices.iter().filter(|d| d.list["platform"] == p).count();
        assert!(
            plat("Mac") > 100 && plat("iPhone") > 20 && plat("iPad") > 10 && plat("AppleTV") > 2
        );
        assert!(plat("Windows") > 2 && plat("Android") > 2);
        assert!(
            devices.iter().any(|d| d.list["user"] == ""),
            "unassigned devices"
        );
        assert!(devices.iter().any(|d| d.list["user"].is_object()));
        assert!(devices.iter().any(|d| d.list["serial_number"] == ""));
        assert!(devices
            .iter()
            .any(|d| d.list["serial_number"] == "To be filled by O.E.M."));
        assert!(
            devices
                .iter()
                .any(|d| !d.list["device_name"].as_str().unwrap().is_ascii()),
            "unicode names"
        );
        let mut ids: Vec<&str> = devices
            .iter()
            .map(|d| d.list["device_id"].as_str().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 300, "device ids are unique");
        let emails: Vec<String> = devices
            .iter()
            .filter_map(|d| d.list["user"]["email"].as_str().map(str::to_lowercase))
            .collect();
        let mut uniq = emails.clone();
        uniq.sort();
        uniq.dedup();
        assert!(uniq.len() < emails.len(), "several devices share a person");
        assert!(devices.iter().any(|d| d.list["user"]["email"]
            .as_str()
            .is_some_and(|e| e.chars().any(char::is_uppercase))));
    }
}
