//! ManageEngine Endpoint Central (formerly Desktop Central), REST API 1.4.
//!
//! # Authentication (one of three sets in the secret, besides `base_url`)
//! - `api_token`: a token generated in the console (Admin → Integrations → API Explorer →
//!   Authentication). Sent as the whole header value, no scheme word: `Authorization: <token>`.
//!   Nothing to refresh; a refusal is reported at once.
//! - `username` + `password` (+ optional `auth_type` `local_authentication` / `ad_authentication`,
//!   optional `domain`, sent as `domainName`): `POST /api/1.4/desktop/authentication` with the
//!   password base64-encoded; the token is at `message_response.authentication.auth_data.auth_token`
//!   and is sent like a console token. An account with two-factor authentication answers with
//!   `two_factor_data` instead; that cannot work unattended, so the error says to use `api_token`.
//!   The token lifetime is undocumented: it is kept for [`LOGIN_TOKEN_LIFETIME`] in the process-wide
//!   cache and re-fetched once on HTTP 401 or on an error body saying the token is invalid/expired.
//! - Cloud edition: `client_id` + `client_secret` + `refresh_token` + `accounts_url` (the Zoho
//!   accounts server of the tenant's data centre, e.g. `https://accounts.zoho.eu`). Refresh with
//!   `POST {accounts_url}/oauth/v2/token` (form `grant_type=refresh_token`); header
//!   `Authorization: Zoho-oauthtoken <token>`. Zoho lets a refresh token mint at most 10 access
//!   tokens per 10 minutes, so the access token (with its expiry) is cached in the connection's
//!   [`StateStore`] (DynamoDB in production) and shared by every fetcher: a refresh is claimed with
//!   `put_if_version` (a 30-second lease) so concurrent fetchers never refresh together; the others
//!   wait for the new token. Only the access token is stored, never the refresh token or client
//!   secret (the access token is sensitive: it is never logged).
//!
//! When several sets are present `api_token` wins, then the Zoho set, then username/password.
//! `ca_cert` (PEM) adds a trusted CA for on-premises servers with a private CA; verification is
//! never turned off.
//!
//! # Listing
//! `GET /api/1.4/som/computers` (default) or, with `config:api=scancomputers`,
//! `GET /api/1.4/inventory/scancomputers`; `page` (1-based) + `pagelimit` (1000, the documented cap).
//! The envelope is `{status, message_response: {<entity>: [...], total, limit, page}}`; a
//! `status: "error"` body (which Endpoint Central sends with HTTP 200) becomes a clear error.
//! End of data: an empty or short page, or `page * pagelimit >= total`. Some servers ignore
//! `page` and answer page 1 again: the cursor carries a fingerprint of the previous page (first and
//! last `resource_id` and the count) and an identical page ends the listing (with a warning; the
//! page's `total` still tells the fetcher the listing was incomplete).
//! `config:filter` is passed as extra query parameters in the endpoint's own syntax, e.g.
//! `config:filter=domainfilter=CORP&branchofficefilter=Berlin`.
//!
//! # Detail summaries and what the connector adds to each raw record
//! The serial, manufacturer and model live in `GET /api/1.4/inventory/compdetailssummary?resid=ID`
//! (`message_response.compdetailssummary.computer_hardware_summary`; fields seen in several
//! third-party clients). One call per computer is expensive (the documented per-API rate limit is
//! 120 per minute with a 5-minute lock), so:
//! - each computer's detail is cached in the state store under its `resource_id`, together with a
//!   change marker; it is fetched again when the marker changes, so a steady fleet costs list pages
//!   only. `scancomputers` rows carry `last_successful_scan`, which is the marker there; the default
//!   listing `som/computers` has no scan time (its documented rows carry `agent_last_contact_time`
//!   and `computer_status_update_time`, and a rescan reaches the server when the agent contacts it),
//!   so there the marker is those two. Entries also expire after `config:detail_ttl_hours`
//!   (default [`DEFAULT_DETAIL_TTL_HOURS`]), so a change no marker shows still arrives within a day.
//!   The cache of a whole page is read with one `get_many`. A `sample` writes no cache entry (its
//!   state store keeps writes in memory).
//! - calls run [`DEFAULT_DETAIL_CONCURRENCY`] at a time under a client-side limit of 110 per minute
//!   (with governor's burst of 10 that is at most 120 in any minute). `config:detail_rate=N`
//!   (per minute) and `config:detail_concurrency=N` change them for servers with other limits;
//!   `config:details=off` skips detail calls altogether.
//! - a page never makes more than `config:detail_budget` detail calls (default: four minutes'
//!   worth at the detail rate); the rest of the page follows under a cursor
//!   `{page, skip}` so a first sync of a large fleet never outlives a Lambda.
//! - a throttling answer (HTTP 429, or an error body about the rate limit / lock) is backed off:
//!   429 by [`VendorHttp`] honouring `Retry-After`, error bodies here, up to 3 waits, then the page
//!   fails as retryable.
//!
//! Fields added to the raw record (all start with `assetsync_`):
//! - `assetsync_detail`: the `compdetailssummary` object (absent with `details=off`, or when the
//!   server has no summary for the computer).
//! - `assetsync_serial`: `managedcomputerextn.service_tag` when the list carries a real one
//!   (kept as sent; the default mapping URL-decodes it with `~url_decode`), else
//!   `computer_hardware_summary.serial_number` from the detail; placeholders such as
//!   "To be filled by O.E.M." are skipped so a real serial in the other place still wins.
//! - `assetsync_scan_status`: the documented scan status codes (-1 not done, 0 failed,
//!   1 in progress, 2 success) in the words `~ec_scan_status` uses.
//! - `assetsync_warranty_expiry`: the warranty expiry of the detail summary as RFC 3339 when it is
//!   an epoch-milliseconds number (the field name in 1.4 is unverified; several are tried).
//!
//! The placeholder `--` that Endpoint Central prints for empty fields is replaced by `null`.
//!
//! # What was checked, and against what (no live server was available)
//! - Scan status codes -1/0/1/2 of `scancomputers`: ManageEngine's API page for
//!   `inventory/scancomputers` (latam mirror) and the newer `/dcapi` scan-computers page.
//!   `~ec_scan_status` in mapping.rs maps other codes (221-224), hence `assetsync_scan_status`.
//! - Error bodies arrive with HTTP 200 and `status: "error"`; `error_code` 10002 means an invalid
//!   token and 10001/10002 a refused login (an independent Go client, dannyota/hotpot `meec`),
//!   which also confirms `auth_type`, `two_factor_data` and the `--` placeholder.
//! - `compdetailssummary` fields (`serial_number`, `device_model`, `device_manufacturer`,
//!   `device_type`, `processor`, `memory`): Forescout eyeExtend and several other clients.
//!   The warranty field of the 1.4 summary is not documented anywhere found.
//! - Zoho: 1-hour tokens, 10 per refresh token per 10 minutes (Zoho token-validity page); a refusal
//!   past the cap is "Access Denied" / "too many requests" (HTTP 400), a bad refresh token
//!   `{"error":"invalid_code"}`; some Zoho products answer `expires_in` in milliseconds with
//!   `expires_in_sec` beside it, so both are read.
//! - What a locked (rate-limited) server answers is undocumented: both HTTP 429 and an error body
//!   mentioning the rate limit/lock are treated as throttling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use super::{
    parse_secret, require, token, Connector, ConnectorContext, Cursor, Page, StateStore, TestReport,
};
use crate::error::ConnectorError;
use crate::event::{ObjectType, SourceKind};
use crate::http::{
    check_base_url, join, parse_json, HttpCounts, HttpOptions, RateLimit, VendorHttp,
};
use crate::normalize;

const VENDOR: &str = "Endpoint Central";
/// The documented maximum `pagelimit`.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// How long a login token is reused before logging in again (its real lifetime is undocumented).
pub const LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Detail calls in flight at once.
pub const DEFAULT_DETAIL_CONCURRENCY: usize = 4;
/// Detail calls per minute: 110 plus governor's burst of 10 stays within the documented 120.
pub const DEFAULT_DETAIL_RATE: u32 = 110;
/// How long a cached detail summary is used without being refreshed, by default.
pub const DEFAULT_DETAIL_TTL_HOURS: u64 = 24;
/// The field that carries the detail summary in a raw record.
pub const DETAIL_FIELD: &str = "assetsync_detail";
/// Waits on a throttling error body before the page fails.
const BODY_THROTTLE_RETRIES: u32 = 3;
/// Seconds a fetcher holds the Zoho refresh lease.
const ZOHO_LEASE_SECS: i64 = 30;
/// Zoho's refresh window: after a refusal no fetcher tries again within it.
const ZOHO_BLOCK_SECS: i64 = 600;

const PATH_LOGIN: &str = "api/1.4/desktop/authentication";
const PATH_DETAIL: &str = "api/1.4/inventory/compdetailssummary";
const PATH_ZOHO_TOKEN: &str = "oauth/v2/token";

/// The default hardware mapping, shared by both listings.
macro_rules! computer_mapping {
    () => {
        "\
key:assetsync_serial~url_decode=Serial Number
map:resource_name|managedcomputer.friendly_name=Name
map:assetsync_detail.computer_hardware_summary.device_manufacturer=Manufacturer
map:assetsync_detail.computer_hardware_summary.device_model=Model
map:assetsync_detail.computer_hardware_summary.device_type=Device Type
map:assetsync_detail.computer_hardware_summary.processor=Processor
map:assetsync_warranty_expiry=Warranty Expiry
map:os_platform|os_platform_name~ec_os_platform=OS Platform
map:os_name|assetsync_detail.computer_os_summary.os_name=OS Name
map:os_version|assetsync_detail.computer_os_summary.os_version=OS Version
map:computer_live_status|live_status~ec_live_status=Live Status
map:ip_address=IP Address
map:mac_address~mac=MAC Address
map:domain_netbios_name=Domain
map:installation_status~ec_agent_status=Agent Status
map:assetsync_scan_status|scan_status~ec_scan_status=Last Scan Status
map:agent_last_contact_time~epoch_ms=Last Check-in
map:owner_email_id~lower=User Email
map:owner=User Name
map:agent_version=Agent Version
map:resource_id=Endpoint Central ID
"
    };
}

const COMPUTER_MAPPING: &str = computer_mapping!();
const SCAN_MAPPING: &str = concat!(computer_mapping!(), "config:api=scancomputers\n");

/// The default mapping: computers (`som/computers`), or `scancomputers` with `config:api=scancomputers`.
/// Endpoint Central has no user directory in API 1.4, so there is no default for `Person`.
pub fn default_mapping(object_type: ObjectType, api: Option<&str>) -> Option<&'static str> {
    match (object_type, api.map(Listing::parse)) {
        (ObjectType::Hardware, Some(Some(Listing::ScanComputers))) => Some(SCAN_MAPPING),
        (ObjectType::Hardware, _) => Some(COMPUTER_MAPPING),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Secret {
    base_url: String,
    #[serde(default)]
    api_token: Option<SecretString>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    auth_type: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<SecretString>,
    #[serde(default)]
    refresh_token: Option<SecretString>,
    #[serde(default)]
    accounts_url: Option<String>,
    #[serde(default)]
    ca_cert: Option<String>,
}

const EXPECTED: &str = "`base_url` and one of: `api_token`; `username` + `password`; or `client_id` + `client_secret` + `refresh_token` + `accounts_url` (cloud)";

struct Login {
    username: String,
    password: SecretString,
    auth_type: String,
    domain: Option<String>,
}

struct Zoho {
    client_id: String,
    client_secret: SecretString,
    refresh_token: SecretString,
    accounts_url: Url,
}

enum Auth {
    Static(SecretString),
    Login(Login),
    Zoho(Zoho),
}

impl Auth {
    fn describe(&self) -> String {
        match self {
            Auth::Static(_) => "a console API token".into(),
            Auth::Login(l) => format!("a login as `{}` ({})", l.username, l.auth_type),
            Auth::Zoho(_) => "Zoho OAuth (cloud edition)".into(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Listing {
    Computers,
    ScanComputers,
}

impl Listing {
    fn parse(s: &str) -> Option<Self> {
        match s
            .trim()
            .trim_start_matches('/')
            .to_ascii_lowercase()
            .as_str()
        {
            "computers" | "som/computers" | "api/1.4/som/computers" => Some(Listing::Computers),
            "scancomputers" | "inventory/scancomputers" | "api/1.4/inventory/scancomputers" => {
                Some(Listing::ScanComputers)
            }
            _ => None,
        }
    }
    fn path(&self) -> &'static str {
        match self {
            Listing::Computers => "api/1.4/som/computers",
            Listing::ScanComputers => "api/1.4/inventory/scancomputers",
        }
    }
    fn entity(&self) -> &'static str {
        match self {
            Listing::Computers => "computers",
            Listing::ScanComputers => "scancomputers",
        }
    }
}

struct CachedToken {
    token: SecretString,
    refresh_at: Option<Instant>,
}

/// The Endpoint Central connector.
pub struct EndpointCentral {
    base: Url,
    auth: Auth,
    /// List pages and authentication.
    http: VendorHttp,
    /// Detail summaries (their own rate limit and concurrency).
    detail_http: VendorHttp,
    listing: Listing,
    page_size: u32,
    filter: Vec<(String, String)>,
    details: bool,
    detail_concurrency: usize,
    detail_budget: usize,
    /// How long a cached detail is used whatever its marker says.
    detail_ttl: Duration,
    /// Detail calls per minute (to fit a page's detail calls into its time budget).
    detail_rate: u32,
    state: Arc<dyn StateStore>,
    connection: String,
    /// This instance's token; refreshes are single-flight behind the mutex.
    token: tokio::sync::Mutex<Option<CachedToken>>,
    /// The process-wide cache key of a login token.
    login_key: String,
}

/// Why a call did not return a body.
#[derive(Debug)]
enum CallError {
    Conn(ConnectorError),
    /// A `status: "error"` body that is neither about the token nor about throttling.
    Vendor {
        path: String,
        code: String,
        description: String,
    },
}

impl From<ConnectorError> for CallError {
    fn from(e: ConnectorError) -> Self {
        CallError::Conn(e)
    }
}

impl CallError {
    fn into_connector(self) -> ConnectorError {
        match self {
            CallError::Conn(e) => e,
            CallError::Vendor {
                path,
                code,
                description,
            } => ConnectorError::Status {
                vendor: VENDOR,
                status: 200,
                path,
                detail: format!(
                    "the body says status \"error\" (error_code {code}): {description}"
                ),
            },
        }
    }
}

/// What an error body is about.
#[derive(Debug, PartialEq)]
enum Failure {
    Auth(String),
    Throttle(String),
    Other { code: String, description: String },
}

fn fast() -> bool {
    std::env::var("ASSETSYNC_FAST_RETRY").is_ok()
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(300).collect();
    if s.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// Classify an Endpoint Central body: `None` when it is not an error body.
/// Error bodies carry `error_code` + `error_description` (HTTP 200 on on-premises servers);
/// `10002` is the code third-party clients treat as an invalid token.
fn classify(body: &Value) -> Option<Failure> {
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let has_error = body.get("error_code").is_some() || body.get("error_description").is_some();
    if !(status == "error" || status == "failure" || (status.is_empty() && has_error)) {
        return None;
    }
    let code = text(body.get("error_code")).unwrap_or_default();
    let description = text(
        body.get("error_description")
            .or(body.get("message"))
            .or(body.get("error")),
    )
    .unwrap_or_else(|| "no error_description".into());
    let d = description.to_lowercase();
    let detail = excerpt(&format!("error_code {code}: {description}"));
    if [
        "rate limit",
        "too many",
        "threshold",
        "locked",
        "throttl",
        "try again after",
        "try after",
    ]
    .iter()
    .any(|w| d.contains(w))
    {
        return Some(Failure::Throttle(detail));
    }
    let about_token = (d.contains("token") || d.contains("session") || d.contains("api key"))
        && (d.contains("invalid") || d.contains("expired") || d.contains("not valid"));
    if code == "10002"
        || about_token
        || d.contains("authentication failed")
        || d.contains("unauthori")
    {
        return Some(Failure::Auth(detail));
    }
    Some(Failure::Other {
        code,
        description: excerpt(&description),
    })
}

/// Replace Endpoint Central's `--` placeholder with null, recursively.
fn clean(v: &mut Value) {
    match v {
        Value::String(s) if s.trim() == "--" => *v = Value::Null,
        Value::Array(items) => items.iter_mut().for_each(clean),
        Value::Object(m) => m.values_mut().for_each(clean),
        _ => {}
    }
}

fn resource_id(raw: &Value) -> Option<String> {
    raw.get("resource_id")
        .and_then(crate::mapping::scalar)
        .filter(|s| !s.trim().is_empty())
}

/// What marks a computer's inventory as possibly changed: its last successful scan time where the
/// listing has one (`scancomputers`), else the agent's last contact and the status update time,
/// the fields `som/computers` rows really carry (ManageEngine's SoM computer list documents
/// `agent_last_contact_time` and `computer_status_update_time`; `last_successful_scan` is a
/// `scancomputers` field), so a rescan, which reaches the server on an agent contact, is seen.
fn scan_marker(raw: &Value) -> String {
    let field = |k: &str| raw.get(k).and_then(crate::mapping::scalar);
    if let Some(scan) = [
        "last_successful_scan",
        "last_scan_time",
        "inventory_last_scan_time",
    ]
    .iter()
    .find_map(|k| field(k))
    {
        return scan;
    }
    match (
        field("agent_last_contact_time"),
        field("computer_status_update_time"),
    ) {
        (None, None) => String::new(),
        (a, b) => format!(
            "contact:{}|status:{}",
            a.unwrap_or_default(),
            b.unwrap_or_default()
        ),
    }
}

/// A fingerprint of a page: first and last `resource_id` and the count.
fn fingerprint(records: &[Value]) -> String {
    let id = |r: Option<&Value>| r.and_then(resource_id).unwrap_or_default();
    format!(
        "{}:{}:{}",
        id(records.first()),
        id(records.last()),
        records.len()
    )
}

/// Whether a full page of `len` rows at 1-based `page` is the last one.
fn is_last_page(page: u64, size: u32, len: usize, total: Option<u64>) -> bool {
    len == 0 || len < size as usize || total.is_some_and(|t| page.saturating_mul(size as u64) >= t)
}

/// The decoded, trimmed value of a serial candidate when it is a real serial.
fn real_serial(raw: &str) -> Option<String> {
    let decoded = url::form_urlencoded::parse(format!("x={raw}").as_bytes())
        .next()
        .map(|(_, d)| d.into_owned())
        .unwrap_or_else(|| raw.to_string());
    normalize::serial(&decoded).map(|_| raw.trim().to_string())
}

/// Add the `assetsync_` fields derived from the record and its detail.
fn derive_fields(rec: &mut Value) {
    let Some(obj) = rec.as_object_mut() else {
        return;
    };
    let hw = obj
        .get(DETAIL_FIELD)
        .and_then(|d| d.get("computer_hardware_summary"))
        .cloned();
    let list_tag = obj
        .get("managedcomputerextn.service_tag")
        .and_then(crate::mapping::scalar);
    let detail_serial = hw
        .as_ref()
        .and_then(|h| h.get("serial_number"))
        .and_then(crate::mapping::scalar);
    if let Some(s) = list_tag
        .as_deref()
        .and_then(real_serial)
        .or_else(|| detail_serial.as_deref().and_then(real_serial))
    {
        obj.insert("assetsync_serial".into(), Value::String(s));
    }
    if let Some(code) = obj.get("scan_status").and_then(crate::mapping::scalar) {
        let words = match code.trim() {
            "-1" => Some("Not scanned"),
            "0" => Some("Scan failed"),
            "1" => Some("Scan in progress"),
            "2" => Some("Scan succeeded"),
            _ => None,
        };
        if let Some(w) = words {
            obj.insert("assetsync_scan_status".into(), Value::String(w.into()));
        }
    }
    if let Some(h) = &hw {
        let w = [
            "warranty_expiry_date",
            "warranty_expiry",
            "epochWarrantyExpiryDate",
            "warrantyExpiryDate",
        ]
        .iter()
        .find_map(|k| h.get(*k).and_then(crate::mapping::scalar));
        if let Some(w) = w {
            let v = if w.chars().all(|c| c.is_ascii_digit()) {
                normalize::epoch_ms_to_rfc3339(&w)
            } else {
                normalize::timestamp(&w).or(Some(w))
            };
            if let Some(v) = v {
                obj.insert("assetsync_warranty_expiry".into(), Value::String(v));
            }
        }
    }
}

/// One list answer.
struct ListPage {
    rows: Vec<Value>,
    total: Option<u64>,
    /// The page size in effect.
    limit: u32,
}

/// Where a listing stands: 1-based page, records of it already emitted, and the previous page's fingerprint.
#[derive(Debug, PartialEq)]
struct Position {
    page: u64,
    skip: usize,
    prev_fp: Option<String>,
}

impl Position {
    fn from(cursor: Option<&Cursor>) -> Result<Self, ConnectorError> {
        let Some(c) = cursor else {
            return Ok(Position {
                page: 1,
                skip: 0,
                prev_fp: None,
            });
        };
        let page =
            c.0.get("page")
                .and_then(Value::as_u64)
                .filter(|p| *p >= 1)
                .ok_or_else(|| {
                    ConnectorError::Config(format!(
                        "an Endpoint Central cursor needs a page number from 1, got {}",
                        c.0
                    ))
                })?;
        Ok(Position {
            page,
            skip: c.0.get("skip").and_then(Value::as_u64).unwrap_or(0) as usize,
            prev_fp: c.0.get("fp").and_then(Value::as_str).map(str::to_string),
        })
    }
}

fn parse_count(
    ctx: &ConnectorContext,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, ConnectorError> {
    match ctx.config(name) {
        None => Ok(default),
        Some(s) => match s.trim().parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ConnectorError::Config(format!(
                "config:{name}={s} must be a number from 1 to {max}"
            ))),
        },
    }
}

fn some_nonempty(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|v| !v.trim().is_empty())
}

fn some_secret(s: &Option<SecretString>) -> bool {
    s.as_ref()
        .is_some_and(|v| !v.expose_secret().trim().is_empty())
}

impl EndpointCentral {
    /// Build from the secret (see the module docs for the fields).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(
        secret: &Value,
        ctx: ConnectorContext,
    ) -> Result<Box<dyn Connector>, ConnectorError> {
        Ok(Box::new(Self::build(secret, ctx)?))
    }

    fn build(secret: &Value, ctx: ConnectorContext) -> Result<Self, ConnectorError> {
        const SRC: SourceKind = SourceKind::EndpointCentral;
        let s: Secret = parse_secret(SRC, secret, EXPECTED)?;
        require(SRC, "base_url", &s.base_url)?;
        let mut base = check_base_url(&s.base_url, "base_url")?;
        // Users paste the console URL or the API root.
        let trimmed = base
            .path()
            .trim_end_matches('/')
            .trim_end_matches("/api/1.4")
            .trim_end_matches("/api")
            .to_string();
        base.set_path(&trimmed);
        base.set_query(None);

        let zoho_fields = [
            some_nonempty(&s.client_id),
            some_secret(&s.client_secret),
            some_secret(&s.refresh_token),
            some_nonempty(&s.accounts_url),
        ];
        let auth = if some_secret(&s.api_token) {
            Auth::Static(s.api_token.expect("checked"))
        } else if zoho_fields.iter().any(|b| *b) {
            let names = [
                "client_id",
                "client_secret",
                "refresh_token",
                "accounts_url",
            ];
            if let Some(i) = zoho_fields.iter().position(|b| !*b) {
                return Err(ConnectorError::Config(format!(
                    "the {SRC} secret field `{}` is missing or empty; the cloud edition needs `client_id`, `client_secret`, `refresh_token` and `accounts_url` (e.g. https://accounts.zoho.com)",
                    names[i]
                )));
            }
            let mut accounts_url = check_base_url(
                s.accounts_url.as_deref().unwrap_or_default(),
                "accounts_url",
            )?;
            let p = accounts_url
                .path()
                .trim_end_matches('/')
                .trim_end_matches("/oauth/v2/token")
                .to_string();
            accounts_url.set_path(&p);
            accounts_url.set_query(None);
            Auth::Zoho(Zoho {
                client_id: s.client_id.unwrap_or_default().trim().to_string(),
                client_secret: s.client_secret.expect("checked"),
                refresh_token: s.refresh_token.expect("checked"),
                accounts_url,
            })
        } else if some_nonempty(&s.username) || s.password.is_some() {
            let username = s.username.unwrap_or_default();
            require(SRC, "username", &username)?;
            let password = s.password.ok_or_else(|| {
                ConnectorError::Config(format!(
                    "the {SRC} secret field `password` is missing; it is needed with `username`"
                ))
            })?;
            require(SRC, "password", password.expose_secret())?;
            let domain = s
                .domain
                .filter(|d| !d.trim().is_empty())
                .map(|d| d.trim().to_string());
            let auth_type = match s.auth_type.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                None if domain.is_some() => "ad_authentication".to_string(),
                None => "local_authentication".to_string(),
                Some("local_authentication" | "local") => "local_authentication".to_string(),
                Some("ad_authentication" | "ad" | "domain") => "ad_authentication".to_string(),
                Some(_) => {
                    return Err(ConnectorError::Config(format!(
                        "the {SRC} secret field `auth_type` is not one of the known types; use `local_authentication` or `ad_authentication`"
                    )))
                }
            };
            if auth_type == "ad_authentication" && domain.is_none() {
                return Err(ConnectorError::Config(format!(
                    "the {SRC} secret field `domain` is needed with auth_type `ad_authentication` (the AD domain of `username`)"
                )));
            }
            Auth::Login(Login {
                username: username.trim().to_string(),
                password,
                auth_type,
                domain,
            })
        } else {
            return Err(ConnectorError::Config(format!(
                "the {SRC} secret has no credentials; it needs {EXPECTED}"
            )));
        };

        let listing = match ctx.config("api") {
            None => Listing::Computers,
            Some(a) => Listing::parse(a).ok_or_else(|| {
                ConnectorError::Config(format!(
                    "config:api={a} is not an Endpoint Central listing; use computers or scancomputers"
                ))
            })?,
        };
        let filter = match ctx
            .config("filter")
            .map(str::trim)
            .filter(|f| !f.is_empty())
        {
            None => Vec::new(),
            Some(f) => {
                let pairs: Vec<(String, String)> = url::form_urlencoded::parse(f.as_bytes())
                    .into_owned()
                    .collect();
                for (k, _) in &pairs {
                    if k.is_empty() || matches!(k.as_str(), "page" | "pagelimit") {
                        return Err(ConnectorError::Config(format!(
                            "config:filter={f} must be query parameters such as domainfilter=CORP&branchofficefilter=Berlin (not page or pagelimit)"
                        )));
                    }
                }
                pairs
            }
        };
        let details = match ctx.config("details").map(|d| d.trim().to_ascii_lowercase()) {
            None => true,
            Some(d) if matches!(d.as_str(), "on" | "true" | "yes") => true,
            Some(d) if matches!(d.as_str(), "off" | "false" | "no") => false,
            Some(d) => {
                return Err(ConnectorError::Config(format!(
                    "config:details={d} must be on or off"
                )))
            }
        };
        let detail_rate =
            parse_count(&ctx, "detail_rate", DEFAULT_DETAIL_RATE as u64, 1_000_000)? as u32;
        let detail_concurrency = parse_count(
            &ctx,
            "detail_concurrency",
            DEFAULT_DETAIL_CONCURRENCY as u64,
            16,
        )? as usize;
        let detail_budget = parse_count(
            &ctx,
            "detail_budget",
            (detail_rate as u64 * 4).max(1),
            1_000_000,
        )? as usize;
        let detail_ttl = Duration::from_secs(
            3600 * parse_count(&ctx, "detail_ttl_hours", DEFAULT_DETAIL_TTL_HOURS, 2160)?,
        );

        let ca = s.ca_cert.filter(|c| !c.trim().is_empty());
        if ca
            .as_deref()
            .is_some_and(|c| !c.contains("-----BEGIN CERTIFICATE-----"))
        {
            return Err(ConnectorError::Config(format!(
                "the {SRC} secret field `ca_cert` must be a PEM certificate (-----BEGIN CERTIFICATE----- ...)"
            )));
        }
        let mut opts = HttpOptions::new(VENDOR);
        opts.ca_cert_pem = ca.clone();
        // The list endpoints share the documented per-API limit (120/min); pages are few.
        opts.rate_limit = Some(RateLimit {
            requests: DEFAULT_DETAIL_RATE,
            per: Duration::from_secs(60),
            concurrency: 2,
        });
        let mut dopts = HttpOptions::new(VENDOR);
        dopts.ca_cert_pem = ca;
        dopts.rate_limit = Some(RateLimit {
            requests: detail_rate,
            per: Duration::from_secs(60),
            concurrency: detail_concurrency,
        });

        let login_key = match &auth {
            Auth::Login(l) => format!(
                "endpoint-central|{}|{}|{}",
                base,
                l.username,
                l.domain.as_deref().unwrap_or("")
            ),
            _ => String::new(),
        };
        Ok(EndpointCentral {
            http: VendorHttp::new(opts)?,
            detail_http: VendorHttp::new(dopts)?,
            page_size: ctx.page_size(MAX_PAGE_SIZE, MAX_PAGE_SIZE)?,
            base,
            auth,
            listing,
            filter,
            details,
            detail_concurrency,
            detail_budget,
            detail_ttl,
            detail_rate,
            state: ctx.state.clone(),
            connection: ctx.connection.clone(),
            token: tokio::sync::Mutex::new(None),
            login_key,
        })
    }

    fn zoho_state_key(&self, z: &Zoho) -> String {
        format!(
            "endpoint-central|{}|zoho-token|{}",
            self.connection, z.client_id
        )
    }

    fn detail_state_key(&self, rid: &str) -> String {
        format!("endpoint-central|{}|detail|{}", self.connection, rid)
    }

    fn list_url(&self, page: u64, size: u32) -> Url {
        let mut url = join(&self.base, self.listing.path());
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("page", &page.to_string());
            q.append_pair("pagelimit", &size.to_string());
            for (k, v) in &self.filter {
                q.append_pair(k, v);
            }
        }
        url
    }

    fn detail_url(&self, rid: &str) -> Url {
        let mut url = join(&self.base, PATH_DETAIL);
        url.query_pairs_mut().append_pair("resid", rid);
        url
    }

    /// The token to use; `rejected` is a token the server refused (refresh unless someone already did).
    async fn token(&self, rejected: Option<&str>) -> Result<SecretString, ConnectorError> {
        let mut cached = self.token.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = c.refresh_at.is_none_or(|t| Instant::now() < t);
            let refused = rejected.is_some_and(|r| r == c.token.expose_secret());
            if fresh && !refused {
                return Ok(c.token.clone());
            }
        }
        let (tok, refresh_at) = match &self.auth {
            Auth::Static(t) => {
                if rejected.is_some() {
                    return Err(ConnectorError::Auth {
                        vendor: VENDOR,
                        detail: "the api_token was refused: generate a new one in the console (Admin → Integrations → API Explorer → Authentication) and update the secret".into(),
                    });
                }
                (t.clone(), None)
            }
            Auth::Login(l) => {
                let mut t = token::get_or_fetch(&self.login_key, || self.login(l)).await?;
                if rejected.is_some_and(|r| r == t.expose_secret()) {
                    token::invalidate(&self.login_key);
                    t = token::get_or_fetch(&self.login_key, || self.login(l)).await?;
                }
                (t, Some(token::refresh_at(LOGIN_TOKEN_LIFETIME)))
            }
            Auth::Zoho(z) => {
                let (t, life) = self.zoho_token(z, rejected).await?;
                (t, Some(token::refresh_at(life)))
            }
        };
        *cached = Some(CachedToken {
            token: tok.clone(),
            refresh_at,
        });
        Ok(tok)
    }

    fn auth_header(&self, tok: &SecretString) -> Result<HeaderValue, ConnectorError> {
        let raw = match &self.auth {
            Auth::Zoho(_) => format!("Zoho-oauthtoken {}", tok.expose_secret()),
            _ => tok.expose_secret().trim().to_string(),
        };
        let mut hv = HeaderValue::from_str(&raw).map_err(|_| {
            ConnectorError::Config(
                "the Endpoint Central token contains characters not allowed in an HTTP header"
                    .into(),
            )
        })?;
        hv.set_sensitive(true);
        Ok(hv)
    }

    /// `POST /api/1.4/desktop/authentication` with the password base64-encoded.
    async fn login(&self, l: &Login) -> Result<(SecretString, Duration), ConnectorError> {
        let url = join(&self.base, PATH_LOGIN);
        let mut body = json!({
            "username": l.username,
            "password": base64::engine::general_purpose::STANDARD.encode(l.password.expose_secret().as_bytes()),
            "auth_type": l.auth_type,
        });
        if let Some(d) = &l.domain {
            body["domainName"] = json!(d);
        }
        let who = format!("the login as `{}` ({})", l.username, l.auth_type);
        let resp = self.http.send(|| self.http.client().post(url.clone()).header(ACCEPT, "application/json").json(&body)).await.map_err(|e| match e {
            ConnectorError::Auth { detail, .. } => ConnectorError::Auth { vendor: VENDOR, detail: format!("{who} was refused: {detail}") },
            ConnectorError::Status { status: 404, path, .. } => ConnectorError::Status {
                vendor: VENDOR,
                status: 404,
                path,
                detail: "no login endpoint: is base_url the Endpoint Central server (e.g. https://host:8383)? The cloud edition needs the Zoho OAuth fields instead".into(),
            },
            e => e,
        })?;
        let v: Value = parse_json(VENDOR, resp).await?;
        match classify(&v) {
            None => {}
            Some(Failure::Throttle(d)) => {
                return Err(ConnectorError::Exhausted {
                    vendor: VENDOR,
                    path: url.path().into(),
                    attempts: 1,
                    detail: format!("{who} was throttled: {d}"),
                })
            }
            Some(Failure::Auth(d)) | Some(Failure::Other { description: d, .. }) => {
                return Err(ConnectorError::Auth {
                    vendor: VENDOR,
                    detail: format!("{who} failed: {d}"),
                })
            }
        }
        let auth = v.pointer("/message_response/authentication");
        if let Some(t) = auth
            .and_then(|a| a.pointer("/auth_data/auth_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
        {
            return Ok((
                SecretString::from(t.trim().to_string()),
                LOGIN_TOKEN_LIFETIME,
            ));
        }
        if auth.and_then(|a| a.get("two_factor_data")).is_some() {
            return Err(ConnectorError::Auth {
                vendor: VENDOR,
                detail: format!(
                    "the account `{}` has two-factor authentication (OTP) enabled, which an unattended sync cannot answer: generate an API token in the console (Admin → Integrations → API Explorer → Authentication) and store it as `api_token` in the secret instead of username/password",
                    l.username
                ),
            });
        }
        Err(ConnectorError::Malformed {
            vendor: VENDOR,
            path: url.path().into(),
            detail: "the login answer has neither message_response.authentication.auth_data.auth_token nor two_factor_data".into(),
        })
    }

    /// One Zoho refresh. `Err(Ok(detail))`: Zoho blocks refreshes for now; `Err(Err(e))`: any other failure.
    async fn zoho_refresh(
        &self,
        z: &Zoho,
    ) -> Result<(SecretString, u64), Result<String, ConnectorError>> {
        let url = join(&z.accounts_url, PATH_ZOHO_TOKEN);
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", z.client_id.as_str()),
            ("client_secret", z.client_secret.expose_secret()),
            ("refresh_token", z.refresh_token.expose_secret()),
        ];
        let refused = |why: &str| ConnectorError::Auth {
            vendor: VENDOR,
            detail: format!("the Zoho token refresh at {} failed: {why}", z.accounts_url),
        };
        let body: Value = match self
            .http
            .send(|| self.http.client().post(url.clone()).form(&form))
            .await
        {
            Ok(resp) => parse_json(VENDOR, resp).await.map_err(Err)?,
            Err(ConnectorError::Status {
                status: 400 | 401,
                detail,
                ..
            })
            | Err(ConnectorError::Auth { detail, .. }) => {
                serde_json::from_str::<Value>(detail.trim_end_matches('…'))
                    .unwrap_or_else(|_| json!({"error": detail}))
            }
            Err(e) => return Err(Err(e)),
        };
        if let Some(tok) = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let secs = body
                .get("expires_in_sec")
                .and_then(Value::as_u64)
                .or_else(|| {
                    body.get("expires_in").and_then(Value::as_u64).map(|s| {
                        if s > 86_400 {
                            s / 1000
                        } else {
                            s
                        }
                    })
                })
                .unwrap_or(3600)
                .max(60);
            // A huge expires_in must not overflow `now + secs` below, nor keep a token for ever.
            let secs = token::lifetime_secs(secs).as_secs();
            return Ok((SecretString::from(tok.to_string()), secs));
        }
        let error = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let description = body
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let both = format!("{error} {description}").to_lowercase();
        if both.contains("too many") || both.contains("access denied") {
            return Err(Ok(excerpt(&format!("{error}: {description}"))));
        }
        Err(Err(match error.as_str() {
            "invalid_code" => refused("the refresh_token is invalid, expired or revoked (or belongs to another data centre than accounts_url): generate a new one in the Zoho API console"),
            "invalid_client" | "invalid_client_secret" => refused("client_id/client_secret were refused: check them and that accounts_url is your data centre's (e.g. https://accounts.zoho.eu)"),
            "" => refused("the answer has no access_token"),
            other => refused(&excerpt(&format!("{other} {description}"))),
        }))
    }

    /// The shared Zoho access token: read it from the state store, or claim the refresh lease and refresh.
    async fn zoho_token(
        &self,
        z: &Zoho,
        rejected: Option<&str>,
    ) -> Result<(SecretString, Duration), ConnectorError> {
        let key = self.zoho_state_key(z);
        let started = Instant::now();
        let max_wait = Duration::from_secs(if fast() { 5 } else { 45 });
        loop {
            let now = Utc::now().timestamp();
            let cur = self.state.get(&key).await?;
            let num = |n: &str| {
                cur.as_ref()
                    .and_then(|v| v.get(n))
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            };
            let version = cur
                .as_ref()
                .and_then(|v| v.get("version"))
                .and_then(Value::as_i64);
            if let Some(tok) = cur
                .as_ref()
                .and_then(|v| v.get("access_token"))
                .and_then(Value::as_str)
            {
                let exp = num("expires_at");
                if exp > now + 60 && rejected != Some(tok) {
                    return Ok((
                        SecretString::from(tok.to_string()),
                        Duration::from_secs((exp - now) as u64),
                    ));
                }
            }
            if num("blocked_until") > now {
                return Err(ConnectorError::Exhausted {
                    vendor: VENDOR,
                    path: format!("{}/{PATH_ZOHO_TOKEN}", z.accounts_url.path().trim_end_matches('/')),
                    attempts: 1,
                    detail: format!(
                        "Zoho refuses new access tokens for this refresh token until {} (at most 10 per 10 minutes); the sync resumes after that",
                        DateTime::<Utc>::from_timestamp(num("blocked_until"), 0).map(|d| d.to_rfc3339()).unwrap_or_default()
                    ),
                });
            }
            if num("lease_until") > now {
                if started.elapsed() > max_wait {
                    return Err(ConnectorError::Exhausted {
                        vendor: VENDOR,
                        path: PATH_ZOHO_TOKEN.into(),
                        attempts: 1,
                        detail: "another fetcher has been refreshing the Zoho token for too long"
                            .into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(if fast() { 50 } else { 400 })).await;
                continue;
            }
            let claim_version = version.unwrap_or(0) + 1;
            let claim = json!({"version": claim_version, "lease_until": now + ZOHO_LEASE_SECS});
            if !self.state.put_if_version(&key, &claim, version).await? {
                continue;
            }
            let result = self.zoho_refresh(z).await;
            let now = Utc::now().timestamp();
            let next_version = claim_version + 1;
            let (value, out) = match result {
                Ok((tok, secs)) => (
                    json!({"version": next_version, "access_token": tok.expose_secret(), "expires_at": now + secs as i64, "refreshed_at": now}),
                    Ok((tok, Duration::from_secs(secs))),
                ),
                Err(Ok(detail)) => (
                    json!({"version": next_version, "blocked_until": now + ZOHO_BLOCK_SECS}),
                    Err(ConnectorError::Exhausted {
                        vendor: VENDOR,
                        path: PATH_ZOHO_TOKEN.into(),
                        attempts: 1,
                        detail: format!("Zoho refused to refresh the access token ({detail}); at most 10 refreshes per 10 minutes are allowed, so no fetcher retries for 10 minutes"),
                    }),
                ),
                Err(Err(e)) => (json!({"version": next_version}), Err(e)),
            };
            // Releasing the lease can only lose to a fetcher that took over an expired lease.
            if let Err(e) = self
                .state
                .put_if_version(&key, &value, Some(claim_version))
                .await
            {
                tracing::warn!(error = %e, "could not store the Zoho token state");
            }
            return out;
        }
    }

    /// GET a JSON body with the token; one re-authentication on a refused token, backing off on
    /// throttling error bodies (HTTP 429 is handled by [`VendorHttp`]).
    async fn get_json(&self, http: &VendorHttp, url: &Url) -> Result<Value, CallError> {
        let path = url.path().to_string();
        let mut rejected: Option<SecretString> = None;
        let mut reauthed = false;
        let mut throttled = 0u32;
        loop {
            let tok = self
                .token(rejected.as_ref().map(|t| t.expose_secret()))
                .await?;
            let hv = self.auth_header(&tok)?;
            let failure = match http.send(|| http.client().get(url.clone()).header(AUTHORIZATION, hv.clone()).header(ACCEPT, "application/json")).await {
                Ok(resp) => {
                    let body: Value = parse_json(VENDOR, resp).await?;
                    match classify(&body) {
                        None => return Ok(body),
                        Some(f) => f,
                    }
                }
                Err(ConnectorError::Auth { detail, .. }) => Failure::Auth(detail),
                Err(ConnectorError::Forbidden { path, detail, .. }) => {
                    return Err(ConnectorError::Forbidden {
                        vendor: VENDOR,
                        path,
                        detail: format!("{detail} (the API user needs read access to SoM and Inventory; cloud scopes DesktopCentralCloud.Common.READ and DesktopCentralCloud.Inventory.READ)"),
                    }
                    .into())
                }
                Err(e) => return Err(e.into()),
            };
            match failure {
                Failure::Auth(detail) => {
                    if !reauthed && !matches!(self.auth, Auth::Static(_)) {
                        reauthed = true;
                        rejected = Some(tok);
                        continue;
                    }
                    let detail = match &self.auth {
                        Auth::Static(_) => format!(
                            "the api_token was refused for {path} ({detail}): generate a new one in the console and update the secret"
                        ),
                        other => format!("a freshly issued token ({}) was refused for {path}: {detail}", other.describe()),
                    };
                    return Err(ConnectorError::Auth {
                        vendor: VENDOR,
                        detail,
                    }
                    .into());
                }
                Failure::Throttle(detail) => {
                    if throttled >= BODY_THROTTLE_RETRIES {
                        return Err(ConnectorError::Exhausted {
                            vendor: VENDOR,
                            path,
                            attempts: throttled + 1,
                            detail: format!("rate limited: {detail}"),
                        }
                        .into());
                    }
                    throttled += 1;
                    let wait = Duration::from_millis(if fast() { 500 } else { 60_000 });
                    let stats = http.stats();
                    stats
                        .throttled
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    stats
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    stats.throttle_wait_ms.fetch_add(
                        wait.as_millis() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    tracing::warn!(vendor = VENDOR, path = %path, wait_ms = wait.as_millis() as u64, detail = %detail, "rate limited by an error body; backing off");
                    tokio::time::sleep(wait).await;
                }
                Failure::Other { code, description } => {
                    return Err(CallError::Vendor {
                        path,
                        code,
                        description,
                    })
                }
            }
        }
    }

    /// One list page: its rows, the reported total, and the page size the server applied
    /// (its `limit` when smaller than the one asked for: a server that clamps `pagelimit` lower
    /// must not make a full page look short).
    async fn list(&self, page: u64, size: u32) -> Result<ListPage, ConnectorError> {
        let url = self.list_url(page, size);
        let body = self.get_json(&self.http, &url).await.map_err(|e| match e.into_connector() {
            ConnectorError::Status {
                status: 404, path, detail, ..
            } => ConnectorError::Status {
                vendor: VENDOR,
                status: 404,
                path,
                detail: format!("{detail} (is base_url the Endpoint Central server, e.g. https://host:8383, and does it serve API 1.4?)"),
            },
            e => e,
        })?;
        let malformed = |detail: String| ConnectorError::Malformed {
            vendor: VENDOR,
            path: url.path().to_string(),
            detail,
        };
        let mr = body
            .get("message_response")
            .ok_or_else(|| malformed("no message_response in the answer".into()))?;
        let number = |name: &str| {
            mr.get(name).and_then(|t| {
                t.as_u64()
                    .or_else(|| t.as_str().and_then(|s| s.trim().parse().ok()))
            })
        };
        let total = number("total");
        let limit = number("limit")
            .filter(|l| *l >= 1)
            .map_or(size, |l| (l.min(size as u64)) as u32);
        let rows = match mr.get(self.listing.entity()) {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::Null) | None => {
                // Tolerate an envelope whose only array has another name.
                let arrays: Vec<&Vec<Value>> = mr
                    .as_object()
                    .map(|m| m.values().filter_map(Value::as_array).collect())
                    .unwrap_or_default();
                match arrays.as_slice() {
                    [one] => (*one).clone(),
                    [] if total.unwrap_or(0) == 0 => Vec::new(),
                    _ => {
                        return Err(malformed(format!(
                            "message_response has no `{}` array",
                            self.listing.entity()
                        )))
                    }
                }
            }
            Some(other) => {
                return Err(malformed(format!(
                    "message_response.{} is not an array: {}",
                    self.listing.entity(),
                    excerpt(&other.to_string())
                )))
            }
        };
        Ok(ListPage { rows, total, limit })
    }

    /// One detail summary: `Ok(None)` when the server has none for the computer (a lasting answer).
    async fn detail(&self, rid: &str) -> Result<Option<Value>, ConnectorError> {
        match self
            .get_json(&self.detail_http, &self.detail_url(rid))
            .await
        {
            Ok(body) => {
                let d = body
                    .pointer("/message_response/compdetailssummary")
                    .cloned()
                    .unwrap_or(Value::Null);
                let d = match d {
                    Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
                    d => d,
                };
                Ok(d.is_object().then_some(d))
            }
            Err(CallError::Vendor {
                code, description, ..
            }) => {
                tracing::warn!(vendor = VENDOR, resource_id = rid, error_code = %code, error = %description, "no detail summary for this computer");
                Ok(None)
            }
            Err(CallError::Conn(ConnectorError::Status {
                status: 400 | 404,
                detail,
                ..
            })) => {
                tracing::warn!(vendor = VENDOR, resource_id = rid, error = %detail, "no detail summary for this computer");
                Ok(None)
            }
            Err(e) => Err(e.into_connector()),
        }
    }

    /// Attach detail summaries (cached or fetched) and derived fields. Returns the records enriched
    /// and, when the detail budget ran out, how many of them were processed (the rest follow later).
    async fn enrich(
        &self,
        mut records: Vec<Value>,
    ) -> Result<(Vec<Value>, Option<usize>), ConnectorError> {
        records.iter_mut().for_each(clean);
        if !self.details {
            records.iter_mut().for_each(derive_fields);
            return Ok((records, None));
        }
        let ids: Vec<Option<String>> = records.iter().map(resource_id).collect();
        let keys: Vec<String> = ids
            .iter()
            .flatten()
            .map(|r| self.detail_state_key(r))
            .collect();
        let cache = if keys.is_empty() {
            HashMap::new()
        } else {
            self.state.get_many(&keys).await?
        };

        // The calls that fit in the page's time budget at the detail pace (less a fifth for the
        // listing and the writes); the rest of the page follows under a cursor.
        let budget = match crate::connectors::page_deadline() {
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                let fit = (left.as_secs_f64() * 0.8 * f64::from(self.detail_rate) / 60.0) as usize;
                self.detail_budget.min(fit.max(1))
            }
            None => self.detail_budget,
        };
        // (index, resource id, scan marker) of the computers whose detail must be fetched.
        let mut needed: Vec<(usize, String, String)> = Vec::new();
        let mut cut = None;
        for (i, rid) in ids.iter().enumerate() {
            let Some(rid) = rid else { continue };
            let marker = scan_marker(&records[i]);
            let fresh = |c: &Value| {
                c.get("fetched_at")
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| {
                        (Utc::now() - t.with_timezone(&Utc)).num_seconds()
                            < self.detail_ttl.as_secs() as i64
                    })
            };
            match cache.get(&self.detail_state_key(rid)) {
                Some(c)
                    if c.get("scan").and_then(Value::as_str) == Some(marker.as_str())
                        && fresh(c) =>
                {
                    if let Some(d) = c.get("detail").filter(|d| d.is_object()) {
                        records[i][DETAIL_FIELD] = d.clone();
                    }
                }
                _ => {
                    if needed.len() >= budget {
                        cut = Some(i);
                        break;
                    }
                    needed.push((i, rid.clone(), marker));
                }
            }
        }
        let expires = Utc::now().timestamp() + self.detail_ttl.as_secs() as i64;
        let results: Vec<Result<(usize, Option<Value>), ConnectorError>> = futures::stream::iter(needed)
            .map(|(i, rid, marker)| async move {
                let d = self.detail(&rid).await?;
                let mut d = d;
                if let Some(d) = d.as_mut() {
                    clean(d);
                }
                let entry = json!({"scan": marker, "detail": d.clone().unwrap_or(Value::Null), "fetched_at": Utc::now().to_rfc3339()});
                self.state.put(&self.detail_state_key(&rid), &entry, Some(expires)).await?;
                Ok((i, d))
            })
            .buffer_unordered(self.detail_concurrency)
            .collect()
            .await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok((i, Some(d))) => records[i][DETAIL_FIELD] = d,
                Ok((_, None)) => {}
                Err(e) => {
                    // Prefer the error that says most: credentials over throttling over the rest.
                    let rank = |e: &ConnectorError| match e {
                        ConnectorError::Auth { .. } | ConnectorError::Forbidden { .. } => 0,
                        ConnectorError::Exhausted { .. } => 1,
                        _ => 2,
                    };
                    if first_err.as_ref().is_none_or(|f| rank(&e) < rank(f)) {
                        first_err = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if let Some(c) = cut {
            records.truncate(c);
        }
        records.iter_mut().for_each(derive_fields);
        Ok((records, cut))
    }
}

#[async_trait]
impl Connector for EndpointCentral {
    async fn fetch_page(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let pos = Position::from(cursor)?;
        let ListPage { rows, total, limit } = self.list(pos.page, self.page_size).await?;
        let fp = fingerprint(&rows);
        if pos.skip == 0 && !rows.is_empty() && pos.prev_fp.as_deref() == Some(fp.as_str()) {
            tracing::warn!(
                vendor = VENDOR,
                page = pos.page,
                total = ?total,
                "page {} is identical to the previous page: the server ignores `page`; the listing ends here and may be incomplete",
                pos.page
            );
            return Ok(Page {
                records: Vec::new(),
                next: None,
                total,
                ..Default::default()
            });
        }
        let last = is_last_page(pos.page, limit, rows.len(), total);
        let rest: Vec<Value> = rows.into_iter().skip(pos.skip).collect();
        let (records, cut) = self.enrich(rest).await?;
        let next = match cut {
            Some(n) => Some(Cursor(
                json!({"page": pos.page, "skip": pos.skip + n, "fp": pos.prev_fp}),
            )),
            None if last => None,
            None => Some(Cursor(json!({"page": pos.page + 1, "fp": fp}))),
        };
        Ok(Page {
            records,
            next,
            total,
            ..Default::default()
        })
    }

    async fn test(&self) -> Result<TestReport, ConnectorError> {
        let ListPage { rows, total, .. } = self.list(1, 1).await?;
        let mut sample = rows.into_iter().next();
        let mut note = String::new();
        if let Some(rec) = sample.as_mut() {
            clean(rec);
            if self.details {
                if let Some(rid) = resource_id(rec) {
                    match self.detail(&rid).await? {
                        Some(d) => {
                            rec[DETAIL_FIELD] = d;
                            note = "; the detail summary (compdetailssummary) is readable".into();
                        }
                        None => note = "; the first computer has no detail summary yet".into(),
                    }
                }
            }
            derive_fields(rec);
        }
        Ok(TestReport {
            message: format!(
                "authenticated to {} with {} and read {}: {} computers in total{note}",
                self.base,
                self.auth.describe(),
                self.listing.path(),
                total.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
            ),
            sample,
        })
    }

    fn source_id(&self, raw: &Value) -> Option<String> {
        resource_id(raw)
    }

    fn checked_in(&self, raw: &Value) -> Option<DateTime<Utc>> {
        [
            "agent_last_contact_time",
            "last_successful_scan",
            "last_scan_time",
        ]
        .iter()
        .filter_map(|k| raw.get(*k).and_then(crate::mapping::scalar))
        .find_map(|s| normalize::parse_time(&s).filter(|d| d.timestamp() > 0))
    }

    fn http_counts(&self) -> HttpCounts {
        let a = self.http.stats().snapshot();
        let b = self.detail_http.stats().snapshot();
        HttpCounts {
            requests: a.requests + b.requests,
            retries: a.retries + b.retries,
            throttled: a.throttled + b.throttled,
            throttle_wait_ms: a.throttle_wait_ms + b.throttle_wait_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::MemoryState;
    use crate::mapping::Mapping;

    fn ctx(config: &[(&str, &str)]) -> ConnectorContext {
        ConnectorContext {
            connection: "ec-test".into(),
            object_type: ObjectType::Hardware,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state: Arc::new(MemoryState::default()),
        }
    }

    fn err(secret: Value) -> String {
        match EndpointCentral::build(&secret, ctx(&[])) {
            Ok(_) => panic!("expected an error for {secret}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn secret_errors_name_the_field() {
        assert!(err(json!("a string")).contains("JSON object"));
        assert!(err(json!({"api_token": "x"})).contains("base_url"));
        assert!(err(json!({"base_url": "https://ec.example.com:8383"})).contains("api_token"));
        assert!(
            err(json!({"base_url": "https://ec:8383", "username": "admin"})).contains("`password`")
        );
        assert!(err(json!({"base_url": "https://ec:8383", "password": "x"})).contains("`username`"));
        assert!(
            err(json!({"base_url": "https://ec:8383", "username": "a", "password": "b", "auth_type": "kerberos"})).contains("auth_type")
        );
        assert!(
            err(json!({"base_url": "https://ec:8383", "username": "a", "password": "b", "auth_type": "ad_authentication"}))
                .contains("`domain`")
        );
        let e = err(
            json!({"base_url": "https://endpointcentral.manageengine.com", "client_id": "1000.X", "client_secret": "s", "accounts_url": "https://accounts.zoho.com"}),
        );
        assert!(e.contains("`refresh_token`"), "{e}");
        let e = err(
            json!({"base_url": "https://e", "client_id": "a", "client_secret": "b", "refresh_token": "c", "accounts_url": "http://accounts.zoho.com"}),
        );
        assert!(e.contains("accounts_url") && e.contains("https"), "{e}");
        assert!(
            err(json!({"base_url": "http://ec.corp.example:8383", "api_token": "x"}))
                .contains("https")
        );
        let e =
            err(json!({"base_url": "https://ec:8383", "api_token": "x", "ca_cert": "not a pem"}));
        assert!(e.contains("ca_cert"), "{e}");
    }

    #[test]
    fn secrets_pick_the_auth_and_never_print() {
        let c = EndpointCentral::build(
            &json!({"base_url": "https://ec:8383/api/1.4/", "username": "admin", "password": "pw", "domain": "CORP"}),
            ctx(&[]),
        )
        .unwrap();
        match &c.auth {
            Auth::Login(l) => {
                assert_eq!(l.auth_type, "ad_authentication");
                assert_eq!(l.domain.as_deref(), Some("CORP"));
            }
            _ => panic!("login expected"),
        }
        assert_eq!(c.base.as_str(), "https://ec:8383/");
        let c = EndpointCentral::build(
            &json!({"base_url": "https://e", "api_token": "T", "client_id": "a", "client_secret": "b", "refresh_token": "c", "accounts_url": "https://accounts.zoho.eu/oauth/v2/token"}),
            ctx(&[]),
        )
        .unwrap();
        assert!(matches!(c.auth, Auth::Static(_)));
        let c = EndpointCentral::build(
            &json!({"base_url": "https://e", "client_id": "a", "client_secret": "b", "refresh_token": "c", "accounts_url": "https://accounts.zoho.eu/oauth/v2/token"}),
            ctx(&[]),
        )
        .unwrap();
        match &c.auth {
            Auth::Zoho(z) => assert_eq!(
                join(&z.accounts_url, PATH_ZOHO_TOKEN).as_str(),
                "https://accounts.zoho.eu/oauth/v2/token"
            ),
            _ => panic!("zoho expected"),
        }
        assert_eq!(
            c.auth_header(&SecretString::from("abc".to_string()))
                .unwrap()
                .to_str()
                .unwrap(),
            "Zoho-oauthtoken abc"
        );
        let e = err(
            json!({"base_url": "https://ec:8383", "username": "admin", "password": "hunter2", "auth_type": "bad"}),
        );
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn urls_and_config() {
        let c = EndpointCentral::build(
            &json!({"base_url": "https://ec:8383", "api_token": "t"}),
            ctx(&[("filter", "domainfilter=CORP&branchofficefilter=São Paulo")]),
        )
        .unwrap();
        assert_eq!(
            c.list_url(3, 1000).as_str(),
            "https://ec:8383/api/1.4/som/computers?page=3&pagelimit=1000&domainfilter=CORP&branchofficefilter=S%C3%A3o+Paulo"
        );
        assert_eq!(
            c.detail_url("30107").as_str(),
            "https://ec:8383/api/1.4/inventory/compdetailssummary?resid=30107"
        );
        assert_eq!(
            c.auth_header(&SecretString::from("9F1C".to_string()))
                .unwrap()
                .to_str()
                .unwrap(),
            "9F1C"
        );
        let c = EndpointCentral::build(
            &json!({"base_url": "https://ec:8383", "api_token": "t"}),
            ctx(&[("api", "scancomputers"), ("page_size", "200")]),
        )
        .unwrap();
        assert!(c
            .list_url(1, c.page_size)
            .as_str()
            .ends_with("/api/1.4/inventory/scancomputers?page=1&pagelimit=200"));
        assert_eq!(c.detail_budget, DEFAULT_DETAIL_RATE as usize * 4);
        for bad in [
            ("api", "devices"),
            ("page_size", "1001"),
            ("filter", "page=2"),
            ("details", "maybe"),
            ("detail_concurrency", "0"),
        ] {
            assert!(
                EndpointCentral::build(
                    &json!({"base_url": "https://ec", "api_token": "t"}),
                    ctx(&[bad])
                )
                .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn paging_rules() {
        assert!(is_last_page(1, 1000, 0, None));
        assert!(is_last_page(1, 1000, 999, None));
        assert!(!is_last_page(1, 1000, 1000, None));
        assert!(!is_last_page(2, 1000, 1000, Some(2500)));
        assert!(
            is_last_page(3, 1000, 1000, Some(2500)),
            "a server that pads still stops at total"
        );
        assert!(is_last_page(2, 1000, 1000, Some(2000)));
        let recs = vec![json!({"resource_id": 1}), json!({"resource_id": 9})];
        assert_eq!(fingerprint(&recs), "1:9:2");
        assert_eq!(
            Position::from(None).unwrap(),
            Position {
                page: 1,
                skip: 0,
                prev_fp: None
            }
        );
        let p = Position::from(Some(&Cursor(
            json!({"page": 4, "skip": 300, "fp": "1:9:2"}),
        )))
        .unwrap();
        assert_eq!(
            p,
            Position {
                page: 4,
                skip: 300,
                prev_fp: Some("1:9:2".into())
            }
        );
        assert!(Position::from(Some(&Cursor(json!({"page": 0})))).is_err());
    }

    #[test]
    fn error_bodies_are_classified() {
        assert_eq!(
            classify(&json!({"status": "success", "message_response": {}})),
            None
        );
        assert!(matches!(
            classify(
                &json!({"status": "error", "error_code": "10002", "error_description": "Invalid API key"})
            ),
            Some(Failure::Auth(_))
        ));
        assert!(matches!(
            classify(
                &json!({"status": "error", "error_code": 1, "error_description": "The auth token has expired"})
            ),
            Some(Failure::Auth(_))
        ));
        assert!(matches!(
            classify(
                &json!({"status": "error", "error_code": "10029", "error_description": "API rate limit exceeded; access is locked for 5 minutes"})
            ),
            Some(Failure::Throttle(_))
        ));
        assert!(matches!(
            classify(
                &json!({"status": "error", "error_code": "10007", "error_description": "Invalid resource id"})
            ),
            Some(Failure::Other { .. })
        ));
    }

    #[test]
    fn derived_fields() {
        let mut r = json!({"resource_id": 1, "managedcomputerextn.service_tag": "--", "scan_status": 2,
            "assetsync_detail": {"computer_hardware_summary": {"serial_number": "PF2ABCD", "warranty_expiry_date": 1767225600000u64}}});
        clean(&mut r);
        derive_fields(&mut r);
        assert_eq!(r["assetsync_serial"], "PF2ABCD");
        assert_eq!(r["assetsync_scan_status"], "Scan succeeded");
        assert_eq!(r["assetsync_warranty_expiry"], "2026-01-01T00:00:00Z");
        let mut r = json!({"managedcomputerextn.service_tag": "To%20be%20filled%20by%20O.E.M.", "assetsync_detail": {"computer_hardware_summary": {"serial_number": "REAL1"}}});
        derive_fields(&mut r);
        assert_eq!(
            r["assetsync_serial"], "REAL1",
            "a placeholder in the list yields to the detail serial"
        );
        let mut r = json!({"managedcomputerextn.service_tag": "5CG1234XYZ%20"});
        derive_fields(&mut r);
        let m = Mapping::parse(COMPUTER_MAPPING).unwrap();
        assert_eq!(
            m.apply(&r, ObjectType::Hardware).key.as_deref(),
            Some("5CG1234XYZ")
        );
    }

    #[test]
    fn default_mapping_maps_the_documented_sample() {
        assert_eq!(
            default_mapping(ObjectType::Hardware, None),
            Some(COMPUTER_MAPPING)
        );
        assert_eq!(
            default_mapping(ObjectType::Hardware, Some("scancomputers")),
            Some(SCAN_MAPPING)
        );
        assert!(default_mapping(ObjectType::Person, None).is_none());
        let m = Mapping::parse(COMPUTER_MAPPING).unwrap();
        assert_eq!(m.key_attr(), "Serial Number");
        assert_eq!(
            Mapping::parse(SCAN_MAPPING).unwrap().config("api"),
            Some("scancomputers")
        );
        // The first computer of vendor-apis.md §1.8, with a detail summary attached.
        let mut raw = json!({
            "resource_id": 30107, "resource_name": "FIN-LT-0042", "fqdn_name": "fin-lt-0042.corp.example.net",
            "domain_netbios_name": "CORP", "ip_address": "10.20.4.17", "mac_address": "3C:52:82:AA:10:4F",
            "os_name": "Windows 11 Enterprise Edition (x64)", "os_platform_name": "Windows", "os_version": "10.0.22631",
            "agent_version": "11.3.2416.15", "agent_last_contact_time": 1718873142000u64, "computer_live_status": 1,
            "installation_status": 22, "owner": "jdoe", "owner_email_id": "Jane.Doe@example.net",
            "managedcomputerextn.service_tag": "5CG1234XYZ",
            "assetsync_detail": {"computer_hardware_summary": {"serial_number": "5CG1234XYZ", "device_manufacturer": "HP",
                "device_model": "HP EliteBook 840 G8", "device_type": "Laptop", "processor": "Intel Core i7-1185G7"}}
        });
        derive_fields(&mut raw);
        let r = m.apply(&raw, ObjectType::Hardware);
        assert_eq!(r.key.as_deref(), Some("5CG1234XYZ"));
        let a = &r.attrs;
        assert_eq!(a["Name"], "FIN-LT-0042");
        assert_eq!(a["OS Platform"], "Windows");
        assert_eq!(a["OS Name"], "Windows 11 Enterprise Edition (x64)");
        assert_eq!(a["OS Version"], "10.0.22631");
        assert_eq!(a["Live Status"], "Live");
        assert_eq!(a["Agent Status"], "Installed");
        assert_eq!(a["IP Address"], "10.20.4.17");
        assert_eq!(a["MAC Address"], "3C:52:82:AA:10:4F");
        assert_eq!(a["Domain"], "CORP");
        assert_eq!(a["Last Check-in"], "2024-06-20T08:45:42Z");
        assert_eq!(a["User Email"], "jane.doe@example.net");
        assert_eq!(a["Manufacturer"], "HP");
        assert_eq!(a["Model"], "HP EliteBook 840 G8");
        assert_eq!(a["Device Type"], "Laptop");
        assert_eq!(a["Processor"], "Intel Core i7-1185G7");
        assert_eq!(a["Endpoint Central ID"], "30107");
        // The second: empty service tag, comma-separated MACs, no owner → no key without a detail.
        let mut raw = json!({"resource_id": 30112, "mac_address": "00:1A:2B:3C:4D:5E,00:1A:2B:3C:4D:5F", "owner_email_id": "",
            "managedcomputerextn.service_tag": "", "os_platform": 1, "computer_live_status": 2});
        derive_fields(&mut raw);
        let r = m.apply(&raw, ObjectType::Hardware);
        assert_eq!(r.key, None);
        assert_eq!(r.attrs["MAC Address"], "00:1A:2B:3C:4D:5E");
        assert_eq!(r.attrs["OS Platform"], "Windows");
        assert_eq!(r.attrs["Live Status"], "Down");
        assert!(!r.attrs.contains_key("User Email"));
        // A user mapping keyed on resource_id works for every computer.
        let m = Mapping::parse("key:resource_id=ID").unwrap();
        assert_eq!(
            m.apply(&raw, ObjectType::Hardware).key.as_deref(),
            Some("30112")
        );
    }
}
