//! JumpCloud: a static admin API key (`x-api-key`, plus `x-org-id` for multi-tenant admins),
//! v1 `GET /api/systems` and `GET /api/systemusers` paged with `limit` (max 100) + `skip` +
//! `sort=_id`, and v2 System Insights for the hardware model.
//!
//! Vendor facts this module relies on (checked against JumpCloud's docs and SDKs):
//! - `limit` is "Limited to 100"; above that the API answers 400 `request parameter "limit"
//!   exceeds maximum value of 100` (TheJumpCloud/jcapi-python#38). Default is 10.
//! - JumpCloud's best-practice page: when paging with `skip` or filtering, add `sort=_id`.
//! - v1 filters are `field:$op:value`, case sensitive; operators `$eq $ne $in $nin $gt $gte $lt
//!   $lte $sw`, `$in` takes `|`-separated terms (current v1 docs, e.g.
//!   `filter=department:$in:Finance|IT`); several filters are ANDed. A missing `$` is
//!   "undefined behaviour", so this connector refuses such a filter up front.
//! - v2 filters have no `$`: `filter=system_id:in:id1|id2` (used by JumpCloud's own PowerShell
//!   module for System Insights; `system_info` accepts the filter fields `system_id` and
//!   `cpu_subtype`). v2 lists are bare arrays.
//! - 401 bodies seen from the real API: `{"message":"Unauthorized: no organization selected"}`
//!   (multi-tenant admin without `x-org-id`) and `{"error":"Unauthorized","message":"Unauthorized:
//!   api key user not found"}` (wrong or reset key).
//! - `manager` on a user is the manager's user id ("Relation with another systemuser"), and
//!   `location` is a plain string field.
//! - JumpCloud publishes no numeric rate limit; it lists 429 (without a documented `Retry-After`)
//!   and 503, which [`VendorHttp`] retries (honouring `Retry-After` when it is present).
//!
//! An API key has nothing to refresh, so a 401 fails the page at once with an explanation.
//!
//! # Credentials and regions
//! Two kinds, one per secret:
//! - `api_key` (sent as `x-api-key`): the classic key, bound to one administrator.
//! - `client_id` + `client_secret`: a service account (Settings → Service Accounts, OAuth client
//!   credentials, not tied to a person). The token is `POST https://admin-oauth.id.jumpcloud.com/oauth2/token`
//!   with `Authorization: Basic base64(client_id:client_secret)` and the form
//!   `grant_type=client_credentials&scope=api`; it answers `{access_token, token_type: "bearer",
//!   expires_in: ~3600, scope}` and calls then carry `Authorization: Bearer <token>` (JumpCloud's
//!   service-account article, and open-source clients such as JustinGianelloni/jam `core/auth.py`).
//!   The token is cached until shortly before it expires; a 401 fetches a new one once.
//!
//! `region` (`us`, default; `eu`; `in`) picks the hosts: the API at `console.jumpcloud.com`,
//! `console.eu.jumpcloud.com` or `console.in.jumpcloud.com` (the regions the API reference lists:
//! United States, EU, India) and the token endpoint at `admin-oauth.id.jumpcloud.com`,
//! `admin-oauth.id.eu.jumpcloud.com` or `admin-oauth.id.in.jumpcloud.com` (the regional label goes
//! before `jumpcloud.com`, as in clients that list the three). `base_url` and `token_url` override
//! them (tests point both at the simulator); the client secret is sent to `token_url` only.
//!
//! Fields this connector adds to the raw records (all start with `assetsync_`):
//! - systems: `assetsync_ip` (first non-internal, non-link-local IPv4 of `networkInterfaces`),
//!   `assetsync_user_email` / `assetsync_user_name` (the `primarySystemUser.id` resolved to that
//!   user's email and name), `assetsync_model`, `assetsync_hardware_serial`,
//!   `assetsync_hardware_vendor` (from v2 `systeminsights/system_info`);
//! - users: `assetsync_state` (`state`, or `SUSPENDED`/`ACTIVATED` from the `suspended` flag
//!   when an older record has no `state`), `assetsync_manager` (the manager's email).
//!
//! User ids are resolved per page with one `GET /api/systemusers?filter=_id:$in:id1|id2|…`
//! (at most 100 ids, so one request), remembering every user seen for the rest of the run. If
//! the server rejects or ignores that filter, the connector falls back to reading the directory
//! once (`fields=_id email …`, 100 a page). `config:user_lookup=directory` forces the fallback,
//! `config:user_lookup=off` skips resolution; `config:insights=off` skips the model lookup.
//!
//! `config:filter` is passed through unchanged as the v1 `filter` parameter; several filters
//! are separated by `;` and sent indexed, `filter[0]=…&filter[1]=…`, which the v1 reference
//! documents as AND ("GET /systems?filter[0]=firstname:$eq:foo&filter[1]=lastname:$eq:bar - this
//! will AND the filters together"; a repeated plain `filter=` is not documented for v1), e.g.
//! `config:filter=department:$eq:Finance;state:$eq:ACTIVATED`. A single filter is sent as
//! `filter=`, as the reference's other examples are. The v2 System Insights `filter` is an array
//! parameter (the SDKs take `String[]`); this connector sends it one filter only. A literal `;`
//! cannot be used.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::ACCEPT;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use super::{parse_secret, token, Connector, ConnectorContext, Cursor, Page, TestReport};
use crate::error::ConnectorError;
use crate::event::{ObjectType, SourceKind};
use crate::http::{check_base_url, join, HttpCounts, HttpOptions, RateLimit, VendorHttp};
use crate::normalize;

const VENDOR: &str = "JumpCloud";
/// JumpCloud's documented maximum `limit` for v1 lists.
pub const MAX_PAGE_SIZE: u32 = 100;
/// The vendor's console host (EU tenants use `https://console.eu.jumpcloud.com`).
pub const DEFAULT_BASE_URL: &str = "https://console.jumpcloud.com";

/// (region, API root, OAuth token endpoint) of JumpCloud's data centres.
const REGIONS: &[(&str, &str, &str)] = &[
    (
        "us",
        DEFAULT_BASE_URL,
        "https://admin-oauth.id.jumpcloud.com/oauth2/token",
    ),
    (
        "eu",
        "https://console.eu.jumpcloud.com",
        "https://admin-oauth.id.eu.jumpcloud.com/oauth2/token",
    ),
    (
        "in",
        "https://console.in.jumpcloud.com",
        "https://admin-oauth.id.in.jumpcloud.com/oauth2/token",
    ),
];
/// The projection used when resolving user ids (space-separated, as the v1 docs say).
const USER_FIELDS: &str = "_id email username displayname firstname lastname";

const SYSTEMS_MAPPING: &str = "\
key:serialNumber|assetsync_hardware_serial=Serial Number
map:displayName|hostname=Name
map:assetsync_model=Model
map:hwVendor|assetsync_hardware_vendor=Manufacturer
map:os=OS Name
map:version=OS Version
map:assetsync_ip=IP Address
map:assetsync_user_email~lower=User Email
map:assetsync_user_name=User Name
map:lastContact~timestamp=Last Check-in
map:active=Active
map:agentVersion=Agent Version
config:api=systems
";

const USERS_MAPPING: &str = "\
key:_id=JumpCloud User ID
map:firstname=First Name
map:lastname=Last Name
map:email~lower=Email
map:username=User Name
map:displayname=Display Name
map:assetsync_manager~lower=Manager
map:jobTitle=Job Title
map:department=Department
map:location|addresses[0].locality=Location
map:assetsync_state~jc_state=Status
map:employeeIdentifier=Employee ID
config:api=systemusers
";

/// The default mapping: `systems` for hardware, `systemusers` for people.
pub fn default_mapping(object_type: ObjectType, api: Option<&str>) -> Option<&'static str> {
    match api.map(str::trim) {
        Some("systems") => Some(SYSTEMS_MAPPING),
        Some("systemusers" | "users") => Some(USERS_MAPPING),
        Some(_) => None,
        None => match object_type {
            ObjectType::Hardware => Some(SYSTEMS_MAPPING),
            ObjectType::Person => Some(USERS_MAPPING),
            ObjectType::Software => None,
        },
    }
}

#[derive(Deserialize)]
struct Secret {
    #[serde(default)]
    api_key: Option<SecretString>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<SecretString>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    token_url: Option<String>,
}

/// How requests authenticate.
enum Credentials {
    /// `x-api-key`.
    ApiKey(SecretString),
    /// A service account's client credentials; bearer tokens from `token_url`.
    ServiceAccount {
        client_id: String,
        client_secret: SecretString,
        token_url: Url,
        /// The process-wide token cache key (with a fingerprint of the secret, never logged).
        cache_key: String,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Listing {
    Systems,
    Users,
}

impl Listing {
    fn path(self) -> &'static str {
        match self {
            Listing::Systems => "api/systems",
            Listing::Users => "api/systemusers",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Listing::Systems => "systems",
            Listing::Users => "systemusers",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum UserLookup {
    /// `filter=_id:$in:…` per page, falling back to `Directory` if the server will not filter.
    Page,
    /// Read the whole directory once per run.
    Directory,
    Off,
}

/// A user as far as devices and managers need one.
#[derive(Clone, Debug, PartialEq)]
struct UserRef {
    email: Option<String>,
    name: Option<String>,
}

impl UserRef {
    fn from_record(u: &Value) -> Self {
        let s = |k: &str| {
            u.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let name = s("displayname").or_else(|| {
            let full = [s("firstname"), s("lastname")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            (!full.is_empty()).then_some(full)
        });
        UserRef {
            email: s("email").map(|e| e.to_lowercase()),
            name: name.or_else(|| s("username")),
        }
    }
}

/// Users resolved so far in this run (`None`: the id names no user, e.g. a deleted one).
#[derive(Default)]
struct Directory {
    users: HashMap<String, Option<UserRef>>,
    /// The server refused or ignored `_id:$in:`; use the whole directory instead.
    in_filter_unusable: bool,
    loaded: bool,
}

/// The JumpCloud connector.
pub struct JumpCloud {
    base: Url,
    credentials: Credentials,
    org_id: Option<String>,
    http: VendorHttp,
    listing: Listing,
    page_size: u32,
    filters: Vec<String>,
    user_lookup: UserLookup,
    insights: AtomicBool,
    directory: tokio::sync::Mutex<Directory>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    total_count: Option<u64>,
    results: Vec<Value>,
}

impl JumpCloud {
    /// Build from the secret (`api_key`, optional `org_id`, optional `base_url`).
    #[allow(clippy::new_ret_no_self)] // the dispatch in mod.rs wants a boxed connector
    pub fn new(
        secret: &Value,
        ctx: ConnectorContext,
    ) -> Result<Box<dyn Connector>, ConnectorError> {
        Ok(Box::new(Self::build(secret, &ctx)?))
    }

    fn build(secret: &Value, ctx: &ConnectorContext) -> Result<Self, ConnectorError> {
        let expected = "`api_key`, or a service account's `client_id` and `client_secret` (optional `region`, `org_id`, `base_url`, `token_url`)";
        let s: Secret = parse_secret(SourceKind::Jumpcloud, secret, expected)?;
        let region = s
            .region
            .as_deref()
            .map(|r| r.trim().to_ascii_lowercase())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us".into());
        let Some(&(_, region_base, region_token)) = REGIONS.iter().find(|(r, _, _)| *r == region)
        else {
            return Err(ConnectorError::Config(format!(
                "the jumpcloud secret field `region` must be us, eu or in (got {region:?})"
            )));
        };
        let header_safe = |v: &str| v.chars().all(|c| c.is_ascii_graphic());
        let client_id = s
            .client_id
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty());
        let client_secret = s
            .client_secret
            .filter(|c| !c.expose_secret().trim().is_empty());
        let api_key = s
            .api_key
            .map(|k| k.expose_secret().trim().to_string())
            .filter(|k| !k.is_empty());
        let credentials = match (api_key, client_id, client_secret) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ConnectorError::Config(
                    "the jumpcloud secret holds both `api_key` and service-account fields: keep either `api_key` or `client_id` + `client_secret`".into(),
                ))
            }
            (Some(key), None, None) => {
                if !header_safe(&key) {
                    return Err(ConnectorError::Config(
                        "the jumpcloud secret field `api_key` contains spaces or characters that cannot be sent in a header".into(),
                    ));
                }
                Credentials::ApiKey(SecretString::from(key))
            }
            (None, Some(id), Some(secret)) => {
                if !header_safe(&id) {
                    return Err(ConnectorError::Config(
                        "the jumpcloud secret field `client_id` contains spaces or characters that cannot be sent".into(),
                    ));
                }
                let raw = s
                    .token_url
                    .as_deref()
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .unwrap_or(region_token);
                let token_url = check_base_url(raw, "token_url")?;
                let cache_key = format!(
                    "jumpcloud|{token_url}|{id}|{:016x}",
                    fingerprint(secret.expose_secret())
                );
                Credentials::ServiceAccount {
                    client_id: id,
                    client_secret: secret,
                    token_url,
                    cache_key,
                }
            }
            (None, Some(_), None) => {
                return Err(ConnectorError::Config(
                    "the jumpcloud secret field `client_secret` is missing or empty (a service account needs `client_id` and `client_secret`)".into(),
                ))
            }
            (None, None, Some(_)) => {
                return Err(ConnectorError::Config(
                    "the jumpcloud secret field `client_id` is missing or empty (a service account needs `client_id` and `client_secret`)".into(),
                ))
            }
            (None, None, None) => {
                return Err(ConnectorError::Config(format!(
                    "the jumpcloud secret field `api_key` is missing or empty; give {expected}"
                )))
            }
        };
        let org_id = s
            .org_id
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty());
        if let Some(o) = &org_id {
            if !o.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(ConnectorError::Config("the jumpcloud secret field `org_id` must be the organization ID (24 hex characters, Settings → Organization Profile); the value given has other characters".to_string()));
            }
        }
        let raw_base = s
            .base_url
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .unwrap_or(region_base);
        let mut base = check_base_url(raw_base, "base_url")?;
        // Users paste the console root or the `/api` root; keep the root.
        let trimmed = base
            .path()
            .trim_end_matches('/')
            .trim_end_matches("/api")
            .to_string();
        base.set_path(&trimmed);
        base.set_query(None);

        let listing = match ctx.config("api").map(str::trim) {
            Some("systems") => Listing::Systems,
            Some("systemusers" | "users") => Listing::Users,
            Some(other) => {
                return Err(ConnectorError::Config(format!(
                    "config:api={other} is not a JumpCloud listing; use systems or systemusers"
                )))
            }
            None => match ctx.object_type {
                ObjectType::Hardware => Listing::Systems,
                ObjectType::Person => Listing::Users,
                ObjectType::Software => {
                    return Err(ConnectorError::Config(
                        "JumpCloud has no default Software listing; use object type Hardware (systems) or Person (systemusers)".into(),
                    ))
                }
            },
        };
        let filters = parse_filters(ctx.config("filter"))?;
        let user_lookup = match ctx.config("user_lookup").map(str::trim) {
            None | Some("page") => UserLookup::Page,
            Some("directory") => UserLookup::Directory,
            Some("off") => UserLookup::Off,
            Some(o) => {
                return Err(ConnectorError::Config(format!(
                    "config:user_lookup={o} must be page, directory or off"
                )))
            }
        };
        let insights = match ctx.config("insights").map(str::trim) {
            None | Some("on" | "true" | "yes") => listing == Listing::Systems,
            Some("off" | "false" | "no") => false,
            Some(o) => {
                return Err(ConnectorError::Config(format!(
                    "config:insights={o} must be on or off"
                )))
            }
        };
        let mut opts = HttpOptions::new(VENDOR);
        // JumpCloud publishes no rate; stay gentle (it blocks IPs it suspects of abuse).
        opts.rate_limit = Some(RateLimit {
            requests: 20,
            per: Duration::from_secs(1),
            concurrency: 4,
        });
        Ok(JumpCloud {
            http: VendorHttp::new(opts)?,
            page_size: ctx.page_size(MAX_PAGE_SIZE, MAX_PAGE_SIZE)?,
            base,
            credentials,
            org_id,
            listing,
            filters,
            user_lookup,
            insights: AtomicBool::new(insights),
            directory: tokio::sync::Mutex::new(Directory::default()),
        })
    }

    /// The v1 list URL of the configured listing.
    fn list_url(&self, skip: u64, limit: u32) -> Url {
        let mut url = join(&self.base, self.listing.path());
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", &limit.to_string());
            q.append_pair("skip", &skip.to_string());
            q.append_pair("sort", "_id");
            // v1 ANDs indexed filters (`filter[0]`, `filter[1]`); one filter is plain `filter`.
            match self.filters.as_slice() {
                [] => {}
                [one] => {
                    q.append_pair("filter", one);
                }
                many => {
                    for (i, f) in many.iter().enumerate() {
                        q.append_pair(&format!("filter[{i}]"), f);
                    }
                }
            }
        }
        url
    }

    /// `GET /api/systemusers` for user lookups (`filter` is `_id:$in:…`, or none for the directory).
    fn users_url(&self, filter: Option<&str>, skip: u64) -> Url {
        let mut url = join(&self.base, "api/systemusers");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", &MAX_PAGE_SIZE.to_string());
            q.append_pair("skip", &skip.to_string());
            q.append_pair("sort", "_id");
            q.append_pair("fields", USER_FIELDS);
            if let Some(f) = filter {
                q.append_pair("filter", f);
            }
        }
        url
    }

    /// `GET /api/v2/systeminsights/system_info` for a page of system ids.
    fn system_info_url(&self, ids: &[String], skip: u64) -> Url {
        let mut url = join(&self.base, "api/v2/systeminsights/system_info");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", &MAX_PAGE_SIZE.to_string());
            q.append_pair("skip", &skip.to_string());
            q.append_pair("filter", &format!("system_id:in:{}", ids.join("|")));
        }
        url
    }

    /// A service account's bearer token (cached process-wide until shortly before it expires).
    async fn token(&self) -> Result<Option<SecretString>, ConnectorError> {
        let Credentials::ServiceAccount {
            client_id,
            client_secret,
            token_url,
            cache_key,
        } = &self.credentials
        else {
            return Ok(None);
        };
        let tok = token::get_or_fetch(cache_key, || async {
            let form = [("grant_type", "client_credentials"), ("scope", "api")];
            let res = self
                .http
                .json::<TokenResponse>(|| {
                    self.http
                        .client()
                        .post(token_url.clone())
                        .basic_auth(client_id, Some(client_secret.expose_secret()))
                        .header(ACCEPT, "application/json")
                        .form(&form)
                })
                .await;
            match res {
                Ok(t) => Ok((
                    t.access_token,
                    Duration::from_secs(t.expires_in.unwrap_or(3600).max(10)),
                )),
                Err(ConnectorError::Auth { .. } | ConnectorError::Status { status: 400, .. }) => {
                    Err(ConnectorError::Auth {
                        vendor: VENDOR,
                        detail: format!(
                            "the token endpoint {token_url} refused the service account's `client_id`/`client_secret`: check the service account exists, its secret is current (secrets expire), and `region` names the tenant's data centre"
                        ),
                    })
                }
                Err(e) => Err(e),
            }
        })
        .await?;
        Ok(Some(tok))
    }

    /// GET with the credentials. A body that is not the JSON expected (a truncated answer) is
    /// read once more before the page fails with [`ConnectorError::Malformed`]; statuses are
    /// retried by [`VendorHttp`]. A 401 is final for an API key (it has nothing to refresh); a
    /// service account fetches a new token once.
    async fn get<T: DeserializeOwned>(&self, url: &Url) -> Result<T, ConnectorError> {
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let bearer = self.token().await?;
            let res = self
                .http
                .json::<T>(|| {
                    let mut rb = self
                        .http
                        .client()
                        .get(url.clone())
                        .header(ACCEPT, "application/json");
                    rb = match (&self.credentials, &bearer) {
                        (Credentials::ApiKey(k), _) => rb.header("x-api-key", k.expose_secret()),
                        (_, Some(t)) => rb.bearer_auth(t.expose_secret()),
                        (_, None) => rb,
                    };
                    if let Some(o) = &self.org_id {
                        rb = rb.header("x-org-id", o.as_str());
                    }
                    rb
                })
                .await;
            match res {
                Err(ConnectorError::Malformed { detail, .. }) if attempt == 1 => {
                    tracing::warn!(vendor = VENDOR, path = url.path(), %detail, "malformed body; reading it once more");
                    self.http.stats().retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(ConnectorError::Auth { .. }) if !reauthenticated => {
                    let Credentials::ServiceAccount { cache_key, .. } = &self.credentials else {
                        return res.map_err(|e| self.explain(e));
                    };
                    // The bearer token expired or was revoked: fetch a new one, once.
                    token::invalidate(cache_key);
                    reauthenticated = true;
                }
                other => return other.map_err(|e| self.explain(e)),
            }
        }
    }

    fn explain(&self, e: ConnectorError) -> ConnectorError {
        explain(
            e,
            self.org_id.is_some(),
            matches!(self.credentials, Credentials::ServiceAccount { .. }),
        )
    }

    async fn page(&self, skip: u64, limit: u32) -> Result<Envelope, ConnectorError> {
        self.get::<Envelope>(&self.list_url(skip, limit)).await
    }

    /// Resolve user ids to users, using (and filling) the run's directory.
    async fn resolve(&self, ids: &[String]) -> Result<HashMap<String, UserRef>, ConnectorError> {
        let mut dir = self.directory.lock().await;
        let mut missing: Vec<String> = Vec::new();
        for id in ids {
            if !dir.users.contains_key(id) && !missing.contains(id) {
                missing.push(id.clone());
            }
        }
        if !missing.is_empty() && self.user_lookup != UserLookup::Off {
            if self.user_lookup == UserLookup::Page && !dir.in_filter_unusable {
                for chunk in missing.chunks(MAX_PAGE_SIZE as usize) {
                    // Ids are hex; anything else cannot be in an `$in` list safely.
                    let safe: Vec<String> = chunk.iter().filter(|i| is_id(i)).cloned().collect();
                    for id in chunk.iter().filter(|i| !is_id(i)) {
                        dir.users.insert(id.clone(), None);
                    }
                    if safe.is_empty() {
                        continue;
                    }
                    let url = self.users_url(Some(&format!("_id:$in:{}", safe.join("|"))), 0);
                    match self.get::<Envelope>(&url).await {
                        Ok(env) => {
                            let wanted: HashSet<&String> = safe.iter().collect();
                            let mut stray = false;
                            for u in &env.results {
                                let Some(id) = u.get("_id").and_then(Value::as_str) else {
                                    continue;
                                };
                                stray |= !wanted.contains(&id.to_string());
                                dir.users
                                    .insert(id.to_string(), Some(UserRef::from_record(u)));
                            }
                            if stray {
                                tracing::warn!(vendor = VENDOR, "the server ignored the _id:$in: filter; reading the user directory once instead");
                                dir.in_filter_unusable = true;
                                break;
                            }
                            for id in &safe {
                                dir.users.entry(id.clone()).or_insert(None);
                            }
                        }
                        Err(ConnectorError::Status {
                            status: 400,
                            detail,
                            ..
                        }) => {
                            tracing::warn!(vendor = VENDOR, %detail, "the _id:$in: filter was refused; reading the user directory once instead");
                            dir.in_filter_unusable = true;
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            if self.user_lookup == UserLookup::Directory || dir.in_filter_unusable {
                self.load_directory(&mut dir).await?;
                for id in &missing {
                    dir.users.entry(id.clone()).or_insert(None);
                }
            }
        }
        Ok(ids
            .iter()
            .filter_map(|id| {
                dir.users
                    .get(id)
                    .cloned()
                    .flatten()
                    .map(|u| (id.clone(), u))
            })
            .collect())
    }

    /// Read every user once (`fields` projection, 100 a page, stable `sort=_id`).
    async fn load_directory(&self, dir: &mut Directory) -> Result<(), ConnectorError> {
        if dir.loaded {
            return Ok(());
        }
        let mut skip = 0u64;
        loop {
            let env = self.get::<Envelope>(&self.users_url(None, skip)).await?;
            let n = env.results.len() as u64;
            for u in &env.results {
                if let Some(id) = u.get("_id").and_then(Value::as_str) {
                    dir.users
                        .insert(id.to_string(), Some(UserRef::from_record(u)));
                }
            }
            skip += n;
            if next_skip(skip - n, n as usize, MAX_PAGE_SIZE, env.total_count).is_none() {
                break;
            }
        }
        dir.loaded = true;
        Ok(())
    }

    /// System Insights `system_info` rows by system id; empty (and switched off for the run)
    /// when the tenant has no System Insights or the admin may not read it.
    async fn system_info(&self, ids: &[String]) -> Result<HashMap<String, Value>, ConnectorError> {
        let mut out = HashMap::new();
        let ids: Vec<String> = ids.iter().filter(|i| is_id(i)).cloned().collect();
        if ids.is_empty() || !self.insights.load(Ordering::Relaxed) {
            return Ok(out);
        }
        let mut skip = 0u64;
        loop {
            let rows = match self
                .get::<Vec<Value>>(&self.system_info_url(&ids, skip))
                .await
            {
                Ok(rows) => rows,
                Err(
                    e @ (ConnectorError::Forbidden { .. }
                    | ConnectorError::Status {
                        status: 400 | 402 | 404,
                        ..
                    }),
                ) => {
                    tracing::warn!(vendor = VENDOR, error = %e, "System Insights unavailable; hardware models are skipped for this run");
                    self.insights.store(false, Ordering::Relaxed);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            let n = rows.len();
            for r in rows {
                if let Some(id) = r.get("system_id").and_then(Value::as_str) {
                    out.entry(id.to_string()).or_insert(r);
                }
            }
            if n < MAX_PAGE_SIZE as usize {
                break;
            }
            skip += n as u64;
        }
        Ok(out)
    }

    async fn enrich(&self, records: &mut [Value]) -> Result<(), ConnectorError> {
        match self.listing {
            Listing::Systems => self.enrich_systems(records).await,
            Listing::Users => self.enrich_users(records).await,
        }
    }

    async fn enrich_systems(&self, records: &mut [Value]) -> Result<(), ConnectorError> {
        let user_ids: Vec<String> = records.iter().filter_map(primary_user_id).collect();
        let users = if user_ids.is_empty() {
            HashMap::new()
        } else {
            self.resolve(&user_ids).await?
        };
        let ids: Vec<String> = records
            .iter()
            .filter_map(|r| r.get("_id").and_then(Value::as_str).map(str::to_string))
            .collect();
        let info = self.system_info(&ids).await?;
        for r in records.iter_mut() {
            let uid = primary_user_id(r);
            let sid = r.get("_id").and_then(Value::as_str).map(str::to_string);
            let ip = first_ipv4(r);
            let Some(obj) = r.as_object_mut() else {
                continue;
            };
            if let Some(ip) = ip {
                obj.insert("assetsync_ip".into(), json!(ip));
            }
            if let Some(u) = uid.and_then(|id| users.get(&id)) {
                if let Some(e) = &u.email {
                    obj.insert("assetsync_user_email".into(), json!(e));
                }
                if let Some(n) = &u.name {
                    obj.insert("assetsync_user_name".into(), json!(n));
                }
            }
            if let Some(row) = sid.and_then(|id| info.get(&id)) {
                for (from, to) in [
                    ("hardware_model", "assetsync_model"),
                    ("hardware_serial", "assetsync_hardware_serial"),
                    ("hardware_vendor", "assetsync_hardware_vendor"),
                ] {
                    if let Some(v) = row
                        .get(from)
                        .and_then(Value::as_str)
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                    {
                        obj.insert(to.into(), json!(v));
                    }
                }
            }
        }
        Ok(())
    }

    async fn enrich_users(&self, records: &mut [Value]) -> Result<(), ConnectorError> {
        // The page's own users are already known: remember them before resolving managers.
        {
            let mut dir = self.directory.lock().await;
            for u in records.iter() {
                if let Some(id) = u.get("_id").and_then(Value::as_str) {
                    dir.users
                        .insert(id.to_string(), Some(UserRef::from_record(u)));
                }
            }
        }
        let manager_ids: Vec<String> = records
            .iter()
            .filter_map(|r| r.get("manager").and_then(Value::as_str))
            .filter(|m| is_id(m))
            .map(str::to_string)
            .collect();
        let managers = if manager_ids.is_empty() {
            HashMap::new()
        } else {
            self.resolve(&manager_ids).await?
        };
        for r in records.iter_mut() {
            let state = user_state(r);
            let manager = r
                .get("manager")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string);
            let Some(obj) = r.as_object_mut() else {
                continue;
            };
            if let Some(s) = state {
                obj.insert("assetsync_state".into(), json!(s));
            }
            match manager {
                Some(m) if is_id(&m) => {
                    if let Some(e) = managers.get(&m).and_then(|u| u.email.clone()) {
                        obj.insert("assetsync_manager".into(), json!(e));
                    }
                }
                // Not an id: a free-text manager from an import; keep it as it is.
                Some(m) => {
                    obj.insert("assetsync_manager".into(), json!(m));
                }
                None => {}
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Connector for JumpCloud {
    async fn fetch_page(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let skip = match cursor {
            None => 0,
            Some(c) => c.0.get("skip").and_then(Value::as_u64).ok_or_else(|| {
                ConnectorError::Config(format!(
                    "a JumpCloud cursor must be {{\"skip\": n}}, got {}",
                    c.0
                ))
            })?,
        };
        let env = self.page(skip, self.page_size).await?;
        let n = env.results.len();
        let mut records = env.results;
        self.enrich(&mut records).await?;
        Ok(Page {
            next: next_skip(skip, n, self.page_size, env.total_count)
                .map(|s| Cursor(json!({ "skip": s }))),
            total: env.total_count,
            records,
            ..Default::default()
        })
    }

    async fn test(&self) -> Result<TestReport, ConnectorError> {
        let env = self.page(0, 1).await?;
        let mut records = env.results;
        self.enrich(&mut records).await?;
        let org = match &self.org_id {
            Some(o) => format!(" (organization {o})"),
            None => String::new(),
        };
        Ok(TestReport {
            message: format!(
                "authenticated to {}{org} with {} and read {}: {} records in total",
                self.base,
                match self.credentials {
                    Credentials::ApiKey(_) => "the API key",
                    Credentials::ServiceAccount { .. } => "the service account",
                },
                self.listing.name(),
                env.total_count
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
            sample: records.into_iter().next(),
        })
    }

    fn source_id(&self, raw: &Value) -> Option<String> {
        raw.get("_id")
            .or_else(|| raw.get("id"))
            .and_then(crate::mapping::scalar)
    }

    fn checked_in(&self, raw: &Value) -> Option<DateTime<Utc>> {
        raw.get("lastContact")
            .and_then(Value::as_str)
            .and_then(normalize::parse_time)
    }

    fn http_counts(&self) -> HttpCounts {
        self.http.stats().snapshot()
    }
}

/// Where the next page starts, or `None` at the end: a short or empty page, or the reported
/// `totalCount` reached.
fn next_skip(skip: u64, got: usize, limit: u32, total: Option<u64>) -> Option<u64> {
    let seen = skip + got as u64;
    let done = got == 0 || (got as u64) < limit as u64 || total.is_some_and(|t| seen >= t);
    (!done).then_some(seen)
}

/// Split `config:filter` on `;` into v1 filters, each `field:$op:value`.
fn parse_filters(raw: Option<&str>) -> Result<Vec<String>, ConnectorError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for f in raw.split(';').map(str::trim).filter(|f| !f.is_empty()) {
        let mut parts = f.splitn(3, ':');
        let (field, op, value) = (parts.next().unwrap_or(""), parts.next(), parts.next());
        match (op, value) {
            (Some(op), Some(_)) if !field.trim().is_empty() && op.starts_with('$') && op.len() > 1 => out.push(f.to_string()),
            (Some(op), Some(_)) if !op.starts_with('$') => {
                return Err(ConnectorError::Config(format!(
                    "config:filter `{f}`: JumpCloud v1 operators start with `$` (e.g. department:$eq:Finance); without it the result is undefined"
                )))
            }
            _ => {
                return Err(ConnectorError::Config(format!(
                    "config:filter `{f}` must be field:$operator:value (e.g. department:$eq:Finance); separate several filters with `;`"
                )))
            }
        }
    }
    Ok(out)
}

/// A short, non-reversible fingerprint of a secret, for cache keys (never logged).
fn fingerprint(secret: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.hash(&mut h);
    h.finish()
}

/// A JumpCloud object id (24 hex characters; accept any plain hex/alphanumeric id).
fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn primary_user_id(r: &Value) -> Option<String> {
    let v = r.get("primarySystemUser")?;
    let id = v
        .get("id")
        .or_else(|| v.get("_id"))
        .and_then(Value::as_str)?
        .trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The first external IPv4 address of a system (not internal, loopback or link-local).
fn first_ipv4(r: &Value) -> Option<String> {
    r.get("networkInterfaces")?
        .as_array()?
        .iter()
        .find_map(|nic| {
            let fam = nic.get("family").and_then(Value::as_str).unwrap_or("");
            let internal = nic
                .get("internal")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let addr = nic.get("address").and_then(Value::as_str)?.trim();
            let ip: std::net::Ipv4Addr = addr.parse().ok()?;
            let v4 = fam.eq_ignore_ascii_case("IPv4") || fam == "4" || fam.is_empty();
            (v4 && !internal && !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified())
                .then(|| ip.to_string())
        })
}

/// A user's state: `state` when present, otherwise derived from the `suspended` flag.
fn user_state(r: &Value) -> Option<String> {
    if let Some(s) = r
        .get("state")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        return Some(s.to_string());
    }
    match r.get("suspended").and_then(Value::as_bool) {
        Some(true) => Some("SUSPENDED".into()),
        Some(false) => Some("ACTIVATED".into()),
        None => None,
    }
}

/// Turn JumpCloud's auth and organization errors into advice.
fn explain(e: ConnectorError, has_org: bool, service_account: bool) -> ConnectorError {
    match e {
        ConnectorError::Auth { detail, .. } if service_account => {
            let lower = detail.to_lowercase();
            let advice = if lower.contains("organization") && !has_org {
                "this service account belongs to a multi-tenant (MTP) administrator: set `org_id` in the secret to the ID of the organization to sync"
            } else if lower.contains("token endpoint") {
                return ConnectorError::Auth { vendor: VENDOR, detail };
            } else {
                "a fresh service-account token was refused too: check the service account still has access to this organization"
            };
            ConnectorError::Auth { vendor: VENDOR, detail: format!("{advice} ({detail})") }
        }
        ConnectorError::Auth { detail, .. } => {
            let lower = detail.to_lowercase();
            let advice = if lower.contains("organization") && !has_org {
                "this API key belongs to a multi-tenant (MTP) administrator: multi-tenant admins must set `org_id` in the secret to the ID of the organization to sync"
            } else if lower.contains("organization") {
                "JumpCloud did not accept the organization in `org_id` for this API key: check it is an organization this admin manages"
            } else {
                "the `api_key` was refused: it is wrong, was reset (a reset revokes the old key), has expired, or its administrator was removed; an API key cannot be refreshed, so put a current key in the secret"
            };
            ConnectorError::Auth { vendor: VENDOR, detail: format!("{advice} ({detail})") }
        }
        ConnectorError::Forbidden { path, detail, .. } => ConnectorError::Forbidden {
            vendor: VENDOR,
            detail: if has_org {
                format!("{detail} (the administrator may not read this resource, or `org_id` is sent where it is not supported)")
            } else {
                format!("{detail} (the administrator behind the API key may not read this resource, or JumpCloud blocked this IP address)")
            },
            path,
        },
        ConnectorError::Status { status: status @ (400 | 404), path, detail, .. }
            if has_org && detail.to_lowercase().contains("org") =>
        {
            ConnectorError::Status {
                vendor: VENDOR,
                status,
                path,
                detail: format!("{detail} (check `org_id` in the secret: it must be the 24-character ID of an organization this admin manages)"),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::MemoryState;
    use crate::mapping::Mapping;
    use std::sync::Arc;

    fn ctx(object_type: ObjectType, config: &[(&str, &str)]) -> ConnectorContext {
        ConnectorContext {
            connection: "jc-test".into(),
            object_type,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state: Arc::new(MemoryState::default()),
        }
    }

    fn jc(
        secret: Value,
        object_type: ObjectType,
        config: &[(&str, &str)],
    ) -> Result<JumpCloud, ConnectorError> {
        JumpCloud::build(&secret, &ctx(object_type, config))
    }

    fn sample_systems() -> Value {
        json!({
          "totalCount": 412,
          "results": [
            {
              "_id": "65f0c3a1b2d4e6f8a0b1c2d3", "displayName": "MBP-ENG-117", "hostname": "mbp-eng-117.local",
              "os": "Mac OS X", "osFamily": "darwin", "version": "14.5", "arch": "arm64",
              "serialNumber": "C02ZK1ABMD6T", "hwVendor": "Apple Inc.", "agentVersion": "1.163.0", "active": true,
              "created": "2023-11-02T15:40:11.000Z", "lastContact": "2024-06-20T09:14:03.512Z",
              "networkInterfaces": [ { "name": "en0", "address": "10.1.2.33", "family": "IPv4", "internal": false } ],
              "primarySystemUser": { "id": "6012ab34cd56ef7890a1b2c3" }, "organization": "5f9e8d7c6b5a4f3e2d1c0b9a"
            },
            {
              "_id": "65f0c3a1b2d4e6f8a0b1c2d9", "displayName": "WIN-OPS-031", "hostname": "WIN-OPS-031",
              "os": "Windows", "osFamily": "windows", "version": "11 Pro", "arch": "x64",
              "serialNumber": "PF3XY7QZ", "hwVendor": "LENOVO", "agentVersion": "1.163.0", "active": false,
              "created": "2024-01-15T08:02:44.000Z", "lastContact": "2024-06-11T17:45:20.004Z",
              "networkInterfaces": [], "primarySystemUser": { "id": null }, "organization": "5f9e8d7c6b5a4f3e2d1c0b9a"
            }
          ]
        })
    }

    #[test]
    fn secret_errors_name_the_field() {
        let e = jc(json!({"org_id": "abc"}), ObjectType::Hardware, &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("api_key"), "{e}");
        let e = jc(json!({"api_key": "  "}), ObjectType::Hardware, &[])
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("`api_key` is missing or empty"),
            "{e}"
        );
        let e = jc(json!("key"), ObjectType::Hardware, &[]).err().unwrap();
        assert!(e.to_string().contains("JSON object"), "{e}");
        let e = jc(
            json!({"api_key": "k", "base_url": "http://console.jumpcloud.com"}),
            ObjectType::Hardware,
            &[],
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("https"), "{e}");
        let e = jc(
            json!({"api_key": "k", "org_id": "5f9e 8d"}),
            ObjectType::Hardware,
            &[],
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("org_id"), "{e}");
        let e = jc(json!({"api_key": "a b"}), ObjectType::Hardware, &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("api_key"), "{e}");
        // Errors never echo the key.
        let e = jc(
            json!({"api_key": "sekrit value"}),
            ObjectType::Hardware,
            &[],
        )
        .err()
        .unwrap();
        assert!(!e.to_string().contains("sekrit"), "{e}");
    }

    #[test]
    fn regions_and_service_accounts() {
        for (region, host, token) in [
            (
                "us",
                "console.jumpcloud.com",
                "admin-oauth.id.jumpcloud.com",
            ),
            (
                "EU",
                "console.eu.jumpcloud.com",
                "admin-oauth.id.eu.jumpcloud.com",
            ),
            (
                "in",
                "console.in.jumpcloud.com",
                "admin-oauth.id.in.jumpcloud.com",
            ),
        ] {
            let j = jc(
                json!({"api_key": "k", "region": region}),
                ObjectType::Hardware,
                &[],
            )
            .unwrap();
            assert_eq!(j.base.host_str(), Some(host), "{region}");
            let j = jc(
                json!({"client_id": "cid", "client_secret": "s3cr3t-value", "region": region}),
                ObjectType::Hardware,
                &[],
            )
            .unwrap();
            assert_eq!(j.base.host_str(), Some(host), "{region}");
            match &j.credentials {
                Credentials::ServiceAccount {
                    token_url,
                    cache_key,
                    ..
                } => {
                    assert_eq!(token_url.host_str(), Some(token), "{region}");
                    assert_eq!(token_url.path(), "/oauth2/token");
                    assert!(!cache_key.contains("s3cr3t-value"));
                }
                Credentials::ApiKey(_) => panic!("a service account"),
            }
        }
        for (secret, want) in [
            (json!({"api_key": "k", "region": "ap"}), "`region`"),
            (json!({"client_id": "cid"}), "`client_secret`"),
            (json!({"client_secret": "sekrit"}), "`client_id`"),
            (
                json!({"api_key": "k", "client_id": "c", "client_secret": "sekrit"}),
                "either",
            ),
            (json!({"region": "us"}), "`api_key`"),
            (
                json!({"client_id": "c", "client_secret": "sekrit", "token_url": "http://idp.example.com/t"}),
                "https",
            ),
        ] {
            let e = jc(secret.clone(), ObjectType::Hardware, &[])
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(want), "{secret}: {e}");
            assert!(!e.contains("sekrit"), "{e}");
        }
    }

    #[test]
    fn several_filters_are_indexed_one_is_plain() {
        let j = jc(
            json!({"api_key": "k"}),
            ObjectType::Person,
            &[("filter", "department:$eq:Finance;state:$eq:ACTIVATED")],
        )
        .unwrap();
        let q = j.list_url(0, 100).query().unwrap_or_default().to_string();
        assert!(
            q.ends_with("filter%5B0%5D=department%3A%24eq%3AFinance&filter%5B1%5D=state%3A%24eq%3AACTIVATED"),
            "{q}"
        );
        let j = jc(
            json!({"api_key": "k"}),
            ObjectType::Person,
            &[("filter", "department:$eq:IT")],
        )
        .unwrap();
        let q = j.list_url(0, 100).query().unwrap_or_default().to_string();
        assert!(q.ends_with("&filter=department%3A%24eq%3AIT"), "{q}");
    }

    #[test]
    fn base_url_default_and_api_suffix() {
        let j = jc(json!({"api_key": "k\n"}), ObjectType::Hardware, &[]).unwrap();
        assert_eq!(
            j.list_url(0, 100).as_str(),
            "https://console.jumpcloud.com/api/systems?limit=100&skip=0&sort=_id"
        );
        assert!(matches!(&j.credentials, Credentials::ApiKey(k) if k.expose_secret() == "k"));
        let j = jc(
            json!({"api_key": "k", "base_url": "https://console.eu.jumpcloud.com/api/"}),
            ObjectType::Person,
            &[],
        )
        .unwrap();
        assert_eq!(
            j.list_url(200, 100).as_str(),
            "https://console.eu.jumpcloud.com/api/systemusers?limit=100&skip=200&sort=_id"
        );
        let j = jc(
            json!({"api_key": "k", "base_url": "http://127.0.0.1:9999"}),
            ObjectType::Hardware,
            &[],
        )
        .unwrap();
        assert!(j
            .list_url(0, 1)
            .as_str()
            .starts_with("http://127.0.0.1:9999/api/systems?"));
    }

    #[test]
    fn listing_from_config_and_object_type() {
        let s = json!({"api_key": "k"});
        assert_eq!(
            jc(s.clone(), ObjectType::Person, &[]).unwrap().listing,
            Listing::Users
        );
        assert_eq!(
            jc(s.clone(), ObjectType::Hardware, &[]).unwrap().listing,
            Listing::Systems
        );
        assert_eq!(
            jc(s.clone(), ObjectType::Person, &[("api", "systems")])
                .unwrap()
                .listing,
            Listing::Systems
        );
        let e = jc(s.clone(), ObjectType::Hardware, &[("api", "devices")])
            .err()
            .unwrap();
        assert!(e.to_string().contains("systems or systemusers"), "{e}");
        assert!(jc(s.clone(), ObjectType::Software, &[]).is_err());
        let e = jc(s, ObjectType::Hardware, &[("page_size", "101")])
            .err()
            .unwrap();
        assert!(e.to_string().contains("1 to 100"), "{e}");
    }

    #[test]
    fn filters_pass_through_indexed() {
        let s = json!({"api_key": "k"});
        let j = jc(
            s.clone(),
            ObjectType::Person,
            &[("filter", "department:$eq:Finance")],
        )
        .unwrap();
        let u = j.list_url(0, 100);
        let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        assert!(
            pairs.contains(&("filter".into(), "department:$eq:Finance".into())),
            "{u}"
        );
        assert!(
            u.as_str().contains("filter=department%3A%24eq%3AFinance"),
            "{u}"
        );

        let j = jc(
            s.clone(),
            ObjectType::Person,
            &[("filter", "department:$eq:Finance; state:$eq:ACTIVATED ;")],
        )
        .unwrap();
        let filters: Vec<(String, String)> = j
            .list_url(0, 100)
            .query_pairs()
            .filter(|(k, _)| k.starts_with("filter"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            filters,
            vec![
                (
                    "filter[0]".to_string(),
                    "department:$eq:Finance".to_string()
                ),
                ("filter[1]".to_string(), "state:$eq:ACTIVATED".to_string())
            ]
        );

        // A value may contain ':' (times) and '|' ($in lists).
        let j = jc(
            s.clone(),
            ObjectType::Person,
            &[(
                "filter",
                "department:$in:Finance|IT;created:$gte:2024-01-01T00:00:00Z",
            )],
        )
        .unwrap();
        assert_eq!(j.filters.len(), 2);

        let e = jc(
            s.clone(),
            ObjectType::Person,
            &[("filter", "department:eq:Finance")],
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("`$`"), "{e}");
        let e = jc(s, ObjectType::Person, &[("filter", "department")])
            .err()
            .unwrap();
        assert!(e.to_string().contains("field:$operator:value"), "{e}");
    }

    #[test]
    fn lookup_urls() {
        let j = jc(
            json!({"api_key": "k"}),
            ObjectType::Hardware,
            &[("filter", "os:$eq:Windows")],
        )
        .unwrap();
        let u = j.users_url(Some("_id:$in:a1|b2"), 0);
        let pairs: HashMap<String, String> = u.query_pairs().into_owned().collect();
        assert_eq!(u.path(), "/api/systemusers");
        assert_eq!(pairs["filter"], "_id:$in:a1|b2");
        assert_eq!(pairs["fields"], USER_FIELDS);
        assert_eq!(pairs["limit"], "100");
        // The listing's filter never leaks into lookups.
        assert_eq!(u.query_pairs().filter(|(k, _)| k == "filter").count(), 1);
        let u = j.system_info_url(&["s1".into(), "s2".into()], 0);
        assert_eq!(u.path(), "/api/v2/systeminsights/system_info");
        let pairs: HashMap<String, String> = u.query_pairs().into_owned().collect();
        assert_eq!(pairs["filter"], "system_id:in:s1|s2");
    }

    #[test]
    fn end_of_data() {
        assert_eq!(next_skip(0, 100, 100, Some(412)), Some(100));
        assert_eq!(next_skip(400, 12, 100, Some(412)), None);
        // A full last page ends on totalCount without an extra empty request.
        assert_eq!(next_skip(300, 100, 100, Some(400)), None);
        // Without a total, only a short or empty page ends.
        assert_eq!(next_skip(300, 100, 100, None), Some(400));
        assert_eq!(next_skip(400, 0, 100, None), None);
        assert_eq!(next_skip(0, 0, 100, Some(0)), None);
    }

    #[test]
    fn explains_auth_errors() {
        let mtp = ConnectorError::Auth { vendor: VENDOR, detail: "HTTP 401 for /api/systems: {\"message\":\"Unauthorized: no organization selected\"}".into() };
        let e = explain(mtp, false, false).to_string();
        assert!(e.contains("multi-tenant admins must set `org_id`"), "{e}");
        let bad = ConnectorError::Auth { vendor: VENDOR, detail: "HTTP 401 for /api/systems: {\"error\":\"Unauthorized\",\"message\":\"Unauthorized: api key user not found\"}".into() };
        let e = explain(bad, false, false).to_string();
        assert!(
            e.contains("`api_key` was refused") && e.contains("reset"),
            "{e}"
        );
        let org = ConnectorError::Status {
            vendor: VENDOR,
            status: 404,
            path: "/api/systems".into(),
            detail: "organization not found".into(),
        };
        assert!(explain(org, true, false)
            .to_string()
            .contains("check `org_id`"));
    }

    #[test]
    fn enrichment_helpers() {
        let sys = sample_systems();
        let r = &sys["results"][0];
        assert_eq!(first_ipv4(r).as_deref(), Some("10.1.2.33"));
        assert_eq!(
            primary_user_id(r).as_deref(),
            Some("6012ab34cd56ef7890a1b2c3")
        );
        assert_eq!(primary_user_id(&sys["results"][1]), None);
        let nics = json!({"networkInterfaces": [
            {"name": "lo0", "address": "127.0.0.1", "family": "IPv4", "internal": true},
            {"name": "en0", "address": "fe80::1", "family": "IPv6", "internal": false},
            {"name": "en1", "address": "169.254.3.4", "family": "IPv4", "internal": false},
            {"name": "en2", "address": "192.168.1.20", "family": "IPv4", "internal": false}
        ]});
        assert_eq!(first_ipv4(&nics).as_deref(), Some("192.168.1.20"));
        assert_eq!(
            user_state(&json!({"state": "STAGED", "suspended": false})).as_deref(),
            Some("STAGED")
        );
        assert_eq!(
            user_state(&json!({"suspended": true})).as_deref(),
            Some("SUSPENDED")
        );
        assert_eq!(
            user_state(&json!({"suspended": false})).as_deref(),
            Some("ACTIVATED")
        );
        assert_eq!(user_state(&json!({})), None);
        let u = UserRef::from_record(
            &json!({"email": "Jane.Doe@Example.NET", "firstname": "Jane", "lastname": "Doe"}),
        );
        assert_eq!(
            u,
            UserRef {
                email: Some("jane.doe@example.net".into()),
                name: Some("Jane Doe".into())
            }
        );
    }

    #[test]
    fn default_mappings_parse_and_map_samples() {
        assert_eq!(
            default_mapping(ObjectType::Hardware, None),
            Some(SYSTEMS_MAPPING)
        );
        assert_eq!(
            default_mapping(ObjectType::Person, None),
            Some(USERS_MAPPING)
        );
        assert_eq!(
            default_mapping(ObjectType::Hardware, Some("systemusers")),
            Some(USERS_MAPPING)
        );
        assert_eq!(default_mapping(ObjectType::Software, None), None);
        assert_eq!(default_mapping(ObjectType::Hardware, Some("nope")), None);

        let m = Mapping::parse(SYSTEMS_MAPPING).unwrap();
        assert_eq!(m.key_attr(), "Serial Number");
        assert_eq!(m.config("api"), Some("systems"));
        let mut sys = sample_systems();
        let r = &mut sys["results"][0];
        // What enrich_systems adds after its lookups.
        let ip = first_ipv4(r).unwrap();
        let o = r.as_object_mut().unwrap();
        o.insert("assetsync_ip".into(), json!(ip));
        o.insert("assetsync_user_email".into(), json!("Jane.Doe@Example.NET"));
        o.insert("assetsync_user_name".into(), json!("Jane Doe"));
        o.insert("assetsync_model".into(), json!("MacBookPro18,3"));
        let rec = m.apply(r, ObjectType::Hardware);
        assert_eq!(rec.key.as_deref(), Some("C02ZK1ABMD6T"));
        let a = &rec.attrs;
        assert_eq!(a["Name"], "MBP-ENG-117");
        assert_eq!(a["Model"], "MacBookPro18,3");
        assert_eq!(a["Manufacturer"], "Apple Inc.");
        assert_eq!(a["OS Name"], "Mac OS X");
        assert_eq!(a["OS Version"], "14.5");
        assert_eq!(a["IP Address"], "10.1.2.33");
        assert_eq!(a["User Email"], "jane.doe@example.net");
        assert_eq!(a["User Name"], "Jane Doe");
        assert_eq!(a["Last Check-in"], "2024-06-20T09:14:03Z");
        assert_eq!(a["Active"], "true");
        assert_eq!(a["Agent Version"], "1.163.0");
        let rec = m.apply(&sys["results"][1], ObjectType::Hardware);
        assert_eq!(rec.key.as_deref(), Some("PF3XY7QZ"));
        assert!(!rec.attrs.contains_key("User Email") && !rec.attrs.contains_key("IP Address"));
        assert_eq!(rec.attrs["Active"], "false");
        // No v1 serial: the System Insights serial stands in; a placeholder is no key.
        let rec = m.apply(
            &json!({"_id": "x", "serialNumber": "", "assetsync_hardware_serial": "c02abc"}),
            ObjectType::Hardware,
        );
        assert_eq!(rec.key.as_deref(), Some("C02ABC"));
        let rec = m.apply(
            &json!({"_id": "x", "serialNumber": "To be filled by O.E.M."}),
            ObjectType::Hardware,
        );
        assert_eq!(rec.key, None);

        let m = Mapping::parse(USERS_MAPPING).unwrap();
        assert_eq!(m.key_attr(), "JumpCloud User ID");
        let mut user = json!({
            "_id": "6012ab34cd56ef7890a1b2c3", "username": "jane.doe", "email": "Jane.Doe@Example.NET",
            "firstname": "Jane", "lastname": "Doe", "displayname": "Jane Doe", "state": "SUSPENDED",
            "activated": true, "suspended": true, "employeeIdentifier": "E-1001", "department": "Finance",
            "jobTitle": "Controller", "manager": "6012ab34cd56ef7890a1b2c4", "location": "Berlin",
            "created": "2021-01-28T10:00:00.000Z"
        });
        let st = user_state(&user).unwrap();
        user.as_object_mut()
            .unwrap()
            .insert("assetsync_state".into(), json!(st));
        user.as_object_mut()
            .unwrap()
            .insert("assetsync_manager".into(), json!("boss@example.net"));
        let rec = m.apply(&user, ObjectType::Person);
        assert_eq!(rec.key.as_deref(), Some("6012ab34cd56ef7890a1b2c3"));
        let a = &rec.attrs;
        assert_eq!(a["Email"], "jane.doe@example.net");
        assert_eq!(a["First Name"], "Jane");
        assert_eq!(a["Last Name"], "Doe");
        assert_eq!(a["User Name"], "jane.doe");
        assert_eq!(a["Display Name"], "Jane Doe");
        assert_eq!(a["Job Title"], "Controller");
        assert_eq!(a["Department"], "Finance");
        assert_eq!(a["Location"], "Berlin");
        assert_eq!(a["Manager"], "boss@example.net");
        assert_eq!(a["Status"], "suspended");
        assert_eq!(a["Employee ID"], "E-1001");
        let rec = m.apply(&json!({"_id": "u2", "state": "STAGED", "assetsync_state": "STAGED", "addresses": [{"locality": "Lyon"}]}), ObjectType::Person);
        assert_eq!(rec.attrs["Status"], "staged");
        assert_eq!(rec.attrs["Location"], "Lyon");
    }

    #[test]
    fn cursor_must_be_a_skip() {
        let j = jc(
            json!({"api_key": "k", "base_url": "http://127.0.0.1:1"}),
            ObjectType::Hardware,
            &[],
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(j.fetch_page(Some(&Cursor(json!({"page": 2})))))
            .err()
            .unwrap();
        assert!(e.to_string().contains("skip"), "{e}");
    }
}
