//! Microsoft Intune / Entra ID simulator: the Entra ID v2.0 client-credentials token endpoint and
//! Microsoft Graph's `deviceManagement/managedDevices` and `users` listings, as vendor-apis.md §3
//! and Microsoft's docs describe them.
//!
//! - `POST /{tenant}/oauth2/v2.0/token` (form): checks the tenant, `grant_type`, `client_id`,
//!   `scope` (must end with `/.default` and name Graph or this simulator) and `client_secret`, and
//!   answers the AADSTS errors as Entra does: `{"error", "error_description": "AADSTSnnn: ...\r\nTrace
//!   ID: ...", "error_codes": [nnn], ...}`, HTTP 401 for `invalid_client`, 400 otherwise. Tokens are
//!   JWT-shaped, their `roles` claim carries the application permissions the app was granted.
//! - `GET /v1.0/deviceManagement/managedDevices` and `GET /v1.0/users` (`/beta` too): 401
//!   `InvalidAuthenticationToken` without a valid token, 403 when the token lacks the permission
//!   (Intune's nested "Application is not authorized..." text; `Authorization_RequestDenied` for
//!   users), `$select` honoured (unknown property → 400), `$top` (users 1..=999 else 400
//!   `Request_UnsupportedQuery`; default 100; managedDevices clamps to 1000, its default),
//!   simple `$filter` (`prop eq 'x'` / `prop eq true`, joined by `and`), opaque `$skiptoken`
//!   (key-based, stable while records are added or removed), `@odata.nextLink` built from the
//!   request's `Host` so it points back here, `@odata.count` on every managedDevices page, and on
//!   users only with `$count=true` plus `ConsistencyLevel: eventual`.
//!
//! - `GET /v1.0/deviceManagement/detectedApps` (the tenant's discovered apps, one per name and
//!   version: `id` (64 hex), `displayName`, `version`, `sizeInByte`, `deviceCount`, `publisher`,
//!   `platform`, per Graph's detectedApp resource) and `GET /v1.0/deviceManagement/detectedApps/{id}/managedDevices`
//!   (the devices that have it, managedDevice properties, `$select` honoured), both paged with
//!   `$top` (default 100 here, at most 1000) and `$skiptoken` next links, under
//!   `DeviceManagementManagedDevices.Read.All`; `@odata.count` on detectedApps pages.
//!
//! The fleet is seeded: user `i` is `fleet::person(i)` (UPN = the person's email), device `i`
//! belongs to person `i*3/4` (so several devices share a user), some devices have no serial or a
//! placeholder one, no user, a `0001-01-01` last sync, the all-zero Entra device id; MACs are colon-less.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::{bearer, fleet, serve, Control, Fault, SimHandle};

/// The application permissions a fully consented app holds.
pub const DEVICE_ROLE: &str = "DeviceManagementManagedDevices.Read.All";
pub const USER_ROLE: &str = "User.Read.All";
/// The page `managedDevices` serves when `$top` is absent or larger.
pub const DEVICES_PAGE_CAP: usize = 1000;
/// The largest `$top` on `users`.
pub const USERS_MAX_TOP: usize = 999;
/// `users` default page.
pub const USERS_DEFAULT_TOP: usize = 100;
/// The all-zero GUID Intune reports for devices not joined to Entra ID.
pub const ZERO_GUID: &str = "00000000-0000-0000-0000-000000000000";
/// Intune's sentinel for a date that was never set.
pub const NEVER: &str = "0001-01-01T00:00:00Z";

const USER_SALT: u64 = 0x5553_4552;
const DEVICE_SALT: u64 = 0x0D1C_E000;

/// managedDevice properties of Graph v1.0 (a `$select` of anything else is a 400).
const DEVICE_PROPS: &[&str] = &[
    "id",
    "userId",
    "deviceName",
    "managedDeviceOwnerType",
    "deviceActionResults",
    "enrolledDateTime",
    "lastSyncDateTime",
    "operatingSystem",
    "complianceState",
    "jailBroken",
    "managementAgent",
    "osVersion",
    "easActivated",
    "easDeviceId",
    "easActivationDateTime",
    "azureADRegistered",
    "deviceEnrollmentType",
    "activationLockBypassCode",
    "emailAddress",
    "azureADDeviceId",
    "deviceRegistrationState",
    "deviceCategoryDisplayName",
    "isSupervised",
    "exchangeLastSuccessfulSyncDateTime",
    "exchangeAccessState",
    "exchangeAccessStateReason",
    "remoteAssistanceSessionUrl",
    "remoteAssistanceSessionErrorDetails",
    "isEncrypted",
    "userPrincipalName",
    "model",
    "manufacturer",
    "imei",
    "complianceGracePeriodExpirationDateTime",
    "serialNumber",
    "phoneNumber",
    "androidSecurityPatchLevel",
    "userDisplayName",
    "configurationManagerClientEnabledFeatures",
    "wiFiMacAddress",
    "deviceHealthAttestationState",
    "subscriberCarrier",
    "meid",
    "totalStorageSpaceInBytes",
    "freeStorageSpaceInBytes",
    "managedDeviceName",
    "partnerReportedThreatState",
    // Added to v1.0 later.
    "iccid",
    "udid",
    "notes",
    "ethernetMacAddress",
    "physicalMemoryInBytes",
    "enrollmentProfileName",
    "requireUserEnrollmentApproval",
    "managementCertificateExpirationDate",
];
/// Beta-only managedDevice properties (accepted on `/beta`).
const DEVICE_BETA_PROPS: &[&str] = &[
    "chassisType",
    "deviceType",
    "hardwareInformation",
    "joinType",
    "skuFamily",
    "usersLoggedOn",
];

/// user properties of Graph v1.0 the simulator knows.
const USER_PROPS: &[&str] = &[
    "id",
    "userPrincipalName",
    "mail",
    "displayName",
    "givenName",
    "surname",
    "accountEnabled",
    "jobTitle",
    "department",
    "employeeId",
    "officeLocation",
    "mobilePhone",
    "businessPhones",
    "preferredLanguage",
    "city",
    "country",
    "companyName",
    "createdDateTime",
    "userType",
    "usageLocation",
    "onPremisesSamAccountName",
    "employeeType",
    "state",
    "streetAddress",
];

/// How a simulator is set up.
#[derive(Debug, Clone)]
pub struct IntuneConfig {
    pub seed: u64,
    pub devices: usize,
    pub users: usize,
    pub tenant_id: String,
    /// A verified domain that also names the tenant at the token endpoint.
    pub tenant_domain: String,
    pub client_id: String,
    pub client_secret: String,
}

impl Default for IntuneConfig {
    fn default() -> Self {
        IntuneConfig {
            seed: 42,
            devices: 100,
            users: 100,
            tenant_id: "8f3c2a71-5b0e-4d9a-9c1f-2e7d6b4a0c13".into(),
            tenant_domain: "example.onmicrosoft.com".into(),
            client_id: "6a1d9e2b-7c4f-4b8e-a3d5-0f9e8c7b6a54".into(),
            client_secret: "Qx8~simulated.client-secret_VALUE".into(),
        }
    }
}

/// The discovered-app catalogue: (displayName, publisher, platform, versions).
const APP_CATALOGUE: &[(&str, &str, &str, &[&str])] = &[
    (
        "Microsoft Edge",
        "Microsoft Corporation",
        "windows",
        &["126.0.2592.68", "127.0.2651.74"],
    ),
    (
        "Google Chrome",
        "Google LLC",
        "windows",
        &["126.0.6478.127", "127.0.6533.89"],
    ),
    (
        "Zoom Workplace",
        "Zoom Video Communications, Inc.",
        "windows",
        &["6.1.1"],
    ),
    ("7-Zip 23.01 (x64)", "Igor Pavlov", "windows", &["23.01"]),
    (
        "Notepad++ (64-bit x64)",
        "Notepad++ Team",
        "windows",
        &["8.6.8"],
    ),
    (
        "Microsoft Teams",
        "Microsoft Corporation",
        "windows",
        &["24152.405.2925.6762"],
    ),
    ("Slack", "Slack Technologies, LLC", "macOS", &["4.39.90"]),
    (
        "Microsoft Outlook",
        "Microsoft Corporation",
        "iOS",
        &["4.2424.0"],
    ),
    ("Authenticator", "Microsoft Corporation", "iOS", &["6.8.11"]),
    (
        "Café Menü Planner",
        "Bäckerei Müller GmbH",
        "androidWorkProfile",
        &["2.1"],
    ),
];

/// The apps device `i` has: (catalogue index, version index).
fn device_apps(seed: u64, i: usize) -> Vec<(usize, usize)> {
    let n = 1 + fleet::num(seed, i, 0xA990, 4) as usize;
    let mut out: Vec<(usize, usize)> = Vec::new();
    for k in 0..n {
        let a = fleet::num(seed, i * 7 + k, 0xA991, APP_CATALOGUE.len() as u64) as usize;
        if out.iter().any(|(x, _)| *x == a) {
            continue;
        }
        let v = fleet::num(seed, i, 0xA992 + k as u64, APP_CATALOGUE[a].3.len() as u64) as usize;
        out.push((a, v));
    }
    out
}

/// The 64-hex id Graph gives a detected app (one per name and version).
fn detected_app_id(name: &str, version: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut out = String::new();
    for salt in 0..4u8 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, name, version).hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

struct Inner {
    cfg: IntuneConfig,
    /// Creation order; `None` once removed (indexes stay stable).
    devices: Vec<Option<Value>>,
    /// Per device (same index): its apps as (displayName, version).
    apps: Vec<Vec<(String, String)>>,
    users: Vec<Option<Value>>,
    /// Application permissions with admin consent (go into the token's `roles`).
    roles: Vec<String>,
    /// Refuse token requests with this AADSTS code (65001, 7000222, ...).
    token_error: Option<u32>,
    /// Largest page managedDevices serves.
    devices_page_cap: usize,
    /// Every `$top` asked for, per listing (for tests).
    tops: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Inner>>;

#[derive(Clone)]
struct App {
    inner: Shared,
    control: Control,
}

impl App {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running Intune / Entra ID simulator.
pub struct IntuneSim {
    pub handle: SimHandle,
    inner: Shared,
}

impl IntuneSim {
    /// Build the fleet and serve it on a loopback port.
    pub async fn start(cfg: IntuneConfig) -> anyhow::Result<Self> {
        let fleet_devices = (0..cfg.devices)
            .map(|i| Some(make_device(cfg.seed, i)))
            .collect();
        let fleet_users = (0..cfg.users)
            .map(|i| Some(make_user(cfg.seed, i)))
            .collect();
        let apps = (0..cfg.devices)
            .map(|i| {
                device_apps(cfg.seed, i)
                    .into_iter()
                    .map(|(a, v)| {
                        let (name, _, _, versions) = APP_CATALOGUE[a];
                        (name.to_string(), versions[v].to_string())
                    })
                    .collect()
            })
            .collect();
        let inner = Arc::new(Mutex::new(Inner {
            cfg,
            apps,
            devices: fleet_devices,
            users: fleet_users,
            roles: vec![DEVICE_ROLE.to_string(), USER_ROLE.to_string()],
            token_error: None,
            devices_page_cap: DEVICES_PAGE_CAP,
            tops: Vec::new(),
        }));
        let control = Control::default();
        let app = App {
            inner: inner.clone(),
            control: control.clone(),
        };
        let router = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/{version}/deviceManagement/managedDevices", get(devices))
            .route("/{version}/users", get(users))
            .route(
                "/{version}/deviceManagement/detectedApps",
                get(detected_apps),
            )
            .route(
                "/{version}/deviceManagement/detectedApps/{id}/managedDevices",
                get(detected_app_devices),
            )
            .fallback(not_found)
            .with_state(app);
        let handle = serve(router, control).await?;
        Ok(IntuneSim { handle, inner })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fault injection and request counters.
    pub fn control(&self) -> &Control {
        &self.handle.control
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.handle.base_url
    }

    /// The connection secret pointing at this simulator (login and Graph on the same host).
    pub fn secret(&self) -> Value {
        let s = self.lock();
        json!({
            "tenant_id": s.cfg.tenant_id,
            "client_id": s.cfg.client_id,
            "client_secret": s.cfg.client_secret,
            "login_url": self.handle.base_url,
            "graph_url": self.handle.base_url,
        })
    }

    /// Devices currently enrolled.
    pub fn device_count(&self) -> usize {
        self.lock().devices.iter().flatten().count()
    }

    /// Users currently in the directory.
    pub fn user_count(&self) -> usize {
        self.lock().users.iter().flatten().count()
    }

    /// Device `i` (creation index), if it still exists.
    pub fn device(&self, i: usize) -> Option<Value> {
        self.lock().devices.get(i).cloned().flatten()
    }

    /// User `i`, if it still exists.
    pub fn user(&self, i: usize) -> Option<Value> {
        self.lock().users.get(i).cloned().flatten()
    }

    /// All current devices, in creation order.
    pub fn devices(&self) -> Vec<Value> {
        self.lock().devices.iter().flatten().cloned().collect()
    }

    /// All current users, in creation order.
    pub fn users(&self) -> Vec<Value> {
        self.lock().users.iter().flatten().cloned().collect()
    }

    /// Every (device serial as Graph reports it, app displayName, version) row of the fleet.
    pub fn app_rows(&self) -> Vec<(String, String, String)> {
        let s = self.lock();
        let mut out = Vec::new();
        for (d, apps) in s.devices.iter().zip(&s.apps) {
            let Some(d) = d else { continue };
            let serial = d
                .get("serialNumber")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            for (n, v) in apps {
                out.push((serial.clone(), n.clone(), v.clone()));
            }
        }
        out
    }

    /// Device `i` now reports `version` of app `name` (added if it lacked it).
    pub fn set_app_version(&self, i: usize, name: &str, version: &str) {
        let mut s = self.lock();
        if let Some(apps) = s.apps.get_mut(i) {
            match apps.iter_mut().find(|(n, _)| n == name) {
                Some(a) => a.1 = version.to_string(),
                None => apps.push((name.to_string(), version.to_string())),
            }
        }
    }

    /// The apps device `i` reports, as (displayName, version).
    pub fn apps_of(&self, i: usize) -> Vec<(String, String)> {
        self.lock().apps.get(i).cloned().unwrap_or_default()
    }

    /// Change device `i`'s OS version.
    pub fn set_os_version(&self, i: usize, v: &str) {
        self.set_field(i, "osVersion", json!(v));
    }

    /// Set any property of device `i`.
    pub fn set_field(&self, i: usize, name: &str, value: Value) {
        if let Some(Some(Value::Object(d))) = self.lock().devices.get_mut(i) {
            d.insert(name.to_string(), value);
        }
    }

    /// Drop a property of device `i` (Graph then reports it as null).
    pub fn remove_field(&self, i: usize, name: &str) {
        if let Some(Some(Value::Object(d))) = self.lock().devices.get_mut(i) {
            d.insert(name.to_string(), Value::Null);
        }
    }

    /// Set any property of user `i`.
    pub fn set_user_field(&self, i: usize, name: &str, value: Value) {
        if let Some(Some(Value::Object(u))) = self.lock().users.get_mut(i) {
            u.insert(name.to_string(), value);
        }
    }

    /// Enrol a new device; returns its index.
    pub fn add_device(&self) -> usize {
        let mut s = self.lock();
        let i = s.devices.len();
        let d = make_device(s.cfg.seed, i);
        s.devices.push(Some(d));
        s.apps.push(Vec::new());
        i
    }

    /// Retire device `i`.
    pub fn remove_device(&self, i: usize) {
        if let Some(d) = self.lock().devices.get_mut(i) {
            *d = None;
        }
    }

    /// Add a user; returns its index.
    pub fn add_user(&self) -> usize {
        let mut s = self.lock();
        let i = s.users.len();
        let u = make_user(s.cfg.seed, i);
        s.users.push(Some(u));
        i
    }

    /// Delete user `i`.
    pub fn remove_user(&self, i: usize) {
        if let Some(u) = self.lock().users.get_mut(i) {
            *u = None;
        }
    }

    /// The application permissions with admin consent (tokens issued from now on carry them).
    /// An empty list is the "unconsented" app: tokens are issued, Graph answers 403.
    pub fn set_roles(&self, roles: &[&str]) {
        self.lock().roles = roles.iter().map(|r| r.to_string()).collect();
    }

    /// Refuse token requests with an AADSTS code (e.g. 65001, 7000222); `None` to stop.
    pub fn set_token_error(&self, code: Option<u32>) {
        self.lock().token_error = code;
    }

    /// The largest page managedDevices serves (default 1000).
    pub fn set_devices_page_cap(&self, n: usize) {
        self.lock().devices_page_cap = n.max(1);
    }

    /// Every (listing, `$top`) the simulator was asked for.
    pub fn tops(&self) -> Vec<(String, String)> {
        self.lock().tops.clone()
    }
}

// ---------------------------------------------------------------- fleet

fn user_id(seed: u64, i: usize) -> String {
    fleet::uuid(seed ^ USER_SALT, i)
}

/// Directory user `i`: person `i` of the shared directory.
pub fn make_user(seed: u64, i: usize) -> Value {
    let p = fleet::person(i);
    const TITLES: &[&str] = &[
        "Engineer",
        "Accountant",
        "Designer",
        "Sales Manager",
        "Support Specialist",
        "Analyst",
        "Recruiter",
    ];
    const DEPTS: &[&str] = &[
        "Engineering",
        "Finance",
        "Design",
        "Sales",
        "Support",
        "Operations",
        "People",
    ];
    const OFFICES: &[&str] = &[
        "London",
        "Zürich",
        "São Paulo",
        "Lisbon",
        "New York",
        "東京",
        "Remote",
    ];
    let guest = i % 41 == 40;
    let upn = if guest {
        format!("{}_example.com#EXT#@example.onmicrosoft.com", p.username)
    } else {
        p.email.clone()
    };
    json!({
        "id": user_id(seed, i),
        "userPrincipalName": upn,
        // Some accounts have no mailbox: `mail` is null and the UPN is the address.
        "mail": if i % 17 == 5 { Value::Null } else { json!(p.email) },
        "displayName": format!("{} {}", p.first, p.last),
        "givenName": p.first,
        "surname": p.last,
        "accountEnabled": i % 13 != 12,
        "jobTitle": fleet::pick(seed, i, 11, TITLES),
        "department": fleet::pick(seed, i, 12, DEPTS),
        "employeeId": if i % 23 == 3 { Value::Null } else { json!(format!("E{:05}", i)) },
        "officeLocation": fleet::pick(seed, i, 13, OFFICES),
        "mobilePhone": Value::Null,
        "businessPhones": [],
        "preferredLanguage": "en-US",
        "city": Value::Null,
        "country": Value::Null,
        "companyName": "Example Ltd",
        "createdDateTime": format!("2022-0{}-1{}T09:00:00Z", 1 + i % 9, i % 10),
        "userType": if guest { "Guest" } else { "Member" },
        "usageLocation": "GB",
        "onPremisesSamAccountName": Value::Null,
        "employeeType": Value::Null,
        "state": Value::Null,
        "streetAddress": Value::Null,
    })
}

/// Managed device `i`.
pub fn make_device(seed: u64, i: usize) -> Value {
    let owner = i * 3 / 4;
    let p = fleet::person(owner);
    let userless = i % 29 == 28;
    let os_roll = fleet::num(seed, i, 1, 100);
    let (os, os_version, model, maker, serial, name) = if os_roll < 45 {
        const MODELS: &[(&str, &str)] = &[
            ("ThinkPad T14 Gen 4", "LENOVO"),
            ("Latitude 7440", "Dell Inc."),
            ("EliteBook 840 G10", "HP"),
            ("Surface Laptop 5", "Microsoft Corporation"),
            ("OptiPlex 7010", "Dell Inc."),
        ];
        let (model, maker) = *fleet::pick(seed, i, 2, MODELS);
        let serial = match i % 53 {
            7 => "To be filled by O.E.M.".to_string(),
            19 => "Default string".to_string(),
            _ => fleet::serial("PF", i, 10),
        };
        let name = format!(
            "LT-{}-{:04}",
            fleet::pick(seed, i, 3, &["HR", "FIN", "ENG", "OPS", "SLS"]),
            i
        );
        (
            "Windows",
            format!("10.0.22631.{}", 3000 + fleet::num(seed, i, 4, 900)),
            model,
            maker,
            serial,
            name,
        )
    } else if os_roll < 65 {
        let model = *fleet::pick(
            seed,
            i,
            2,
            &[
                "MacBook Pro (14-inch, 2023)",
                "MacBook Air (M2, 2022)",
                "iMac (24-inch, M3)",
            ],
        );
        (
            "macOS",
            format!("14.{}", fleet::num(seed, i, 4, 6)),
            model,
            "Apple",
            fleet::serial("C02", i, 12),
            format!("{}'s MacBook", p.first),
        )
    } else if os_roll < 85 {
        (
            "iOS",
            format!("17.{}.1", fleet::num(seed, i, 4, 6)),
            "iPhone 15",
            "Apple",
            fleet::serial("F2L", i, 12),
            format!("{}'s iPhone", p.first),
        )
    } else {
        // Android Enterprise work profiles on personal phones report no serial.
        let personal = i & 1 == 0;
        let serial = if personal {
            String::new()
        } else {
            fleet::serial("R5C", i, 11)
        };
        (
            "Android",
            "14".to_string(),
            "SM-S911B",
            "samsung",
            serial,
            format!("{}'s Galaxy S23", p.first),
        )
    };
    let personal = os == "Android" && serial.is_empty();
    let wired_only = model == "OptiPlex 7010";
    let last_sync = if i % 31 == 30 {
        NEVER.to_string()
    } else {
        let mins = fleet::num(seed, i, 5, 60 * 24 * 30) as i64;
        let t = chrono::DateTime::parse_from_rfc3339("2024-06-20T08:00:00Z")
            .map(|d| d - chrono::Duration::minutes(mins));
        t.map(|d| d.to_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|_| NEVER.to_string())
    };
    let third = i % 3;
    let joined = !(personal || (os == "iOS" && third == 0));
    let (upn, email, display, uid) = if userless {
        (String::new(), String::new(), String::new(), String::new())
    } else {
        (
            p.email.clone(),
            p.email.clone(),
            format!("{} {}", p.first, p.last),
            user_id(seed, owner),
        )
    };
    let mut d = json!({
        "id": fleet::uuid(seed ^ DEVICE_SALT, i),
        "userId": uid,
        "deviceName": name,
        "managedDeviceOwnerType": if personal { "personal" } else { "company" },
        "deviceActionResults": [],
        "enrolledDateTime": format!("2023-{:02}-{:02}T10:15:00Z", 1 + i % 12, 1 + i % 28),
        "lastSyncDateTime": last_sync,
        "operatingSystem": os,
        "complianceState": *fleet::pick(seed, i, 6, &["compliant", "compliant", "compliant", "noncompliant", "inGracePeriod", "unknown"]),
        "jailBroken": if os == "iOS" || os == "Android" { "False" } else { "Unknown" },
        "managementAgent": "mdm",
        "osVersion": os_version,
        "easActivated": false,
        "easDeviceId": "",
        "easActivationDateTime": NEVER,
        "azureADRegistered": joined,
        "deviceEnrollmentType": if os == "Windows" { "windowsAzureADJoin" } else if personal { "userEnrollment" } else { "appleBulkWithUser" },
        "activationLockBypassCode": Value::Null,
        "emailAddress": email,
        "azureADDeviceId": if joined { fleet::uuid(seed ^ 0xAAD, i) } else { ZERO_GUID.to_string() },
        "deviceRegistrationState": "registered",
        "deviceCategoryDisplayName": "Unknown category",
        "isSupervised": os == "iOS" && !personal,
        "exchangeLastSuccessfulSyncDateTime": NEVER,
        "exchangeAccessState": "none",
        "exchangeAccessStateReason": "none",
        "remoteAssistanceSessionUrl": Value::Null,
        "remoteAssistanceSessionErrorDetails": Value::Null,
    });
    let rest = json!({
        "isEncrypted": i % 11 != 4,
        "userPrincipalName": upn,
        "model": model,
        "manufacturer": maker,
        "imei": if os == "iOS" || os == "Android" { json!(format!("35{:013}", i)) } else { json!("") },
        "complianceGracePeriodExpirationDateTime": "9999-12-31T23:59:59Z",
        "serialNumber": serial,
        "phoneNumber": Value::Null,
        "androidSecurityPatchLevel": if os == "Android" { "2024-06-01" } else { "" },
        "userDisplayName": display,
        "configurationManagerClientEnabledFeatures": Value::Null,
        "wiFiMacAddress": if wired_only { String::new() } else { fleet::mac(seed, i, false) },
        "deviceHealthAttestationState": Value::Null,
        "subscriberCarrier": "",
        "meid": "",
        "totalStorageSpaceInBytes": 256_000_000_000u64,
        "freeStorageSpaceInBytes": 100_000_000_000u64 + fleet::num(seed, i, 7, 100_000_000_000),
        "managedDeviceName": format!("{}_{}_{}", p.username, os, 1 + i % 28),
        "partnerReportedThreatState": "unknown",
    });
    if let (Some(a), Value::Object(b)) = (d.as_object_mut(), rest) {
        a.extend(b);
    }
    d
}

// ---------------------------------------------------------------- token endpoint

fn aadsts(status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let trace = uuid::Uuid::new_v4().to_string();
    let corr = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {message}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {now}"),
        "error_codes": [code],
        "timestamp": now,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn host_base(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

async fn token(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let refuse = |r: Response| {
        app.control.count_token_request();
        r
    };
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (cfg, roles, forced) = {
        let s = app.lock();
        (s.cfg.clone(), s.roles.clone(), s.token_error)
    };
    let is_guid = tenant.len() == 36 && tenant.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if tenant != cfg.tenant_id && !tenant.eq_ignore_ascii_case(&cfg.tenant_domain) {
        if !is_guid && !tenant.contains('.') {
            return refuse(aadsts(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900023,
                &format!("Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid external domain."),
            ));
        }
        return refuse(aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
        ));
    }
    let missing = |p: &str| {
        aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{p}'."),
        )
    };
    let Some(grant) = form.get("grant_type") else {
        return refuse(missing("grant_type"));
    };
    if grant != "client_credentials" {
        return refuse(aadsts(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant}'."),
        ));
    }
    let Some(client_id) = form.get("client_id").filter(|c| !c.is_empty()) else {
        return refuse(missing("client_id"));
    };
    if *client_id != cfg.client_id {
        return refuse(aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", cfg.tenant_domain),
        ));
    }
    let Some(scope) = form.get("scope").filter(|c| !c.is_empty()) else {
        return refuse(missing("scope"));
    };
    let Some(resource) = scope.strip_suffix("/.default") else {
        return refuse(aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
        ));
    };
    let own = host_base(&headers);
    let known = [
        "https://graph.microsoft.com",
        "00000003-0000-0000-c000-000000000000",
    ];
    // This simulator is Graph too, under any loopback name for its port.
    let is_self = |r: &str| {
        let (Ok(a), Ok(b)) = (url::Url::parse(r), url::Url::parse(&own)) else {
            return false;
        };
        let loopback =
            |u: &url::Url| matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        loopback(&a)
            && loopback(&b)
            && a.port_or_known_default() == b.port_or_known_default()
            && a.path().trim_matches('/').is_empty()
    };
    if !known.contains(&resource.trim_end_matches('/')) && !is_self(resource) {
        return refuse(aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            &format!("The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", cfg.tenant_domain),
        ));
    }
    let Some(secret) = form.get("client_secret").filter(|c| !c.is_empty()) else {
        return refuse(aadsts(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    if let Some(code) = forced {
        let (status, error, text) = match code {
            7000222 => (StatusCode::UNAUTHORIZED, "invalid_client", format!("The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.")),
            7000215 => (StatusCode::UNAUTHORIZED, "invalid_client", format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'.")),
            65001 => (StatusCode::BAD_REQUEST, "invalid_grant", format!("The user or administrator has not consented to use the application with ID '{client_id}' named 'assetsync'. Send an interactive authorization request for this user and resource.")),
            7000112 => (StatusCode::UNAUTHORIZED, "unauthorized_client", format!("Application '{client_id}'(assetsync) is disabled.")),
            53003 => (StatusCode::BAD_REQUEST, "access_denied", "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.".to_string()),
            other => (StatusCode::BAD_REQUEST, "invalid_request", format!("Simulated failure {other}.")),
        };
        return refuse(aadsts(status, error, code, &text));
    }
    if *secret != cfg.client_secret {
        return refuse(aadsts(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
        ));
    }
    let header = b64(br#"{"typ":"JWT","alg":"RS256","kid":"sim"}"#);
    let payload = b64(json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{}/", cfg.tenant_id),
        "tid": cfg.tenant_id,
        "appid": cfg.client_id,
        "idtyp": "app",
        "roles": roles,
    })
    .to_string()
    .as_bytes());
    let (tok, life) = app
        .control
        .issue_token(&format!("{header}.{payload}."), Duration::from_secs(3599));
    let secs = life.as_secs();
    json_response(
        StatusCode::OK,
        &json!({"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": tok}),
    )
}

// ---------------------------------------------------------------- Graph

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string();
    let id = uuid::Uuid::new_v4().to_string();
    // Graph's key order: code, message, innerError (serde_json would sort them).
    let q = |v: &str| Value::String(v.to_string()).to_string();
    let body = format!(
        "{{\"error\":{{\"code\":{},\"message\":{},\"innerError\":{{\"date\":{},\"request-id\":{},\"client-request-id\":{}}}}}}}",
        q(code),
        q(message),
        q(&now),
        q(&id),
        q(&id)
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(body))
        .unwrap_or_default()
}

async fn not_found(headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let _ = headers;
    let seg = uri.path().rsplit('/').next().unwrap_or("");
    graph_error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &format!("Resource not found for the segment '{seg}'."),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Listing {
    Devices,
    Users,
}

async fn devices(
    State(app): State<App>,
    Path(version): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    listing(app, Listing::Devices, version, headers, q).await
}

async fn users(
    State(app): State<App>,
    Path(version): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    listing(app, Listing::Users, version, headers, q).await
}

/// The roles claim of a simulator token.
fn token_roles(tok: &str) -> Vec<String> {
    let Some(payload) = tok.split('.').nth(1) else {
        return Vec::new();
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    v.get("roles")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn forbidden_intune(base: &str) -> Response {
    // Intune nests a JSON text in `message`, keys in this order (serde_json would sort them).
    let url = format!("{base}/DeviceFE/StatelessDeviceFEService/deviceManagement/managedDevices?api-version=2024-06-14");
    let inner = format!(
        "{{\r\n  \"_version\": 3,\r\n  \"Message\": \"Application is not authorized to perform this operation. Application must have one of the following scopes: DeviceManagementManagedDevices.Read.All, DeviceManagementManagedDevices.ReadWrite.All - Operation ID (for customer support): 00000000-0000-0000-0000-000000000000 - Activity ID: {} - Url: {url}\",\r\n  \"CustomApiErrorPhrase\": \"\",\r\n  \"RetryAfter\": null,\r\n  \"ErrorSourceService\": \"\",\r\n  \"HttpHeaders\": \"{{}}\"\r\n}}",
        uuid::Uuid::new_v4()
    );
    graph_error(StatusCode::FORBIDDEN, "Forbidden", &inner)
}

async fn listing(
    app: App,
    which: Listing,
    version: String,
    headers: HeaderMap,
    raw_query: Option<String>,
) -> Response {
    let path = match which {
        Listing::Devices => format!("/{version}/deviceManagement/managedDevices"),
        Listing::Users => format!("/{version}/users"),
    };
    // Faults first: a throttled or failing front end answers before it looks at the token.
    match app.control.on_data_request(&path) {
        Some(Fault::TooManyRequests { retry_after }) => {
            let mut r = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests have been sent. Please retry after the time indicated in the Retry-After header, if any.",
            );
            if let Some(s) = retry_after {
                if let Ok(v) = s.to_string().parse() {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            return r;
        }
        Some(Fault::ServerError(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let name = match code {
                503 => "ServiceUnavailable",
                504 => "GatewayTimeout",
                502 => "BadGateway",
                _ => "InternalServerError",
            };
            return graph_error(
                status,
                name,
                "The service is temporarily unavailable. Please try again later.",
            );
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::MalformedJson) => {
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json; odata.metadata=minimal")
                .body(Body::from("{\"@odata.context\":\"https://graph.microsoft.com/v1.0/$metadata#users\",\"value\":[{\"id\":\"4b7f2c9e-"))
                .unwrap_or_default();
        }
        Some(Fault::ExpireTokens) | None => {}
    }
    if version != "v1.0" && version != "beta" {
        return graph_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Invalid version: {version}"),
        );
    }
    let Some(tok) = bearer(&headers) else {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        );
    };
    if !app.control.token_valid(&tok) {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        );
    }
    let base = host_base(&headers);
    let roles = token_roles(&tok);
    let allowed = match which {
        Listing::Devices => roles
            .iter()
            .any(|r| r == DEVICE_ROLE || r == "DeviceManagementManagedDevices.ReadWrite.All"),
        Listing::Users => roles.iter().any(|r| {
            matches!(
                r.as_str(),
                "User.Read.All"
                    | "User.ReadWrite.All"
                    | "Directory.Read.All"
                    | "Directory.ReadWrite.All"
            )
        }),
    };
    if !allowed {
        return match which {
            Listing::Devices => forbidden_intune(&base),
            Listing::Users => graph_error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
        };
    }

    // Query options.
    let raw = raw_query.unwrap_or_default();
    let mut select: Option<Vec<String>> = None;
    let mut top_raw: Option<String> = None;
    let mut skiptoken: Option<String> = None;
    let mut filter: Option<String> = None;
    let mut count = false;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "$select" => {
                select = Some(
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            "$top" => top_raw = Some(v.to_string()),
            "$skiptoken" => skiptoken = Some(v.to_string()),
            "$filter" => filter = Some(v.to_string()),
            "$count" => count = v.eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    let (type_name, props): (&str, Vec<&str>) = match which {
        Listing::Devices => (
            "microsoft.graph.managedDevice",
            DEVICE_PROPS
                .iter()
                .chain(if version == "beta" {
                    DEVICE_BETA_PROPS
                } else {
                    &[]
                })
                .copied()
                .collect(),
        ),
        Listing::Users => ("microsoft.graph.user", USER_PROPS.to_vec()),
    };
    if let Some(sel) = &select {
        if let Some(bad) = sel.iter().find(|f| !props.contains(&f.as_str())) {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("Could not find a property named '{bad}' on type '{type_name}'."),
            );
        }
    }
    let (top, cap) = {
        let mut s = app.lock();
        let label = match which {
            Listing::Devices => "managedDevices",
            Listing::Users => "users",
        };
        s.tops
            .push((label.to_string(), top_raw.clone().unwrap_or_default()));
        (top_raw, s.devices_page_cap)
    };
    let page_size = match which {
        Listing::Users => match top.as_deref() {
            None => USERS_DEFAULT_TOP,
            Some(t) => match t.parse::<i64>() {
                Ok(n) if (1..=USERS_MAX_TOP as i64).contains(&n) => n as usize,
                _ => {
                    return graph_error(
                        StatusCode::BAD_REQUEST,
                        "Request_UnsupportedQuery",
                        &format!(
                        "Invalid page size specified: '{t}'. Must be between 1 and 999 inclusive."
                    ),
                    )
                }
            },
        },
        Listing::Devices => match top.as_deref() {
            None => cap,
            Some(t) => match t.parse::<i64>() {
                Ok(n) if n >= 1 => (n as usize).min(cap),
                _ => {
                    return graph_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("Invalid value '{t}' for query option $top."),
                    )
                }
            },
        },
    };
    if count && which == Listing::Users {
        let eventual = headers
            .get("consistencylevel")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
        if !eventual {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "$count is not currently supported.",
            );
        }
    }
    let conditions = match filter.as_deref().map(parse_filter) {
        None => Vec::new(),
        Some(Ok(c)) => c,
        Some(Err(())) => {
            return match which {
                Listing::Users => graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    "Unsupported or invalid query filter clause specified for property or navigation property.",
                ),
                Listing::Devices => graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid filter clause"),
            }
        }
    };
    if let Some((bad, _)) = conditions
        .iter()
        .find(|(p, _)| !props.contains(&p.as_str()))
    {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Could not find a property named '{bad}' on type '{type_name}'."),
        );
    }
    let after = match skiptoken.as_deref().map(decode_skiptoken) {
        None => None,
        Some(Some(k)) => Some(k),
        Some(None) => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "The $skiptoken is invalid or has expired.",
            )
        }
    };

    // The page: records sorted by id (the skiptoken is the last id served).
    let (records, total) = {
        let s = app.lock();
        let src = match which {
            Listing::Devices => &s.devices,
            Listing::Users => &s.users,
        };
        let mut all: Vec<&Value> = src
            .iter()
            .flatten()
            .filter(|r| matches_filter(r, &conditions))
            .collect();
        all.sort_by(|a, b| id_of(a).cmp(id_of(b)));
        let total = all.len();
        let start = match &after {
            None => 0,
            Some(k) => all.partition_point(|r| id_of(r) <= k.as_str()),
        };
        let page: Vec<Value> = all[start..]
            .iter()
            .take(page_size + 1)
            .map(|r| (*r).clone())
            .collect();
        (page, total)
    };
    let more = records.len() > page_size;
    let records: Vec<Value> = records
        .into_iter()
        .take(page_size)
        .map(|r| project(r, select.as_deref()))
        .collect();
    let list_path = match which {
        Listing::Devices => "deviceManagement/managedDevices",
        Listing::Users => "users",
    };
    let context = match &select {
        Some(sel) => format!("{base}/{version}/$metadata#{list_path}({})", sel.join(",")),
        None => format!("{base}/{version}/$metadata#{list_path}"),
    };
    let mut body = Map::new();
    body.insert("@odata.context".into(), json!(context));
    let first = skiptoken.is_none();
    if which == Listing::Devices || (count && first) {
        body.insert("@odata.count".into(), json!(total));
    }
    if more {
        let last = records
            .last()
            .map(|r| id_of(r).to_string())
            .unwrap_or_default();
        // The original query options, as sent, with a fresh skiptoken.
        let kept: Vec<&str> = raw
            .split('&')
            .filter(|p| {
                !p.is_empty()
                    && !p.starts_with("$skiptoken=")
                    && !p.to_ascii_lowercase().starts_with("%24skiptoken=")
            })
            .collect();
        let mut q = kept.join("&");
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str(&format!("$skiptoken={}", encode_skiptoken(&last)));
        body.insert(
            "@odata.nextLink".into(),
            json!(format!("{base}/{version}/{list_path}?{q}")),
        );
    }
    body.insert("value".into(), Value::Array(records));
    json_response(StatusCode::OK, &Value::Object(body))
}

/// Faults, token and permission checks of the detectedApps routes; `Ok(base)` to serve.
async fn apps_gate(
    app: &App,
    path: &str,
    version: &str,
    headers: &HeaderMap,
) -> Result<String, Response> {
    match app.control.on_data_request(path) {
        Some(Fault::TooManyRequests { retry_after }) => {
            let mut r = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests have been sent. Please retry after the time indicated in the Retry-After header, if any.",
            );
            if let Some(s) = retry_after.and_then(|s| s.to_string().parse().ok()) {
                r.headers_mut().insert(header::RETRY_AFTER, s);
            }
            return Err(r);
        }
        Some(Fault::ServerError(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(graph_error(
                status,
                "ServiceUnavailable",
                "The service is temporarily unavailable. Please try again later.",
            ));
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::MalformedJson) => {
            return Err(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"value\":[{\"id\":\"3a18"))
                .unwrap_or_default())
        }
        Some(Fault::ExpireTokens) | None => {}
    }
    if version != "v1.0" && version != "beta" {
        return Err(graph_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Invalid version: {version}"),
        ));
    }
    let Some(tok) = bearer(headers).filter(|t| app.control.token_valid(t)) else {
        return Err(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        ));
    };
    let base = host_base(headers);
    if !token_roles(&tok)
        .iter()
        .any(|r| r == DEVICE_ROLE || r == "DeviceManagementManagedDevices.ReadWrite.All")
    {
        return Err(forbidden_intune(&base));
    }
    Ok(base)
}

/// `$top`, the key after which the page starts (`$skiptoken`), and `$select`.
type AppsQuery = (usize, Option<String>, Option<Vec<String>>);

/// `$top` (default 100, at most 1000), `$skiptoken` and `$select` of a detectedApps request.
#[allow(clippy::result_large_err)] // a ready-made error response, as the other handlers return
fn apps_query(raw: &str) -> Result<AppsQuery, Response> {
    let mut top = 100;
    let mut skip = None;
    let mut select = None;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "$top" => match v.parse::<usize>() {
                Ok(n) if n >= 1 => top = n.min(DEVICES_PAGE_CAP),
                _ => {
                    return Err(graph_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("Invalid value '{v}' for query option $top."),
                    ))
                }
            },
            "$skiptoken" => match decode_skiptoken(&v) {
                Some(k) => skip = Some(k),
                None => {
                    return Err(graph_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "The $skiptoken is invalid or has expired.",
                    ))
                }
            },
            "$select" => {
                select = Some(
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            _ => {}
        }
    }
    Ok((top, skip, select))
}

/// One page of `records` (sorted by id) after `after`, as a Graph envelope with a next link.
fn id_page(
    base: &str,
    path: &str,
    raw: &str,
    mut records: Vec<Value>,
    top: usize,
    after: Option<String>,
    count: bool,
) -> Response {
    records.sort_by(|a, b| id_of(a).cmp(id_of(b)));
    let total = records.len();
    let start = match &after {
        None => 0,
        Some(k) => records.partition_point(|r| id_of(r) <= k.as_str()),
    };
    let more = records.len() > start + top;
    let page: Vec<Value> = records.into_iter().skip(start).take(top).collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!("{base}/v1.0/$metadata#{path}")),
    );
    if count {
        body.insert("@odata.count".into(), json!(total));
    }
    if more {
        let last = page
            .last()
            .map(|r| id_of(r).to_string())
            .unwrap_or_default();
        let mut q: Vec<&str> = raw
            .split('&')
            .filter(|p| {
                !p.is_empty()
                    && !p.starts_with("$skiptoken=")
                    && !p.to_ascii_lowercase().starts_with("%24skiptoken=")
            })
            .collect();
        let tok = format!("$skiptoken={}", encode_skiptoken(&last));
        q.push(&tok);
        body.insert(
            "@odata.nextLink".into(),
            json!(format!("{base}/v1.0/{path}?{}", q.join("&"))),
        );
    }
    body.insert("value".into(), Value::Array(page));
    json_response(StatusCode::OK, &Value::Object(body))
}

/// The detected apps of the fleet, one per (name, version), with the devices that have each.
fn detected(s: &Inner) -> Vec<(Value, Vec<Value>)> {
    let mut by_id: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    for (d, apps) in s.devices.iter().zip(&s.apps) {
        let Some(d) = d else { continue };
        for (name, version) in apps {
            let id = detected_app_id(name, version);
            let (publisher, platform) = APP_CATALOGUE
                .iter()
                .find(|(n, ..)| n == name)
                .map(|(_, p, pl, _)| (*p, *pl))
                .unwrap_or(("", "unknown"));
            let e = by_id.entry(id.clone()).or_insert_with(|| {
                (
                    json!({"id": id, "displayName": name, "version": version, "sizeInByte": 1_048_576 + name.len() as u64 * 4096,
                           "deviceCount": 0, "publisher": publisher, "platform": platform}),
                    Vec::new(),
                )
            });
            e.1.push(d.clone());
        }
    }
    by_id
        .into_values()
        .map(|(mut a, devs)| {
            a["deviceCount"] = json!(devs.len());
            (a, devs)
        })
        .collect()
}

async fn detected_apps(
    State(app): State<App>,
    Path(version): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let path = format!("/{version}/deviceManagement/detectedApps");
    let base = match apps_gate(&app, &path, &version, &headers).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let raw = q.unwrap_or_default();
    let (top, after, select) = match apps_query(&raw) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let apps: Vec<Value> = detected(&app.lock())
        .into_iter()
        .map(|(a, _)| project(a, select.as_deref()))
        .collect();
    id_page(
        &base,
        "deviceManagement/detectedApps",
        &raw,
        apps,
        top,
        after,
        true,
    )
}

async fn detected_app_devices(
    State(app): State<App>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let path = format!("/{version}/deviceManagement/detectedApps/{{id}}/managedDevices");
    let base = match apps_gate(&app, &path, &version, &headers).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let raw = q.unwrap_or_default();
    let (top, after, select) = match apps_query(&raw) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(bad) = select
        .iter()
        .flatten()
        .find(|f| !DEVICE_PROPS.contains(&f.as_str()))
    {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "Could not find a property named '{bad}' on type 'microsoft.graph.managedDevice'."
            ),
        );
    }
    let Some((_, devices)) = detected(&app.lock())
        .into_iter()
        .find(|(a, _)| id_of(a) == id)
    else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "Resource not found",
        );
    };
    let devices: Vec<Value> = devices
        .into_iter()
        .map(|d| project(d, select.as_deref()))
        .collect();
    id_page(
        &base,
        &format!("deviceManagement/detectedApps/{id}/managedDevices"),
        &raw,
        devices,
        top,
        after,
        false,
    )
}

fn id_of(v: &Value) -> &str {
    v.get("id").and_then(Value::as_str).unwrap_or("")
}

fn project(r: Value, select: Option<&[String]>) -> Value {
    let Some(sel) = select else { return r };
    let wanted: HashSet<&str> = sel.iter().map(String::as_str).collect();
    match r {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| wanted.contains(k.as_str()))
                .collect(),
        ),
        other => other,
    }
}

/// An opaque skiptoken: a versioned, base64url-encoded last id (Graph's are opaque too).
fn encode_skiptoken(last_id: &str) -> String {
    format!("RFNwdAIA{}", b64(format!("sim1:{last_id}").as_bytes()))
}

fn decode_skiptoken(tok: &str) -> Option<String> {
    let rest = tok.strip_prefix("RFNwdAIA")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(rest)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("sim1:")
        .map(str::to_string)
}

/// `a eq 'x' and b eq true`: (property, value) pairs.
fn parse_filter(f: &str) -> Result<Vec<(String, Value)>, ()> {
    let mut out = Vec::new();
    for clause in f.split(" and ") {
        let mut parts = clause.trim().splitn(3, ' ');
        let (Some(prop), Some(op), Some(val)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(());
        };
        if op != "eq" {
            return Err(());
        }
        let val = val.trim();
        let v = if let Some(s) = val.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            json!(s.replace("''", "'"))
        } else if val == "true" || val == "false" {
            json!(val == "true")
        } else if let Ok(n) = val.parse::<i64>() {
            json!(n)
        } else {
            return Err(());
        };
        out.push((prop.to_string(), v));
    }
    Ok(out)
}

fn matches_filter(r: &Value, conds: &[(String, Value)]) -> bool {
    conds.iter().all(|(p, v)| match (r.get(p), v) {
        (Some(Value::String(a)), Value::String(b)) => a.eq_ignore_ascii_case(b),
        (Some(a), b) => a == b,
        (None, _) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skiptokens_round_trip() {
        let t = encode_skiptoken("4b7f2c9e-1d3a");
        assert_eq!(decode_skiptoken(&t).as_deref(), Some("4b7f2c9e-1d3a"));
        assert_eq!(decode_skiptoken("garbage"), None);
    }

    #[test]
    fn fleet_has_the_awkward_cases() {
        let devices: Vec<Value> = (0..400).map(|i| make_device(7, i)).collect();
        let serial = |d: &Value| d["serialNumber"].as_str().unwrap_or("").to_string();
        assert!(devices.iter().any(|d| serial(d).is_empty()));
        assert!(devices
            .iter()
            .any(|d| serial(d) == "To be filled by O.E.M."));
        assert!(devices.iter().any(|d| d["lastSyncDateTime"] == NEVER));
        assert!(devices.iter().any(|d| d["azureADDeviceId"] == ZERO_GUID));
        assert!(devices.iter().any(|d| d["userPrincipalName"] == ""));
        assert!(devices
            .iter()
            .all(|d| !d["wiFiMacAddress"].as_str().unwrap_or("").contains(':')));
        assert_eq!(
            devices[0]["userPrincipalName"],
            devices[1]["userPrincipalName"]
        );
        assert_eq!(
            make_user(7, 3)["userPrincipalName"],
            json!(fleet::person(3).email)
        );
        assert_eq!(
            parse_filter("operatingSystem eq 'Windows' and accountEnabled eq true")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_filter("startswith(displayName,'a')").is_err());
    }
}
