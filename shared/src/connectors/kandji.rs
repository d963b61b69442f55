//! Kandji (rebranded "Iru"; API hosts still `*.kandji.io`): a static tenant API token, three listings.
//!
//! # Secret
//! `{"subdomain": "acme", "region": "us" | "eu", "api_token": "…", "base_url": "…"}`.
//! The host is `https://<subdomain>.api.kandji.io` (US) or `https://<subdomain>.api.eu.kandji.io` (EU),
//! as the Kandji API documentation states ("You can find your API URL in Settings > Access").
//! `base_url`, when given, overrides both (tests point it at the simulator; older tenants whose
//! API URL has another shape, e.g. `https://acme.clients.us-1.kandji.io`, put it here). A trailing
//! `/api` or `/api/v1` on it is ignored. `region` is `us` or `eu`; anything else is an error.
//!
//! # Authentication
//! Every call carries `Authorization: Bearer <api_token>`. There is no token exchange, so a 401
//! ("the token is incorrect, was revoked, or has expired" per the docs) fails fast with a message
//! that says a new token is needed: there is nothing to refresh. A 403 names the per-endpoint
//! permission the token lacks (each token has its own permission grid).
//!
//! # Listings (`config:api=`)
//! - `devices` (default for Hardware): `GET /api/v1/devices?limit=300&offset=N&ordering=device_id`.
//!   The answer is a **bare JSON array** without total. The docs set "a hard upper limit at 300"
//!   records per request, so 300 is the maximum page size (`config:page_size` may lower it). The
//!   listing ends on an empty page or one shorter than `limit` (the official sample loops until an
//!   empty page; stopping on a short one saves that call). `ordering` defaults to `device_id`
//!   (unique and stable; the official sample uses `serial_number`, which is neither unique nor always
//!   present); `config:ordering=` takes any of the documented fields, `-` for descending.
//!   The default mapping keys on `serial_number`; to key on Kandji's own id instead, write
//!   `key:device_id=Device ID` in the mapping.
//!   Each record gains `assetsync_os_name` (`Mac` → `macOS`, `iPhone` → `iOS`, `iPad` → `iPadOS`,
//!   `AppleTV` → `tvOS`, `Windows`, `Android`) and, for the Apple platforms only,
//!   `assetsync_manufacturer` = `Apple`: the list is "polymorphic" (the docs list `platform` values
//!   `Mac`, `iPad`, `iPhone`, `AppleTV`, `Android`, `Windows` once Windows or Android management is
//!   on), so Apple is not assumed for every device; a vendor `manufacturer` field wins when present.
//!   `user` is an object when assigned and `""` when not: paths like `user.email` simply find
//!   nothing in the latter case.
//!   The list has no MAC address. `config:details=true` adds, under `details`, the answer of
//!   `GET /api/v1/devices/{device_id}/details` (without its bulky `installed_profiles`, `volumes` and
//!   `users.system_users`), so `details.network.mac_address` can be mapped. **Cost:** one extra
//!   request per device per run, against a budget of 10,000 requests per hour for the whole tenant.
//!   The details are therefore cached in the connection's state store for
//!   `config:details_ttl_hours` (default 24; `0` disables the cache), so an hourly sync of 3,000
//!   devices costs about 3,000 detail calls a day instead of 3,000 an hour.
//! - `apps` (default for Software): the fleet-wide Prism export `GET /api/v1/prism/apps?limit=300`,
//!   one row per device × app. The published body carries both paging styles at once
//!   (`{offset, limit, total, data, cursor}`), so each answer decides: a non-empty `cursor` is
//!   followed (the first call sends `cursor=` empty, as Kandji's example does), otherwise `offset`
//!   pages on while `total` says rows remain (`"cursor": null` then is not the end), and without
//!   `total` an empty or short page, or a `cursor` key left empty, ends the listing. Every page
//!   reports `total`, so a run that fetched fewer rows than Kandji counted marks nothing missing
//!   and says so. `config:apps_source=per-device` instead pages the devices (`config:page_size` of them,
//!   default 100) and calls `GET /api/v1/devices/{id}/apps` for each: one request per device, so
//!   only for tenants whose token may not read Prism.
//!   Each record gains `assetsync_device_serial` (normalised), `assetsync_device_id` and
//!   `assetsync_key` (`<normalised serial>|<bundle_id, or the app name>`; both absent when the device
//!   has no usable serial, so the record is skipped); [`Connector::parent_key`] returns the
//!   normalised serial, i.e. the device's hardware key.
//! - `users` (default for Person): `GET /api/v1/users`, directory-integration users, at most 300 a
//!   page (no documented `limit` parameter, so none is sent). Paging is a DRF-style cursor:
//!   `{"next": url|null, "previous": …, "results": […]}`. The documented `next` URL points at
//!   `<sub>.kandji.io` (no `api.`), so only its `cursor` query value is taken and sent to the
//!   configured base URL; the host in `next` is never followed (the token must not go elsewhere).
//!   Each record gains `assetsync_status`: `suspended` when `archived` is true or `active` is false,
//!   else `active`.
//!
//! `config:filter=` passes the vendor's own query parameters as `name=value&name=value`, checked
//! against the documented ones of the listing (devices: `platform`, `blueprint_id`, `user_email`, …;
//! users: `email`, `id`, `integration_id`, `archived`; Prism: `blueprint_ids`, `device_families`,
//! `filter`). For Prism, a value starting with `{` is sent as its JSON `filter` parameter.
//!
//! # Rate limit
//! Kandji documents 10,000 requests per hour per customer, shared by every token of the tenant (and
//! Iru's hosted MCP server). The client enforces it (`RateLimit{requests: 10000, per: 3600 s}`), but a
//! limiter in one process only sees this fetcher: two connections of one tenant (devices and users,
//! say) running at once each believe they have the whole budget. Give each a share with
//! `config:requests_per_hour=N`. 429s are retried by [`VendorHttp`]; Kandji documents no
//! `Retry-After` (its gateway, Kong by the `X-Kong-*` / `X-RateLimit-*-Hour` headers in the Postman
//! examples, may send one; it is honoured when present), otherwise exponential backoff applies.
//!
//! # Malformed answers
//! A 200 whose body is not the expected JSON (a truncated page) is fetched once more; a second
//! malformed answer fails the page with [`ConnectorError::Malformed`] naming the path.
//!
//! Vendor facts checked (search tool): Postman/OpenAPI mirror MScottBlake/kandji-openapi (hosts, 401
//! wording, rate limit, "hard upper limit 300"), kandji-inc/support `pagination_with_limit_and_offset_example.py`
//! (loop until empty) and `prism_pagination_with_limit_and_cursor_example.py` (2026, `data` +
//! `cursor`, US/EU hosts), MScottBlake/kandji-python-sdk `UsersApi.md` (users: max 300, `next`/
//! `previous`, filters `email`, `id`, `integration_id`, `archived`; no `limit`) and
//! `PrismApplications200Response.md` (`offset`, `limit`, `total`, `data`, `cursor`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use super::{
    parse_secret, require, Connector, ConnectorContext, Cursor, Page, StateStore, TestReport,
};
use crate::error::ConnectorError;
use crate::event::{ObjectType, SourceKind};
use crate::http::{check_base_url, join, HttpCounts, HttpOptions, RateLimit, VendorHttp};
use crate::mapping::scalar;
use crate::normalize;

const VENDOR: &str = "Kandji";
/// The documented hard upper `limit` of `/devices` and Prism (users: fixed at 300 a page).
pub const MAX_PAGE_SIZE: u32 = 300;
/// The documented budget: requests per hour per tenant.
pub const HOURLY_LIMIT: u32 = 10_000;
/// Devices per page when apps are read per device (one request per device follows each page).
const PER_DEVICE_PAGE: u32 = 100;
/// Detail or per-device app calls in flight at once (the hourly budget is the real bound).
const CONCURRENCY: usize = 4;
/// Detail answers larger than this are not cached (a state item must stay small).
const MAX_CACHED_DETAILS: usize = 64 * 1024;

/// The documented `ordering` fields of `/devices`.
const DEVICE_ORDERINGS: &[&str] = &[
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
/// The documented filter parameters of `/devices`.
const DEVICE_FILTERS: &[&str] = &[
    "serial_number",
    "device_id",
    "device_name",
    "mac_address",
    "platform",
    "model",
    "os_version",
    "blueprint_id",
    "asset_tag",
    "filevault_enabled",
    "user",
    "user_email",
    "user_email_exact",
    "user_id",
    "user_name",
    "tag_name",
    "tag_name_in",
    "tag_id",
    "tag_id_in",
];
const USER_FILTERS: &[&str] = &["email", "id", "integration_id", "archived"];
const PRISM_FILTERS: &[&str] = &["blueprint_ids", "device_families", "filter"];

const DEVICES_MAPPING: &str = "\
key:serial_number=Serial Number
map:device_name=Name
map:model=Model
map:manufacturer|assetsync_manufacturer=Manufacturer
map:assetsync_os_name|platform=OS Name
map:os_version=OS Version
map:platform=Device Type
map:last_check_in~timestamp=Last Check-in
map:user.email~lower=User Email
map:user.name=User Name
map:asset_tag=Kandji Asset Tag
map:blueprint_name=Blueprint
map:device_id=Device ID
# filled only with config:details=true (one extra request per device, cached)
map:details.network.mac_address~mac=MAC Address
map:details.network.ip_address=IP Address
config:api=devices
";

const APPS_MAPPING: &str = "\
key:assetsync_key=Software Key
map:name|app_name=Name
map:version=Version
map:bundle_id=Bundle ID
map:assetsync_device_serial=Device Serial
config:api=apps
";

const USERS_MAPPING: &str = "\
key:id=User ID
map:email~lower=Email
map:name=Display Name
map:department=Department
map:job_title=Job Title
map:assetsync_status=Status
config:api=users
";

/// Which Kandji listing a connection reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Listing {
    Devices,
    Apps,
    Users,
}

/// Where device apps come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AppsSource {
    Prism,
    PerDevice,
}

fn listing(object_type: ObjectType, api: Option<&str>) -> Result<Listing, ConnectorError> {
    match api.map(str::trim).filter(|a| !a.is_empty()) {
        None => Ok(match object_type {
            ObjectType::Hardware => Listing::Devices,
            ObjectType::Person => Listing::Users,
            ObjectType::Software => Listing::Apps,
        }),
        Some("devices") => Ok(Listing::Devices),
        Some("apps" | "prism/apps") => Ok(Listing::Apps),
        Some("users") => Ok(Listing::Users),
        Some(other) => Err(ConnectorError::Config(format!(
            "config:api={other} is not a Kandji listing; use devices (Hardware), apps (Software) or users (Person)"
        ))),
    }
}

/// The default mapping: devices for Hardware, Prism apps for Software, users for Person.
pub fn default_mapping(object_type: ObjectType, api: Option<&str>) -> Option<&'static str> {
    match listing(object_type, api).ok()? {
        Listing::Devices => Some(DEVICES_MAPPING),
        Listing::Apps => Some(APPS_MAPPING),
        Listing::Users => Some(USERS_MAPPING),
    }
}

#[derive(Deserialize)]
struct Secret {
    #[serde(default)]
    subdomain: Option<String>,
    #[serde(default)]
    region: Option<String>,
    api_token: SecretString,
    #[serde(default)]
    base_url: Option<String>,
}

/// The API root (`https://<sub>.api.kandji.io`, no `/api`) from the secret's fields.
fn api_root(
    subdomain: Option<&str>,
    region: Option<&str>,
    base_url: Option<&str>,
) -> Result<Url, ConnectorError> {
    let region = match region.map(|r| r.trim().to_ascii_lowercase()).filter(|r| !r.is_empty()) {
        None => None,
        Some(r) if r == "us" || r == "eu" => Some(r),
        Some(_) => {
            return Err(ConnectorError::Config("the kandji secret field `region` must be `us` or `eu`; it is shown with the API URL under Settings → Access".to_string()))
        }
    };
    if let Some(b) = base_url.map(str::trim).filter(|b| !b.is_empty()) {
        let mut url = check_base_url(b, "base_url")?;
        let path = url.path().trim_end_matches('/');
        let path = path
            .strip_suffix("/api/v1")
            .or_else(|| path.strip_suffix("/api"))
            .unwrap_or(path)
            .to_string();
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        return Ok(url);
    }
    let sub = subdomain.map(str::trim).unwrap_or_default();
    if sub.is_empty() {
        return Err(ConnectorError::Config(
            "the kandji secret field `subdomain` is missing or empty: give the tenant's subdomain (the `acme` of https://acme.api.kandji.io), or the full API URL as `base_url`".into(),
        ));
    }
    let label_ok = sub.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !sub.starts_with('-')
        && !sub.ends_with('-');
    if !label_ok {
        return Err(ConnectorError::Config("the kandji secret field `subdomain` must be the subdomain alone (the `acme` of https://acme.api.kandji.io), letters, digits and dashes only; put a full URL in `base_url` instead".to_string()));
    }
    let Some(region) = region else {
        return Err(ConnectorError::Config(
            "the kandji secret field `region` is missing: it must be `us` or `eu`".into(),
        ));
    };
    let host = if region == "eu" {
        format!("https://{sub}.api.eu.kandji.io")
    } else {
        format!("https://{sub}.api.kandji.io")
    };
    check_base_url(&host, "subdomain")
}

/// Parse `config:filter` into query pairs, allowing only the listing's documented parameters.
fn parse_filter(
    listing: Listing,
    filter: Option<&str>,
) -> Result<Vec<(String, String)>, ConnectorError> {
    let Some(f) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
        return Ok(Vec::new());
    };
    let allowed = match listing {
        Listing::Devices => DEVICE_FILTERS,
        Listing::Users => USER_FILTERS,
        Listing::Apps => PRISM_FILTERS,
    };
    if listing == Listing::Apps && f.starts_with('{') {
        serde_json::from_str::<Value>(f).map_err(|e| {
            ConnectorError::Config(format!(
                "config:filter is not a JSON object for Prism's `filter`: {e}"
            ))
        })?;
        return Ok(vec![("filter".into(), f.to_string())]);
    }
    let mut out = Vec::new();
    for (k, v) in url::form_urlencoded::parse(f.as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(ConnectorError::Config(format!(
                "config:filter names `{k}`, which is not a documented Kandji filter of this listing; use name=value pairs joined by & from: {}",
                allowed.join(", ")
            )));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

/// `platform` → marketing OS name.
pub fn os_name(platform: &str) -> Option<&'static str> {
    Some(
        match platform
            .trim()
            .to_ascii_lowercase()
            .replace(' ', "")
            .as_str()
        {
            "mac" | "macos" => "macOS",
            "iphone" | "ios" => "iOS",
            "ipad" | "ipados" => "iPadOS",
            "appletv" | "tvos" => "tvOS",
            "vision" | "applevision" | "visionpro" | "visionos" => "visionOS",
            "windows" => "Windows",
            "android" => "Android",
            _ => return None,
        },
    )
}

/// Add the derived fields of a device record.
fn enrich_device(r: &mut Value) {
    let os = r.get("platform").and_then(Value::as_str).and_then(os_name);
    let Some(obj) = r.as_object_mut() else { return };
    if let Some(os) = os {
        obj.insert("assetsync_os_name".into(), Value::String(os.into()));
        if !matches!(os, "Windows" | "Android") {
            obj.insert(
                "assetsync_manufacturer".into(),
                Value::String("Apple".into()),
            );
        }
    }
}

/// Add the derived fields of a user record.
fn enrich_user(r: &mut Value) {
    let archived = r.get("archived").and_then(Value::as_bool);
    let active = r.get("active").and_then(Value::as_bool);
    let status = match (archived, active) {
        (Some(true), _) | (_, Some(false)) => Some("suspended"),
        (Some(false), _) | (_, Some(true)) => Some("active"),
        _ => None,
    };
    if let (Some(s), Some(obj)) = (status, r.as_object_mut()) {
        obj.insert("assetsync_status".into(), Value::String(s.into()));
    }
}

fn str_field<'a>(r: &'a Value, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .filter_map(|n| r.get(*n).and_then(Value::as_str))
        .map(str::trim)
        .find(|s| !s.is_empty())
}

/// Add the derived fields of an app row. `device` is the device record it came with (per-device
/// source); Prism rows carry `serial_number` and `device_id` themselves.
fn enrich_app(r: &mut Value, device: Option<&Value>) {
    // Normalised (trimmed, upper-cased), as the register keys hardware; none for placeholders.
    let serial = str_field(r, &["serial_number"])
        .or_else(|| device.and_then(|d| str_field(d, &["serial_number"])))
        .and_then(normalize::serial);
    let device_id = str_field(r, &["device_id"])
        .or_else(|| device.and_then(|d| str_field(d, &["device_id"])))
        .map(str::to_string);
    let ident = str_field(r, &["bundle_id"])
        .or_else(|| str_field(r, &["name", "app_name"]))
        .map(str::to_string);
    let checked = device
        .and_then(|d| str_field(d, &["last_check_in"]))
        .map(str::to_string);
    let Some(obj) = r.as_object_mut() else { return };
    if let Some(s) = &serial {
        obj.insert("assetsync_device_serial".into(), Value::String(s.clone()));
    }
    if let Some(d) = &device_id {
        obj.insert("assetsync_device_id".into(), Value::String(d.clone()));
    }
    if let Some(c) = checked {
        obj.insert("assetsync_device_checked_in".into(), Value::String(c));
    }
    if let (Some(s), Some(i)) = (serial, ident) {
        obj.insert("assetsync_key".into(), Value::String(format!("{s}|{i}")));
    }
}

/// Drop the bulky parts of a details answer (profiles, volumes, system users).
fn trim_details(mut d: Value) -> Value {
    if let Some(obj) = d.as_object_mut() {
        obj.remove("installed_profiles");
        obj.remove("volumes");
        if let Some(users) = obj.get_mut("users").and_then(Value::as_object_mut) {
            users.remove("system_users");
        }
    }
    d
}

/// End-of-data of `/devices`: an empty or short page ends the listing.
fn devices_next(offset: u64, limit: u32, got: usize) -> Option<Cursor> {
    (got > 0 && got as u64 >= limit as u64).then(|| Cursor(json!({"offset": offset + got as u64})))
}

/// The next cursor and total of a Prism answer, whichever paging style it answers in.
///
/// Kandji's API reference publishes one body carrying both styles, `{"offset": null, "limit": 25,
/// "total": 165, "data": [...], "cursor": null}` (MScottBlake/kandji-openapi
/// `PrismApplications200Response`: `offset`, `limit`, `total`, `data`, `cursor`), while its 2026
/// cursor example (kandji-inc/support `prism_pagination_with_limit_and_cursor_example.py`) repeats
/// with the returned `cursor` until `data` is empty or `cursor` is empty. So: a non-empty `cursor`
/// is followed; otherwise a `total` larger than the rows seen so far pages on by `offset` (a
/// `"cursor": null` is then not the end); with neither, a body that has the `cursor` key has ended,
/// and an offset-only body ends on an empty or short page. `seen` is the rows before this page.
fn prism_next(
    resp: &Value,
    seen: u64,
    limit: u32,
) -> Result<(Option<Cursor>, Option<u64>), ConnectorError> {
    let got = resp
        .get("data")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0) as u64;
    let total = resp.get("total").and_then(value_u64);
    let seen = seen + got;
    let cursor = match resp.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim()).filter(|s| !s.is_empty()),
        Some(other) => {
            return Err(ConnectorError::Malformed {
                vendor: VENDOR,
                path: "/api/v1/prism/apps".into(),
                detail: format!("`cursor` is not a string: {other}"),
            })
        }
    };
    let next = if got == 0 {
        None
    } else if let Some(c) = cursor {
        Some(Cursor(json!({"cursor": c, "seen": seen})))
    } else if let Some(t) = total {
        (seen < t).then(|| Cursor(json!({"offset": seen})))
    } else if resp.get("cursor").is_some() || got < limit as u64 {
        None
    } else {
        Some(Cursor(json!({"offset": seen})))
    };
    if next.is_none() {
        if let Some(t) = total.filter(|t| *t != seen) {
            tracing::warn!(
                vendor = VENDOR,
                total = t,
                fetched = seen,
                "Prism reported {t} application rows but the listing ended after {seen}: the software inventory is incomplete, so no record will be marked missing"
            );
        }
    }
    Ok((next, total))
}

fn value_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// The `cursor` query value of a users `next` URL (never its host). `None` when `next` is null.
fn users_next(resp: &Value, current: Option<&str>) -> Result<Option<Cursor>, ConnectorError> {
    let malformed = |detail: String| ConnectorError::Malformed {
        vendor: VENDOR,
        path: "/api/v1/users".into(),
        detail,
    };
    let next = match resp.get("next") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s.trim(),
        Some(other) => return Err(malformed(format!("`next` is not a URL: {other}"))),
    };
    // `next` may be absolute (documented) or, defensively, relative or a bare query.
    let parsed = Url::parse(next)
        .or_else(|_| Url::parse("https://placeholder.invalid/").and_then(|b| b.join(next)));
    let cursor = parsed
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "cursor")
                .map(|(_, v)| v.into_owned())
        })
        .filter(|c| !c.is_empty())
        .ok_or_else(|| malformed("`next` has no `cursor` query value".into()))?;
    if Some(cursor.as_str()) == current {
        return Err(malformed(
            "`next` repeats the cursor just used; stopping rather than looping".into(),
        ));
    }
    Ok(Some(Cursor(json!({"cursor": cursor}))))
}

fn cursor_u64(c: Option<&Cursor>, field: &str) -> Result<Option<u64>, ConnectorError> {
    match c {
        None => Ok(None),
        Some(c) => match c.0.get(field).and_then(Value::as_u64) {
            Some(n) => Ok(Some(n)),
            None => Err(ConnectorError::Config(format!(
                "cursor {} is not a Kandji cursor (expected `{field}`)",
                c.0
            ))),
        },
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The permission (as named in Kandji's token settings) an endpoint needs.
fn permission(path: &str) -> &'static str {
    if path.ends_with("/details") {
        "Device details (/devices/{device_id}/details)"
    } else if path.ends_with("/apps") && path.contains("/devices/") {
        "Application list (/devices/{device_id}/apps)"
    } else if path.contains("/prism/") {
        "Visibility / Prism (/prism/apps)"
    } else if path.contains("/users") {
        "Users (/users)"
    } else {
        "Device list (/devices)"
    }
}

/// The Kandji connector.
pub struct Kandji {
    base: Url,
    token: SecretString,
    http: VendorHttp,
    listing: Listing,
    apps_source: AppsSource,
    page_size: u32,
    ordering: String,
    filter: Vec<(String, String)>,
    details: bool,
    details_ttl: Option<Duration>,
    state: Arc<dyn StateStore>,
}

impl Kandji {
    /// Build from the secret (`subdomain`, `region`, `api_token`, optional `base_url`).
    #[allow(clippy::new_ret_no_self)] // the dispatch in mod.rs takes a boxed connector
    pub fn new(
        secret: &Value,
        ctx: ConnectorContext,
    ) -> Result<Box<dyn Connector>, ConnectorError> {
        Ok(Box::new(Self::build(secret, ctx)?))
    }

    fn build(secret: &Value, ctx: ConnectorContext) -> Result<Self, ConnectorError> {
        let s: Secret = parse_secret(
            SourceKind::Kandji,
            secret,
            "`subdomain`, `region` (us or eu) and `api_token` (optionally `base_url`)",
        )?;
        require(SourceKind::Kandji, "api_token", s.api_token.expose_secret())?;
        let base = api_root(
            s.subdomain.as_deref(),
            s.region.as_deref(),
            s.base_url.as_deref(),
        )?;
        let listing = listing(ctx.object_type, ctx.config("api"))?;
        let apps_source = match ctx.config("apps_source").map(str::trim) {
            None | Some("" | "prism") => AppsSource::Prism,
            Some("per-device" | "per_device" | "device") => AppsSource::PerDevice,
            Some(other) => {
                return Err(ConnectorError::Config(format!(
                    "config:apps_source={other} must be `prism` (default) or `per-device`"
                )))
            }
        };
        let default_size = if listing == Listing::Apps && apps_source == AppsSource::PerDevice {
            PER_DEVICE_PAGE
        } else {
            MAX_PAGE_SIZE
        };
        let page_size = ctx.page_size(default_size, MAX_PAGE_SIZE)?;
        let ordering = match ctx
            .config("ordering")
            .map(str::trim)
            .filter(|o| !o.is_empty())
        {
            None => "device_id".to_string(),
            Some(o) => {
                for f in o.split(',') {
                    let f = f.trim().trim_start_matches('-');
                    if !DEVICE_ORDERINGS.contains(&f) {
                        return Err(ConnectorError::Config(format!(
                            "config:ordering={o}: `{f}` is not a documented Kandji ordering; use one of {} (prefix - for descending)",
                            DEVICE_ORDERINGS.join(", ")
                        )));
                    }
                }
                o.replace(' ', "")
            }
        };
        let filter_listing = if listing == Listing::Apps && apps_source == AppsSource::PerDevice {
            Listing::Devices
        } else {
            listing
        };
        let filter = parse_filter(filter_listing, ctx.config("filter"))?;
        let details = match ctx.config("details").map(|d| d.trim().to_ascii_lowercase()) {
            None => false,
            Some(d) if matches!(d.as_str(), "true" | "yes" | "1") => true,
            Some(d) if matches!(d.as_str(), "false" | "no" | "0" | "") => false,
            Some(d) => {
                return Err(ConnectorError::Config(format!(
                    "config:details={d} must be true or false"
                )))
            }
        };
        let details_ttl = match ctx.config("details_ttl_hours").map(str::trim) {
            None => Some(Duration::from_secs(24 * 3600)),
            Some(h) => match h.parse::<f64>() {
                Ok(h) if (0.0..=24.0 * 90.0).contains(&h) => {
                    (h > 0.0).then(|| Duration::from_secs_f64(h * 3600.0))
                }
                _ => return Err(ConnectorError::Config(format!("config:details_ttl_hours={h} must be a number of hours from 0 (no cache) to 2160"))),
            },
        };
        let per_hour = match ctx.config("requests_per_hour").map(str::trim) {
            None => HOURLY_LIMIT,
            Some(n) => match n.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(ConnectorError::Config(format!("config:requests_per_hour={n} must be a positive number (Kandji allows 10000 per tenant)"))),
            },
        };
        let mut opts = HttpOptions::new(VENDOR);
        opts.rate_limit = Some(RateLimit {
            requests: per_hour,
            per: Duration::from_secs(3600),
            concurrency: CONCURRENCY,
        });
        Ok(Kandji {
            http: VendorHttp::new(opts)?,
            base,
            token: s.api_token,
            listing,
            apps_source,
            page_size,
            ordering,
            filter,
            details,
            details_ttl,
            state: ctx.state,
        })
    }

    fn url(&self, path: &str, query: &[(&str, String)], with_filter: bool) -> Url {
        let mut url = join(&self.base, path);
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
            if with_filter {
                for (k, v) in &self.filter {
                    q.append_pair(k, v);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    fn devices_url(&self, offset: u64, limit: u32) -> Url {
        self.url(
            "api/v1/devices",
            &[
                ("limit", limit.to_string()),
                ("offset", offset.to_string()),
                ("ordering", self.ordering.clone()),
            ],
            true,
        )
    }

    fn prism_url(&self, cursor: Option<&Cursor>, limit: u32) -> Result<Url, ConnectorError> {
        let mut q = vec![("limit", limit.to_string())];
        match cursor {
            // Kandji's cursor example sends `cursor=` (empty) on the first call.
            None => q.push(("cursor", String::new())),
            Some(c) => match (
                c.0.get("cursor").and_then(Value::as_str),
                c.0.get("offset").and_then(Value::as_u64),
            ) {
                (Some(cur), _) => q.push(("cursor", cur.to_string())),
                (None, Some(off)) => q.push(("offset", off.to_string())),
                _ => {
                    return Err(ConnectorError::Config(format!(
                        "cursor {} is not a Kandji Prism cursor",
                        c.0
                    )))
                }
            },
        }
        Ok(self.url("api/v1/prism/apps", &q, true))
    }

    fn users_url(&self, cursor: Option<&str>) -> Url {
        let q: Vec<(&str, String)> = cursor
            .map(|c| vec![("cursor", c.to_string())])
            .unwrap_or_default();
        self.url("api/v1/users", &q, true)
    }

    /// GET a JSON body. A malformed 200 is fetched once more; 401/403/404 get Kandji's explanation.
    async fn get(&self, url: &Url) -> Result<Value, ConnectorError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = self
                .http
                .json::<Value>(|| {
                    self.http
                        .client()
                        .get(url.clone())
                        .bearer_auth(self.token.expose_secret())
                        .header(reqwest::header::ACCEPT, "application/json")
                })
                .await;
            return match res {
                Ok(v) => Ok(v),
                Err(ConnectorError::Malformed { path, detail, .. }) if attempt == 1 => {
                    tracing::warn!(vendor = VENDOR, path = %path, detail = %detail, "malformed JSON; fetching the page once more");
                    continue;
                }
                Err(ConnectorError::Auth { detail, .. }) => Err(ConnectorError::Auth {
                    vendor: VENDOR,
                    detail: format!(
                        "{detail}. Kandji answers 401 when the API token is wrong, was revoked or has expired; it cannot be refreshed: \
                         create a new token under Settings → Access → API Token, store it as `api_token` in the secret, \
                         and check that `subdomain`/`region` name the tenant the token belongs to"
                    ),
                }),
                Err(ConnectorError::Forbidden { path, detail, .. }) => Err(ConnectorError::Forbidden {
                    vendor: VENDOR,
                    detail: format!(
                        "{detail} (the API token lacks the \"{}\" permission: enable it under Settings → Access → API Token → Configure)",
                        permission(&path)
                    ),
                    path,
                }),
                Err(ConnectorError::Status { status: 404, path, detail, .. }) => Err(ConnectorError::Status {
                    vendor: VENDOR,
                    status: 404,
                    detail: format!("{detail} (is {} this tenant's API URL? check `subdomain`, `region` or `base_url`)", self.base),
                    path,
                }),
                Err(e) => Err(e),
            };
        }
    }

    /// One page of `/devices` (a bare array).
    async fn devices_page(&self, offset: u64, limit: u32) -> Result<Vec<Value>, ConnectorError> {
        let url = self.devices_url(offset, limit);
        match self.get(&url).await? {
            Value::Array(a) => Ok(a),
            other => Err(ConnectorError::Malformed {
                vendor: VENDOR,
                path: url.path().to_string(),
                detail: format!("expected a JSON array of devices, got {}", kind(&other)),
            }),
        }
    }

    /// GET a per-device sub-resource; `None` when the device is gone (404).
    async fn device_sub(
        &self,
        device_id: &str,
        what: &str,
    ) -> Result<Option<Value>, ConnectorError> {
        let mut url = join(&self.base, "api/v1/devices");
        url.path_segments_mut()
            .map_err(|_| {
                ConnectorError::Config(format!("base URL {} cannot take a path", self.base))
            })?
            .push(device_id)
            .push(what);
        match self.get(&url).await {
            Ok(v) => Ok(Some(v)),
            Err(ConnectorError::Status { status: 404, .. }) => {
                tracing::info!(
                    vendor = VENDOR,
                    device_id,
                    what,
                    "device vanished between the list and its {what}; skipped"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The state key of a device's cached details (the store is already per connection).
    fn details_key(&self, device_id: &str) -> String {
        format!("kandji-details|{device_id}")
    }

    /// Attach `details` to each device (from the cache when fresh).
    async fn attach_details(&self, devices: &mut [Value]) -> Result<(), ConnectorError> {
        let ids: Vec<(usize, String)> = devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| str_field(d, &["device_id"]).map(|id| (i, id.to_string())))
            .collect();
        let now = Utc::now().timestamp();
        let mut cached = std::collections::HashMap::new();
        if let Some(ttl) = self.details_ttl {
            let keys: Vec<String> = ids.iter().map(|(_, id)| self.details_key(id)).collect();
            for (k, v) in self.state.get_many(&keys).await? {
                let fresh = v
                    .get("fetched_at")
                    .and_then(Value::as_i64)
                    .is_some_and(|t| now - t < ttl.as_secs() as i64);
                if let (true, Some(d)) = (fresh, v.get("details")) {
                    cached.insert(k, d.clone());
                }
            }
        }
        let mut missing = Vec::new();
        for (i, id) in &ids {
            match cached.remove(&self.details_key(id)) {
                Some(d) => insert(&mut devices[*i], "details", d),
                None => missing.push((*i, id.clone())),
            }
        }
        let fetched: Vec<(usize, String, Result<Option<Value>, ConnectorError>)> =
            stream::iter(missing)
                .map(|(i, id)| async move {
                    let r = self.device_sub(&id, "details").await;
                    (i, id, r)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        let mut first_err = None;
        for (i, id, r) in fetched {
            match r {
                Ok(Some(d)) => {
                    let d = trim_details(d);
                    if let Some(ttl) = self.details_ttl {
                        let item = json!({"fetched_at": now, "details": d});
                        if serde_json::to_vec(&item)
                            .map(|b| b.len())
                            .unwrap_or(usize::MAX)
                            <= MAX_CACHED_DETAILS
                        {
                            self.state
                                .put(
                                    &self.details_key(&id),
                                    &item,
                                    Some(now + ttl.as_secs() as i64),
                                )
                                .await?;
                        }
                    }
                    insert(&mut devices[i], "details", d);
                }
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // Details already fetched are cached, so retrying the page costs only the failed ones.
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn fetch_devices(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let offset = cursor_u64(cursor, "offset")?.unwrap_or(0);
        let mut records = self.devices_page(offset, self.page_size).await?;
        let next = devices_next(offset, self.page_size, records.len());
        records.iter_mut().for_each(enrich_device);
        if self.details && !records.is_empty() {
            self.attach_details(&mut records).await?;
        }
        Ok(Page {
            records,
            next,
            total: None,
            ..Default::default()
        })
    }

    async fn fetch_prism(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let url = self.prism_url(cursor, self.page_size)?;
        let resp = self.get(&url).await?;
        let Some(data) = resp.get("data").and_then(Value::as_array) else {
            return Err(ConnectorError::Malformed {
                vendor: VENDOR,
                path: url.path().to_string(),
                detail: format!(
                    "expected an object with a `data` array, got {}",
                    kind(&resp)
                ),
            });
        };
        // Rows before this page: carried in the cursor (an offset is the same number).
        let seen = cursor
            .and_then(|c| c.0.get("offset").or_else(|| c.0.get("seen")))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let (next, total) = prism_next(&resp, seen, self.page_size)?;
        let mut records = data.clone();
        records.iter_mut().for_each(|r| enrich_app(r, None));
        Ok(Page {
            records,
            next,
            total,
            ..Default::default()
        })
    }

    async fn fetch_device_apps(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let offset = cursor_u64(cursor, "offset")?.unwrap_or(0);
        let devices = self.devices_page(offset, self.page_size).await?;
        let next = devices_next(offset, self.page_size, devices.len());
        let ids: Vec<(usize, String)> = devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| str_field(d, &["device_id"]).map(|id| (i, id.to_string())))
            .collect();
        let answers: Vec<(usize, Result<Option<Value>, ConnectorError>)> = stream::iter(ids)
            .map(|(i, id)| async move { (i, self.device_sub(&id, "apps").await) })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        let mut records = Vec::new();
        for (i, r) in answers {
            let Some(resp) = r? else { continue };
            let device = &devices[i];
            let apps = match resp.get("apps") {
                Some(Value::Array(a)) => a.clone(),
                None | Some(Value::Null) => Vec::new(),
                Some(other) => {
                    return Err(ConnectorError::Malformed {
                        vendor: VENDOR,
                        path: "/api/v1/devices/{device_id}/apps".into(),
                        detail: format!("`apps` is {}, not an array", kind(other)),
                    })
                }
            };
            for mut app in apps {
                if let Some(obj) = app.as_object_mut() {
                    if let Some(n) = device.get("device_name") {
                        obj.entry("device_name").or_insert(n.clone());
                    }
                }
                enrich_app(&mut app, Some(device));
                records.push(app);
            }
        }
        Ok(Page {
            records,
            next,
            total: None,
            ..Default::default()
        })
    }

    async fn fetch_users(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let current = match cursor {
            None => None,
            Some(c) => Some(c.0.get("cursor").and_then(Value::as_str).ok_or_else(|| {
                ConnectorError::Config(format!("cursor {} is not a Kandji users cursor", c.0))
            })?),
        };
        let url = self.users_url(current);
        let resp = self.get(&url).await?;
        let Some(results) = resp.get("results").and_then(Value::as_array) else {
            return Err(ConnectorError::Malformed {
                vendor: VENDOR,
                path: url.path().to_string(),
                detail: format!(
                    "expected an object with a `results` array, got {}",
                    kind(&resp)
                ),
            });
        };
        let mut records = results.clone();
        records.iter_mut().for_each(enrich_user);
        let next = if records.is_empty() {
            None
        } else {
            users_next(&resp, current)?
        };
        let total = resp.get("count").and_then(value_u64);
        Ok(Page {
            records,
            next,
            total,
            ..Default::default()
        })
    }
}

fn insert(v: &mut Value, key: &str, value: Value) {
    if let Some(obj) = v.as_object_mut() {
        obj.insert(key.to_string(), value);
    }
}

#[async_trait]
impl Connector for Kandji {
    async fn fetch_page(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        match (self.listing, self.apps_source) {
            (Listing::Devices, _) => self.fetch_devices(cursor).await,
            (Listing::Apps, AppsSource::Prism) => self.fetch_prism(cursor).await,
            (Listing::Apps, AppsSource::PerDevice) => self.fetch_device_apps(cursor).await,
            (Listing::Users, _) => self.fetch_users(cursor).await,
        }
    }

    async fn test(&self) -> Result<TestReport, ConnectorError> {
        let host = self.base.host_str().unwrap_or("?").to_string();
        match (self.listing, self.apps_source) {
            (Listing::Devices, _) | (Listing::Apps, AppsSource::PerDevice) => {
                let mut devices = self.devices_page(0, 1).await?;
                let mut message = format!("authenticated to {host} with the API token and read /api/v1/devices (Device list permission)");
                let first_id = devices
                    .first()
                    .and_then(|d| str_field(d, &["device_id"]))
                    .map(str::to_string);
                if let Some(id) = first_id {
                    if self.listing == Listing::Apps {
                        self.device_sub(&id, "apps").await?;
                        message.push_str(" and /devices/{id}/apps (Application list permission)");
                    } else if self.details {
                        if let Some(d) = self.device_sub(&id, "details").await? {
                            insert(&mut devices[0], "details", trim_details(d));
                        }
                        message.push_str(" and /devices/{id}/details (Device details permission)");
                    }
                } else {
                    message.push_str("; the tenant has no devices");
                }
                devices.iter_mut().for_each(enrich_device);
                Ok(TestReport {
                    message,
                    sample: devices.into_iter().next(),
                })
            }
            (Listing::Apps, AppsSource::Prism) => {
                let page = {
                    let url = self.prism_url(None, 1)?;
                    self.get(&url).await?
                };
                let mut sample = page
                    .get("data")
                    .and_then(Value::as_array)
                    .and_then(|d| d.first().cloned());
                if let Some(s) = sample.as_mut() {
                    enrich_app(s, None);
                }
                Ok(TestReport {
                    message: format!("authenticated to {host} with the API token and read /api/v1/prism/apps (Prism permission)"),
                    sample,
                })
            }
            (Listing::Users, _) => {
                let page = self.fetch_users(None).await?;
                Ok(TestReport {
                    message: format!("authenticated to {host} with the API token and read /api/v1/users (Users permission)"),
                    sample: page.records.into_iter().next(),
                })
            }
        }
    }

    fn source_id(&self, raw: &Value) -> Option<String> {
        match self.listing {
            Listing::Devices => raw.get("device_id").and_then(scalar),
            Listing::Users => raw.get("id").and_then(scalar),
            Listing::Apps => {
                let dev = str_field(raw, &["assetsync_device_id", "device_id"])?;
                let ident = str_field(raw, &["bundle_id", "app_id", "name", "app_name"])?;
                Some(format!("{dev}|{ident}"))
            }
        }
    }

    fn checked_in(&self, raw: &Value) -> Option<DateTime<Utc>> {
        let fields: &[&str] = match self.listing {
            Listing::Devices => &["last_check_in"],
            Listing::Users => &["updated_at", "created_at"],
            Listing::Apps => &[
                "last_collected_at",
                "assetsync_device_checked_in",
                "modification_date",
            ],
        };
        fields
            .iter()
            .filter_map(|f| raw.get(*f).and_then(Value::as_str))
            .find_map(normalize::parse_time)
    }

    fn parent_key(&self, raw: &Value) -> Option<String> {
        if self.listing != Listing::Apps {
            return None;
        }
        str_field(raw, &["assetsync_device_serial", "serial_number"]).and_then(normalize::serial)
    }

    fn http_counts(&self) -> HttpCounts {
        self.http.stats().snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::MemoryState;
    use crate::mapping::Mapping;

    fn ctx(object_type: ObjectType, config: &[(&str, &str)]) -> ConnectorContext {
        ConnectorContext {
            connection: "kandji-test".into(),
            object_type,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state: Arc::new(MemoryState::default()),
        }
    }

    fn secret(region: &str) -> Value {
        json!({"subdomain": "acme", "region": region, "api_token": "3f9c1a7e-54b2-4d8e-a6c0-9b1e2d3f4a5b"})
    }

    fn sample_devices() -> Value {
        json!([
          {
            "device_id": "0b6c1f2e-3d4a-4b5c-9d8e-7f6a5b4c3d2e",
            "device_name": "Priya's MacBook Pro",
            "model": "MacBook Pro (14-inch, Nov 2023)",
            "serial_number": "H7WQ3XK2LN",
            "platform": "Mac",
            "os_version": "14.5",
            "last_check_in": "2024-06-20T08:15:02.331904Z",
            "user": {"email": "Priya.Shah@example.com", "name": "Priya Shah", "id": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f", "is_archived": false},
            "asset_tag": "MAC-2291",
            "blueprint_id": "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d",
            "blueprint_name": "Engineering",
            "first_enrollment": "2023-12-04 17:22:10.118274+00:00",
            "tags": ["eng", "laptop"]
          },
          {
            "device_id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
            "device_name": "Front Desk iPad",
            "model": "iPad (10th generation)",
            "serial_number": "GQ7K2P1M0F",
            "platform": "iPad",
            "os_version": "17.5.1",
            "last_check_in": "2024-06-18T12:40:55.004120Z",
            "user": "",
            "asset_tag": "",
            "blueprint_name": "Shared iPads",
            "tags": []
          }
        ])
    }

    #[test]
    fn hosts_by_region_and_base_url_override() {
        let k = Kandji::build(&secret("us"), ctx(ObjectType::Hardware, &[])).unwrap();
        assert_eq!(
            k.devices_url(0, 300).as_str(),
            "https://acme.api.kandji.io/api/v1/devices?limit=300&offset=0&ordering=device_id"
        );
        let k = Kandji::build(&secret("EU"), ctx(ObjectType::Hardware, &[])).unwrap();
        assert_eq!(
            k.devices_url(600, 300).as_str(),
            "https://acme.api.eu.kandji.io/api/v1/devices?limit=300&offset=600&ordering=device_id"
        );
        let s = json!({"region": "us", "api_token": "t", "base_url": "https://acme.clients.us-1.kandji.io/api/v1/"});
        let k = Kandji::build(&s, ctx(ObjectType::Person, &[])).unwrap();
        assert_eq!(
            k.users_url(None).as_str(),
            "https://acme.clients.us-1.kandji.io/api/v1/users"
        );
        assert_eq!(
            k.users_url(Some("cD0yOTE0Mw==")).as_str(),
            "https://acme.clients.us-1.kandji.io/api/v1/users?cursor=cD0yOTE0Mw%3D%3D"
        );
        let s = json!({"api_token": "t", "base_url": "http://127.0.0.1:9999"});
        let k = Kandji::build(&s, ctx(ObjectType::Software, &[])).unwrap();
        assert_eq!(
            k.prism_url(None, 300).unwrap().as_str(),
            "http://127.0.0.1:9999/api/v1/prism/apps?limit=300&cursor="
        );
        let c = Cursor(json!({"cursor": "abc+/="}));
        assert_eq!(
            k.prism_url(Some(&c), 300).unwrap().as_str(),
            "http://127.0.0.1:9999/api/v1/prism/apps?limit=300&cursor=abc%2B%2F%3D"
        );
        let c = Cursor(json!({"offset": 900}));
        assert_eq!(
            k.prism_url(Some(&c), 300).unwrap().as_str(),
            "http://127.0.0.1:9999/api/v1/prism/apps?limit=300&offset=900"
        );
    }

    #[test]
    fn secret_errors_name_the_field() {
        let e = Kandji::build(&secret("ap"), ctx(ObjectType::Hardware, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("`region`") && e.contains("us") && e.contains("eu"),
            "{e}"
        );
        let e = Kandji::build(
            &json!({"subdomain": "acme", "api_token": "t"}),
            ctx(ObjectType::Hardware, &[]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("`region`"), "{e}");
        let e = Kandji::build(
            &json!({"subdomain": "acme", "region": "us"}),
            ctx(ObjectType::Hardware, &[]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("api_token"), "{e}");
        let e = Kandji::build(
            &json!({"subdomain": "acme", "region": "us", "api_token": " "}),
            ctx(ObjectType::Hardware, &[]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("api_token"), "{e}");
        let e = Kandji::build(
            &json!({"region": "us", "api_token": "t"}),
            ctx(ObjectType::Hardware, &[]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("`subdomain`"), "{e}");
        let e = Kandji::build(
            &json!({"subdomain": "acme.api.kandji.io", "region": "us", "api_token": "t"}),
            ctx(ObjectType::Hardware, &[]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("`subdomain`") && e.contains("base_url"), "{e}");
        let e = Kandji::build(
            &json!({"api_token": "t", "base_url": "http://acme.api.kandji.io"}),
            ctx(ObjectType::Hardware, &[]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("https"), "{e}");
        let e = Kandji::build(&json!("a string"), ctx(ObjectType::Hardware, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("JSON object"), "{e}");
        // The token never appears in an error.
        let e = Kandji::build(
            &json!({"subdomain": "a b", "region": "us", "api_token": "SECRET-TOKEN"}),
            ctx(ObjectType::Hardware, &[]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(!e.contains("SECRET-TOKEN"), "{e}");
    }

    #[test]
    fn config_is_checked() {
        let e = Kandji::build(
            &secret("us"),
            ctx(ObjectType::Hardware, &[("api", "computers")]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("config:api=computers"), "{e}");
        let e = Kandji::build(
            &secret("us"),
            ctx(ObjectType::Hardware, &[("page_size", "500")]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("1 to 300"), "{e}");
        let e = Kandji::build(
            &secret("us"),
            ctx(ObjectType::Hardware, &[("ordering", "-serial,device_id")]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("`serial`"), "{e}");
        let k = Kandji::build(
            &secret("us"),
            ctx(
                ObjectType::Hardware,
                &[("ordering", "-last_check_in, device_id")],
            ),
        )
        .unwrap();
        assert!(k
            .devices_url(0, 10)
            .as_str()
            .ends_with("ordering=-last_check_in%2Cdevice_id"));
        let e = Kandji::build(
            &secret("us"),
            ctx(ObjectType::Hardware, &[("filter", "platfrom=Mac")]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("`platfrom`") && e.contains("platform"), "{e}");
        let k = Kandji::build(
            &secret("us"),
            ctx(
                ObjectType::Hardware,
                &[("filter", "platform=Mac&user_email=@example.com")],
            ),
        )
        .unwrap();
        assert!(k
            .devices_url(0, 300)
            .as_str()
            .ends_with("ordering=device_id&platform=Mac&user_email=%40example.com"));
        let k = Kandji::build(
            &secret("us"),
            ctx(
                ObjectType::Software,
                &[("filter", r#"{"name":{"not_in":["Okta Verify"]}}"#)],
            ),
        )
        .unwrap();
        assert!(k
            .prism_url(None, 300)
            .unwrap()
            .query()
            .unwrap()
            .contains("filter=%7B%22name%22"));
        let e = Kandji::build(
            &secret("us"),
            ctx(ObjectType::Software, &[("apps_source", "mdm")]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("per-device"), "{e}");
        let k = Kandji::build(
            &secret("us"),
            ctx(ObjectType::Software, &[("apps_source", "per-device")]),
        )
        .unwrap();
        assert_eq!(k.page_size, PER_DEVICE_PAGE);
        let e = Kandji::build(
            &secret("us"),
            ctx(ObjectType::Hardware, &[("details", "maybe")]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("config:details"), "{e}");
        let e = Kandji::build(
            &secret("us"),
            ctx(ObjectType::Hardware, &[("requests_per_hour", "0")]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("requests_per_hour"), "{e}");
        let k = Kandji::build(
            &secret("us"),
            ctx(ObjectType::Hardware, &[("details_ttl_hours", "0")]),
        )
        .unwrap();
        assert!(k.details_ttl.is_none());
    }

    #[test]
    fn devices_end_on_empty_or_short_page() {
        assert_eq!(
            devices_next(0, 300, 300),
            Some(Cursor(json!({"offset": 300})))
        );
        assert_eq!(devices_next(300, 300, 299), None);
        assert_eq!(devices_next(600, 300, 0), None);
        assert_eq!(devices_next(0, 1, 1), Some(Cursor(json!({"offset": 1}))));
        assert!(cursor_u64(Some(&Cursor(json!({"page": 2}))), "offset").is_err());
    }

    #[test]
    fn prism_both_envelopes() {
        // Older: offset/limit/total/data.
        let resp = json!({"offset": 0, "limit": 300, "total": 650, "data": vec![json!({}); 300]});
        let (next, total) = prism_next(&resp, 0, 300).unwrap();
        assert_eq!(next, Some(Cursor(json!({"offset": 300}))));
        assert_eq!(total, Some(650));
        let resp = json!({"offset": 600, "limit": 300, "total": 650, "data": vec![json!({}); 50]});
        assert_eq!(prism_next(&resp, 600, 300).unwrap().0, None);
        let resp = json!({"offset": 300, "limit": 300, "total": 600, "data": vec![json!({}); 300]});
        assert_eq!(
            prism_next(&resp, 300, 300).unwrap().0,
            None,
            "total reached"
        );
        let resp = json!({"offset": 0, "limit": 300, "data": vec![json!({}); 299]});
        assert_eq!(prism_next(&resp, 0, 300).unwrap().0, None, "short page");
        // Newer: data + cursor.
        let resp = json!({"data": vec![json!({}); 300], "cursor": "eyJwIjoxfQ=="});
        assert_eq!(
            prism_next(&resp, 0, 300).unwrap(),
            (
                Some(Cursor(json!({"cursor": "eyJwIjoxfQ==", "seen": 300}))),
                None
            )
        );
        for last in [
            json!({"data": [{}], "cursor": null}),
            json!({"data": [{}], "cursor": ""}),
            json!({"data": [], "cursor": "x"}),
        ] {
            assert_eq!(prism_next(&last, 0, 300).unwrap().0, None, "{last}");
        }
        assert!(prism_next(&json!({"data": [{}], "cursor": 5}), 0, 300).is_err());
        // The published two-style body: `cursor: null` with more rows by `total` is not the end.
        let resp = json!({"offset": null, "limit": 25, "total": 165, "data": vec![json!({}); 25], "cursor": null});
        assert_eq!(
            prism_next(&resp, 0, 25).unwrap(),
            (Some(Cursor(json!({"offset": 25}))), Some(165))
        );
        let resp = json!({"offset": 150, "limit": 25, "total": 165, "data": vec![json!({}); 15], "cursor": null});
        assert_eq!(prism_next(&resp, 150, 25).unwrap(), (None, Some(165)));
        // The first call sends `cursor=` empty; later calls the cursor or the offset.
        let k = Kandji::build(&secret("us"), ctx(ObjectType::Software, &[])).unwrap();
        assert_eq!(
            k.prism_url(None, 300).unwrap().query(),
            Some("limit=300&cursor=")
        );
        assert_eq!(
            k.prism_url(Some(&Cursor(json!({"offset": 25}))), 25)
                .unwrap()
                .query(),
            Some("limit=25&offset=25")
        );
    }

    #[test]
    fn users_cursor_comes_from_next_never_its_host() {
        let resp = json!({"next": "https://accuhive.kandji.io/api/v1/users?cursor=cD0yOTE0Mw%3D%3D&email=x", "previous": null, "results": [{}]});
        assert_eq!(
            users_next(&resp, None).unwrap(),
            Some(Cursor(json!({"cursor": "cD0yOTE0Mw=="})))
        );
        assert_eq!(
            users_next(&json!({"next": null, "results": []}), None).unwrap(),
            None
        );
        assert_eq!(users_next(&json!({"results": []}), None).unwrap(), None);
        assert_eq!(
            users_next(&json!({"next": "/api/v1/users?cursor=abc"}), None).unwrap(),
            Some(Cursor(json!({"cursor": "abc"})))
        );
        assert!(users_next(
            &json!({"next": "https://x.kandji.io/api/v1/users?page=2"}),
            None
        )
        .is_err());
        assert!(users_next(
            &json!({"next": "https://x.kandji.io/api/v1/users?cursor=abc"}),
            Some("abc")
        )
        .is_err());
        // The URL for the next page is built on the configured base.
        let k = Kandji::build(&secret("eu"), ctx(ObjectType::Person, &[])).unwrap();
        assert_eq!(
            k.users_url(Some("cD0yOTE0Mw==")).host_str(),
            Some("acme.api.eu.kandji.io")
        );
    }

    #[test]
    fn default_device_mapping_maps_the_documented_sample() {
        let m = Mapping::parse(default_mapping(ObjectType::Hardware, None).unwrap()).unwrap();
        assert_eq!(m.key_attr(), "Serial Number");
        let mut devices = sample_devices();
        let arr = devices.as_array_mut().unwrap();
        arr.iter_mut().for_each(enrich_device);
        let mac = m.apply(&arr[0], ObjectType::Hardware);
        assert_eq!(mac.key.as_deref(), Some("H7WQ3XK2LN"));
        assert_eq!(mac.attrs["Name"], "Priya's MacBook Pro");
        assert_eq!(mac.attrs["Manufacturer"], "Apple");
        assert_eq!(mac.attrs["OS Name"], "macOS");
        assert_eq!(mac.attrs["OS Version"], "14.5");
        assert_eq!(mac.attrs["Last Check-in"], "2024-06-20T08:15:02Z");
        assert_eq!(mac.attrs["User Email"], "priya.shah@example.com");
        assert_eq!(mac.attrs["User Name"], "Priya Shah");
        assert_eq!(mac.attrs["Kandji Asset Tag"], "MAC-2291");
        assert_eq!(mac.attrs["Blueprint"], "Engineering");
        assert_eq!(
            mac.attrs["Device ID"],
            "0b6c1f2e-3d4a-4b5c-9d8e-7f6a5b4c3d2e"
        );
        assert!(
            !mac.attrs.contains_key("MAC Address"),
            "no details were fetched"
        );
        let ipad = m.apply(&arr[1], ObjectType::Hardware);
        assert_eq!(ipad.attrs["OS Name"], "iPadOS");
        assert!(
            !ipad.attrs.contains_key("User Email") && !ipad.attrs.contains_key("User Name"),
            "user is \"\""
        );
        assert!(!ipad.attrs.contains_key("Kandji Asset Tag"));
        // With details attached, the MAC is mapped.
        insert(
            &mut arr[0],
            "details",
            json!({"network": {"mac_address": "a4:83:e7:11:22:33", "ip_address": "10.1.2.3"}}),
        );
        let mac = m.apply(&arr[0], ObjectType::Hardware);
        assert_eq!(mac.attrs["MAC Address"], "A4:83:E7:11:22:33");
        assert_eq!(mac.attrs["IP Address"], "10.1.2.3");
        // Keyed on Kandji's id instead, as documented.
        let m = Mapping::parse("key:device_id=Device ID\nmap:device_name=Name").unwrap();
        assert_eq!(
            m.apply(&arr[1], ObjectType::Hardware).key.as_deref(),
            Some("1A2B3C4D-5E6F-4A7B-8C9D-0E1F2A3B4C5D")
        );
    }

    #[test]
    fn people_and_status() {
        let m = Mapping::parse(default_mapping(ObjectType::Person, None).unwrap()).unwrap();
        let mut u = json!({"id": "69c009ca-1f78-4bdf-bb93-08d6d39041db", "email": "Test_User@Accuhive.io", "name": "Test User", "active": true, "archived": false,
                           "department": "Sales", "job_title": "AE", "device_count": 2});
        enrich_user(&mut u);
        let r = m.apply(&u, ObjectType::Person);
        assert_eq!(
            r.key.as_deref(),
            Some("69c009ca-1f78-4bdf-bb93-08d6d39041db")
        );
        assert_eq!(r.attrs["Email"], "test_user@accuhive.io");
        assert_eq!(r.attrs["Status"], "active");
        assert_eq!(r.attrs["Display Name"], "Test User");
        for (active, archived, want) in [
            (false, false, "suspended"),
            (true, true, "suspended"),
            (false, true, "suspended"),
        ] {
            let mut u = json!({"id": "x", "active": active, "archived": archived});
            enrich_user(&mut u);
            assert_eq!(u["assetsync_status"], want);
        }
    }

    #[test]
    fn apps_are_keyed_by_serial_and_bundle_and_linked_to_their_device() {
        let k = Kandji::build(&secret("us"), ctx(ObjectType::Software, &[])).unwrap();
        let m = Mapping::parse(default_mapping(ObjectType::Software, None).unwrap()).unwrap();
        let mut row = json!({"device_id": "dev-1", "device__name": "MBP", "serial_number": " c02abc ", "name": "Safari", "bundle_id": "com.apple.Safari",
                             "version": "18.0", "last_collected_at": "2026-05-01T12:00:00Z"});
        enrich_app(&mut row, None);
        let r = m.apply(&row, ObjectType::Software);
        assert_eq!(r.key.as_deref(), Some("C02ABC|com.apple.Safari"));
        assert_eq!(r.attrs["Name"], "Safari");
        assert_eq!(r.attrs["Bundle ID"], "com.apple.Safari");
        assert_eq!(r.attrs["Device Serial"], "C02ABC");
        assert_eq!(k.parent_key(&row).as_deref(), Some("C02ABC"));
        assert_eq!(k.source_id(&row).as_deref(), Some("dev-1|com.apple.Safari"));
        assert!(k.checked_in(&row).is_some());
        // Per-device apps: serial from the device, name fallback without a bundle id.
        let device = json!({"device_id": "dev-2", "serial_number": "F2LX", "last_check_in": "2024-06-18T12:40:55.004120Z"});
        let mut app =
            json!({"app_id": "7", "app_name": "Café ☕ Timer", "bundle_id": "", "version": "1.2"});
        enrich_app(&mut app, Some(&device));
        let r = m.apply(&app, ObjectType::Software);
        assert_eq!(r.key.as_deref(), Some("F2LX|Café ☕ Timer"));
        assert_eq!(r.attrs["Name"], "Café ☕ Timer");
        // No serial: no key (skipped by the register).
        let mut app = json!({"name": "Notes", "bundle_id": "com.apple.Notes", "serial_number": "To be filled by O.E.M."});
        enrich_app(&mut app, None);
        assert!(m.apply(&app, ObjectType::Software).key.is_none());
        assert!(k.parent_key(&app).is_none());
        // Other listings have no parent.
        let k = Kandji::build(&secret("us"), ctx(ObjectType::Hardware, &[])).unwrap();
        assert!(k.parent_key(&row).is_none());
    }

    #[test]
    fn details_are_trimmed_and_os_names_known() {
        let d = trim_details(
            json!({"network": {"mac_address": "x"}, "installed_profiles": [1], "volumes": [2], "users": {"regular_users": [], "system_users": [3]}}),
        );
        assert_eq!(
            d,
            json!({"network": {"mac_address": "x"}, "users": {"regular_users": []}})
        );
        assert_eq!(os_name("AppleTV"), Some("tvOS"));
        assert_eq!(os_name("iPhone"), Some("iOS"));
        assert_eq!(os_name("Windows"), Some("Windows"));
        assert_eq!(os_name("Linux"), None);
        let mut w = json!({"platform": "Windows", "serial_number": "5CG1234XYZ"});
        enrich_device(&mut w);
        let m = Mapping::parse(DEVICES_MAPPING).unwrap();
        let r = m.apply(&w, ObjectType::Hardware);
        assert_eq!(r.attrs["OS Name"], "Windows");
        assert!(
            !r.attrs.contains_key("Manufacturer"),
            "Apple is not assumed for Windows"
        );
        assert_eq!(default_mapping(ObjectType::Hardware, Some("nope")), None);
        assert_eq!(
            default_mapping(ObjectType::Person, Some("devices")),
            Some(DEVICES_MAPPING)
        );
        for m in [DEVICES_MAPPING, APPS_MAPPING, USERS_MAPPING] {
            Mapping::parse(m).unwrap();
        }
    }

    #[test]
    fn permissions_are_named() {
        assert!(permission("/api/v1/devices/abc/details").starts_with("Device details"));
        assert!(permission("/api/v1/devices/abc/apps").starts_with("Application list"));
        assert!(permission("/api/v1/devices").starts_with("Device list"));
        assert!(permission("/api/v1/users").starts_with("Users"));
        assert!(permission("/api/v1/prism/apps").contains("Prism"));
    }
}
