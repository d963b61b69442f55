//! Jamf Pro: OAuth client credentials, `computers-inventory` (path version configurable, falling
//! back on 404 because Jamf deprecates versions in turn) and `v2/mobile-devices/detail`,
//! 0-based `page` + `page-size` with a stable `sort`.
//!
//! Software (`config:api=applications`, the default for `Software`): `computers-inventory` with
//! `section=GENERAL&section=HARDWARE&section=APPLICATIONS` (Jamf's documented section for installed
//! software; each application carries `name`, `path`, `version`, `bundleId`, `macAppStore`,
//! `sizeMegabytes` per jamf-pro-sdk-python's `ComputerApplication`), 100 computers a page by
//! default (`config:page_size`), paged and rate-limited like the computer listing. One record per
//! computer × application: the application's fields plus `computer_id`, `computer_name`,
//! `serial_number`, `last_contact`, `assetsync_device_serial` (normalised) and `assetsync_key`
//! (`<serial>|<bundleId, or the name>`); [`Connector::parent_key`] is the normalised serial, the
//! computer's hardware key. The page reports no total (Jamf counts computers, not applications).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use super::{parse_secret, require, token, Connector, ConnectorContext, Cursor, Page, TestReport};
use crate::error::ConnectorError;
use crate::event::{ObjectType, SourceKind};
use crate::http::{check_base_url, join, HttpCounts, HttpOptions, RateLimit, VendorHttp};
use crate::normalize;

const VENDOR: &str = "Jamf Pro";
/// Jamf's documented maximum page size.
pub const MAX_PAGE_SIZE: u32 = 2000;
/// Versions of `computers-inventory`, newest first; the first that answers is kept for the run.
/// Jamf Pro 11.30.0 deprecated `/v3/computers-inventory` in favour of `/v4` (developer.jamf.com
/// changelog "11.30.0 Deprecations"), v3 had replaced v1 (deprecated 2025-06-30, macadmins
/// jamf-pro-sdk-python PR #79); deprecated endpoints keep answering for at least a year
/// ("Privileges and Deprecations"), so an older server is found by falling back on 404.
const COMPUTER_VERSIONS: &[&str] = &["v4", "v3", "v2", "v1"];

const COMPUTER_MAPPING: &str = "\
key:hardware.serialNumber=Serial Number
map:general.name=Name
map:hardware.model=Model
map:hardware.make|'Apple'=Manufacturer
map:operatingSystem.name=OS Name
map:operatingSystem.version=OS Version
map:hardware.macAddress|hardware.altMacAddress~mac=MAC Address
map:userAndLocation.email~lower=User Email
map:userAndLocation.realname=User Name
map:general.reportDate~timestamp=Last Inventory Update
map:general.lastContactTime~timestamp=Last Check-in
";

const MOBILE_MAPPING: &str = "\
key:hardware.serialNumber=Serial Number
map:general.displayName=Name
map:hardware.model=Model
map:'Apple'=Manufacturer
map:general.osType|deviceType=OS Name
map:general.osVersion=OS Version
map:hardware.wifiMacAddress|hardware.bluetoothMacAddress~mac=MAC Address
map:userAndLocation.emailAddress|userAndLocation.email~lower=User Email
map:userAndLocation.realName|userAndLocation.realname=User Name
map:general.lastInventoryUpdateDate~timestamp=Last Inventory Update
config:api=mobile-devices
";

const APPS_MAPPING: &str = "\
key:assetsync_key=Software Key
map:name=Name
map:version=Version
map:bundleId=Bundle ID
map:path=Path
map:assetsync_device_serial=Device Serial
config:api=applications
";

/// Computers a page when their applications are read.
const APPS_PAGE_SIZE: u32 = 100;

/// The default mapping for computers, for mobile devices with `config:api=mobile-devices`, and
/// for computer applications (`Software`, `config:api=applications`).
pub fn default_mapping(object_type: ObjectType, api: Option<&str>) -> Option<&'static str> {
    match (object_type, api) {
        (ObjectType::Hardware, Some("mobile-devices" | "mobile-devices/detail")) => {
            Some(MOBILE_MAPPING)
        }
        (ObjectType::Hardware, _) => Some(COMPUTER_MAPPING),
        (ObjectType::Software, None | Some("applications")) => Some(APPS_MAPPING),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Secret {
    tenant_url: String,
    client_id: String,
    client_secret: SecretString,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Listing {
    Computers,
    MobileDevices,
    Applications,
}

/// The Jamf Pro connector.
pub struct Jamf {
    base: Url,
    client_id: String,
    client_secret: SecretString,
    http: VendorHttp,
    listing: Listing,
    version: Option<String>,
    page_size: u32,
    filter: Option<String>,
    token_key: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    total_count: Option<u64>,
    results: Vec<Value>,
}

impl Jamf {
    /// Build from the secret (`tenant_url`, `client_id`, `client_secret`).
    pub fn new(secret: &Value, ctx: ConnectorContext) -> Result<Self, ConnectorError> {
        let s: Secret = parse_secret(
            SourceKind::Jamf,
            secret,
            "`tenant_url`, `client_id` and `client_secret`",
        )?;
        require(SourceKind::Jamf, "tenant_url", &s.tenant_url)?;
        require(SourceKind::Jamf, "client_id", &s.client_id)?;
        require(
            SourceKind::Jamf,
            "client_secret",
            s.client_secret.expose_secret(),
        )?;
        let mut base = check_base_url(&s.tenant_url, "tenant_url")?;
        // Users paste either the tenant root or the `/api` root.
        let trimmed = base
            .path()
            .trim_end_matches('/')
            .trim_end_matches("/api")
            .to_string();
        base.set_path(&trimmed);
        let default_api = if ctx.object_type == ObjectType::Software {
            "applications"
        } else {
            "computers-inventory"
        };
        let listing = match ctx.config("api").unwrap_or(default_api) {
            "computers-inventory" | "computers" => Listing::Computers,
            "mobile-devices" | "mobile-devices/detail" => Listing::MobileDevices,
            "applications" | "computers-inventory/applications" => Listing::Applications,
            other => {
                return Err(ConnectorError::Config(format!(
                    "config:api={other} is not a Jamf listing; use computers-inventory, mobile-devices or applications"
                )))
            }
        };
        let version = match ctx.config("version") {
            None => None,
            Some(v) if matches!(v, "v1" | "v2" | "v3" | "v4") => Some(v.to_string()),
            Some(v) => {
                return Err(ConnectorError::Config(format!(
                    "config:version={v} must be v1, v2, v3 or v4"
                )))
            }
        };
        let mut opts = HttpOptions::new(VENDOR);
        // Jamf asks integrations to keep to 5 concurrent connections; it publishes no rate.
        opts.rate_limit = Some(RateLimit {
            requests: 50,
            per: Duration::from_secs(1),
            concurrency: 5,
        });
        // The process-wide token cache is keyed by a fingerprint of the secret too, so that a
        // token fetched with the right secret never vouches for a wrong one (a warm Lambda running
        // `test` after a bad secret rotation must fail). The fingerprint is never logged.
        let token_key = format!(
            "jamf|{}|{}|{:016x}",
            base,
            s.client_id,
            fingerprint(s.client_secret.expose_secret())
        );
        Ok(Jamf {
            http: VendorHttp::new(opts)?,
            page_size: ctx.page_size(
                if listing == Listing::Applications {
                    APPS_PAGE_SIZE
                } else {
                    MAX_PAGE_SIZE
                },
                MAX_PAGE_SIZE,
            )?,
            filter: ctx.config("filter").map(str::to_string),
            base,
            client_id: s.client_id,
            client_secret: s.client_secret,
            listing,
            version,
            token_key,
        })
    }

    async fn token(&self) -> Result<SecretString, ConnectorError> {
        token::get_or_fetch(&self.token_key, || async {
            let form = [
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose_secret()),
                ("grant_type", "client_credentials"),
            ];
            let mut last = None;
            // `/api/oauth/token` is documented; the macadmins SDK uses `/api/v1/oauth/token`.
            for path in ["api/oauth/token", "api/v1/oauth/token"] {
                let url = join(&self.base, path);
                match self.http.json::<TokenResponse>(|| self.http.client().post(url.clone()).form(&form)).await {
                    Ok(t) => return Ok((t.access_token, Duration::from_secs(t.expires_in.unwrap_or(300).max(10)))),
                    Err(ConnectorError::Status { status: 404, .. }) => continue,
                    Err(ConnectorError::Auth { .. }) | Err(ConnectorError::Status { status: 400, .. }) => {
                        return Err(ConnectorError::Auth {
                            vendor: VENDOR,
                            detail: "the token endpoint refused client_id/client_secret: check the API client is enabled and its secret is current".into(),
                        })
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or(ConnectorError::Status {
                vendor: VENDOR,
                status: 404,
                path: "/api/oauth/token".into(),
                detail: "no OAuth token endpoint: is tenant_url a Jamf Pro server (10.49 or later)?".into(),
            }))
        })
        .await
    }

    /// GET with the bearer token; on 401 re-authenticate once and retry.
    async fn get(&self, url: &Url) -> Result<Envelope, ConnectorError> {
        for attempt in 0..2 {
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
                Err(ConnectorError::Auth { .. }) if attempt == 0 => token::invalidate(&self.token_key),
                Err(ConnectorError::Forbidden { path, detail, .. }) => {
                    return Err(ConnectorError::Forbidden {
                        vendor: VENDOR,
                        path,
                        detail: format!("{detail} (the API role needs \"Read Computers\" / \"Read Mobile Devices\")"),
                    })
                }
                other => return other,
            }
        }
        Err(ConnectorError::Auth {
            vendor: VENDOR,
            detail: "a fresh token was refused too".into(),
        })
    }

    fn url(&self, version: &str, page: u64, size: u32) -> Url {
        let (path, sections, sort): (String, &[&str], &str) = match self.listing {
            Listing::Computers => (
                format!("api/{version}/computers-inventory"),
                &[
                    "GENERAL",
                    "HARDWARE",
                    "OPERATING_SYSTEM",
                    "USER_AND_LOCATION",
                ],
                "id:asc",
            ),
            // Sorted on the record id: `deviceId` is a hardware field that may be null or shared,
            // so paging on it has no defined order (the detail listing's default, `displayName`,
            // is not unique either).
            Listing::Applications => (
                format!("api/{version}/computers-inventory"),
                &["GENERAL", "HARDWARE", "APPLICATIONS"],
                "id:asc",
            ),
            Listing::MobileDevices => (
                "api/v2/mobile-devices/detail".into(),
                &["GENERAL", "HARDWARE", "USER_AND_LOCATION"],
                "mobileDeviceId:asc",
            ),
        };
        let mut url = join(&self.base, &path);
        {
            let mut q = url.query_pairs_mut();
            for s in sections {
                q.append_pair("section", s);
            }
            q.append_pair("page", &page.to_string());
            q.append_pair("page-size", &size.to_string());
            q.append_pair("sort", sort);
            if let Some(f) = &self.filter {
                q.append_pair("filter", f);
            }
        }
        url
    }

    async fn page(
        &self,
        page: u64,
        size: u32,
        version: Option<&str>,
    ) -> Result<(Envelope, String), ConnectorError> {
        if self.listing == Listing::MobileDevices {
            return Ok((self.get(&self.url("v2", page, size)).await?, "v2".into()));
        }
        let candidates: Vec<&str> = match version.or(self.version.as_deref()) {
            Some(v) => vec![v],
            None => COMPUTER_VERSIONS.to_vec(),
        };
        let mut last = None;
        for v in candidates {
            match self.get(&self.url(v, page, size)).await {
                Ok(env) => return Ok((env, v.to_string())),
                Err(e @ ConnectorError::Status { status: 404, .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ConnectorError::Config(
            "no computers-inventory version answered".into(),
        )))
    }
}

#[async_trait]
impl Connector for Jamf {
    async fn fetch_page(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let page = cursor
            .and_then(|c| c.0.get("page"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let version = cursor
            .and_then(|c| c.0.get("version"))
            .and_then(Value::as_str);
        let asked = cursor
            .and_then(|c| c.0.get("size"))
            .and_then(Value::as_u64)
            .map(|s| s.clamp(1, MAX_PAGE_SIZE as u64) as u32)
            .unwrap_or(self.page_size);
        let (env, version) = self.page(page, asked, version).await?;
        let size = effective_page_size(page, asked, env.results.len(), env.total_count);
        let done = is_last_page(page, size, env.results.len(), env.total_count);
        let next = (!done).then(|| {
            let mut c = json!({"page": page + 1, "version": version});
            if size != self.page_size {
                c["size"] = json!(size);
            }
            Cursor(c)
        });
        let served_by = match self.listing {
            Listing::Computers | Listing::Applications => format!("computers-inventory {version}"),
            Listing::MobileDevices => "mobile-devices/detail v2".to_string(),
        };
        let (records, total) = if self.listing == Listing::Applications {
            (env.results.iter().flat_map(app_rows).collect(), None)
        } else {
            (env.results, env.total_count)
        };
        Ok(Page {
            next,
            total,
            records,
            served_by: Some(served_by),
        })
    }

    async fn test(&self) -> Result<TestReport, ConnectorError> {
        let (env, version) = self.page(0, 1, None).await?;
        let what = match self.listing {
            Listing::Computers => format!("computers-inventory ({version})"),
            Listing::Applications => format!("computers-inventory ({version}) applications"),
            Listing::MobileDevices => "mobile-devices".to_string(),
        };
        Ok(TestReport {
            message: format!(
                "authenticated to {} and read {what}: {} records in total",
                self.base,
                env.total_count
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
            sample: if self.listing == Listing::Applications {
                env.results.iter().flat_map(app_rows).next()
            } else {
                env.results.into_iter().next()
            },
        })
    }

    fn parent_key(&self, raw: &Value) -> Option<String> {
        (self.listing == Listing::Applications)
            .then(|| raw.get("assetsync_device_serial").and_then(Value::as_str))
            .flatten()
            .map(str::to_string)
    }

    fn source_id(&self, raw: &Value) -> Option<String> {
        if self.listing == Listing::Applications {
            let c = raw.get("computer_id").and_then(crate::mapping::scalar)?;
            let a = raw
                .get("bundleId")
                .or_else(|| raw.get("name"))
                .and_then(crate::mapping::scalar)?;
            return Some(format!("{c}|{a}"));
        }
        ["id", "mobileDeviceId", "deviceId"]
            .iter()
            .find_map(|k| raw.get(*k))
            .and_then(crate::mapping::scalar)
    }

    fn checked_in(&self, raw: &Value) -> Option<DateTime<Utc>> {
        if let Some(t) = raw.get("last_contact").and_then(Value::as_str) {
            return normalize::parse_time(t);
        }
        let g = raw.get("general")?;
        [
            "lastContactTime",
            "lastInventoryUpdateDate",
            "reportDate",
            "lastInventoryUpdateTimestamp",
        ]
        .iter()
        .filter_map(|k| g.get(*k).and_then(Value::as_str))
        .find_map(normalize::parse_time)
    }

    fn http_counts(&self) -> HttpCounts {
        self.http.stats().snapshot()
    }
}

/// One record per application of a computer (its `applications` section), linked by serial.
fn app_rows(computer: &Value) -> Vec<Value> {
    let s = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
    };
    let serial = s(computer.pointer("/hardware/serialNumber"));
    let norm = serial.as_deref().and_then(normalize::serial);
    let Some(apps) = computer.get("applications").and_then(Value::as_array) else {
        return Vec::new();
    };
    apps.iter()
        .filter(|a| a.is_object())
        .map(|a| {
            let mut row = a.clone();
            let ident = s(a.get("bundleId")).or_else(|| s(a.get("name")));
            if let Some(obj) = row.as_object_mut() {
                obj.insert(
                    "computer_id".into(),
                    computer.get("id").cloned().unwrap_or(Value::Null),
                );
                obj.insert(
                    "computer_name".into(),
                    computer
                        .pointer("/general/name")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
                obj.insert("serial_number".into(), json!(serial));
                obj.insert(
                    "last_contact".into(),
                    computer
                        .pointer("/general/lastContactTime")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
                if let Some(n) = &norm {
                    obj.insert("assetsync_device_serial".into(), json!(n));
                    if let Some(i) = &ident {
                        obj.insert("assetsync_key".into(), json!(format!("{n}|{i}")));
                    }
                }
            }
            row
        })
        .collect()
}

/// A short, non-reversible fingerprint of a secret, for cache keys.
fn fingerprint(secret: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.hash(&mut h);
    h.finish()
}

/// The page size the server actually used. Jamf answers a `page-size` above its cap by silently
/// clamping it, `totalCount` unchanged (Jamf-Concepts/jamf-cli PR #389 measured the cap at 2000;
/// integrations report lower practical limits on `computers-inventory`). A short first page while
/// `totalCount` says more exist means the server pages by that smaller size; numbering later pages
/// by the size we asked for would skip records silently (and a complete-looking run would then
/// mark live devices missing), so the rest of the run pages by what the server used.
fn effective_page_size(page: u64, asked: u32, got: usize, total: Option<u64>) -> u32 {
    let got64 = got as u64;
    if page == 0 && got > 0 && got64 < asked as u64 && total.is_some_and(|t| t > got64) {
        got as u32
    } else {
        asked
    }
}

/// End of data: an empty page, the reported total reached, or (no total) a short page.
fn is_last_page(page: u64, size: u32, got: usize, total: Option<u64>) -> bool {
    got == 0
        || match total {
            Some(t) => page * size as u64 + got as u64 >= t,
            None => (got as u32) < size,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::MemoryState;
    use std::sync::Arc;

    fn ctx(api: Option<&str>) -> ConnectorContext {
        let mut config = std::collections::BTreeMap::new();
        if let Some(a) = api {
            config.insert("api".to_string(), a.to_string());
        }
        ConnectorContext {
            connection: "jamf-test".into(),
            object_type: ObjectType::Hardware,
            config,
            state: Arc::new(MemoryState::default()),
        }
    }

    #[test]
    fn secret_errors_name_the_field() {
        let e = Jamf::new(
            &json!({"tenant_url": "https://x.jamfcloud.com", "client_id": "a"}),
            ctx(None),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("client_secret"), "{e}");
        let e = Jamf::new(&json!("just a string"), ctx(None)).err().unwrap();
        assert!(e.to_string().contains("JSON object"), "{e}");
        let e = Jamf::new(&json!({"tenant_url": "http://x.jamfcloud.com", "client_id": "a", "client_secret": "b"}), ctx(None)).err().unwrap();
        assert!(e.to_string().contains("https"), "{e}");
    }

    #[test]
    fn urls_are_stable_sorted() {
        let j = Jamf::new(&json!({"tenant_url": "https://x.jamfcloud.com/api/", "client_id": "a", "client_secret": "b"}), ctx(None)).unwrap();
        let u = j.url("v1", 3, 2000).to_string();
        assert!(
            u.starts_with("https://x.jamfcloud.com/api/v1/computers-inventory?section=GENERAL"),
            "{u}"
        );
        assert!(u.contains("page=3&page-size=2000&sort=id%3Aasc"), "{u}");
        let j = Jamf::new(&json!({"tenant_url": "https://x.jamfcloud.com", "client_id": "a", "client_secret": "b"}), ctx(Some("mobile-devices"))).unwrap();
        assert!(j
            .url("v2", 0, 10)
            .path()
            .ends_with("/api/v2/mobile-devices/detail"));
    }

    #[test]
    fn end_of_data_and_clamped_pages() {
        // 2,500 records at 2000 a page: two pages.
        assert!(!is_last_page(0, 2000, 2000, Some(2500)));
        assert!(is_last_page(1, 2000, 500, Some(2500)));
        // Exactly a multiple of the page size: the total ends it without an extra empty request.
        assert!(is_last_page(1, 100, 100, Some(200)));
        assert!(
            is_last_page(3, 100, 0, Some(1000)),
            "an empty page always ends"
        );
        assert!(is_last_page(0, 100, 40, None));
        assert!(!is_last_page(0, 100, 100, None));
        // Records deleted mid-run: a short later page reaching the new total ends the run.
        assert!(is_last_page(2, 100, 30, Some(230)));
        // A server capping pages at 1000 while 2000 was asked: keep paging by 1000.
        assert_eq!(effective_page_size(0, 2000, 1000, Some(2500)), 1000);
        assert!(!is_last_page(0, 1000, 1000, Some(2500)));
        assert_eq!(
            effective_page_size(0, 2000, 40, Some(40)),
            2000,
            "a small fleet is not a clamp"
        );
        assert_eq!(
            effective_page_size(1, 2000, 10, Some(5000)),
            2000,
            "only the first page decides"
        );
    }

    #[test]
    fn token_cache_key_depends_on_the_secret_without_containing_it() {
        let a = Jamf::new(&json!({"tenant_url": "https://x.jamfcloud.com", "client_id": "a", "client_secret": "s3cret-one"}), ctx(None)).unwrap();
        let b = Jamf::new(&json!({"tenant_url": "https://x.jamfcloud.com", "client_id": "a", "client_secret": "s3cret-two"}), ctx(None)).unwrap();
        assert_ne!(a.token_key, b.token_key);
        assert!(!a.token_key.contains("s3cret"));
    }

    #[test]
    fn default_mapping_parses() {
        let m = crate::mapping::Mapping::parse(COMPUTER_MAPPING).unwrap();
        assert_eq!(m.key_attr(), "Serial Number");
        crate::mapping::Mapping::parse(MOBILE_MAPPING).unwrap();
    }
}
