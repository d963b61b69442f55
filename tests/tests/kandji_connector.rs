//! The real Kandji connector against the Kandji simulator: paging, envelopes, faults, auth, budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use assetsync::connectors::{build, Connector, ConnectorContext, Cursor, MemoryState, StateStore};
use assetsync::error::ConnectorError;
use assetsync::event::{ObjectType, SourceKind};
use assetsync::mapping::Mapping;
use assetsync_tests::sim::kandji::{KandjiSim, KandjiSimConfig, Perm, PrismMode};
use assetsync_tests::sim::Fault;
use serde_json::{json, Value};

fn init() {
    std::env::set_var("ASSETSYNC_FAST_RETRY", "1");
}

fn ctx_with(
    object_type: ObjectType,
    config: &[(&str, &str)],
    state: Arc<dyn StateStore>,
) -> ConnectorContext {
    ConnectorContext {
        connection: "kandji-test".into(),
        object_type,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        state,
    }
}

fn ctx(object_type: ObjectType, config: &[(&str, &str)]) -> ConnectorContext {
    ctx_with(object_type, config, Arc::new(MemoryState::default()))
}

async fn connector(
    sim: &KandjiSim,
    object_type: ObjectType,
    config: &[(&str, &str)],
) -> Box<dyn Connector> {
    build(SourceKind::Kandji, &sim.secret(), ctx(object_type, config))
        .await
        .expect("connector builds")
}

/// Fetch every page from `start`; returns the records, the page sizes and the last cursor seen.
async fn drain_from(
    c: &dyn Connector,
    start: Option<Cursor>,
) -> Result<(Vec<Value>, Vec<usize>), (ConnectorError, Option<Cursor>, Vec<Value>)> {
    let mut cursor = start;
    let mut records = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..10_000 {
        match c.fetch_page(cursor.as_ref()).await {
            Ok(page) => {
                sizes.push(page.records.len());
                records.extend(page.records);
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => return Ok((records, sizes)),
                }
            }
            Err(e) => return Err((e, cursor, records)),
        }
    }
    panic!("the listing never ended");
}

async fn drain(c: &dyn Connector) -> (Vec<Value>, Vec<usize>) {
    match drain_from(c, None).await {
        Ok(r) => r,
        Err((e, cur, _)) => panic!("paging failed at {cur:?}: {e}"),
    }
}

fn ids(records: &[Value], field: &str) -> Vec<String> {
    records
        .iter()
        .map(|r| r[field].as_str().unwrap_or_default().to_string())
        .collect()
}

fn assert_each_once(seen: &[String], expected: &[String]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in seen {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "seen more than once: {dups:?}");
    let want: HashSet<&str> = expected.iter().map(String::as_str).collect();
    let got: HashSet<&str> = seen.iter().map(String::as_str).collect();
    assert_eq!(got.len(), seen.len());
    assert_eq!(
        got,
        want,
        "missing: {:?}",
        want.difference(&got).take(5).collect::<Vec<_>>()
    );
}

fn per_1000(requests: u64, records: usize) -> f64 {
    requests as f64 * 1000.0 / records.max(1) as f64
}

async fn sim(devices: usize, users: usize) -> KandjiSim {
    KandjiSim::start(KandjiSimConfig {
        devices,
        users,
        ..Default::default()
    })
    .await
    .expect("simulator starts")
}

#[tokio::test]
async fn devices_page_fully_at_the_vendor_max() {
    init();
    let sim = sim(2500, 1500).await;
    let c = connector(&sim, ObjectType::Hardware, &[]).await;
    let (records, sizes) = drain(c.as_ref()).await;
    assert_eq!(
        sizes,
        vec![300, 300, 300, 300, 300, 300, 300, 300, 100],
        "300 a page, a short page ends"
    );
    let expected = ids(&sim.devices(), "device_id");
    assert_each_once(&ids(&records, "device_id"), &expected);
    let counts = sim.counts();
    assert_eq!(counts.devices, 9);
    let http = c.http_counts();
    assert_eq!(http.requests, 9);
    println!(
        "kandji devices: {} records, {} vendor requests, {:.2} requests per 1,000 records",
        records.len(),
        http.requests,
        per_1000(http.requests, records.len())
    );

    // The default mapping: keys for devices with a real serial, OS names, lower-cased emails, `user: ""`.
    let m = Mapping::parse(
        assetsync::connectors::default_mapping(SourceKind::Kandji, ObjectType::Hardware, None)
            .unwrap(),
    )
    .unwrap();
    let mapped: Vec<_> = records
        .iter()
        .map(|r| m.apply(r, ObjectType::Hardware))
        .collect();
    assert_eq!(
        mapped.iter().filter(|r| r.key.is_some()).count(),
        sim.serials().len()
    );
    assert!(mapped
        .iter()
        .all(|r| r.key.is_none() || r.attrs.contains_key("OS Name")));
    let oses: HashSet<&str> = mapped
        .iter()
        .filter_map(|r| r.attrs.get("OS Name").map(String::as_str))
        .collect();
    assert_eq!(
        oses,
        HashSet::from(["macOS", "iOS", "iPadOS", "tvOS", "Windows", "Android"])
    );
    assert!(mapped
        .iter()
        .filter_map(|r| r.attrs.get("User Email"))
        .all(|e| *e == e.to_lowercase()));
    let unassigned = records.iter().filter(|r| r["user"] == "").count();
    assert!(unassigned > 0);
    assert_eq!(
        mapped
            .iter()
            .filter(|r| r.attrs.contains_key("User Email"))
            .count(),
        records.len() - unassigned
    );
    assert!(mapped.iter().all(|r| r
        .attrs
        .get("Last Check-in")
        .is_some_and(|t| t.ends_with('Z'))));
    for (r, m) in records.iter().zip(&mapped) {
        let apple = !matches!(r["platform"].as_str(), Some("Windows" | "Android"));
        assert_eq!(
            m.attrs.get("Manufacturer").map(String::as_str) == Some("Apple"),
            apple,
            "{r}"
        );
    }
    for r in &records {
        assert_eq!(c.source_id(r).as_deref(), r["device_id"].as_str());
        assert!(c.checked_in(r).is_some());
        assert!(c.parent_key(r).is_none());
    }
}

#[tokio::test]
async fn exact_multiple_ends_on_an_empty_page_and_limit_is_capped() {
    init();
    let sim = sim(600, 100).await;
    let c = connector(&sim, ObjectType::Hardware, &[]).await;
    let (records, sizes) = drain(c.as_ref()).await;
    assert_eq!(sizes, vec![300, 300, 0]);
    assert_eq!(records.len(), 600);
    // The vendor caps `limit` at 300; the simulator clamps as the API does.
    let url = format!("{}/api/v1/devices?limit=1000&offset=0", sim.base_url());
    let tok = sim.secret()["api_token"].as_str().unwrap().to_string();
    let body: Value = reqwest::Client::new()
        .get(url)
        .bearer_auth(tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body.as_array().unwrap().len(), 300);
    // A smaller page size is allowed.
    let c = connector(&sim, ObjectType::Hardware, &[("page_size", "250")]).await;
    let (records, sizes) = drain(c.as_ref()).await;
    assert_eq!((records.len(), sizes), (600, vec![250, 250, 100]));
}

#[tokio::test]
async fn retries_429_with_retry_after_and_500() {
    init();
    let sim = sim(1000, 100).await;
    sim.control().inject_after(
        1,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    sim.control().inject_after(2, Fault::ServerError(500));
    sim.control().inject_after(3, Fault::ServerError(503));
    let c = connector(&sim, ObjectType::Hardware, &[]).await;
    let started = std::time::Instant::now();
    let (records, _) = drain(c.as_ref()).await;
    assert_each_once(
        &ids(&records, "device_id"),
        &ids(&sim.devices(), "device_id"),
    );
    let http = c.http_counts();
    assert_eq!(http.throttled, 1);
    assert_eq!(http.retries, 3);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was honoured"
    );
}

#[tokio::test]
async fn malformed_json_once_is_fetched_again_twice_fails_clearly() {
    init();
    let sim = sim(900, 100).await;
    sim.control().inject_after(1, Fault::MalformedJson);
    let c = connector(&sim, ObjectType::Hardware, &[]).await;
    let (records, _) = drain(c.as_ref()).await;
    assert_each_once(
        &ids(&records, "device_id"),
        &ids(&sim.devices(), "device_id"),
    );
    assert_eq!(
        sim.control().requests_to("/api/v1/devices"),
        5,
        "4 pages + the refetch"
    );

    sim.control().inject_after(1, Fault::MalformedJson);
    sim.control().inject_after(1, Fault::MalformedJson);
    let c = connector(&sim, ObjectType::Hardware, &[]).await;
    let Err((e, at, _)) = drain_from(c.as_ref(), None).await else {
        panic!("two malformed answers must fail")
    };
    assert!(matches!(e, ConnectorError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("/api/v1/devices"), "{e}");
    assert_eq!(
        at,
        Some(Cursor(json!({"offset": 300}))),
        "the failed page is the one to retry"
    );
}

#[tokio::test]
async fn revoked_token_mid_run_fails_fast_and_resumes_with_a_new_one() {
    init();
    let sim = sim(1500, 100).await;
    sim.control().inject_after(2, Fault::ExpireTokens);
    let c = connector(&sim, ObjectType::Hardware, &[]).await;
    let Err((e, at, first)) = drain_from(c.as_ref(), None).await else {
        panic!("a revoked token must fail")
    };
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("401") && msg.contains("new token") && msg.contains("api_token"),
        "{msg}"
    );
    assert!(
        !msg.contains(sim.secret()["api_token"].as_str().unwrap()),
        "the token never appears in errors"
    );
    assert_eq!(
        sim.counts().unauthorized,
        1,
        "no retry, no refresh: one 401"
    );
    assert_eq!(first.len(), 600);
    // An operator stores a new token; the run resumes from its cursor.
    sim.rotate_token();
    let c = connector(&sim, ObjectType::Hardware, &[]).await;
    let (rest, _) = drain_from(c.as_ref(), at)
        .await
        .map_err(|(e, ..)| e)
        .unwrap();
    let all: Vec<Value> = first.into_iter().chain(rest).collect();
    assert_each_once(&ids(&all, "device_id"), &ids(&sim.devices(), "device_id"));
}

#[tokio::test]
async fn wrong_credentials_and_missing_permissions_are_explained() {
    init();
    let sim = sim(20, 10).await;
    let mut secret = sim.secret();
    secret["api_token"] = json!("not-the-token");
    let c = build(SourceKind::Kandji, &secret, ctx(ObjectType::Hardware, &[]))
        .await
        .unwrap();
    let e = c.test().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");
    assert!(!e.is_retryable());
    assert_eq!(c.http_counts().requests, 1);

    sim.deny(Perm::DeviceDetails, true);
    let c = connector(&sim, ObjectType::Hardware, &[("details", "true")]).await;
    let e = c.fetch_page(None).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Forbidden { .. }), "{e}");
    assert!(e.to_string().contains("Device details"), "{e}");
    let e = c.test().await.unwrap_err();
    assert!(e.to_string().contains("Device details"), "{e}");
    sim.deny(Perm::Prism, true);
    let c = connector(&sim, ObjectType::Software, &[]).await;
    let e = c.fetch_page(None).await.unwrap_err();
    assert!(e.to_string().contains("Prism"), "{e}");

    // A wrong base URL path is a 404 with a hint.
    let mut secret = sim.secret();
    secret["base_url"] = json!(format!("{}/wrong", sim.base_url()));
    let c = build(SourceKind::Kandji, &secret, ctx(ObjectType::Hardware, &[]))
        .await
        .unwrap();
    let e = c.fetch_page(None).await.unwrap_err();
    assert!(
        e.to_string().contains("404") && e.to_string().contains("base_url"),
        "{e}"
    );
}

#[tokio::test]
async fn test_action_reports_and_samples() {
    init();
    let sim = sim(30, 20).await;
    for (ot, cfg) in [
        (ObjectType::Hardware, vec![]),
        (ObjectType::Hardware, vec![("details", "true")]),
        (ObjectType::Person, vec![]),
        (ObjectType::Software, vec![]),
        (ObjectType::Software, vec![("apps_source", "per-device")]),
    ] {
        let c = connector(&sim, ot, &cfg).await;
        let r = c.test().await.unwrap();
        assert!(r.message.contains("authenticated"), "{}", r.message);
        assert!(r.sample.is_some(), "{ot:?} {cfg:?}");
    }
}

#[tokio::test]
async fn users_follow_the_cursor_not_the_next_host() {
    init();
    for region in ["us", "eu"] {
        let sim = KandjiSim::start(KandjiSimConfig {
            devices: 50,
            users: 1000,
            region: region.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        // The simulator's `next` points at a host that does not resolve.
        let tok = sim.secret()["api_token"].as_str().unwrap().to_string();
        let first: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/users", sim.base_url()))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let next = first["next"].as_str().unwrap();
        let want_host = if region == "eu" {
            "https://accuhive.eu.kandji.io/"
        } else {
            "https://accuhive.kandji.io/"
        };
        assert!(next.starts_with(want_host), "{next}");

        let c = connector(&sim, ObjectType::Person, &[]).await;
        let (records, sizes) = drain(c.as_ref()).await;
        assert_eq!(sizes, vec![300, 300, 300, 100]);
        let expected: Vec<String> = (0..sim.user_count())
            .map(|j| sim.user(j)["id"].as_str().unwrap().to_string())
            .collect();
        assert_each_once(&ids(&records, "id"), &expected);
        let http = c.http_counts();
        assert_eq!(http.requests, 4);
        println!(
            "kandji users ({region}): {} records, {} vendor requests, {:.2} requests per 1,000 records",
            records.len(),
            http.requests,
            per_1000(http.requests, records.len())
        );
        let m = Mapping::parse(
            assetsync::connectors::default_mapping(SourceKind::Kandji, ObjectType::Person, None)
                .unwrap(),
        )
        .unwrap();
        let mapped: Vec<_> = records
            .iter()
            .map(|r| m.apply(r, ObjectType::Person))
            .collect();
        assert!(mapped.iter().all(|r| r.key.is_some()
            && r.attrs
                .get("Email")
                .is_some_and(|e| e.ends_with("@example.com"))));
        let statuses: HashSet<&str> = mapped
            .iter()
            .filter_map(|r| r.attrs.get("Status").map(String::as_str))
            .collect();
        assert_eq!(statuses, HashSet::from(["active", "suspended"]));
        for r in &records {
            let want = if r["archived"] == true || r["active"] == false {
                "suspended"
            } else {
                "active"
            };
            assert_eq!(r["assetsync_status"], want);
        }
    }
}

#[tokio::test]
async fn users_filter_is_passed_through() {
    init();
    let sim = sim(10, 700).await;
    let c = connector(&sim, ObjectType::Person, &[("filter", "archived=false")]).await;
    let (records, _) = drain(c.as_ref()).await;
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| r["archived"] == false));
    let archived = (0..700)
        .filter(|j| sim.user(*j)["archived"] == true)
        .count();
    assert_eq!(records.len(), 700 - archived);
}

async fn check_prism(mode: PrismMode) {
    let sim = KandjiSim::start(KandjiSimConfig {
        devices: 400,
        users: 300,
        prism_mode: mode,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = connector(&sim, ObjectType::Software, &[]).await;
    let (records, sizes) = drain(c.as_ref()).await;
    assert_eq!(records.len(), sim.app_count());
    assert!(
        sizes[..sizes.len() - 1].iter().all(|s| *s == 300),
        "{sizes:?}"
    );
    let keyed: Vec<String> = records
        .iter()
        .filter_map(|r| r["assetsync_key"].as_str().map(str::to_string))
        .collect();
    assert_eq!(keyed.len(), sim.keyed_app_count());
    let uniq: HashSet<&String> = keyed.iter().collect();
    assert_eq!(uniq.len(), keyed.len(), "keys are unique per device × app");
    let serials: HashSet<String> = sim.serials().into_iter().collect();
    let m = Mapping::parse(
        assetsync::connectors::default_mapping(SourceKind::Kandji, ObjectType::Software, None)
            .unwrap(),
    )
    .unwrap();
    for r in &records {
        let mapped = m.apply(r, ObjectType::Software);
        match c.parent_key(r) {
            Some(p) => {
                assert!(serials.contains(&p), "{p}");
                assert!(mapped
                    .key
                    .as_deref()
                    .is_some_and(|k| k.starts_with(&format!("{p}|"))));
                assert!(mapped.attrs.contains_key("Name") && mapped.attrs.contains_key("Version"));
            }
            None => assert!(mapped.key.is_none(), "no serial, no key"),
        }
    }
    let http = c.http_counts();
    println!(
        "kandji apps (prism, {mode:?}): {} records, {} vendor requests, {:.2} requests per 1,000 records",
        records.len(),
        http.requests,
        per_1000(http.requests, records.len())
    );
    assert_eq!(http.requests as usize, sizes.len());
    assert_eq!(sim.counts().device_apps, 0, "no per-device calls");
}

#[tokio::test]
async fn prism_apps_cursor_envelope() {
    init();
    check_prism(PrismMode::Cursor).await;
}

#[tokio::test]
async fn prism_apps_offset_envelope() {
    init();
    check_prism(PrismMode::Offset).await;
}

/// Kandji's published Prism body carries both styles (`offset: null`, `total: 165`, `cursor: null`
/// with more rows to come): `"cursor": null` is not the end while `total` says there is more.
#[tokio::test]
async fn prism_apps_published_two_style_body_pages_to_the_end() {
    init();
    check_prism(PrismMode::Published).await;
}

#[tokio::test]
async fn per_device_apps_cost_one_request_per_device() {
    init();
    let sim = sim(230, 150).await;
    let c = connector(
        &sim,
        ObjectType::Software,
        &[
            ("apps_source", "per-device"),
            ("requests_per_hour", "1000000"),
        ],
    )
    .await;
    let (records, sizes) = drain(c.as_ref()).await;
    assert_eq!(sizes.len(), 3, "100 devices a page");
    assert_eq!(records.len(), sim.app_count());
    let keyed: Vec<String> = records
        .iter()
        .filter_map(|r| r["assetsync_key"].as_str().map(str::to_string))
        .collect();
    assert_eq!(keyed.len(), sim.keyed_app_count());
    // The same keys as Prism would give.
    let counts = sim.counts();
    assert_eq!(counts.devices, 3);
    assert_eq!(counts.device_apps, 230);
    let http = c.http_counts();
    println!(
        "kandji apps (per-device): {} records, {} vendor requests, {:.2} requests per 1,000 records",
        records.len(),
        http.requests,
        per_1000(http.requests, records.len())
    );
    let prism = connector(&sim, ObjectType::Software, &[]).await;
    let (prism_records, _) = drain(prism.as_ref()).await;
    let a: HashSet<String> = keyed.into_iter().collect();
    let b: HashSet<String> = prism_records
        .iter()
        .filter_map(|r| r["assetsync_key"].as_str().map(str::to_string))
        .collect();
    assert_eq!(a, b);
}

#[tokio::test]
async fn details_give_the_mac_and_are_cached() {
    init();
    let sim = sim(40, 30).await;
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::default());
    let cfg = [("details", "true"), ("requests_per_hour", "1000000")];
    let c = build(
        SourceKind::Kandji,
        &sim.secret(),
        ctx_with(ObjectType::Hardware, &cfg, state.clone()),
    )
    .await
    .unwrap();
    let (records, _) = drain(c.as_ref()).await;
    assert_eq!(sim.counts().details, 40);
    let m = Mapping::parse(
        assetsync::connectors::default_mapping(SourceKind::Kandji, ObjectType::Hardware, None)
            .unwrap(),
    )
    .unwrap();
    let devices = sim.devices();
    for (i, d) in devices.iter().enumerate() {
        let r = records
            .iter()
            .find(|r| r["device_id"] == d["device_id"])
            .unwrap();
        assert!(
            r["details"].get("installed_profiles").is_none(),
            "bulky parts are dropped"
        );
        let mapped = m.apply(r, ObjectType::Hardware);
        assert_eq!(mapped.attrs["MAC Address"], sim.mac(i), "device {i}");
        assert!(mapped.attrs.contains_key("IP Address"));
    }
    // A second run within the TTL reads the cache: no detail calls.
    let c = build(
        SourceKind::Kandji,
        &sim.secret(),
        ctx_with(ObjectType::Hardware, &cfg, state.clone()),
    )
    .await
    .unwrap();
    let (again, _) = drain(c.as_ref()).await;
    assert_eq!(again.len(), 40);
    assert_eq!(sim.counts().details, 40);
    assert_eq!(c.http_counts().requests, 1);
    // Without a cache, every run pays one request per device.
    let c = connector(
        &sim,
        ObjectType::Hardware,
        &[
            ("details", "true"),
            ("details_ttl_hours", "0"),
            ("requests_per_hour", "1000000"),
        ],
    )
    .await;
    let (_, _) = drain(c.as_ref()).await;
    assert_eq!(sim.counts().details, 80);
    let http = c.http_counts();
    println!(
        "kandji devices with details (uncached): 40 records, {} vendor requests, {:.2} requests per 1,000 records",
        http.requests,
        per_1000(http.requests, 40)
    );
}

#[tokio::test]
async fn the_client_keeps_to_the_hourly_budget() {
    init();
    let sim = sim(13, 10).await;
    // 1 list + 13 details at the default 10,000/hour: a burst of 10, then one every 0.36 s.
    let c = connector(&sim, ObjectType::Hardware, &[("details", "true")]).await;
    let started = std::time::Instant::now();
    let (records, _) = drain(c.as_ref()).await;
    assert_eq!(records.len(), 13);
    let http = c.http_counts();
    assert_eq!(http.requests, 14);
    assert!(http.throttle_wait_ms >= 1000, "{http:?}");
    assert!(started.elapsed() >= Duration::from_millis(1000));
}

#[tokio::test]
async fn the_tenant_budget_429s_are_survived() {
    init();
    // Past the tenant's budget the API answers 429; with Retry-After (Kong) it is honoured…
    let sim = sim(2000, 10).await;
    sim.set_rate_limit(4, Duration::from_secs(3), Some(1));
    let c = connector(
        &sim,
        ObjectType::Hardware,
        &[("requests_per_hour", "1000000")],
    )
    .await;
    let (records, _) = drain(c.as_ref()).await;
    assert_eq!(records.len(), 2000);
    assert!(sim.counts().rate_limited >= 1);
    assert!(c.http_counts().throttled >= 1);
    // …and without one (as documented): the simulator sends none, the client backs off.
    sim.set_rate_limit(1, Duration::from_secs(60), None);
    let tok = sim.secret()["api_token"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/devices?limit=1", sim.base_url());
    assert_eq!(
        http.get(&url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let limited = http.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get("retry-after").is_none());
    assert_eq!(limited.headers()["x-ratelimit-remaining-hour"], "0");
    sim.set_rate_limit(10_000, Duration::from_secs(3600), None);
    sim.control()
        .inject_after(1, Fault::TooManyRequests { retry_after: None });
    sim.control()
        .inject_after(1, Fault::TooManyRequests { retry_after: None });
    let c = connector(&sim, ObjectType::Hardware, &[]).await;
    let (records, _) = drain(c.as_ref()).await;
    assert_eq!(records.len(), 2000);
    assert_eq!(c.http_counts().throttled, 2);
}

#[tokio::test]
async fn device_filter_and_ordering_reach_the_vendor() {
    init();
    let sim = sim(300, 100).await;
    let c = connector(
        &sim,
        ObjectType::Hardware,
        &[("filter", "platform=iPad"), ("ordering", "-serial_number")],
    )
    .await;
    let (records, _) = drain(c.as_ref()).await;
    let ipads = sim
        .devices()
        .iter()
        .filter(|d| d["platform"] == "iPad")
        .count();
    assert_eq!(records.len(), ipads);
    assert!(records.iter().all(|r| r["platform"] == "iPad"));
    let serials = ids(&records, "serial_number");
    let mut sorted = serials.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(serials, sorted);
}

#[tokio::test]
async fn changes_show_up_on_the_next_run() {
    init();
    let sim = sim(50, 40).await;
    sim.set_os_version(3, "15.2");
    sim.remove_field(4, "asset_tag");
    let removed = sim.remove_device(7);
    let added = sim.add_device();
    let c = connector(&sim, ObjectType::Hardware, &[]).await;
    let (records, _) = drain(c.as_ref()).await;
    assert_eq!(records.len(), 50);
    let d3 = sim.device(3);
    assert_eq!(
        records
            .iter()
            .find(|r| r["device_id"] == d3["device_id"])
            .unwrap()["os_version"],
        "15.2"
    );
    assert!(records
        .iter()
        .all(|r| r["device_id"] != removed["device_id"]));
    assert!(records
        .iter()
        .any(|r| r["device_id"] == sim.device(added)["device_id"]));
}
