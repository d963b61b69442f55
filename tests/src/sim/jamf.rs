//! Jamf Pro simulator: OAuth client credentials, `computers-inventory` under configurable path
//! versions, `v2/mobile-devices/detail` and the slim `v2/mobile-devices`, over a seeded fleet.
//!
//! What it emulates, and where each behaviour comes from (vendor-apis.md section 4 unless noted):
//! - `POST /api/oauth/token` and `POST /api/v1/oauth/token` (form: `client_id`, `client_secret`,
//!   `grant_type=client_credentials`) answer `{access_token, scope, token_type: "Bearer", expires_in}`
//!   with `expires_in` one second short of the lifetime, as in Jamf's own example (599 for 10 min).
//!   Both paths exist in the wild: learn.jamf.com documents `/api/oauth/token`, and
//!   macadmins/jamf-pro-sdk-python PR #66 moved to `/api/v1/oauth/token` after Jamf deprecated the
//!   unversioned one. Wrong credentials: `401 {"error":"invalid_client", ...}`, the RFC 6749 §5.2
//!   body (Jamf's reference for the endpoint names RFC error codes such as `invalid_scope`; the exact
//!   text of its 401 is not published, so only the `error` code should be relied on). A wrong
//!   `grant_type` is `400 unsupported_grant_type`, a missing parameter `400 invalid_request`.
//! - Data calls without a valid bearer token: `401` with the `ApiError` body seen on real servers
//!   (`{"httpStatus":401,"errors":[{"code":"INVALID_TOKEN","description":"Unauthorized","id":"0","field":null}]}`,
//!   recorded in gravitational/teleport's Jamf client tests).
//! - `GET /api/{v}/computers-inventory`: only the versions in [`JamfConfig::versions`] exist; any
//!   other answers `404 {"httpStatus":404,"errors":[]}` like a server that removed (or never had) it.
//!   The default is a Jamf Pro 11.30 server: v4 current, v3 deprecated by 11.30.0 ("Computer
//!   inventory /v3 is deprecated in favor of /v4", developer.jamf.com changelog) and v1 deprecated
//!   since 2025-06-30; deprecated versions still answer (Jamf keeps them at least a year), so a
//!   client reading v3 gets data and only the request counts show it chose the stale one.
//!   `section` repeats (default GENERAL only); sections not requested come back as `null` keys, as on
//!   a real server (teleport's recorded response has `"userAndLocation" : null` and friends).
//!   v1 reports `general.lastReportedIp`; v2 and later `lastReportedIpV4`/`lastReportedIpV6`.
//! - Paging: `page` is 0-based, `page-size` defaults to 100 and a value above 2000 is silently
//!   clamped to 2000 with `totalCount` unchanged (wire-checked by Jamf-Concepts/jamf-cli PR #389);
//!   a page past the end is an empty `results`. `page-size` below 1 or a negative page is a 400.
//! - `sort=field:asc|desc[,field:dir]`: computers default `general.name:asc` (not unique: ties keep
//!   enrolment order here, a real server promises nothing), mobile detail default
//!   `displayName:asc`, slim mobile list default `id:asc`. On mobile detail `deviceId` sorts by
//!   `hardware.deviceId`, a hardware field that is null or shared across devices, and ties there
//!   come in an order that changes per request: paging sorted on it repeats and loses devices,
//!   while `mobileDeviceId` (the record id) pages cleanly. Id fields sort numerically, strings
//!   case-insensitively (MySQL's default collation). Fields outside the allowed lists of
//!   jamf-pro-sdk-python `api_options.py` are a 400.
//! - `filter` is RSQL: `==` (with `*` wildcards), `!=`, `<`, `<=`, `>`, `>=` (and `=lt=` etc.),
//!   `=in=(a,b)`, `=out=(a,b)`, `;` AND, `,` OR, parentheses. Timestamps compare as times, ids and
//!   numbers as numbers, strings case-insensitively. Unknown fields are a 400.
//! - Mobile detail fields follow jamf-pro-sdk-python `models/pro/mobile_devices.py`
//!   (`userAndLocation.realName`, `emailAddress`); `deviceType` is `"iOS"` for iPhones and iPads,
//!   as in teleport's recorded response. The slim list has the documented
//!   `id, name, serialNumber, wifiMacAddress, udid, phoneNumber, model, modelIdentifier, username,
//!   type, managementId, softwareUpdateDeviceId`.
//! - Faults come from [`Control`] and hit data requests only (token requests are never faulted).
//!
//! The fleet: ~2% of devices have no usable serial (empty, `null`, or an OEM placeholder), ~8% of
//! computers and ~15% of mobile devices have no user, one person in six owns two computers (and
//! the same people own the mobile devices of the same index), names carry é, ü, ’ and 日本, ~5% of
//! computers lack a Wi-Fi MAC (their `altMacAddress` is set), ~3% lack `hardware.make`, and ~10% of
//! emails arrive in mixed case. Record `i` of a fleet is the same for the same seed.

// Handlers return ready-made error responses; boxing them would buy nothing in a test server.
#![allow(clippy::result_large_err)]

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};

use super::{bearer, fault_response, fleet, serve, Control, SimHandle};

/// Jamf's page-size ceiling; larger requests are clamped to it.
pub const MAX_PAGE_SIZE: usize = 2000;
/// The page size when `page-size` is absent.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// How a [`JamfSim`] is set up.
#[derive(Debug, Clone)]
pub struct JamfConfig {
    pub computers: usize,
    pub mobile_devices: usize,
    pub seed: u64,
    /// Which `computers-inventory` versions the server has (others answer 404).
    pub versions: Vec<&'static str>,
    /// The API client's Access Token Lifetime.
    pub token_lifetime: Duration,
    /// The server's page cap (Jamf's is 2000); larger `page-size` values are silently clamped to it.
    /// Lower it to emulate a server that pages by less than a client asks.
    pub max_page_size: usize,
    /// Default: a fresh UUID per config, like Jamf's API client ids (so two simulators that happen
    /// to reuse a port never share a process-wide cached token).
    pub client_id: String,
    pub client_secret: String,
}

impl Default for JamfConfig {
    fn default() -> Self {
        JamfConfig {
            computers: 100,
            mobile_devices: 0,
            seed: 42,
            versions: vec!["v1", "v3", "v4"],
            token_lifetime: Duration::from_secs(300),
            max_page_size: MAX_PAGE_SIZE,
            client_id: uuid::Uuid::new_v4().to_string(),
            client_secret: "sim-Jamf-client-secret-dzmsPks-FwXpks80".into(),
        }
    }
}

/// A running Jamf Pro simulator. Indexes `i` refer to the current position in the computer (or
/// mobile device) list, which is in enrolment (id) order; removing a device shifts later indexes.
pub struct JamfSim {
    handle: SimHandle,
    fleet: Arc<Mutex<Fleet>>,
    cfg: Arc<JamfConfig>,
}

/// Start a simulator with `computers` computers (and a quarter as many mobile devices), seed 42,
/// versions v1, v3 and v4 (a Jamf Pro 11.30 server: v4 current, v1 and v3 deprecated).
pub async fn start_default(computers: usize) -> anyhow::Result<JamfSim> {
    JamfSim::start(JamfConfig {
        computers,
        mobile_devices: computers / 4,
        ..JamfConfig::default()
    })
    .await
}

impl JamfSim {
    /// Generate the fleet and serve it on a free loopback port.
    pub async fn start(cfg: JamfConfig) -> anyhow::Result<Self> {
        for v in &cfg.versions {
            anyhow::ensure!(
                matches!(*v, "v1" | "v2" | "v3" | "v4"),
                "computers-inventory version {v} is not one Jamf has published (v1..v4)"
            );
        }
        let fleet = Arc::new(Mutex::new(Fleet::generate(
            cfg.seed,
            cfg.computers,
            cfg.mobile_devices,
        )));
        let cfg = Arc::new(cfg);
        let control = Control::default();
        let state = AppState {
            fleet: fleet.clone(),
            control: control.clone(),
            cfg: cfg.clone(),
        };
        let router = Router::new()
            .route("/api/oauth/token", post(token))
            .route("/api/v1/oauth/token", post(token))
            .route("/api/v1/jamf-pro-version", get(pro_version))
            .route("/api/{version}/computers-inventory", get(computers))
            .route("/api/v2/mobile-devices/detail", get(mobile_detail))
            .route("/api/v2/mobile-devices", get(mobile_list))
            .fallback(not_found)
            .with_state(state);
        let handle = serve(router, control).await?;
        Ok(JamfSim { handle, fleet, cfg })
    }

    /// `http://127.0.0.1:PORT`, the Jamf Pro server root (the API is under `/api`).
    pub fn base_url(&self) -> &str {
        &self.handle.base_url
    }

    /// Fault injection and request counters.
    pub fn control(&self) -> &Control {
        &self.handle.control
    }

    /// The running server.
    pub fn handle(&self) -> &SimHandle {
        &self.handle
    }

    /// The connection secret pointing at this simulator.
    pub fn secret(&self) -> Value {
        json!({"tenant_url": self.base_url(), "client_id": self.cfg.client_id, "client_secret": self.cfg.client_secret})
    }

    /// The same secret with a wrong client secret.
    pub fn secret_with_wrong_client_secret(&self) -> Value {
        json!({"tenant_url": self.base_url(), "client_id": self.cfg.client_id, "client_secret": "not-the-secret"})
    }

    fn fleet(&self) -> MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- computers ----

    /// Number of computers.
    pub fn computer_count(&self) -> usize {
        self.fleet().computers.len()
    }

    /// Alias of [`Self::computer_count`] (the common simulator vocabulary).
    pub fn device_count(&self) -> usize {
        self.computer_count()
    }

    /// The full record of computer `i` (every section).
    pub fn computer(&self, i: usize) -> Value {
        self.fleet().computers[i].clone()
    }

    /// Every computer record, in id order.
    pub fn computers(&self) -> Vec<Value> {
        self.fleet().computers.clone()
    }

    /// The Jamf id of computer `i`.
    pub fn computer_id(&self, i: usize) -> String {
        self.fleet().computers[i]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The serial computer `i` is keyed by in the register: `None` when the device has no usable
    /// serial (null, empty or an OEM placeholder, as `normalize::serial` decides); otherwise the
    /// normalised serial (the simulator's serials are already upper-case and trimmed).
    pub fn serial(&self, i: usize) -> Option<String> {
        let raw = self.raw_serial(i);
        raw.as_str().and_then(assetsync::normalize::serial)
    }

    /// The raw `hardware.serialNumber` of computer `i` as Jamf reports it (may be null, empty or a placeholder).
    pub fn raw_serial(&self, i: usize) -> Value {
        self.fleet().computers[i]["hardware"]["serialNumber"].clone()
    }

    /// Change computer `i`'s OS version, as a new inventory report would (the report date moves too).
    pub fn set_os_version(&self, i: usize, version: &str) {
        let mut f = self.fleet();
        let rec = &mut f.computers[i];
        rec["operatingSystem"]["version"] = json!(version);
        rec["general"]["reportDate"] = json!(fmt_time(Utc::now()));
    }

    /// Set any field of computer `i` by dotted path (`general.name`, `userAndLocation.email`).
    pub fn set_field(&self, i: usize, path: &str, value: Value) {
        set_path(&mut self.fleet().computers[i], path, value);
    }

    /// The vendor stops reporting a value: the field of computer `i` becomes `null`
    /// (Jamf keeps keys and reports missing values as null).
    pub fn remove_field(&self, i: usize, path: &str) {
        self.set_field(i, path, Value::Null);
    }

    /// Enrol a new computer; returns its index.
    pub fn add_computer(&self) -> usize {
        let mut f = self.fleet();
        let gen = f.next_computer_gen;
        f.next_computer_gen += 1;
        let id = f.next_computer_id;
        f.next_computer_id += 1;
        let rec = gen_computer(f.seed, gen, id);
        f.computers.push(rec);
        f.computers.len() - 1
    }

    /// Alias of [`Self::add_computer`].
    pub fn add_device(&self) -> usize {
        self.add_computer()
    }

    /// Delete computer `i` from Jamf; later indexes shift down by one. Returns the removed record.
    pub fn remove_computer(&self, i: usize) -> Value {
        self.fleet().computers.remove(i)
    }

    /// Alias of [`Self::remove_computer`].
    pub fn remove_device(&self, i: usize) -> Value {
        self.remove_computer(i)
    }

    /// A re-enrolled computer: a new record (new id, new UDID and management id) with the same
    /// serial and user and a newer `lastContactTime`/`reportDate`. Returns the new index.
    pub fn duplicate_computer(&self, i: usize) -> usize {
        let mut f = self.fleet();
        let mut rec = f.computers[i].clone();
        let id = f.next_computer_id;
        f.next_computer_id += 1;
        let seed = f.seed;
        rec["id"] = json!(id.to_string());
        rec["udid"] = json!(fleet::uuid(seed ^ 0xD0D0, id as usize).to_uppercase());
        rec["general"]["managementId"] = json!(fleet::uuid(seed ^ 0x3A3A, id as usize));
        let now = Utc::now();
        rec["general"]["lastContactTime"] = json!(fmt_time(now));
        rec["general"]["reportDate"] = json!(fmt_time(now - chrono::Duration::seconds(30)));
        rec["general"]["lastEnrolledDate"] = json!(fmt_time(now - chrono::Duration::minutes(10)));
        f.computers.push(rec);
        f.computers.len() - 1
    }

    // ---- mobile devices ----

    /// Number of mobile devices.
    pub fn mobile_count(&self) -> usize {
        self.fleet().mobiles.len()
    }

    /// The full record of mobile device `i` (every section).
    pub fn mobile(&self, i: usize) -> Value {
        self.fleet().mobiles[i].clone()
    }

    /// Every mobile device record, in id order.
    pub fn mobiles(&self) -> Vec<Value> {
        self.fleet().mobiles.clone()
    }

    /// The register key of mobile device `i` (`None` without a usable serial), like [`Self::serial`].
    pub fn mobile_serial(&self, i: usize) -> Option<String> {
        let raw = self.raw_mobile_serial(i);
        raw.as_str().and_then(assetsync::normalize::serial)
    }

    /// The raw `hardware.serialNumber` of mobile device `i` as Jamf reports it.
    pub fn raw_mobile_serial(&self, i: usize) -> Value {
        self.fleet().mobiles[i]["hardware"]["serialNumber"].clone()
    }

    /// Set any field of mobile device `i` by dotted path.
    pub fn set_mobile_field(&self, i: usize, path: &str, value: Value) {
        set_path(&mut self.fleet().mobiles[i], path, value);
    }

    /// The vendor stops reporting a mobile device's value (it becomes `null`).
    pub fn remove_mobile_field(&self, i: usize, path: &str) {
        self.set_mobile_field(i, path, Value::Null);
    }

    /// Change mobile device `i`'s OS version (the inventory date moves too).
    pub fn set_mobile_os_version(&self, i: usize, version: &str) {
        let mut f = self.fleet();
        let rec = &mut f.mobiles[i];
        rec["general"]["osVersion"] = json!(version);
        rec["general"]["lastInventoryUpdateDate"] = json!(fmt_time(Utc::now()));
    }

    /// Enrol a new mobile device; returns its index.
    pub fn add_mobile_device(&self) -> usize {
        let mut f = self.fleet();
        let gen = f.next_mobile_gen;
        f.next_mobile_gen += 1;
        let id = f.next_mobile_id;
        f.next_mobile_id += 1;
        let rec = gen_mobile(f.seed, gen, id);
        f.mobiles.push(rec);
        f.mobiles.len() - 1
    }

    /// Delete mobile device `i`; later indexes shift down by one.
    pub fn remove_mobile_device(&self, i: usize) -> Value {
        self.fleet().mobiles.remove(i)
    }
}

// ------------------------------------------------------------------------------------------------
// Fleet generation
// ------------------------------------------------------------------------------------------------

struct Fleet {
    seed: u64,
    computers: Vec<Value>,
    mobiles: Vec<Value>,
    next_computer_id: u64,
    next_mobile_id: u64,
    next_computer_gen: usize,
    next_mobile_gen: usize,
}

impl Fleet {
    fn generate(seed: u64, computers: usize, mobiles: usize) -> Self {
        // Ids start at 1 and have gaps (devices deleted over the years), so nothing may assume
        // that id == index + 1 or that ids are contiguous.
        let mut id = 1u64;
        let mut cs = Vec::with_capacity(computers);
        for i in 0..computers {
            cs.push(gen_computer(seed, i, id));
            id += 1 + fleet::num(seed, i, 0xC1D, 3);
        }
        let mut mid = 1u64;
        let mut ms = Vec::with_capacity(mobiles);
        for i in 0..mobiles {
            ms.push(gen_mobile(seed, i, mid));
            mid += 1 + fleet::num(seed, i, 0x31D, 2);
        }
        Fleet {
            seed,
            computers: cs,
            mobiles: ms,
            next_computer_id: id,
            next_mobile_id: mid,
            next_computer_gen: computers,
            next_mobile_gen: mobiles,
        }
    }
}

/// The fleet's reference "now": timestamps are this minus a seeded offset, so runs are repeatable.
fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 2, 12, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

/// Jamf's timestamp format: RFC 3339 UTC with milliseconds.
fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The owner (directory person index) of device `i`, or none. One person in six owns two devices.
fn owner(seed: u64, i: usize, salt: u64, no_user_percent: u64) -> Option<fleet::Person> {
    if fleet::num(seed, i, salt, 100) < no_user_percent {
        return None;
    }
    Some(fleet::person(i * 5 / 6))
}

/// An Apple-style 12-character serial: a family prefix and 9 base-36 characters, unique per `i`
/// (multiplying by an odd number not divisible by 3 is a bijection modulo 36^9).
fn apple_serial(prefixes: &[&str], seed: u64, i: usize, mult: u64) -> String {
    const M: u64 = 101_559_956_668_416; // 36^9
    let prefix = fleet::pick(seed, i, 0x5E1, prefixes);
    let mut v = ((i as u64 % M) * mult + (seed % M)) % M;
    let mut s = [b'0'; 9];
    for c in s.iter_mut().rev() {
        *c = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(v % 36) as usize];
        v /= 36;
    }
    format!("{prefix}{}", String::from_utf8_lossy(&s))
}

/// About 2% of devices: no usable serial.
fn maybe_missing_serial(seed: u64, i: usize, salt: u64, serial: String) -> Value {
    let r = fleet::num(seed, i, salt, 1000);
    if r < 20 {
        return match r % 5 {
            0 => json!(""),
            1 => Value::Null,
            2 => json!("To be filled by O.E.M."),
            3 => json!("Not Specified"),
            _ => json!("0"),
        };
    }
    json!(serial)
}

/// Email as entered by an admin: ~10% in mixed case.
fn email_as_entered(seed: u64, i: usize, p: &fleet::Person) -> String {
    if fleet::num(seed, i, 0xE3A, 10) != 0 {
        return p.email.clone();
    }
    let cap = |s: &str| -> String {
        let mut c = s.chars();
        c.next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    };
    let (local, domain) = p.email.split_once('@').unwrap_or((&p.email, "example.com"));
    let local = local.split('.').map(cap).collect::<Vec<_>>().join(".");
    format!("{local}@{}", cap(domain))
}

const DEPARTMENTS: &[&str] = &[
    "Engineering",
    "Design",
    "Finance",
    "Sales",
    "Marketing",
    "IT",
    "Legal",
    "Support",
];
const POSITIONS: &[&str] = &[
    "Engineer",
    "Designer",
    "Accountant",
    "Account Executive",
    "Marketing Manager",
    "IT Technician",
    "Counsel",
    "Support Specialist",
];

/// (model, modelIdentifier, short name, code, desktop)
const MAC_MODELS: &[(&str, &str, &str, &str, bool)] = &[
    (
        "MacBook Pro (14-inch, 2023)",
        "Mac14,9",
        "MacBook Pro",
        "MBP",
        false,
    ),
    (
        "MacBook Pro (16-inch, 2021)",
        "MacBookPro18,2",
        "MacBook Pro",
        "MBP",
        false,
    ),
    (
        "MacBook Pro (16-inch, 2019)",
        "MacBookPro16,1",
        "MacBook Pro",
        "MBP",
        false,
    ),
    (
        "MacBook Air (M2, 2022)",
        "Mac14,2",
        "MacBook Air",
        "MBA",
        false,
    ),
    (
        "MacBook Air (M1, 2020)",
        "MacBookAir10,1",
        "MacBook Air",
        "MBA",
        false,
    ),
    ("iMac (24-inch, 2021)", "iMac21,1", "iMac", "IMAC", true),
    ("Mac mini (2023)", "Mac14,3", "Mac mini", "MINI", true),
    ("Mac Studio (2022)", "Mac13,1", "Mac Studio", "STUDIO", true),
];

/// (name, version, build)
const MAC_OS: &[(&str, &str, &str)] = &[
    ("macOS", "15.5", "24F74"),
    ("macOS", "15.3.2", "24D81"),
    ("macOS", "15.1", "24B83"),
    ("macOS", "14.6.1", "23G93"),
    ("macOS", "14.5", "23F79"),
    ("macOS", "13.6.7", "22G720"),
    ("Mac OS X", "10.15.7", "19H2026"),
];

/// (name, bundle id, version)
const MAC_APPS: &[(&str, &str, &str)] = &[
    ("Google Chrome", "com.google.Chrome", "125.0.6422.142"),
    ("Slack", "com.tinyspeck.slackmacgap", "4.38.125"),
    ("Microsoft Word", "com.microsoft.Word", "16.85"),
    ("zoom.us", "us.zoom.xos", "6.0.11"),
    ("1Password 8", "com.1password.1password", "8.10.33"),
    ("Visual Studio Code", "com.microsoft.VSCode", "1.90.0"),
    ("Xcode", "com.apple.dt.Xcode", "15.4"),
    ("Safari", "com.apple.Safari", "17.5"),
];

fn gen_computer(seed: u64, i: usize, id: u64) -> Value {
    let idx = id as usize;
    let (model, model_id, short, code, desktop) = *fleet::pick(seed, i, 0xA11, MAC_MODELS);
    let (os_name, os_version, os_build) = *fleet::pick(seed, i, 0xA12, MAC_OS);
    let person = owner(seed, i, 0xA13, 8);
    let dept = *fleet::pick(seed, i, 0xA14, DEPARTMENTS);
    let name = match (fleet::num(seed, i, 0xA15, 10), &person) {
        (0..=5, Some(p)) => format!("{}\u{2019}s {short}", p.first),
        (6, _) => format!("日本-Mac-{:04}", i),
        (7, Some(p)) => format!("{}-{short}", p.last),
        _ => format!(
            "{code}-{}-{:03}",
            dept.to_uppercase().chars().take(3).collect::<String>(),
            i % 1000
        ),
    };
    let contact = epoch()
        - chrono::Duration::seconds(fleet::num(seed, i, 0xA16, 30 * 86_400) as i64)
        - chrono::Duration::milliseconds(fleet::num(seed, i, 0xA17, 1000) as i64);
    let report = contact - chrono::Duration::seconds(fleet::num(seed, i, 0xA18, 86_400) as i64);
    let enrolled = contact - chrono::Duration::days(30 + fleet::num(seed, i, 0xA19, 900) as i64);
    let serial = maybe_missing_serial(
        seed,
        i,
        0xA1A,
        apple_serial(&["C02", "FVF", "H4T", "K7Q", "G8W"], seed, i, 2_654_435_761),
    );
    let wifi = fleet::mac(seed, i, true);
    let alt = fleet::mac(seed ^ 0xA17A17, i, true);
    let r_mac = fleet::num(seed, i, 0xA1B, 100);
    let (mac, alt_mac) = if r_mac < 5 {
        (
            if r_mac & 1 == 0 {
                Value::Null
            } else {
                json!("")
            },
            json!(alt),
        )
    } else if desktop || r_mac < 30 {
        (json!(wifi), json!(alt))
    } else {
        (json!(wifi), Value::Null)
    };
    let mut hardware = json!({
        "make": "Apple",
        "model": model,
        "modelIdentifier": model_id,
        "serialNumber": serial,
        "processorSpeedMhz": 0,
        "processorCount": 1,
        "coreCount": 8,
        "processorType": if model_id.starts_with("MacBookPro16") { "Intel Core i9" } else { "Apple M-series" },
        "processorArchitecture": if model_id.starts_with("MacBookPro16") { "x86_64" } else { "arm64" },
        "networkAdapterType": "IEEE80211",
        "macAddress": mac,
        "altNetworkAdapterType": if alt_mac.is_null() { Value::Null } else { json!("Ethernet") },
        "altMacAddress": alt_mac,
        "totalRamMegabytes": 8192 * (1 + fleet::num(seed, i, 0xA1C, 4)),
        "appleSilicon": !model_id.starts_with("MacBookPro16"),
        "extensionAttributes": [],
    });
    match fleet::num(seed, i, 0xA1D, 100) {
        0 => hardware["make"] = Value::Null,
        1 => hardware["make"] = json!(""),
        2 => {
            if let Some(o) = hardware.as_object_mut() {
                o.remove("make");
            }
        }
        _ => {}
    }
    let asset_tag = match fleet::num(seed, i, 0xA1E, 10) {
        0..=5 => json!(format!("IT-{:05}", id)),
        6 | 7 => json!(""),
        _ => Value::Null,
    };
    let user = match &person {
        Some(p) => json!({
            "username": p.username,
            "realname": format!("{} {}", p.first, p.last),
            "email": email_as_entered(seed, i, p),
            "position": fleet::pick(seed, i, 0xA1F, POSITIONS),
            "phone": format!("+1 555 01{:02}", i % 100),
            "departmentId": (DEPARTMENTS.iter().position(|d| *d == dept).unwrap_or(0) + 1).to_string(),
            "buildingId": "1",
            "room": format!("{}", 100 + i % 300),
            "extensionAttributes": [],
        }),
        None => json!({
            "username": "", "realname": "", "email": "", "position": "", "phone": "",
            "departmentId": null, "buildingId": null, "room": "", "extensionAttributes": [],
        }),
    };
    let n_apps = 3 + fleet::num(seed, i, 0xA20, 4) as usize;
    let start = fleet::num(seed, i, 0xA21, MAC_APPS.len() as u64) as usize;
    let apps: Vec<Value> = (0..n_apps)
        .map(|k| {
            let (an, bundle, ver) = MAC_APPS[(start + k) % MAC_APPS.len()];
            json!({
                "name": format!("{an}.app"), "path": format!("/Applications/{an}.app"), "version": ver,
                "macAppStore": bundle.starts_with("com.apple"), "sizeMegabytes": 50 + (k * 37) % 900,
                "bundleId": bundle, "updateAvailable": false, "externalVersionId": "0",
            })
        })
        .collect();
    let managed = fleet::num(seed, i, 0xA22, 100) >= 3;
    json!({
        "id": id.to_string(),
        "udid": fleet::uuid(seed ^ 0xD0D0, idx).to_uppercase(),
        "general": {
            "name": name,
            "lastIpAddress": format!("203.0.113.{}", 1 + i % 250),
            "lastReportedIp": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, 1 + (i & 127)),
            "jamfBinaryVersion": "11.6.1-t1718110300",
            "platform": "Mac",
            "barcode1": null,
            "barcode2": null,
            "assetTag": asset_tag,
            "remoteManagement": { "managed": managed, "managementUsername": if managed { json!("jamfadmin") } else { Value::Null } },
            "supervised": fleet::num(seed, i, 0xA23, 2) == 0,
            "mdmCapable": { "capable": managed, "capableUsers": [] },
            "reportDate": fmt_time(report),
            "lastContactTime": fmt_time(contact),
            "lastCloudBackupDate": null,
            "lastEnrolledDate": fmt_time(enrolled),
            "mdmProfileExpiration": fmt_time(enrolled + chrono::Duration::days(730)),
            "initialEntryDate": enrolled.format("%Y-%m-%d").to_string(),
            "distributionPoint": null,
            "enrollmentMethod": null,
            "site": { "id": "-1", "name": "None" },
            "itunesStoreAccountActive": false,
            "enrolledViaAutomatedDeviceEnrollment": fleet::num(seed, i, 0xA24, 3) != 0,
            "userApprovedMdm": true,
            "declarativeDeviceManagementEnabled": fleet::num(seed, i, 0xA25, 2) == 0,
            "extensionAttributes": [],
            "managementId": fleet::uuid(seed ^ 0x3A3A, idx),
        },
        "hardware": hardware,
        "operatingSystem": {
            "name": os_name,
            "version": os_version,
            "build": os_build,
            "supplementalBuildVersion": null,
            "rapidSecurityResponse": null,
            "activeDirectoryStatus": "Not Bound",
            "fileVault2Status": "ALL_ENCRYPTED",
            "softwareUpdateDeviceId": null,
            "extensionAttributes": [],
        },
        "userAndLocation": user,
        "applications": apps,
    })
}

/// (model, modelIdentifier, modelNumber, short name, capacityMb)
const MOBILE_MODELS: &[(&str, &str, &str, &str, u64)] = &[
    ("iPhone 15 Pro", "iPhone16,1", "MTUV3LL", "iPhone", 131_072),
    ("iPhone 14", "iPhone14,7", "MPUF3LL", "iPhone", 131_072),
    ("iPhone 13", "iPhone14,5", "MLMG3LL", "iPhone", 131_072),
    (
        "iPhone SE (3rd generation)",
        "iPhone14,6",
        "MMX93LL",
        "iPhone",
        65_536,
    ),
    (
        "iPad Pro (11-inch) (4th generation)",
        "iPad14,3",
        "MNXE3LL",
        "iPad",
        262_144,
    ),
    (
        "iPad (10th generation)",
        "iPad13,18",
        "MPQ03LL",
        "iPad",
        65_536,
    ),
    (
        "iPad Air (5th generation)",
        "iPad13,16",
        "MM9C3LL",
        "iPad",
        65_536,
    ),
    (
        "iPad mini (6th generation)",
        "iPad14,1",
        "MK7M3LL",
        "iPad",
        65_536,
    ),
];

/// (osVersion, osBuild)
const IOS: &[(&str, &str)] = &[
    ("18.5", "22F76"),
    ("18.3.2", "22D82"),
    ("18.1", "22B83"),
    ("17.5.1", "21F90"),
    ("16.7.8", "20H343"),
];

fn gen_mobile(seed: u64, i: usize, id: u64) -> Value {
    let seed_m = seed ^ 0x0B11E;
    let (model, model_id, model_no, short, capacity) =
        *fleet::pick(seed_m, i, 0xB11, MOBILE_MODELS);
    let (os_version, os_build) = *fleet::pick(seed_m, i, 0xB12, IOS);
    let person = owner(seed_m, i, 0xB13, 15);
    let dept = *fleet::pick(seed_m, i, 0xB14, DEPARTMENTS);
    let name = match (fleet::num(seed_m, i, 0xB15, 10), &person) {
        (0..=6, Some(p)) => format!("{}\u{2019}s {short}", p.first),
        (7, _) => format!("会議室 {short} {:03}", i % 1000),
        _ => format!(
            "{short}-{}-{:03}",
            dept.to_uppercase().chars().take(3).collect::<String>(),
            i % 1000
        ),
    };
    let inv = epoch()
        - chrono::Duration::seconds(fleet::num(seed_m, i, 0xB16, 20 * 86_400) as i64)
        - chrono::Duration::milliseconds(fleet::num(seed_m, i, 0xB17, 1000) as i64);
    let enrolled = inv - chrono::Duration::days(10 + fleet::num(seed_m, i, 0xB18, 700) as i64);
    let serial = maybe_missing_serial(
        seed_m,
        i,
        0xB1A,
        apple_serial(&["DMP", "F4G", "GG7", "DLX", "HX9"], seed, i, 3_266_489_917),
    );
    let wifi = match fleet::num(seed_m, i, 0xB1B, 100) {
        0 | 1 => Value::Null,
        2 | 3 => json!(""),
        _ => json!(fleet::mac(seed_m, i, true)),
    };
    let user = match &person {
        Some(p) => json!({
            "username": p.username,
            "realName": format!("{} {}", p.first, p.last),
            "emailAddress": email_as_entered(seed_m, i, p),
            "position": fleet::pick(seed_m, i, 0xB1F, POSITIONS),
            "phoneNumber": format!("+1 555 02{:02}", i % 100),
            "departmentId": (DEPARTMENTS.iter().position(|d| *d == dept).unwrap_or(0) + 1).to_string(),
            "buildingId": "1",
            "room": "",
            "building": "HQ",
            "department": dept,
            "extensionAttributes": [],
        }),
        None => json!({
            "username": "", "realName": "", "emailAddress": "", "position": "", "phoneNumber": "",
            "departmentId": null, "buildingId": null, "room": "", "building": null, "department": null,
            "extensionAttributes": [],
        }),
    };
    let used = 10 + fleet::num(seed_m, i, 0xB1C, 80);
    json!({
        "mobileDeviceId": id.to_string(),
        "deviceType": "iOS",
        "general": {
            "udid": format!("00008{:03X}-{}", 100 + i % 3000, fleet::hex_id(seed_m, i, 16).to_uppercase()),
            "displayName": name,
            "assetTag": if fleet::num(seed_m, i, 0xB1D, 3) == 0 { Value::Null } else { json!(format!("MD-{:05}", id)) },
            "siteId": "-1",
            "lastInventoryUpdateDate": fmt_time(inv),
            "osVersion": os_version,
            "osRapidSecurityResponse": null,
            "osBuild": os_build,
            "osSupplementalBuildVersion": null,
            "softwareUpdateDeviceId": model_id,
            "ipAddress": format!("10.20.{}.{}", (i >> 8) & 255, 1 + (i & 127)),
            "managed": true,
            "supervised": fleet::num(seed_m, i, 0xB1E, 4) != 0,
            "deviceOwnershipType": "Institutional",
            "enrollmentMethodPrestage": null,
            "enrollmentSessionTokenValid": false,
            "lastEnrolledDate": fmt_time(enrolled),
            "mdmProfileExpirationDate": fmt_time(enrolled + chrono::Duration::days(730)),
            "timeZone": "Europe/Berlin",
            "declarativeDeviceManagementEnabled": true,
            "extensionAttributes": [],
            "airPlayPassword": null,
            "locales": null,
            "languages": null,
        },
        "hardware": {
            "capacityMb": capacity,
            "availableSpaceMb": capacity * (100 - used) / 100,
            "usedSpacePercentage": used,
            "batteryLevel": 20 + fleet::num(seed_m, i, 0xB20, 80),
            "serialNumber": serial,
            "wifiMacAddress": wifi,
            "bluetoothMacAddress": fleet::mac(seed_m ^ 0xB7, i, true),
            "modemFirmwareVersion": if short == "iPhone" { json!("2.05.01") } else { Value::Null },
            "model": model,
            "modelIdentifier": model_id,
            "modelNumber": model_no,
            "bluetoothLowEnergyCapable": true,
            // Not the record id: absent on some devices and shared by others.
            "deviceId": if i % 3 == 2 { Value::Null } else { json!(format!("{:X}", i % 7)) },
            "extensionAttributes": [],
        },
        "userAndLocation": user,
    })
}

/// Set a dotted path, creating objects along the way.
fn set_path(rec: &mut Value, path: &str, value: Value) {
    let mut cur = rec;
    let parts: Vec<&str> = path.split('.').collect();
    for (k, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let obj = cur.as_object_mut().expect("object");
        if k == parts.len() - 1 {
            obj.insert((*part).to_string(), value);
            return;
        }
        cur = obj
            .entry((*part).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn get_path<'a>(rec: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(rec, |cur, part| cur.get(part))
}

// ------------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------------

#[derive(Clone)]
struct AppState {
    fleet: Arc<Mutex<Fleet>>,
    control: Control,
    cfg: Arc<JamfConfig>,
}

impl AppState {
    fn fleet(&self) -> MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Jamf's `ApiError` body.
fn api_error(status: StatusCode, code: &str, field: Option<&str>, description: &str) -> Response {
    let body = json!({
        "httpStatus": status.as_u16(),
        "errors": [{ "code": code, "field": field, "description": description, "id": "0" }],
    });
    (status, Json(body)).into_response()
}

/// RFC 6749 §5.2 token error.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

async fn token(State(st): State<AppState>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        None => {
            st.control.count_token_request();
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing grant_type parameter",
            );
        }
        Some(_) => {
            st.control.count_token_request();
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Unsupported grant type",
            );
        }
    }
    let (Some(id), Some(secret)) = (form.get("client_id"), form.get("client_secret")) else {
        st.control.count_token_request();
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing client_id or client_secret",
        );
    };
    if *id != st.cfg.client_id || *secret != st.cfg.client_secret {
        st.control.count_token_request();
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    let (tok, life) = st
        .control
        .issue_token("eyJhbGciOiJIUzI1NiJ9.", st.cfg.token_lifetime);
    let expires_in = (life.as_secs_f64().ceil() as u64).saturating_sub(1).max(1);
    let mut r = Json(json!({
        "access_token": tok,
        "scope": "api-role:2",
        "token_type": "Bearer",
        "expires_in": expires_in,
    }))
    .into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Count the request, apply an injected fault, then check the bearer token.
async fn prelude(st: &AppState, path: &str, headers: &HeaderMap) -> Option<Response> {
    let fault = st.control.on_data_request(path);
    if let Some(r) = fault_response(fault).await {
        return Some(r);
    }
    match bearer(headers) {
        Some(t) if st.control.token_valid(&t) => None,
        _ => Some(api_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            None,
            "Unauthorized",
        )),
    }
}

async fn pro_version(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = prelude(&st, "/api/v1/jamf-pro-version", &headers).await {
        return r;
    }
    let v = if st.cfg.versions.contains(&"v4") {
        "11.30.0-t1760000000"
    } else {
        "11.14.1-t1738000000"
    };
    Json(json!({ "version": v })).into_response()
}

async fn not_found(
    State(st): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_string();
    if path.starts_with("/api/") {
        if let Some(r) = prelude(&st, &path, &headers).await {
            return r;
        }
    }
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "httpStatus": 404, "errors": [] })),
    )
        .into_response()
}

/// Parsed common list parameters.
struct ListQuery {
    sections: Vec<String>,
    page: usize,
    page_size: usize,
    sort: Option<String>,
    filter: Option<String>,
}

fn parse_list_query(raw: Option<&str>, max_page_size: usize) -> Result<ListQuery, Response> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let bad = |field: &str, msg: String| {
        api_error(StatusCode::BAD_REQUEST, "INVALID_FIELD", Some(field), &msg)
    };
    let mut q = ListQuery {
        sections: Vec::new(),
        page: 0,
        page_size: DEFAULT_PAGE_SIZE.min(max_page_size.max(1)),
        sort: None,
        filter: None,
    };
    for (k, v) in pairs {
        match k.as_str() {
            // Spring binds both `section=A&section=B` and `section=A,B` to a list.
            "section" => q.sections.extend(
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            ),
            "page" => {
                let n: i64 = v
                    .trim()
                    .parse()
                    .map_err(|_| bad("page", format!("page must be a number, got {v:?}")))?;
                if n < 0 {
                    return Err(bad("page", "page must not be negative".into()));
                }
                q.page = n as usize;
            }
            "page-size" => {
                let n: i64 = v.trim().parse().map_err(|_| {
                    bad(
                        "page-size",
                        format!("page-size must be a number, got {v:?}"),
                    )
                })?;
                if n < 1 {
                    return Err(bad("page-size", "page-size must be at least 1".into()));
                }
                // Jamf silently clamps an oversized page (Jamf-Concepts/jamf-cli PR #389).
                q.page_size = (n as usize).min(max_page_size.max(1));
            }
            "sort" => q.sort = Some(v),
            "filter" => q.filter = Some(v).filter(|f| !f.trim().is_empty()),
            _ => {}
        }
    }
    Ok(q)
}

/// A field's JSON path in the record, for sort and filter (`None`: not allowed).
type FieldMap = fn(&str) -> Option<(&'static str, bool)>;

/// Computers: nested names, per jamf-pro-sdk-python `api_options.py`. (path, numeric)
fn computer_field(name: &str) -> Option<(&'static str, bool)> {
    const FIELDS: &[&str] = &[
        "general.name",
        "udid",
        "general.assetTag",
        "general.barcode1",
        "general.barcode2",
        "general.enrolledViaAutomatedDeviceEnrollment",
        "general.lastIpAddress",
        "general.itunesStoreAccountActive",
        "general.jamfBinaryVersion",
        "general.lastContactTime",
        "general.lastEnrolledDate",
        "general.lastCloudBackupDate",
        "general.reportDate",
        "general.lastReportedIp",
        "general.remoteManagement.managed",
        "general.remoteManagement.managementUsername",
        "general.mdmCapable.capable",
        "general.mdmCertificateExpiration",
        "general.platform",
        "general.supervised",
        "general.userApprovedMdm",
        "general.declarativeDeviceManagementEnabled",
        "hardware.macAddress",
        "hardware.make",
        "hardware.model",
        "hardware.modelIdentifier",
        "hardware.serialNumber",
        "operatingSystem.activeDirectoryStatus",
        "operatingSystem.fileVault2Status",
        "operatingSystem.build",
        "operatingSystem.supplementalBuildVersion",
        "operatingSystem.rapidSecurityResponse",
        "operatingSystem.name",
        "operatingSystem.version",
        "operatingSystem.softwareUpdateDeviceId",
        "userAndLocation.buildingId",
        "userAndLocation.departmentId",
        "userAndLocation.email",
        "userAndLocation.realname",
        "userAndLocation.phone",
        "userAndLocation.position",
        "userAndLocation.room",
        "userAndLocation.username",
    ];
    if name == "id" {
        return Some(("id", true));
    }
    FIELDS.iter().find(|f| **f == name).map(|f| (*f, false))
}

/// Mobile detail: flat names mapped to the nested record, per `api_options.py`.
fn mobile_field(name: &str) -> Option<(&'static str, bool)> {
    Some(match name {
        "mobileDeviceId" => ("mobileDeviceId", true),
        // A hardware field, null or repeated across devices: not a paging key.
        "deviceId" => ("hardware.deviceId", false),
        "displayName" => ("general.displayName", false),
        "udid" => ("general.udid", false),
        "assetTag" => ("general.assetTag", false),
        "osVersion" => ("general.osVersion", false),
        "osBuild" => ("general.osBuild", false),
        "ipAddress" => ("general.ipAddress", false),
        "managed" => ("general.managed", false),
        "supervised" => ("general.supervised", false),
        "timeZone" => ("general.timeZone", false),
        "lastInventoryUpdateDate" => ("general.lastInventoryUpdateDate", false),
        "lastEnrolledDate" => ("general.lastEnrolledDate", false),
        "serialNumber" => ("hardware.serialNumber", false),
        "wifiMacAddress" => ("hardware.wifiMacAddress", false),
        "bluetoothMacAddress" => ("hardware.bluetoothMacAddress", false),
        "model" => ("hardware.model", false),
        "modelIdentifier" => ("hardware.modelIdentifier", false),
        "modelNumber" => ("hardware.modelNumber", false),
        "username" => ("userAndLocation.username", false),
        "emailAddress" => ("userAndLocation.emailAddress", false),
        "fullName" => ("userAndLocation.realName", false),
        "position" => ("userAndLocation.position", false),
        "department" => ("userAndLocation.department", false),
        "building" => ("userAndLocation.building", false),
        "room" => ("userAndLocation.room", false),
        _ => return None,
    })
}

/// Slim mobile list: top-level names.
fn slim_field(name: &str) -> Option<(&'static str, bool)> {
    Some(match name {
        "id" => ("id", true),
        "name" => ("name", false),
        "serialNumber" => ("serialNumber", false),
        "udid" => ("udid", false),
        "username" => ("username", false),
        "model" => ("model", false),
        "modelIdentifier" => ("modelIdentifier", false),
        "wifiMacAddress" => ("wifiMacAddress", false),
        "type" => ("type", false),
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum SortKey {
    Null,
    Num(f64),
    Str(String),
}

fn sort_key(v: Option<&Value>, numeric: bool) -> SortKey {
    match v {
        None | Some(Value::Null) => SortKey::Null,
        Some(Value::Number(n)) => SortKey::Num(n.as_f64().unwrap_or(0.0)),
        Some(Value::Bool(b)) => SortKey::Num(if *b { 1.0 } else { 0.0 }),
        Some(Value::String(s)) if numeric => s
            .parse::<f64>()
            .map(SortKey::Num)
            .unwrap_or(SortKey::Str(s.to_lowercase())),
        Some(Value::String(s)) => SortKey::Str(s.to_lowercase()),
        Some(other) => SortKey::Str(other.to_string()),
    }
}

fn cmp_keys(a: &SortKey, b: &SortKey) -> Ordering {
    match (a, b) {
        (SortKey::Null, SortKey::Null) => Ordering::Equal,
        (SortKey::Null, _) => Ordering::Less,
        (_, SortKey::Null) => Ordering::Greater,
        (SortKey::Num(x), SortKey::Num(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (SortKey::Num(_), SortKey::Str(_)) => Ordering::Less,
        (SortKey::Str(_), SortKey::Num(_)) => Ordering::Greater,
        (SortKey::Str(x), SortKey::Str(y)) => x.cmp(y),
    }
}

/// Parse `field:dir,field:dir` into (path, numeric, descending).
fn parse_sort(sort: &str, fields: FieldMap) -> Result<Vec<(&'static str, bool, bool)>, Response> {
    let mut out = Vec::new();
    for part in sort.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, dir) = part.rsplit_once(':').unwrap_or((part, "asc"));
        let desc = match dir.to_ascii_lowercase().as_str() {
            "asc" => false,
            "desc" => true,
            _ => {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    Some("sort"),
                    &format!("sort direction must be asc or desc in {part:?}"),
                ))
            }
        };
        let Some((path, numeric)) = fields(name) else {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "INVALID_SORT_FIELD",
                Some("sort"),
                &format!("{name} is not a sortable field"),
            ));
        };
        out.push((path, numeric, desc));
    }
    Ok(out)
}

/// Filter, sort and slice a listing; returns (totalCount, the page's records). With `tie_salt`,
/// records whose sort keys tie come in an order that changes from request to request, as a
/// database without a unique tiebreaker gives them (paging on a non-unique field then repeats and
/// skips records); without it ties keep enrolment order.
fn select(
    records: &[Value],
    q: &ListQuery,
    default_sort: &str,
    fields: FieldMap,
    tie_salt: Option<u64>,
) -> Result<(usize, Vec<Value>), Response> {
    let filter = match &q.filter {
        None => None,
        Some(f) => {
            let expr = rsql::parse(f).map_err(|e| {
                api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_RSQL_FILTER",
                    Some("filter"),
                    &e,
                )
            })?;
            let resolved = expr.resolve(fields).map_err(|name| {
                api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_RSQL_FILTER_FIELD",
                    Some("filter"),
                    &format!("{name} is not a filterable field"),
                )
            })?;
            Some(resolved)
        }
    };
    let sort = parse_sort(q.sort.as_deref().unwrap_or(default_sort), fields)?;
    let mut matched: Vec<(Vec<SortKey>, u64, usize)> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| filter.as_ref().is_none_or(|e| e.eval(&|p| get_path(r, p))))
        .map(|(k, r)| {
            let tie = tie_salt.map_or(k as u64, |salt| fleet::num(salt, k, 0x71E, u64::MAX));
            (
                sort.iter()
                    .map(|(p, num, _)| sort_key(get_path(r, p), *num))
                    .collect(),
                tie,
                k,
            )
        })
        .collect();
    matched.sort_by(|(a, ta, ka), (b, tb, kb)| {
        for (n, (_, _, desc)) in sort.iter().enumerate() {
            let o = cmp_keys(&a[n], &b[n]);
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        ta.cmp(tb).then(ka.cmp(kb))
    });
    let total = matched.len();
    let start = q.page.saturating_mul(q.page_size);
    let page = matched
        .iter()
        .skip(start)
        .take(q.page_size)
        .map(|(_, _, k)| records[*k].clone())
        .collect();
    Ok((total, page))
}

const COMPUTER_SECTIONS: &[(&str, &str)] = &[
    ("GENERAL", "general"),
    ("DISK_ENCRYPTION", "diskEncryption"),
    ("PURCHASING", "purchasing"),
    ("APPLICATIONS", "applications"),
    ("STORAGE", "storage"),
    ("USER_AND_LOCATION", "userAndLocation"),
    ("CONFIGURATION_PROFILES", "configurationProfiles"),
    ("PRINTERS", "printers"),
    ("SERVICES", "services"),
    ("HARDWARE", "hardware"),
    ("LOCAL_USER_ACCOUNTS", "localUserAccounts"),
    ("CERTIFICATES", "certificates"),
    ("ATTACHMENTS", "attachments"),
    ("PLUGINS", "plugins"),
    ("PACKAGE_RECEIPTS", "packageReceipts"),
    ("FONTS", "fonts"),
    ("SECURITY", "security"),
    ("OPERATING_SYSTEM", "operatingSystem"),
    ("LICENSED_SOFTWARE", "licensedSoftware"),
    ("IBEACONS", "ibeacons"),
    ("SOFTWARE_UPDATES", "softwareUpdates"),
    ("EXTENSION_ATTRIBUTES", "extensionAttributes"),
    ("CONTENT_CACHING", "contentCaching"),
    ("GROUP_MEMBERSHIPS", "groupMemberships"),
];

const MOBILE_SECTIONS: &[(&str, &str)] = &[
    ("GENERAL", "general"),
    ("HARDWARE", "hardware"),
    ("USER_AND_LOCATION", "userAndLocation"),
    ("PURCHASING", "purchasing"),
    ("SECURITY", "security"),
    ("APPLICATIONS", "applications"),
    ("EBOOKS", "ebooks"),
    ("NETWORK", "network"),
    ("SERVICE_SUBSCRIPTIONS", "serviceSubscriptions"),
    ("CERTIFICATES", "certificates"),
    ("PROFILES", "profiles"),
    ("USER_PROFILES", "userProfiles"),
    ("PROVISIONING_PROFILES", "provisioningProfiles"),
    ("SHARED_USERS", "sharedUsers"),
    ("EXTENSION_ATTRIBUTES", "extensionAttributes"),
];

/// Which section keys to fill: `sections` validated against `known` (`ALL` allowed for computers).
fn wanted_sections(
    sections: &[String],
    known: &[(&str, &'static str)],
    allow_all: bool,
) -> Result<Vec<&'static str>, Response> {
    if sections.is_empty() {
        return Ok(vec!["general"]);
    }
    let mut keys = Vec::new();
    for s in sections {
        let up = s.to_ascii_uppercase();
        if allow_all && up == "ALL" {
            return Ok(known.iter().map(|(_, k)| *k).collect());
        }
        match known.iter().find(|(name, _)| *name == up) {
            Some((_, k)) => keys.push(*k),
            None => {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    Some("section"),
                    &format!("{s} is not a section of this endpoint"),
                ))
            }
        }
    }
    Ok(keys)
}

/// The record as the API returns it: top-level ids, every section key, null unless requested.
fn project(rec: &Value, ids: &[&str], known: &[(&str, &'static str)], wanted: &[&str]) -> Value {
    let mut out = Map::new();
    for id in ids {
        out.insert(
            (*id).to_string(),
            rec.get(*id).cloned().unwrap_or(Value::Null),
        );
    }
    for (_, key) in known {
        let v = if wanted.contains(key) {
            rec.get(*key).cloned().unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        out.insert((*key).to_string(), v);
    }
    Value::Object(out)
}

async fn computers(
    State(st): State<AppState>,
    Path(version): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/{version}/computers-inventory");
    if let Some(r) = prelude(&st, &path, &headers).await {
        return r;
    }
    if !st.cfg.versions.iter().any(|v| *v == version) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "httpStatus": 404, "errors": [] })),
        )
            .into_response();
    }
    let q = match parse_list_query(raw.as_deref(), st.cfg.max_page_size) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let wanted = match wanted_sections(&q.sections, COMPUTER_SECTIONS, true) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let (total, page) = {
        let f = st.fleet();
        match select(&f.computers, &q, "general.name:asc", computer_field, None) {
            Ok(x) => x,
            Err(r) => return r,
        }
    };
    let results: Vec<Value> = page
        .iter()
        .map(|rec| {
            let mut out = project(rec, &["id", "udid"], COMPUTER_SECTIONS, &wanted);
            if version != "v1" {
                if let Some(g) = out.get_mut("general").and_then(Value::as_object_mut) {
                    let ip = g.remove("lastReportedIp").unwrap_or(Value::Null);
                    g.insert("lastReportedIpV4".into(), ip);
                    g.insert("lastReportedIpV6".into(), Value::Null);
                }
            }
            out
        })
        .collect();
    Json(json!({ "totalCount": total, "results": results })).into_response()
}

async fn mobile_detail(
    State(st): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = prelude(&st, "/api/v2/mobile-devices/detail", &headers).await {
        return r;
    }
    let q = match parse_list_query(raw.as_deref(), st.cfg.max_page_size) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let wanted = match wanted_sections(&q.sections, MOBILE_SECTIONS, false) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let (total, page) = {
        let f = st.fleet();
        // Ties (a null or repeated `hardware.deviceId`, equal display names) move between requests.
        let salt = st.control.data_requests();
        match select(&f.mobiles, &q, "displayName:asc", mobile_field, Some(salt)) {
            Ok(x) => x,
            Err(r) => return r,
        }
    };
    let results: Vec<Value> = page
        .iter()
        .map(|rec| {
            project(
                rec,
                &["mobileDeviceId", "deviceType"],
                MOBILE_SECTIONS,
                &wanted,
            )
        })
        .collect();
    Json(json!({ "totalCount": total, "results": results })).into_response()
}

fn slim(seed: u64, rec: &Value) -> Value {
    let s = |p: &str| get_path(rec, p).cloned().unwrap_or(Value::Null);
    let id = s("mobileDeviceId");
    let idn: usize = id.as_str().and_then(|x| x.parse().ok()).unwrap_or(0);
    json!({
        "id": id,
        "name": s("general.displayName"),
        "serialNumber": s("hardware.serialNumber"),
        "wifiMacAddress": s("hardware.wifiMacAddress"),
        "udid": s("general.udid"),
        "phoneNumber": if s("hardware.modemFirmwareVersion").is_null() { json!("") } else { s("userAndLocation.phoneNumber") },
        "model": s("hardware.model"),
        "modelIdentifier": s("hardware.modelIdentifier"),
        "username": s("userAndLocation.username"),
        "type": "ios",
        "managementId": fleet::uuid(seed ^ 0x5A5A, idn),
        "softwareUpdateDeviceId": s("general.softwareUpdateDeviceId"),
    })
}

async fn mobile_list(
    State(st): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = prelude(&st, "/api/v2/mobile-devices", &headers).await {
        return r;
    }
    let q = match parse_list_query(raw.as_deref(), st.cfg.max_page_size) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let slims: Vec<Value> = {
        let f = st.fleet();
        f.mobiles.iter().map(|r| slim(f.seed, r)).collect()
    };
    let q = ListQuery { filter: None, ..q };
    match select(&slims, &q, "id:asc", slim_field, None) {
        Ok((total, results)) => {
            Json(json!({ "totalCount": total, "results": results })).into_response()
        }
        Err(r) => r,
    }
}

// ------------------------------------------------------------------------------------------------
// RSQL
// ------------------------------------------------------------------------------------------------

/// A small RSQL (FIQL) parser and evaluator, enough for Jamf's `filter` parameter.
pub mod rsql {
    use std::cmp::Ordering;

    use chrono::{DateTime, NaiveDate, Utc};
    use serde_json::Value;

    /// A comparison operator.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op {
        Eq,
        Ne,
        Lt,
        Le,
        Gt,
        Ge,
        In,
        Out,
    }

    /// A parsed filter; `field` is the selector as written, or the record path after [`Expr::resolve`].
    #[derive(Debug, Clone, PartialEq)]
    pub enum Expr {
        And(Vec<Expr>),
        Or(Vec<Expr>),
        Cmp {
            field: String,
            op: Op,
            args: Vec<String>,
            numeric: bool,
        },
    }

    /// Parse a filter expression.
    pub fn parse(s: &str) -> Result<Expr, String> {
        let chars: Vec<char> = s.chars().collect();
        let mut p = Parser { c: &chars, i: 0 };
        let e = p.or()?;
        p.ws();
        if p.i != chars.len() {
            return Err(format!(
                "unexpected {:?} at position {} of the filter",
                chars[p.i], p.i
            ));
        }
        Ok(e)
    }

    struct Parser<'a> {
        c: &'a [char],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.i < self.c.len() && self.c[self.i].is_whitespace() {
                self.i += 1;
            }
        }
        fn peek(&self) -> Option<char> {
            self.c.get(self.i).copied()
        }
        fn eat(&mut self, s: &str) -> bool {
            let n = s.chars().count();
            if self.c.len() >= self.i + n
                && self.c[self.i..self.i + n].iter().copied().eq(s.chars())
            {
                self.i += n;
                true
            } else {
                false
            }
        }
        fn or(&mut self) -> Result<Expr, String> {
            let mut v = vec![self.and()?];
            loop {
                self.ws();
                if self.peek() == Some(',') {
                    self.i += 1;
                    v.push(self.and()?);
                } else {
                    break;
                }
            }
            Ok(if v.len() == 1 {
                v.remove(0)
            } else {
                Expr::Or(v)
            })
        }
        fn and(&mut self) -> Result<Expr, String> {
            let mut v = vec![self.term()?];
            loop {
                self.ws();
                if self.peek() == Some(';') {
                    self.i += 1;
                    v.push(self.term()?);
                } else {
                    break;
                }
            }
            Ok(if v.len() == 1 {
                v.remove(0)
            } else {
                Expr::And(v)
            })
        }
        fn term(&mut self) -> Result<Expr, String> {
            self.ws();
            if self.peek() == Some('(') {
                self.i += 1;
                let e = self.or()?;
                self.ws();
                if self.peek() != Some(')') {
                    return Err(format!("missing `)` at position {}", self.i));
                }
                self.i += 1;
                return Ok(e);
            }
            self.cmp()
        }
        fn cmp(&mut self) -> Result<Expr, String> {
            let start = self.i;
            while self
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
            {
                self.i += 1;
            }
            if self.i == start {
                return Err(format!("expected a field name at position {start}"));
            }
            let field: String = self.c[start..self.i].iter().collect();
            self.ws();
            let op = if self.eat("==") {
                Op::Eq
            } else if self.eat("!=") {
                Op::Ne
            } else if self.eat("<=") || self.eat("=le=") {
                Op::Le
            } else if self.eat(">=") || self.eat("=ge=") {
                Op::Ge
            } else if self.eat("<") || self.eat("=lt=") {
                Op::Lt
            } else if self.eat(">") || self.eat("=gt=") {
                Op::Gt
            } else if self.eat("=in=") {
                Op::In
            } else if self.eat("=out=") {
                Op::Out
            } else {
                return Err(format!(
                    "expected an operator (==, !=, <, <=, >, >=, =in=, =out=) after {field}"
                ));
            };
            self.ws();
            let args = if matches!(op, Op::In | Op::Out) {
                if self.peek() != Some('(') {
                    return Err(format!("{field}: =in= and =out= take a list such as (a,b)"));
                }
                self.i += 1;
                let mut args = vec![self.value()?];
                loop {
                    self.ws();
                    match self.peek() {
                        Some(',') => {
                            self.i += 1;
                            args.push(self.value()?);
                        }
                        Some(')') => {
                            self.i += 1;
                            break;
                        }
                        _ => return Err(format!("{field}: unterminated list")),
                    }
                }
                args
            } else {
                vec![self.value()?]
            };
            Ok(Expr::Cmp {
                field,
                op,
                args,
                numeric: false,
            })
        }
        fn value(&mut self) -> Result<String, String> {
            self.ws();
            match self.peek() {
                Some(q @ ('"' | '\'')) => {
                    self.i += 1;
                    let mut s = String::new();
                    loop {
                        match self.peek() {
                            None => return Err("unterminated quoted value".into()),
                            Some('\\') => {
                                self.i += 1;
                                if let Some(c) = self.peek() {
                                    s.push(c);
                                    self.i += 1;
                                }
                            }
                            Some(c) if c == q => {
                                self.i += 1;
                                return Ok(s);
                            }
                            Some(c) => {
                                s.push(c);
                                self.i += 1;
                            }
                        }
                    }
                }
                _ => {
                    let start = self.i;
                    while self
                        .peek()
                        .is_some_and(|c| !matches!(c, ';' | ',' | '(' | ')') && !c.is_whitespace())
                    {
                        self.i += 1;
                    }
                    if self.i == start {
                        return Err(format!("expected a value at position {start}"));
                    }
                    Ok(self.c[start..self.i].iter().collect())
                }
            }
        }
    }

    impl Expr {
        /// Map every selector through `fields` (name → (record path, numeric)); `Err(name)` for an unknown one.
        pub fn resolve(
            self,
            fields: fn(&str) -> Option<(&'static str, bool)>,
        ) -> Result<Expr, String> {
            Ok(match self {
                Expr::And(v) => Expr::And(
                    v.into_iter()
                        .map(|e| e.resolve(fields))
                        .collect::<Result<_, _>>()?,
                ),
                Expr::Or(v) => Expr::Or(
                    v.into_iter()
                        .map(|e| e.resolve(fields))
                        .collect::<Result<_, _>>()?,
                ),
                Expr::Cmp {
                    field, op, args, ..
                } => {
                    let (path, numeric) = fields(&field).ok_or(field)?;
                    Expr::Cmp {
                        field: path.to_string(),
                        op,
                        args,
                        numeric,
                    }
                }
            })
        }

        /// Evaluate against a record, `get` reading a path.
        pub fn eval<'a>(&self, get: &dyn Fn(&str) -> Option<&'a Value>) -> bool {
            match self {
                Expr::And(v) => v.iter().all(|e| e.eval(get)),
                Expr::Or(v) => v.iter().any(|e| e.eval(get)),
                Expr::Cmp {
                    field,
                    op,
                    args,
                    numeric,
                } => {
                    let val = get(field).unwrap_or(&Value::Null);
                    match op {
                        Op::Eq => matches(val, &args[0], *numeric),
                        Op::Ne => !matches(val, &args[0], *numeric),
                        Op::In => args.iter().any(|a| matches(val, a, *numeric)),
                        Op::Out => !args.iter().any(|a| matches(val, a, *numeric)),
                        Op::Lt => compare(val, &args[0], *numeric) == Some(Ordering::Less),
                        Op::Le => matches!(
                            compare(val, &args[0], *numeric),
                            Some(Ordering::Less | Ordering::Equal)
                        ),
                        Op::Gt => compare(val, &args[0], *numeric) == Some(Ordering::Greater),
                        Op::Ge => matches!(
                            compare(val, &args[0], *numeric),
                            Some(Ordering::Greater | Ordering::Equal)
                        ),
                    }
                }
            }
        }
    }

    fn text(v: &Value) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            other => Some(other.to_string()),
        }
    }

    fn time(s: &str) -> Option<DateTime<Utc>> {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Some(t.with_timezone(&Utc));
        }
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc())
    }

    fn glob(pattern: &str, s: &str) -> bool {
        let parts: Vec<&str> = pattern.split('*').collect();
        let mut rest = s;
        for (k, part) in parts.iter().enumerate() {
            if k == 0 {
                match rest.strip_prefix(part) {
                    Some(r) => rest = r,
                    None => return false,
                }
            } else if k == parts.len() - 1 {
                return part.is_empty() || rest.ends_with(part);
            } else {
                match rest.find(part) {
                    Some(p) => rest = &rest[p + part.len()..],
                    None => return false,
                }
            }
        }
        rest.is_empty()
    }

    fn matches(v: &Value, arg: &str, numeric: bool) -> bool {
        let Some(s) = text(v) else {
            return arg.is_empty() || arg.eq_ignore_ascii_case("null");
        };
        if arg.contains('*') {
            return glob(&arg.to_lowercase(), &s.to_lowercase());
        }
        compare(v, arg, numeric) == Some(Ordering::Equal)
    }

    fn compare(v: &Value, arg: &str, numeric: bool) -> Option<Ordering> {
        let s = text(v)?;
        if numeric || v.is_number() {
            if let (Ok(a), Ok(b)) = (s.parse::<f64>(), arg.parse::<f64>()) {
                return a.partial_cmp(&b);
            }
        }
        if let (Some(a), Some(b)) = (time(&s), time(arg)) {
            return Some(a.cmp(&b));
        }
        Some(s.to_lowercase().cmp(&arg.to_lowercase()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        fn run(filter: &str, rec: &Value) -> bool {
            let e = parse(filter).unwrap();
            fn field(n: &str) -> Option<(&'static str, bool)> {
                Some(match n {
                    "name" => ("general.name", false),
                    "id" => ("id", true),
                    "general.reportDate" => ("general.reportDate", false),
                    "general.managed" => ("general.managed", false),
                    "x" => ("x", false),
                    _ => return None,
                })
            }
            let e = e.resolve(field).unwrap();
            e.eval(&|p| p.split('.').try_fold(rec, |c, k| c.get(k)))
        }

        #[test]
        fn operators() {
            let r = json!({"id": "112", "general": {"name": "Chloé’s MacBook", "reportDate": "2024-06-19T06:02:55.870Z", "managed": true}, "x": null});
            assert!(run("id==112", &r));
            assert!(run("id>99", &r), "ids compare as numbers");
            assert!(run("name==\"chloé’s macbook\"", &r));
            assert!(run("name==*MacBook", &r));
            assert!(run("name!=Other", &r));
            assert!(run("general.reportDate>=\"2024-06-01T00:00:00Z\"", &r));
            assert!(!run("general.reportDate<2024-06-01", &r));
            assert!(run("id=in=(1,112,5)", &r));
            assert!(run("id=out=(1,5)", &r));
            assert!(run("general.managed==true", &r));
            assert!(run("(id==1,id==112);name==*Mac*", &r));
            assert!(!run("id==1;name==*Mac*", &r));
            assert!(run("x==\"\"", &r));
        }

        #[test]
        fn errors() {
            assert!(parse("id").is_err());
            assert!(parse("id==").is_err());
            assert!(parse("id=in=1").is_err());
            assert!(parse("(id==1").is_err());
            assert!(parse("id==\"abc").is_err());
            assert!(parse("id==1)").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_is_seeded_and_realistic() {
        let a = Fleet::generate(7, 2000, 500);
        let b = Fleet::generate(7, 2000, 500);
        assert_eq!(a.computers, b.computers);
        assert_eq!(a.mobiles, b.mobiles);
        let serials: Vec<Option<&str>> = a
            .computers
            .iter()
            .map(|c| c["hardware"]["serialNumber"].as_str())
            .collect();
        let bad = serials
            .iter()
            .filter(|s| assetsync::normalize::serial(s.unwrap_or("")).is_none())
            .count();
        assert!(
            (10..=80).contains(&bad),
            "about 2% without a usable serial, got {bad}"
        );
        let mut good: Vec<&str> = serials
            .iter()
            .flatten()
            .copied()
            .filter(|s| assetsync::normalize::serial(s).is_some())
            .collect();
        let n = good.len();
        good.sort();
        good.dedup();
        assert_eq!(good.len(), n, "serials are unique");
        let no_wifi = a
            .computers
            .iter()
            .filter(|c| {
                c["hardware"]["macAddress"]
                    .as_str()
                    .unwrap_or("")
                    .is_empty()
            })
            .count();
        assert!(no_wifi > 20, "{no_wifi}");
        assert!(a
            .computers
            .iter()
            .filter(|c| c["hardware"]["macAddress"]
                .as_str()
                .unwrap_or("")
                .is_empty())
            .all(|c| c["hardware"]["altMacAddress"].is_string()));
        let no_make = a
            .computers
            .iter()
            .filter(|c| c["hardware"]["make"].as_str().unwrap_or("").is_empty())
            .count();
        assert!(no_make > 10, "{no_make}");
        let no_user = a
            .computers
            .iter()
            .filter(|c| c["userAndLocation"]["email"] == "")
            .count();
        assert!(no_user > 50, "{no_user}");
        let mut emails: HashMap<String, usize> = HashMap::new();
        for c in &a.computers {
            if let Some(e) = c["userAndLocation"]["email"]
                .as_str()
                .filter(|e| !e.is_empty())
            {
                *emails.entry(e.to_lowercase()).or_default() += 1;
            }
        }
        assert!(
            emails.values().any(|n| *n >= 2),
            "someone owns two computers"
        );
        assert!(a
            .computers
            .iter()
            .any(|c| c["general"]["name"].as_str().unwrap_or("").contains('日')));
        assert!(a.computers.iter().any(|c| c["userAndLocation"]["email"]
            .as_str()
            .unwrap_or("")
            .chars()
            .any(|ch| ch.is_uppercase())));
        let ids: Vec<u64> = a
            .computers
            .iter()
            .map(|c| c["id"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.windows(2).any(|w| w[1] - w[0] > 1), "ids have gaps");
        let mserials: Vec<&str> = a
            .mobiles
            .iter()
            .filter_map(|m| m["hardware"]["serialNumber"].as_str())
            .collect();
        assert!(mserials
            .iter()
            .all(|s| !serials.contains(&Some(*s)) || assetsync::normalize::serial(s).is_none()));
        assert!(a
            .mobiles
            .iter()
            .any(|m| m["hardware"]["model"].as_str().unwrap().starts_with("iPad")));
        assert!(a.mobiles.iter().any(|m| m["hardware"]["model"]
            .as_str()
            .unwrap()
            .starts_with("iPhone")));
    }

    #[test]
    fn set_path_creates_and_replaces() {
        let mut v = json!({"a": {"b": 1}});
        set_path(&mut v, "a.b", json!(2));
        set_path(&mut v, "c.d", json!("x"));
        assert_eq!(v, json!({"a": {"b": 2}, "c": {"d": "x"}}));
    }
}
