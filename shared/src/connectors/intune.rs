//! Microsoft Intune and Entra ID through Microsoft Graph: OAuth 2.0 client credentials against
//! the Entra ID v2.0 token endpoint, `GET /v1.0/deviceManagement/managedDevices` (Hardware) and
//! `GET /v1.0/users` (Person), `$select` + `$top`, then `@odata.nextLink` followed as returned.
//!
//! Vendor facts this follows (checked against Microsoft's docs and issue threads; see the report):
//! - Token: `POST {login_url}/{tenant}/oauth2/v2.0/token`, form `client_id`, `client_secret`,
//!   `scope={graph_url}/.default`, `grant_type=client_credentials`; the answer carries
//!   `expires_in` (about 3599 s) and no refresh token, so a new token is simply requested.
//!   Failures are `{"error": "invalid_client", "error_description": "AADSTS7000215: ...",
//!   "error_codes": [7000215], ...}` with HTTP 400 or 401; the AADSTS code is explained in words.
//! - Graph answers 401 `InvalidAuthenticationToken` for an expired token (re-authenticate once),
//!   403 when the app lacks an application permission: Intune says "Application is not
//!   authorized to perform this operation. Application must have one of the following scopes:
//!   DeviceManagementManagedDevices.Read.All, ..."; the directory says `Authorization_RequestDenied`
//!   ("Insufficient privileges to complete the operation.").
//! - Paging: `$top` then `@odata.nextLink` until it is absent (a page may be empty). `users`
//!   accepts `$top` 1..=999 (HTTP 400 `Request_UnsupportedQuery` "Invalid page size specified"
//!   above); `managedDevices` pages at 1000 by itself. We ask for 999 on both by default, the largest
//!   size every Graph collection accepts (`config:page_size` may raise devices to 1000): one
//!   request per 999 records either way.
//! - `managedDevices` answers carry `@odata.count` (reported as the page total and carried in the
//!   cursor so every page reports it); `users` only does with `$count=true` + `ConsistencyLevel`,
//!   which we do not ask for (it turns the listing into an eventually consistent advanced query).
//! - Throttling: Intune allows 2000 requests per 20 s per app per tenant; the identity service's
//!   budget for `GET users` with `$select` is far above that. 429 `Retry-After` is honoured by
//!   [`VendorHttp`], and backoff is used when Intune leaves the header out; 503/504 are retried.
//!
//! The cursor is `{"next_link": "<the @odata.nextLink>", "total": n?}`. A next link whose origin is
//! not `graph_url`'s is never sent the bearer token as is: its path and query are re-based onto
//! `graph_url` (a warning is logged), so a token can only ever go to the configured Graph host.
//!
//! Records are Graph's own JSON, plus one derived field on devices:
//! `assetsync_azure_ad_device_id` is `azureADDeviceId` unless empty or the all-zero GUID Intune
//! reports for devices not joined to Entra ID.
//!
//! Software (`config:api=detectedApps`, the default for `Software`): `GET /v1.0/deviceManagement/detectedApps`
//! (`$top` apps a page, default 50, next links followed as above), and for each app on the page
//! `GET /v1.0/deviceManagement/detectedApps/{id}/managedDevices?$select=id,serialNumber,deviceName,lastSyncDateTime`
//! (its next links followed to the end) to link it to its devices: both are v1.0 (Graph's
//! detectedApp resource and its `managedDevices` relationship; the per-device
//! `managedDevices/{id}/detectedApps` exists only in beta) and need
//! `DeviceManagementManagedDevices.Read.All`. One record per app × device, with the app's fields
//! (`displayName`, `version`, `publisher`, `platform`, `sizeInByte`), `device_id`,
//! `device_serial_number`, `device_name`, and `assetsync_device_serial` (normalised) plus
//! `assetsync_key` (`<serial>|<displayName>`, so a new version updates the record); no key without a
//! usable serial. [`Connector::parent_key`] is the normalised serial, the device's hardware key.
//! Every call goes through the same 2000-per-20-s limiter; the page reports no total (Graph counts
//! apps, not app × device rows).
//!
//! `config:` options: `api` (`managedDevices`, `users` or `detectedApps`), `filter` (an OData `$filter`, e.g.
//! `operatingSystem eq 'Windows'` or `accountEnabled eq true`), `page_size`, `select` (extra
//! comma-separated properties for a custom mapping, or `*` for Graph's default property set),
//! `version` (`v1.0`, default, or `beta`).
//!
//! People are keyed by Entra object `id` by default. To key them by email instead, replace the
//! `key:` line with `key:userPrincipalName=Email` and drop the `map:...=Email` line (an attribute
//! cannot be both the key and mapped), e.g. add `map:id=User ID` to keep the object id.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use super::{parse_secret, require, token, Connector, ConnectorContext, Cursor, Page, TestReport};
use crate::error::ConnectorError;
use crate::event::{ObjectType, SourceKind};
use crate::http::{check_base_url, join, HttpCounts, HttpOptions, RateLimit, VendorHttp};
use crate::normalize;

const VENDOR: &str = "Microsoft Graph";
const ENTRA: &str = "Microsoft Entra ID";
/// The largest `$top` `users` accepts.
pub const USERS_MAX_PAGE: u32 = 999;
/// `managedDevices` pages at 1000 on its own.
pub const DEVICES_MAX_PAGE: u32 = 1000;
/// What we ask for by default on both listings (accepted everywhere in Graph).
pub const DEFAULT_PAGE: u32 = 999;
const DEFAULT_LOGIN_URL: &str = "https://login.microsoftonline.com";
const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
const DEVICE_PERMISSION: &str = "DeviceManagementManagedDevices.Read.All";
const USER_PERMISSION: &str = "User.Read.All";

/// The fields the default device mapping reads (plus `id` for the source id).
const DEVICE_SELECT: &[&str] = &[
    "id",
    "deviceName",
    "serialNumber",
    "operatingSystem",
    "osVersion",
    "model",
    "manufacturer",
    "wiFiMacAddress",
    "userPrincipalName",
    "emailAddress",
    "userDisplayName",
    "lastSyncDateTime",
    "complianceState",
    "managedDeviceOwnerType",
    "azureADDeviceId",
];

/// The fields the default person mapping reads.
const USER_SELECT: &[&str] = &[
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
];

const DEVICE_MAPPING: &str = "\
key:serialNumber=Serial Number
map:deviceName=Name
map:operatingSystem=OS Name
map:osVersion=OS Version
map:model=Model
map:manufacturer=Manufacturer
map:wiFiMacAddress~mac=MAC Address
map:userPrincipalName|emailAddress~lower=User Email
map:userDisplayName=User Name
map:lastSyncDateTime~timestamp=Last Check-in
map:complianceState=Compliance
map:managedDeviceOwnerType=Ownership
map:assetsync_azure_ad_device_id=Azure AD Device ID
config:api=managedDevices
";

const APPS_MAPPING: &str = "\
key:assetsync_key=Software Key
map:displayName=Name
map:version=Version
map:publisher=Publisher
map:platform=Platform
map:assetsync_device_serial=Device Serial
config:api=detectedApps
";

/// detectedApp properties read for Software.
const APP_SELECT: &[&str] = &[
    "id",
    "displayName",
    "version",
    "publisher",
    "platform",
    "sizeInByte",
];
/// managedDevice properties read to link an app to its device.
const APP_DEVICE_SELECT: &str = "id,serialNumber,deviceName,lastSyncDateTime";
/// Apps a page by default (each costs at least one more request for its devices).
const APPS_DEFAULT_PAGE: u32 = 50;
/// Per-app device lookups in flight at once (the 2000-per-20-s limiter is the real bound).
const APP_CONCURRENCY: usize = 4;

const USER_MAPPING: &str = "\
key:id=User ID
map:mail|userPrincipalName~lower=Email
map:givenName=First Name
map:surname=Last Name
map:displayName=Display Name
map:userPrincipalName=User Name
map:jobTitle=Job Title
map:department=Department
map:officeLocation=Location
map:employeeId=Employee ID
map:accountEnabled~active_flag=Status
config:api=users
";

/// The default mapping: devices for Hardware (`config:api=managedDevices`), users for Person
/// (`config:api=users`).
pub fn default_mapping(object_type: ObjectType, api: Option<&str>) -> Option<&'static str> {
    let listing = match api {
        None => None,
        Some(a) => Some(Listing::parse(a)?),
    };
    match (object_type, listing) {
        (ObjectType::Hardware, None | Some(Listing::Devices)) => Some(DEVICE_MAPPING),
        (ObjectType::Person, None | Some(Listing::Users)) => Some(USER_MAPPING),
        (ObjectType::Software, None | Some(Listing::Apps)) => Some(APPS_MAPPING),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Secret {
    tenant_id: String,
    client_id: String,
    client_secret: SecretString,
    #[serde(default)]
    login_url: Option<String>,
    #[serde(default)]
    graph_url: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Listing {
    Devices,
    Users,
    Apps,
}

impl Listing {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "manageddevices"
            | "managed-devices"
            | "devices"
            | "devicemanagement/manageddevices" => Some(Listing::Devices),
            "users" => Some(Listing::Users),
            "detectedapps" | "detected-apps" | "apps" | "devicemanagement/detectedapps" => {
                Some(Listing::Apps)
            }
            _ => None,
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Listing::Devices => "deviceManagement/managedDevices",
            Listing::Users => "users",
            Listing::Apps => "deviceManagement/detectedApps",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Listing::Devices => "managedDevices",
            Listing::Users => "users",
            Listing::Apps => "detectedApps",
        }
    }

    fn permission(&self) -> &'static str {
        match self {
            Listing::Devices | Listing::Apps => DEVICE_PERMISSION,
            Listing::Users => USER_PERMISSION,
        }
    }
}

/// The Intune / Entra ID connector.
pub struct Intune {
    tenant_id: String,
    client_id: String,
    client_secret: SecretString,
    token_url: Url,
    /// The Graph root (`https://graph.microsoft.com`), without a version segment.
    graph: Url,
    scope: String,
    version: &'static str,
    http: VendorHttp,
    listing: Listing,
    page_size: u32,
    /// `None`: no `$select` (Graph's default property set).
    select: Option<Vec<String>>,
    filter: Option<String>,
    token_key: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    /// A number on v2.0; some proxies and the v1 endpoint send a string.
    #[serde(default)]
    expires_in: Option<Value>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "@odata.count", default)]
    count: Option<u64>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
    value: Vec<Value>,
}

impl Intune {
    /// Build from the secret (`tenant_id`, `client_id`, `client_secret`, optional `login_url`, `graph_url`).
    #[allow(clippy::new_ret_no_self)] // the dispatch in mod.rs takes a boxed connector
    pub fn new(
        secret: &Value,
        ctx: ConnectorContext,
    ) -> Result<Box<dyn Connector>, ConnectorError> {
        Ok(Box::new(Self::build(secret, &ctx)?))
    }

    fn build(secret: &Value, ctx: &ConnectorContext) -> Result<Self, ConnectorError> {
        let s: Secret = parse_secret(
            SourceKind::Intune,
            secret,
            "`tenant_id`, `client_id` and `client_secret` (optional `login_url`, `graph_url`)",
        )?;
        require(SourceKind::Intune, "tenant_id", &s.tenant_id)?;
        require(SourceKind::Intune, "client_id", &s.client_id)?;
        require(
            SourceKind::Intune,
            "client_secret",
            s.client_secret.expose_secret(),
        )?;
        let tenant_id = s.tenant_id.trim().to_string();
        if !tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(ConnectorError::Config("the intune secret field `tenant_id` must be the Directory (tenant) ID (a GUID) or a verified domain such as contoso.onmicrosoft.com; the value given is neither".to_string()));
        }
        let client_id = s.client_id.trim().to_string();

        let login_raw = s
            .login_url
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_LOGIN_URL);
        let mut login = check_base_url(login_raw, "login_url")?;
        // Users paste the authority with the tenant, or the v2.0 endpoint; keep the host root.
        if login.path().contains("/oauth2") || login.path().trim_matches('/') == tenant_id {
            login.set_path("");
        }
        let token_url = join(&login, &format!("{tenant_id}/oauth2/v2.0/token"));

        let graph_raw = s
            .graph_url
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_GRAPH_URL);
        let mut graph = check_base_url(graph_raw, "graph_url")?;
        let trimmed = graph
            .path()
            .trim_end_matches('/')
            .trim_end_matches("/v1.0")
            .trim_end_matches("/beta")
            .to_string();
        graph.set_path(&trimmed);
        graph.set_query(None);
        let scope = format!("{}/.default", graph.as_str().trim_end_matches('/'));

        let listing = match ctx.config("api") {
            Some(a) => Listing::parse(a).ok_or_else(|| {
                ConnectorError::Config(format!("config:api={a} is not an Intune listing; use managedDevices, users or detectedApps"))
            })?,
            None => match ctx.object_type {
                ObjectType::Person => Listing::Users,
                ObjectType::Hardware => Listing::Devices,
                ObjectType::Software => Listing::Apps,
            },
        };
        let version = match ctx.config("version") {
            None | Some("v1.0") | Some("v1") => "v1.0",
            Some("beta") => "beta",
            Some(v) => {
                return Err(ConnectorError::Config(format!(
                    "config:version={v} must be v1.0 or beta"
                )))
            }
        };
        let max = match listing {
            Listing::Devices => DEVICES_MAX_PAGE,
            Listing::Users | Listing::Apps => USERS_MAX_PAGE,
        };
        let base_select = match listing {
            Listing::Devices => DEVICE_SELECT,
            Listing::Users => USER_SELECT,
            Listing::Apps => APP_SELECT,
        };
        let default_page = match listing {
            Listing::Apps => APPS_DEFAULT_PAGE,
            _ => DEFAULT_PAGE,
        };
        let select = match ctx.config("select").map(str::trim) {
            Some("*") => None,
            extra => {
                let mut fields: Vec<String> = base_select.iter().map(|s| s.to_string()).collect();
                for f in extra
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                {
                    if !f
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '/')
                    {
                        return Err(ConnectorError::Config(format!(
                            "config:select has {f:?}; it takes comma-separated Graph property names, or * for Graph's default set"
                        )));
                    }
                    if !fields.iter().any(|x| x == f) {
                        fields.push(f.to_string());
                    }
                }
                Some(fields)
            }
        };
        let filter = ctx
            .config("filter")
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_string);

        let mut opts = HttpOptions::new(VENDOR);
        // Intune: 2000 requests per 20 s per app per tenant (any request). The identity service's
        // budget for `GET users` with `$select` (1 unit) is higher, so one limit covers both.
        opts.rate_limit = Some(RateLimit {
            requests: 2000,
            per: Duration::from_secs(20),
            concurrency: 4,
        });
        let token_key = format!("intune|{}|{}|{}|{}", token_url, client_id, scope, tenant_id);
        Ok(Intune {
            http: VendorHttp::new(opts)?,
            page_size: ctx.page_size(default_page, max)?,
            tenant_id,
            client_id,
            client_secret: s.client_secret,
            token_url,
            graph,
            scope,
            version,
            listing,
            select,
            filter,
            token_key,
        })
    }

    /// The client-credentials token, cached until shortly before it expires.
    async fn token(&self) -> Result<SecretString, ConnectorError> {
        token::get_or_fetch(&self.token_key, || async {
            let form = [
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose_secret()),
                ("scope", self.scope.as_str()),
                ("grant_type", "client_credentials"),
            ];
            let res = self
                .http
                .json::<TokenResponse>(|| {
                    self.http.client().post(self.token_url.clone()).form(&form)
                })
                .await;
            match res {
                Ok(t) => {
                    let secs = match &t.expires_in {
                        Some(Value::Number(n)) => n.as_u64(),
                        Some(Value::String(s)) => s.trim().parse().ok(),
                        _ => None,
                    }
                    .unwrap_or(3599)
                    .max(30);
                    Ok((t.access_token, Duration::from_secs(secs)))
                }
                Err(e) => Err(self.explain_token_error(e)),
            }
        })
        .await
    }

    /// Turn a token-endpoint failure into words (the AADSTS code says what is wrong).
    fn explain_token_error(&self, e: ConnectorError) -> ConnectorError {
        let (status, detail) = match &e {
            ConnectorError::Auth { detail, .. } => (401, detail.clone()),
            ConnectorError::Status { status, detail, .. } => (*status, detail.clone()),
            ConnectorError::Forbidden { detail, .. } => (403, detail.clone()),
            ConnectorError::Malformed { detail, .. } => {
                return ConnectorError::Malformed {
                    vendor: ENTRA,
                    path: self.token_url.path().to_string(),
                    detail: format!("the token endpoint's answer is not a token ({detail}); is login_url an Entra ID login host?"),
                }
            }
            _ => return e,
        };
        let code = aadsts_code(&detail);
        let described = aadsts_description(&detail);
        let explanation = code.and_then(|c| self.explain_aadsts(c));
        let text = match (explanation, code) {
            (Some(x), Some(c)) => format!("{x} [AADSTS{c}: {}]", described.unwrap_or_default()),
            (None, Some(c)) => format!(
                "the token request was refused with AADSTS{c}: {} (look the code up at https://login.microsoftonline.com/error?code={c})",
                described.unwrap_or_default()
            ),
            (None, None) if status == 404 => format!(
                "{} answered 404: login_url is not an Entra ID login host (e.g. https://login.microsoftonline.com)",
                self.token_url.origin().ascii_serialization()
            ),
            _ => format!("the token endpoint answered HTTP {status}: {detail}"),
        };
        ConnectorError::Auth {
            vendor: ENTRA,
            detail: text,
        }
    }

    fn explain_aadsts(&self, code: u32) -> Option<String> {
        let tenant = &self.tenant_id;
        let client = &self.client_id;
        Some(match code {
            7000215 => "the client secret is wrong: you may have pasted the secret's ID instead of its value. Copy the \
                        Value column of the client secret (shown only when it is created) into `client_secret`"
                .to_string(),
            7000222 => "the client secret has expired: create a new client secret under the app registration's \
                        Certificates & secrets and put its value in `client_secret`"
                .to_string(),
            7000218 | 900144 => "the token request lacked a required field; check `client_id` and `client_secret` are set".to_string(),
            65001 => format!(
                "admin consent is missing for app {client}: an administrator must grant admin consent to its application \
                 permissions ({DEVICE_PERMISSION} for devices, {USER_PERMISSION} for people) under API permissions"
            ),
            700016 => format!(
                "application {client} was not found in tenant {tenant}: check `client_id` is the Application (client) ID \
                 and `tenant_id` the Directory (tenant) ID where the app is registered (a multi-tenant app must first be \
                 consented in this tenant)"
            ),
            90002 => format!(
                "tenant {tenant} was not found: check `tenant_id` (the Directory (tenant) ID or a verified domain) and that \
                 `login_url` is the right cloud (login.microsoftonline.us for US Government, login.chinacloudapi.cn for China)"
            ),
            900023 | 90013 => format!("`tenant_id` {tenant:?} is not a valid tenant identifier: use the Directory (tenant) ID GUID"),
            1002012 | 70011 => format!(
                "the scope {} was refused: client-credential scopes must be the Graph root followed by /.default; check `graph_url` \
                 (e.g. https://graph.microsoft.com)",
                self.scope
            ),
            500011 => format!(
                "the resource of scope {} is not known in this tenant: `graph_url` must be Microsoft Graph's root for this cloud \
                 (e.g. https://graph.microsoft.com)",
                self.scope
            ),
            7000112 => format!("application {client} is disabled in tenant {tenant}"),
            53003 => "a Conditional Access policy for workload identities blocked the app's sign-in".to_string(),
            _ => return None,
        })
    }

    /// Explain a Graph failure on the listing in words.
    fn explain_graph_error(&self, e: ConnectorError) -> ConnectorError {
        match e {
            ConnectorError::Forbidden { path, detail, .. } => {
                let why = match self.listing {
                    Listing::Devices | Listing::Apps => format!(
                        "admin consent for {DEVICE_PERMISSION} is missing (application permission): in Entra ID, App registrations \
                         → {} → API permissions, add Microsoft Graph → Application permissions → {DEVICE_PERMISSION} and grant \
                         admin consent (the tenant also needs an Intune licence)",
                        self.client_id
                    ),
                    Listing::Users => format!(
                        "admin consent for {USER_PERMISSION} is missing (application permission; Graph answered \
                         Authorization_RequestDenied): in Entra ID, App registrations → {} → API permissions, add Microsoft \
                         Graph → Application permissions → {USER_PERMISSION} and grant admin consent",
                        self.client_id
                    ),
                };
                ConnectorError::Forbidden {
                    vendor: VENDOR,
                    path,
                    detail: format!("{why}. Graph said: {}", graph_message(&detail)),
                }
            }
            ConnectorError::Status {
                status,
                path,
                detail,
                ..
            } => {
                let msg = graph_message(&detail);
                let hint = if detail.contains("page size") || detail.contains("$top") {
                    " (config:page_size is out of range for this listing)".to_string()
                } else if detail.contains("property named") || detail.contains("$select") {
                    " (a config:select property does not exist on this listing in this Graph version)".to_string()
                } else if self.filter.is_some() && status == 400 {
                    format!(
                        " (check config:filter={:?}; Graph supports only some $filter forms here)",
                        self.filter.as_deref().unwrap_or("")
                    )
                } else if detail.contains("not applicable to target tenant") {
                    " (the tenant has no active Intune licence)".to_string()
                } else if status == 404 {
                    format!(" (is graph_url {} Microsoft Graph's root?)", self.graph)
                } else {
                    String::new()
                };
                ConnectorError::Status {
                    vendor: VENDOR,
                    status,
                    path,
                    detail: format!("{msg}{hint}"),
                }
            }
            other => other,
        }
    }

    /// The first page's URL.
    fn first_url(&self, top: u32) -> Url {
        let mut url = join(
            &self.graph,
            &format!("{}/{}", self.version, self.listing.path()),
        );
        let mut q = Vec::new();
        if let Some(sel) = &self.select {
            q.push(format!("$select={}", sel.join(",")));
        }
        if let Some(f) = &self.filter {
            q.push(format!("$filter={}", encode_query_value(f)));
        }
        q.push(format!("$top={top}"));
        url.set_query(Some(&q.join("&")));
        url
    }

    /// The URL of a next link: as returned when it points at `graph_url`'s origin, else re-based
    /// onto it (the bearer token never leaves the configured Graph host).
    fn next_url(&self, link: &str) -> Result<Url, ConnectorError> {
        let parsed = match Url::parse(link) {
            Ok(u) => u,
            Err(url::ParseError::RelativeUrlWithoutBase) => self.graph.join(link).map_err(|e| {
                ConnectorError::Config(format!("the cursor's next link {link:?} is not a URL: {e}"))
            })?,
            Err(e) => {
                return Err(ConnectorError::Config(format!(
                    "the cursor's next link {link:?} is not a URL: {e}"
                )))
            }
        };
        if parsed.origin() == self.graph.origin() {
            return Ok(parsed);
        }
        let mut rebased = self.graph.clone();
        rebased.set_path(parsed.path());
        rebased.set_query(parsed.query());
        tracing::warn!(
            vendor = VENDOR,
            next_link_host = parsed.host_str().unwrap_or(""),
            graph_host = self.graph.host_str().unwrap_or(""),
            "@odata.nextLink points at another host than graph_url; following its path on graph_url instead"
        );
        Ok(rebased)
    }

    /// GET a page with the bearer token: one re-authentication on 401, one retry of a body that
    /// is not the JSON we expect (a truncated answer), then errors explained in words.
    async fn get(&self, url: &Url) -> Result<Envelope, ConnectorError> {
        let mut reauthed = false;
        let mut reparsed = false;
        loop {
            let tok = self.token().await?;
            let res = self
                .http
                .json::<Envelope>(|| {
                    self.http
                        .client()
                        .get(url.clone())
                        .bearer_auth(tok.expose_secret())
                })
                .await;
            match res {
                Ok(env) => return Ok(env),
                Err(ConnectorError::Auth { .. }) if !reauthed => {
                    reauthed = true;
                    token::invalidate(&self.token_key);
                }
                Err(ConnectorError::Auth { detail, .. }) => {
                    return Err(ConnectorError::Auth {
                        vendor: VENDOR,
                        detail: format!(
                            "Graph refused a freshly issued token too ({}); check graph_url {} belongs to the same cloud as login_url",
                            graph_message(&detail),
                            self.graph
                        ),
                    })
                }
                Err(ConnectorError::Malformed { .. }) if !reparsed => {
                    reparsed = true;
                    tracing::warn!(vendor = VENDOR, path = url.path(), "the page was not the JSON expected; fetching it once more");
                }
                Err(e) => return Err(self.explain_graph_error(e)),
            }
        }
    }

    /// The devices that have a detected app (every page of its `managedDevices`).
    async fn app_devices(&self, app_id: &str) -> Result<Vec<Value>, ConnectorError> {
        let mut url = join(
            &self.graph,
            &format!("{}/deviceManagement/detectedApps", self.version),
        );
        url.path_segments_mut()
            .map_err(|_| {
                ConnectorError::Config(format!("graph_url {} cannot take a path", self.graph))
            })?
            .push(app_id)
            .push("managedDevices");
        url.set_query(Some(&format!(
            "$select={APP_DEVICE_SELECT}&$top={DEFAULT_PAGE}"
        )));
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let env = self.get(&url).await?;
            out.extend(env.value);
            match env
                .next_link
                .as_deref()
                .map(str::trim)
                .filter(|l| !l.is_empty())
            {
                Some(link) => url = self.next_url(link)?,
                None => return Ok(out),
            }
        }
        Err(ConnectorError::Malformed {
            vendor: VENDOR,
            path: url.path().to_string(),
            detail: "the device list of a detected app never ended".into(),
        })
    }

    /// One record per app × device for a page of detected apps.
    async fn app_rows(&self, apps: Vec<Value>) -> Result<Vec<Value>, ConnectorError> {
        let lookups: Vec<(Value, Result<Vec<Value>, ConnectorError>)> = futures::stream::iter(apps)
            .map(|a| async move {
                let id = a
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let devices = if id.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.app_devices(&id).await
                };
                (a, devices)
            })
            .buffered(APP_CONCURRENCY)
            .collect()
            .await;
        let mut rows = Vec::new();
        for (app, devices) in lookups {
            for d in devices? {
                rows.push(app_row(&app, &d));
            }
        }
        Ok(rows)
    }

    fn enrich(&self, mut records: Vec<Value>) -> Vec<Value> {
        if self.listing == Listing::Devices {
            for r in records.iter_mut() {
                let aad = r
                    .get("azureADDeviceId")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| {
                        !s.is_empty() && s.chars().any(|c| c.is_ascii_hexdigit() && c != '0')
                    })
                    .map(str::to_string);
                if let (Some(obj), Some(id)) = (r.as_object_mut(), aad) {
                    obj.insert("assetsync_azure_ad_device_id".into(), Value::String(id));
                }
            }
        }
        records
    }
}

#[async_trait]
impl Connector for Intune {
    async fn fetch_page(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let (url, carried_total) = match cursor {
            None => (self.first_url(self.page_size), None),
            Some(c) => {
                let link =
                    c.0.get("next_link")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            ConnectorError::Config(format!(
                                "the Intune cursor {} has no `next_link`",
                                c.0
                            ))
                        })?;
                (
                    self.next_url(link)?,
                    c.0.get("total").and_then(Value::as_u64),
                )
            }
        };
        let env = self.get(&url).await?;
        let total = if self.listing == Listing::Apps {
            None
        } else {
            env.count.or(carried_total)
        };
        let next = match env
            .next_link
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            // The absence of a next link is Graph's only end-of-data signal; a page may be empty.
            None => None,
            Some(link) => {
                let mut c = json!({ "next_link": link });
                if let Some(t) = total {
                    c["total"] = json!(t);
                }
                Some(Cursor(c))
            }
        };
        let records = if self.listing == Listing::Apps {
            self.app_rows(env.value).await?
        } else {
            self.enrich(env.value)
        };
        Ok(Page {
            records,
            next,
            total,
            ..Default::default()
        })
    }

    async fn test(&self) -> Result<TestReport, ConnectorError> {
        let tok = self.token().await?;
        let roles = jwt_roles(tok.expose_secret());
        let env = self.get(&self.first_url(1)).await?;
        let what = self.listing.name();
        let count = match env.count {
            Some(n) => format!("{n} in total"),
            None if env.value.is_empty() => "no records".to_string(),
            None => "records present (Graph reports no total for this listing)".to_string(),
        };
        let perms = match &roles {
            Some(r) if r.is_empty() => {
                " (the token carries no application permissions)".to_string()
            }
            Some(r) => format!(" with application permissions {}", r.join(", ")),
            None => String::new(),
        };
        let mut message = format!(
            "authenticated to tenant {} as app {}{perms} and read {what} from {}: {count}",
            self.tenant_id, self.client_id, self.graph
        );
        if let Some(r) = &roles {
            let sufficient: &[&str] = match self.listing {
                Listing::Devices | Listing::Apps => &[
                    DEVICE_PERMISSION,
                    "DeviceManagementManagedDevices.ReadWrite.All",
                ],
                Listing::Users => &[
                    USER_PERMISSION,
                    "User.ReadWrite.All",
                    "Directory.Read.All",
                    "Directory.ReadWrite.All",
                ],
            };
            if !r.iter().any(|x| sufficient.contains(&x.as_str())) {
                message.push_str(&format!(
                    "; note: {} is not among them",
                    self.listing.permission()
                ));
            }
        }
        Ok(TestReport {
            message,
            sample: self.enrich(env.value).into_iter().next(),
        })
    }

    fn source_id(&self, raw: &Value) -> Option<String> {
        if self.listing == Listing::Apps {
            // Device and app name: a detected app's `id` changes with its version, and an
            // upgrade must update the record, not look like a second source record.
            let d = raw.get("device_id").and_then(crate::mapping::scalar)?;
            let a = raw.get("displayName").and_then(crate::mapping::scalar)?;
            return Some(format!("{d}|{a}"));
        }
        raw.get("id").and_then(crate::mapping::scalar)
    }

    fn checked_in(&self, raw: &Value) -> Option<DateTime<Utc>> {
        raw.get("lastSyncDateTime")
            .or_else(|| raw.get("device_last_sync"))
            .and_then(Value::as_str)
            .and_then(normalize::parse_time)
    }

    fn parent_key(&self, raw: &Value) -> Option<String> {
        (self.listing == Listing::Apps)
            .then(|| raw.get("assetsync_device_serial").and_then(Value::as_str))
            .flatten()
            .map(str::to_string)
    }

    fn http_counts(&self) -> HttpCounts {
        self.http.stats().snapshot()
    }
}

/// A detected app on one device, linked to it by its normalised serial.
fn app_row(app: &Value, device: &Value) -> Value {
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
    };
    let mut row = app.clone();
    let serial = s(device, "serialNumber");
    let norm = serial.as_deref().and_then(normalize::serial);
    let name = s(app, "displayName");
    if let Some(obj) = row.as_object_mut() {
        obj.insert(
            "app_id".into(),
            app.get("id").cloned().unwrap_or(Value::Null),
        );
        for (from, to) in [
            ("id", "device_id"),
            ("serialNumber", "device_serial_number"),
            ("deviceName", "device_name"),
            ("lastSyncDateTime", "device_last_sync"),
        ] {
            obj.insert(to.into(), device.get(from).cloned().unwrap_or(Value::Null));
        }
        if let Some(n) = &norm {
            obj.insert("assetsync_device_serial".into(), json!(n));
            if let Some(name) = &name {
                obj.insert("assetsync_key".into(), json!(format!("{n}|{name}")));
            }
        }
    }
    row
}

/// The AADSTS code in a token-endpoint error body (from `error_codes` or the description).
fn aadsts_code(detail: &str) -> Option<u32> {
    if let Some(i) = detail.find("AADSTS") {
        let digits: String = detail[i + 6..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(n) = digits.parse() {
            return Some(n);
        }
    }
    let i = detail.find("\"error_codes\"")?;
    let rest = &detail[i..];
    let open = rest.find('[')?;
    let digits: String = rest[open + 1..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The first sentence of the AADSTS description, without the trace and correlation ids.
fn aadsts_description(detail: &str) -> Option<String> {
    let i = detail.find("AADSTS")?;
    let rest = &detail[i..];
    let rest = rest.split_once(": ").map(|(_, r)| r).unwrap_or(rest);
    let end = ["\\r\\n", "\r\n", "\\n", "Trace ID", "\",\""]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    let mut s = rest[..end]
        .trim()
        .trim_end_matches('…')
        .trim_end_matches('"')
        .trim();
    // The first sentence is enough next to our explanation.
    if let Some(i) = s.find(". ") {
        s = &s[..=i];
    }
    (!s.is_empty()).then(|| s.to_string())
}

/// The `error.code: error.message` of a Graph error body (Intune nests a JSON text in `message`).
fn graph_message(detail: &str) -> String {
    // A raw body, or `HTTP 401 for /path: {body}` from a refused token.
    let parsed = serde_json::from_str::<Value>(detail.trim())
        .ok()
        .or_else(|| {
            let i = detail.find(": {")?;
            serde_json::from_str::<Value>(detail[i + 2..].trim()).ok()
        });
    if let Some(err) = parsed.as_ref().and_then(|v| v.get("error")) {
        let code = err.get("code").and_then(Value::as_str).unwrap_or("");
        let mut msg = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Ok(inner) = serde_json::from_str::<Value>(&msg) {
            if let Some(m) = inner.get("Message").and_then(Value::as_str) {
                msg = m.to_string();
            }
        }
        if let Some(i) = msg.find(" - Operation ID") {
            msg.truncate(i);
        }
        return format!("{code}: {msg}")
            .trim_matches(|c: char| c == ':' || c.is_whitespace())
            .to_string();
    }
    // A truncated body: keep the readable part.
    let cleaned = detail
        .replace("\\r\\n", " ")
        .replace("\\\"", "\"")
        .replace('\\', "");
    let start = [
        "Application is not authorized",
        "Insufficient privileges",
        "\"message\":",
    ]
    .iter()
    .find_map(|m| cleaned.find(m))
    .unwrap_or(0);
    let mut out: String = cleaned[start..].chars().take(240).collect();
    if let Some(i) = out.find(" - Operation ID") {
        out.truncate(i);
    }
    out.trim_end_matches('…').trim().to_string()
}

/// The `roles` claim of a JWT access token (application permissions), if it decodes.
fn jwt_roles(token: &str) -> Option<Vec<String>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some(match v.get("roles") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    })
}

/// Percent-encode an OData query value, keeping the characters OData expressions use literally.
fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'\''
            | b'('
            | b')'
            | b','
            | b':'
            | b'/'
            | b'@' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::MemoryState;
    use crate::mapping::Mapping;
    use std::sync::Arc;

    fn ctx(object_type: ObjectType, config: &[(&str, &str)]) -> ConnectorContext {
        ConnectorContext {
            connection: "intune-test".into(),
            object_type,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state: Arc::new(MemoryState::default()),
        }
    }

    fn secret() -> Value {
        json!({"tenant_id": "11111111-2222-3333-4444-555555555555", "client_id": "app-1", "client_secret": "s3cret"})
    }

    #[test]
    fn secret_errors_name_the_field() {
        let e = Intune::build(
            &json!({"tenant_id": "t", "client_id": "a"}),
            &ctx(ObjectType::Hardware, &[]),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("client_secret"), "{e}");
        let e = Intune::build(
            &json!({"tenant_id": " ", "client_id": "a", "client_secret": "b"}),
            &ctx(ObjectType::Hardware, &[]),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("tenant_id"), "{e}");
        let e = Intune::build(&json!("nope"), &ctx(ObjectType::Hardware, &[]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("JSON object"), "{e}");
        let mut s = secret();
        s["graph_url"] = json!("http://graph.example.com");
        let e = Intune::build(&s, &ctx(ObjectType::Hardware, &[]))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("graph_url") && e.to_string().contains("https"),
            "{e}"
        );
        let mut s = secret();
        s["tenant_id"] = json!("contoso/../x");
        let e = Intune::build(&s, &ctx(ObjectType::Hardware, &[]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("tenant_id"), "{e}");
        // The secret never shows in errors.
        assert!(!e.to_string().contains("s3cret"));
    }

    #[test]
    fn urls_and_scope() {
        let c = Intune::build(&secret(), &ctx(ObjectType::Hardware, &[])).unwrap();
        assert_eq!(c.token_url.as_str(), "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token");
        assert_eq!(c.scope, "https://graph.microsoft.com/.default");
        let u = c.first_url(999).to_string();
        assert!(u.starts_with("https://graph.microsoft.com/v1.0/deviceManagement/managedDevices?$select=id,deviceName,serialNumber,"), "{u}");
        assert!(u.ends_with("&$top=999"), "{u}");
        assert!(
            u.contains("wiFiMacAddress") && !u.contains("ethernetMacAddress"),
            "{u}"
        );

        let mut s = secret();
        s["graph_url"] = json!("https://graph.microsoft.us/v1.0/");
        s["login_url"] = json!("https://login.microsoftonline.us/");
        let c = Intune::build(
            &s,
            &ctx(
                ObjectType::Person,
                &[
                    ("filter", "accountEnabled eq true"),
                    ("select", "city,country"),
                ],
            ),
        )
        .unwrap();
        assert_eq!(c.scope, "https://graph.microsoft.us/.default");
        assert!(c
            .token_url
            .as_str()
            .starts_with("https://login.microsoftonline.us/1111"));
        let u = c.first_url(999).to_string();
        assert!(
            u.starts_with(
                "https://graph.microsoft.us/v1.0/users?$select=id,userPrincipalName,mail,"
            ),
            "{u}"
        );
        assert!(
            u.contains("officeLocation,city,country&$filter=accountEnabled%20eq%20true&$top=999"),
            "{u}"
        );

        let c = Intune::build(
            &secret(),
            &ctx(
                ObjectType::Hardware,
                &[("select", "*"), ("version", "beta")],
            ),
        )
        .unwrap();
        assert_eq!(
            c.first_url(5).as_str(),
            "https://graph.microsoft.com/beta/deviceManagement/managedDevices?$top=5"
        );
    }

    #[test]
    fn page_size_bounds() {
        let c = Intune::build(&secret(), &ctx(ObjectType::Person, &[])).unwrap();
        assert_eq!(c.page_size, 999);
        assert!(Intune::build(
            &secret(),
            &ctx(ObjectType::Person, &[("page_size", "1000")])
        )
        .is_err());
        let c = Intune::build(
            &secret(),
            &ctx(ObjectType::Hardware, &[("page_size", "1000")]),
        )
        .unwrap();
        assert_eq!(c.page_size, 1000);
        let e = Intune::build(&secret(), &ctx(ObjectType::Hardware, &[("api", "apps2")]))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("managedDevices, users or detectedApps"),
            "{e}"
        );
        let c = Intune::build(&secret(), &ctx(ObjectType::Software, &[])).unwrap();
        assert_eq!((c.listing, c.page_size), (Listing::Apps, APPS_DEFAULT_PAGE));
    }

    #[test]
    fn next_links_are_followed_as_returned_on_the_graph_host_only() {
        let c = Intune::build(&secret(), &ctx(ObjectType::Hardware, &[])).unwrap();
        let link = "https://graph.microsoft.com/v1.0/deviceManagement/managedDevices?$top=2&$select=id,deviceName&$skiptoken=LastDeviceName%3d%27LT-HR-0019%27";
        assert_eq!(c.next_url(link).unwrap().as_str(), link);
        let evil = c
            .next_url("https://evil.example.com/v1.0/users?$skiptoken=abc")
            .unwrap();
        assert_eq!(
            evil.as_str(),
            "https://graph.microsoft.com/v1.0/users?$skiptoken=abc"
        );
        let rel = c.next_url("/v1.0/users?$skiptoken=abc").unwrap();
        assert_eq!(
            rel.as_str(),
            "https://graph.microsoft.com/v1.0/users?$skiptoken=abc"
        );
    }

    #[test]
    fn aadsts_codes_are_explained() {
        let c = Intune::build(&secret(), &ctx(ObjectType::Hardware, &[])).unwrap();
        let body = r#"HTTP 401 for /t/oauth2/v2.0/token: {"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app 'x'.\r\nTrace ID: 6f6c\r\nCorrelation ID: 5fc8\r\nTimestamp: 2023-05-06 06:03:00Z","error_codes":[7000215]}"#;
        assert_eq!(aadsts_code(body), Some(7000215));
        let e = c.explain_token_error(ConnectorError::Auth {
            vendor: VENDOR,
            detail: body.into(),
        });
        let s = e.to_string();
        assert!(
            s.contains("secret's ID instead of its value") && s.contains("AADSTS7000215"),
            "{s}"
        );
        assert!(!s.contains("Trace ID"), "{s}");
        for (code, words) in [
            (7000222, "expired"),
            (65001, "DeviceManagementManagedDevices.Read.All"),
            (700016, "was not found in tenant"),
            (90002, "tenant 11111111"),
            (1002012, "/.default"),
        ] {
            let detail = format!(
                r#"{{"error":"x","error_description":"AADSTS{code}: something.\r\nTrace ID: 1","error_codes":[{code}]}}"#
            );
            let e = c.explain_token_error(ConnectorError::Status {
                vendor: VENDOR,
                status: 400,
                path: "/".into(),
                detail,
            });
            assert!(e.to_string().contains(words), "{code}: {e}");
        }
        let e = c.explain_token_error(ConnectorError::Status {
            vendor: VENDOR,
            status: 400,
            path: "/".into(),
            detail: "{\"error_codes\":[12345]}".into(),
        });
        assert!(e.to_string().contains("AADSTS12345"), "{e}");
    }

    #[test]
    fn graph_403s_are_explained() {
        let c = Intune::build(&secret(), &ctx(ObjectType::Hardware, &[])).unwrap();
        let detail = r#"{"error":{"code":"Forbidden","message":"{\r\n  \"_version\": 3,\r\n  \"Message\": \"Application is not authorized to perform this operation. Application must have one of the following scopes: DeviceManagementManagedDevices.Read.All, DeviceManagementManagedDevices.ReadWrite.All - Operation ID (for customer support): 0000\",\r\n  \"CustomApiErrorPhrase\": \"\"\r\n}"}}"#;
        let e = c.explain_graph_error(ConnectorError::Forbidden {
            vendor: VENDOR,
            path: "/p".into(),
            detail: detail.into(),
        });
        let s = e.to_string();
        assert!(s.contains("admin consent for DeviceManagementManagedDevices.Read.All is missing (application permission)"), "{s}");
        assert!(
            s.contains("Forbidden: Application is not authorized"),
            "{s}"
        );
        let c = Intune::build(&secret(), &ctx(ObjectType::Person, &[])).unwrap();
        let detail = r#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges to complete the operation."}}"#;
        let s = c
            .explain_graph_error(ConnectorError::Forbidden {
                vendor: VENDOR,
                path: "/p".into(),
                detail: detail.into(),
            })
            .to_string();
        assert!(
            s.contains("User.Read.All") && s.contains("Insufficient privileges"),
            "{s}"
        );
    }

    #[test]
    fn default_mappings_parse_and_map_the_documented_sample() {
        assert_eq!(
            default_mapping(ObjectType::Hardware, None),
            Some(DEVICE_MAPPING)
        );
        assert_eq!(
            default_mapping(ObjectType::Hardware, Some("managedDevices")),
            Some(DEVICE_MAPPING)
        );
        assert_eq!(
            default_mapping(ObjectType::Person, None),
            Some(USER_MAPPING)
        );
        assert_eq!(
            default_mapping(ObjectType::Person, Some("users")),
            Some(USER_MAPPING)
        );
        assert_eq!(
            default_mapping(ObjectType::Software, None),
            Some(APPS_MAPPING)
        );
        assert_eq!(
            default_mapping(ObjectType::Software, Some("detectedApps")),
            Some(APPS_MAPPING)
        );
        assert_eq!(default_mapping(ObjectType::Software, Some("users")), None);
        assert_eq!(default_mapping(ObjectType::Hardware, Some("users")), None);

        let m = Mapping::parse(DEVICE_MAPPING).unwrap();
        assert_eq!(m.key_attr(), "Serial Number");
        assert_eq!(m.config("api"), Some("managedDevices"));
        let c = Intune::build(&secret(), &ctx(ObjectType::Hardware, &[])).unwrap();
        // vendor-apis.md §3.8 sample record.
        let raw = json!({
            "id": "4b7f2c9e-1d3a-4e5b-8c6d-7e8f9a0b1c2d", "deviceName": "LT-HR-0018", "serialNumber": "PF4K2M9R",
            "operatingSystem": "Windows", "osVersion": "10.0.22631.3737", "model": "ThinkPad T14 Gen 4",
            "manufacturer": "LENOVO", "wiFiMacAddress": "a4c3f0112233", "userPrincipalName": "Amy.Lee@example.onmicrosoft.com",
            "emailAddress": "amy.lee@example.com", "lastSyncDateTime": "2024-06-20T07:51:12Z",
            "azureADDeviceId": "9e8d7c6b-5a4f-3e2d-1c0b-a9f8e7d6c5b4", "complianceState": "compliant",
            "managedDeviceOwnerType": "company", "userDisplayName": "Amy Lee"
        });
        let raw = c.enrich(vec![raw]).remove(0);
        let r = m.apply(&raw, ObjectType::Hardware);
        assert_eq!(r.key.as_deref(), Some("PF4K2M9R"));
        assert_eq!(r.attrs["Name"], "LT-HR-0018");
        assert_eq!(r.attrs["OS Name"], "Windows");
        assert_eq!(r.attrs["OS Version"], "10.0.22631.3737");
        assert_eq!(r.attrs["Model"], "ThinkPad T14 Gen 4");
        assert_eq!(r.attrs["Manufacturer"], "LENOVO");
        assert_eq!(r.attrs["MAC Address"], "A4:C3:F0:11:22:33");
        assert_eq!(r.attrs["User Email"], "amy.lee@example.onmicrosoft.com");
        assert_eq!(r.attrs["User Name"], "Amy Lee");
        assert_eq!(r.attrs["Last Check-in"], "2024-06-20T07:51:12Z");
        assert_eq!(r.attrs["Compliance"], "compliant");
        assert_eq!(r.attrs["Ownership"], "company");
        assert_eq!(
            r.attrs["Azure AD Device ID"],
            "9e8d7c6b-5a4f-3e2d-1c0b-a9f8e7d6c5b4"
        );
        assert_eq!(
            c.source_id(&raw).as_deref(),
            Some("4b7f2c9e-1d3a-4e5b-8c6d-7e8f9a0b1c2d")
        );
        assert!(c.checked_in(&raw).is_some());

        // Sentinels: no serial → no key; 0001-01-01 and the zero GUID → not reported.
        let raw = c
            .enrich(vec![json!({"id": "x", "serialNumber": "", "lastSyncDateTime": "0001-01-01T00:00:00Z",
                "azureADDeviceId": "00000000-0000-0000-0000-000000000000", "userPrincipalName": ""})])
            .remove(0);
        let r = m.apply(&raw, ObjectType::Hardware);
        assert_eq!(r.key, None);
        assert!(
            !r.attrs.contains_key("Last Check-in") && !r.attrs.contains_key("Azure AD Device ID")
        );
        assert!(!r.attrs.contains_key("User Email"));
        assert_eq!(c.checked_in(&raw), None);

        let m = Mapping::parse(USER_MAPPING).unwrap();
        let raw = json!({"id": "0f1e", "userPrincipalName": "Sam.Ortiz@example.com", "mail": null, "displayName": "Sam Ortiz",
            "givenName": "Sam", "surname": "Ortiz", "accountEnabled": false, "jobTitle": "Engineer", "department": "IT",
            "employeeId": "E42", "officeLocation": "Lisbon"});
        let r = m.apply(&raw, ObjectType::Person);
        assert_eq!(r.key.as_deref(), Some("0f1e"));
        assert_eq!(r.attrs["Email"], "sam.ortiz@example.com");
        assert_eq!(r.attrs["Status"], "suspended");
        assert_eq!(r.attrs["Location"], "Lisbon");
        assert_eq!(r.attrs["Employee ID"], "E42");
        assert_eq!(r.attrs["First Name"], "Sam");
        // Keying by email, as the module docs say.
        let by_email = USER_MAPPING
            .replace("key:id=User ID", "key:userPrincipalName=Email")
            .replace(
                "map:mail|userPrincipalName~lower=Email\n",
                "map:id=User ID\n",
            );
        let m = Mapping::parse(&by_email).unwrap();
        assert_eq!(
            m.apply(&raw, ObjectType::Person).key.as_deref(),
            Some("sam.ortiz@example.com")
        );
    }

    #[test]
    fn jwt_roles_decode() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"roles":["User.Read.All"]}"#);
        assert_eq!(
            jwt_roles(&format!("eyJ0eXAiOiJKV1QifQ.{payload}.sig")),
            Some(vec!["User.Read.All".to_string()])
        );
        assert_eq!(jwt_roles("opaque"), None);
    }
}
