//! The real Endpoint Central connector against the simulator: paging, detail caching, auth flows,
//! faults, rate limits, and vendor requests per 1,000 records.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use assetsync::connectors::{self, Connector, ConnectorContext, Cursor, MemoryState, StateStore};
use assetsync::error::ConnectorError;
use assetsync::event::{ObjectType, SourceKind};
use assetsync::mapping::Mapping;
use assetsync_tests::sim::endpoint_central::{
    EcAuth, EcSimConfig, EndpointCentralSim, LockStyle, RateLimitCfg,
};
use assetsync_tests::sim::Fault;
use serde_json::Value;

fn fast() {
    std::env::set_var("ASSETSYNC_FAST_RETRY", "1");
}

fn ctx_with(state: Arc<dyn StateStore>, config: &[(&str, &str)]) -> ConnectorContext {
    ConnectorContext {
        connection: "ec-prod".into(),
        object_type: ObjectType::Hardware,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        state,
    }
}

/// Detail calls unthrottled client-side (the simulator's limit is off in these tests).
const FAST_DETAILS: &[(&str, &str)] = &[("detail_rate", "1000000"), ("detail_concurrency", "8")];

async fn build(
    sim: &EndpointCentralSim,
    auth: EcAuth,
    state: Arc<dyn StateStore>,
    config: &[(&str, &str)],
) -> Box<dyn Connector> {
    connectors::build(
        SourceKind::EndpointCentral,
        &sim.secret_for(auth),
        ctx_with(state, config),
    )
    .await
    .expect("connector builds")
}

struct Drained {
    records: Vec<Value>,
    pages: usize,
    total: Option<u64>,
}

async fn drain(c: &dyn Connector) -> Result<Drained, ConnectorError> {
    let mut cursor: Option<Cursor> = None;
    let mut out = Drained {
        records: Vec::new(),
        pages: 0,
        total: None,
    };
    loop {
        let page = c.fetch_page(cursor.as_ref()).await?;
        out.pages += 1;
        out.total = page.total.or(out.total);
        out.records.extend(page.records);
        match page.next {
            Some(n) => cursor = Some(n),
            None => return Ok(out),
        }
        assert!(out.pages < 200, "paging does not end");
    }
}

fn ids(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r["resource_id"].as_u64().expect("resource_id"))
        .collect()
}

fn assert_each_once(records: &[Value], expected: usize) {
    let ids = ids(records);
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), expected, "records returned");
    assert_eq!(unique.len(), expected, "every computer exactly once");
}

fn mapping() -> Mapping {
    Mapping::parse(
        connectors::default_mapping(SourceKind::EndpointCentral, ObjectType::Hardware, None)
            .unwrap(),
    )
    .unwrap()
}

fn per_1000(requests: u64, records: usize) -> f64 {
    requests as f64 * 1000.0 / records.max(1) as f64
}

fn no_limit(devices: usize) -> EcSimConfig {
    EcSimConfig {
        devices,
        rate_limit: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn pages_2500_computers_once_each_with_details_cached_across_runs() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(2500)).await.unwrap();
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::default());

    // First pass: every computer is new, so each costs one detail call.
    let c = build(&sim, EcAuth::Login, state.clone(), FAST_DETAILS).await;
    let first = drain(c.as_ref()).await.unwrap();
    assert_each_once(&first.records, 2500);
    assert_eq!(first.pages, 3, "pagelimit is the vendor maximum of 1000");
    assert_eq!(first.total, Some(2500));
    assert_eq!(sim.list_requests(), 3);
    assert_eq!(sim.detail_requests(), 2500);
    let first_requests = sim.total_requests();
    println!(
        "endpoint-central first pass: {} vendor requests for {} records = {:.1} per 1,000 (list {}, detail {}, login {})",
        first_requests,
        first.records.len(),
        per_1000(first_requests, first.records.len()),
        sim.list_requests(),
        sim.detail_requests(),
        sim.logins()
    );
    assert_eq!(c.http_counts().requests, first_requests);

    // The default mapping keys on the serial (list service tag, else the detail's), skipping placeholders.
    let m = mapping();
    let mut keyed = 0;
    for r in &first.records {
        let i = (r["resource_id"].as_u64().unwrap() - 30_001) as usize / 3;
        let mapped = m.apply(r, ObjectType::Hardware);
        assert_eq!(mapped.key, sim.serial(i), "computer {i}: {r}");
        if mapped.key.is_some() {
            keyed += 1;
            assert!(
                mapped.attrs.contains_key("Model") && mapped.attrs.contains_key("Manufacturer"),
                "{:?}",
                mapped.attrs
            );
        }
        assert_eq!(c.source_id(r), Some(r["resource_id"].to_string()));
        assert!(c.checked_in(r).is_some());
    }
    let expected_keyed = (0..2500).filter(|i| sim.serial(*i).is_some()).count();
    assert_eq!(keyed, expected_keyed);
    assert!(keyed < 2500, "the fleet has placeholder serials");
    // A user mapping keyed on resource_id yields one record per computer.
    let by_id = Mapping::parse("key:resource_id=ID\nmap:resource_name=Name").unwrap();
    let keys: HashSet<String> = first
        .records
        .iter()
        .filter_map(|r| by_id.apply(r, ObjectType::Hardware).key)
        .collect();
    assert_eq!(keys.len(), 2500);

    // Second pass over an unchanged fleet (a new connector, as a new Lambda would build): list pages only.
    let before = sim.total_requests();
    let detail_before = sim.detail_requests();
    let c2 = build(&sim, EcAuth::Login, state.clone(), FAST_DETAILS).await;
    let second = drain(c2.as_ref()).await.unwrap();
    assert_each_once(&second.records, 2500);
    assert_eq!(
        sim.detail_requests(),
        detail_before,
        "a steady fleet makes zero detail calls"
    );
    let steady = sim.total_requests() - before;
    println!(
        "endpoint-central steady-state pass: {} vendor requests for {} records = {:.2} per 1,000",
        steady,
        second.records.len(),
        per_1000(steady, second.records.len())
    );
    assert_eq!(
        steady, 3,
        "three list pages (the login token is reused from the process cache)"
    );
    // Cached details still reach the records.
    let mapped: Vec<_> = second
        .records
        .iter()
        .map(|r| m.apply(r, ObjectType::Hardware))
        .collect();
    assert_eq!(
        mapped.iter().filter(|r| r.key.is_some()).count(),
        expected_keyed
    );

    // Three rescans cost three detail calls, and the change shows.
    sim.set_model(10, "HP EliteBook 860 G10");
    sim.set_os_version(20, "10.0.26100");
    sim.rescan(30);
    let c3 = build(&sim, EcAuth::Login, state, FAST_DETAILS).await;
    let third = drain(c3.as_ref()).await.unwrap();
    assert_eq!(sim.detail_requests(), detail_before + 3);
    let r10 = third
        .records
        .iter()
        .find(|r| r["resource_id"].as_u64() == Some(sim.resource_id(10)))
        .unwrap();
    assert_eq!(
        m.apply(r10, ObjectType::Hardware).attrs["Model"],
        "HP EliteBook 860 G10"
    );
}

#[tokio::test]
async fn scancomputers_listing_takes_serials_from_details() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(300)).await.unwrap();
    let mut config = FAST_DETAILS.to_vec();
    config.push(("api", "scancomputers"));
    let c = build(
        &sim,
        EcAuth::ApiToken,
        Arc::new(MemoryState::default()),
        &config,
    )
    .await;
    let all = drain(c.as_ref()).await.unwrap();
    assert_each_once(&all.records, 300);
    let m = Mapping::parse(
        connectors::default_mapping(
            SourceKind::EndpointCentral,
            ObjectType::Hardware,
            Some("scancomputers"),
        )
        .unwrap(),
    )
    .unwrap();
    for (n, r) in all.records.iter().enumerate() {
        assert!(r.get("managedcomputerextn.service_tag").is_none());
        let mapped = m.apply(r, ObjectType::Hardware);
        assert_eq!(mapped.key, sim.serial(n));
        assert!(
            mapped.attrs.contains_key("Last Scan Status"),
            "{:?}",
            mapped.attrs
        );
    }
    assert_eq!(sim.detail_requests(), 300);
}

#[tokio::test]
async fn detail_budget_splits_a_page_without_losing_records() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(250)).await.unwrap();
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::default());
    let mut config = FAST_DETAILS.to_vec();
    config.extend([("page_size", "100"), ("detail_budget", "30")]);
    let c = build(&sim, EcAuth::ApiToken, state.clone(), &config).await;
    let all = drain(c.as_ref()).await.unwrap();
    assert_each_once(&all.records, 250);
    assert!(all
        .records
        .iter()
        .all(|r| r.get("assetsync_detail").is_some()));
    assert_eq!(sim.detail_requests(), 250);
    assert!(
        all.pages >= 9,
        "a page of 100 needing 100 details is split in budgets of 30 ({} pages)",
        all.pages
    );
    // Warm cache: one fetch per list page again.
    let c = build(&sim, EcAuth::ApiToken, state, &config).await;
    let again = drain(c.as_ref()).await.unwrap();
    assert_each_once(&again.records, 250);
    assert_eq!(again.pages, 3);
    assert_eq!(sim.detail_requests(), 250);
}

#[tokio::test]
async fn retries_429_and_500_and_keeps_going() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(1200)).await.unwrap();
    let ctl = sim.control();
    ctl.inject(Fault::TooManyRequests {
        retry_after: Some(1),
    });
    ctl.inject_after(50, Fault::ServerError(500));
    ctl.inject_after(400, Fault::ServerError(503));
    ctl.inject_after(700, Fault::TooManyRequests { retry_after: None });
    let c = build(
        &sim,
        EcAuth::ApiToken,
        Arc::new(MemoryState::default()),
        FAST_DETAILS,
    )
    .await;
    let all = drain(c.as_ref()).await.unwrap();
    assert_each_once(&all.records, 1200);
    let counts = c.http_counts();
    assert!(counts.retries >= 4, "{counts:?}");
    assert!(counts.throttled >= 2, "{counts:?}");
}

#[tokio::test]
async fn malformed_json_fails_the_page_clearly_and_the_page_retry_recovers() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(150)).await.unwrap();
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::default());
    let c = build(
        &sim,
        EcAuth::ApiToken,
        state.clone(),
        &[("detail_concurrency", "1"), ("detail_rate", "1000000")],
    )
    .await;

    // A broken list page: a clear error naming the path; the same page again succeeds.
    sim.control().inject(Fault::MalformedJson);
    let e = c.fetch_page(None).await.expect_err("malformed list page");
    assert!(matches!(e, ConnectorError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("/api/1.4/som/computers"), "{e}");

    // A broken detail answer fails the page too; details fetched before it are kept in the cache.
    sim.control().inject_after(60, Fault::MalformedJson);
    let e = c.fetch_page(None).await.expect_err("malformed detail");
    assert!(e.to_string().contains("compdetailssummary"), "{e}");
    let before = sim.detail_requests();
    let page = c.fetch_page(None).await.unwrap();
    assert_eq!(page.records.len(), 150);
    let refetched = sim.detail_requests() - before;
    assert!(
        refetched <= 150 - 59 + 1,
        "only the details not yet cached are fetched again ({refetched})"
    );
    assert!(page
        .records
        .iter()
        .all(|r| r.get("assetsync_detail").is_some()));
}

#[tokio::test]
async fn login_token_expiry_mid_run_reauthenticates_once() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(1500)).await.unwrap();
    sim.control().inject_after(700, Fault::ExpireTokens);
    let c = build(
        &sim,
        EcAuth::Login,
        Arc::new(MemoryState::default()),
        FAST_DETAILS,
    )
    .await;
    let all = drain(c.as_ref()).await.unwrap();
    assert_each_once(&all.records, 1500);
    assert_eq!(sim.logins(), 2, "one login, one re-login after the expiry");
}

#[tokio::test]
async fn zoho_token_expiry_mid_run_refreshes_once() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(1500)).await.unwrap();
    sim.control().inject_after(900, Fault::ExpireTokens);
    let c = build(
        &sim,
        EcAuth::Zoho,
        Arc::new(MemoryState::default()),
        FAST_DETAILS,
    )
    .await;
    let all = drain(c.as_ref()).await.unwrap();
    assert_each_once(&all.records, 1500);
    assert_eq!(sim.zoho_refreshes(), 2);
}

#[tokio::test]
async fn wrong_credentials_give_clear_errors() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(20)).await.unwrap();
    let state = || -> Arc<dyn StateStore> { Arc::new(MemoryState::default()) };
    let run = |secret: Value| {
        let st = state();
        async move {
            let c = connectors::build(SourceKind::EndpointCentral, &secret, ctx_with(st, &[]))
                .await
                .unwrap();
            c.fetch_page(None).await.expect_err("refused")
        }
    };

    let mut s = sim.secret();
    s["password"] = "wrong-Pässw0rd".into();
    let e = run(s).await;
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("login as `admin`") && msg.contains("Invalid username or password"),
        "{msg}"
    );
    assert!(
        !msg.contains("wrong-P"),
        "the password never appears: {msg}"
    );

    let mut s = sim.secret_for(EcAuth::ApiToken);
    s["api_token"] = "00000000-0000-0000-0000-000000000000".into();
    let msg = run(s).await.to_string();
    assert!(msg.contains("api_token was refused"), "{msg}");

    let mut s = sim.secret_for(EcAuth::Zoho);
    s["refresh_token"] = "1000.revoked".into();
    let msg = run(s).await.to_string();
    assert!(msg.contains("refresh_token is invalid"), "{msg}");
    assert!(
        !msg.contains("1000.revoked") && !msg.contains("sim-client-secret"),
        "{msg}"
    );

    let mut s = sim.secret_for(EcAuth::Zoho);
    s["client_secret"] = "nope".into();
    let msg = run(s).await.to_string();
    assert!(msg.contains("client_id/client_secret"), "{msg}");

    sim.set_two_factor(true);
    let msg = run(sim.secret()).await.to_string();
    assert!(
        msg.contains("two-factor") && msg.contains("api_token"),
        "{msg}"
    );
    assert_eq!(
        sim.detail_requests() + sim.list_requests(),
        1,
        "only the bad api_token reached a data endpoint"
    );
}

#[tokio::test]
async fn the_test_action_reports_the_listing_and_a_sample() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(42)).await.unwrap();
    let c = build(&sim, EcAuth::Zoho, Arc::new(MemoryState::default()), &[]).await;
    let report = c.test().await.unwrap();
    assert!(
        report.message.contains("42 computers") && report.message.contains("Zoho"),
        "{}",
        report.message
    );
    let sample = report.sample.unwrap();
    assert!(sample.get("assetsync_detail").is_some(), "{sample}");
}

#[tokio::test]
async fn zoho_access_token_is_shared_through_the_state_store() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(30)).await.unwrap();
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::default());

    // Six fetchers start at once (as six Lambdas would): one refresh between them.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let c = build(&sim, EcAuth::Zoho, state.clone(), FAST_DETAILS).await;
        tasks.push(tokio::spawn(async move {
            c.fetch_page(None).await.map(|p| p.records.len())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 30);
    }
    assert_eq!(sim.zoho_refreshes(), 1);

    // Fifteen later cold starts reuse the stored token: still one refresh (Zoho allows 10 per 10 minutes).
    for _ in 0..15 {
        let c = build(&sim, EcAuth::Zoho, state.clone(), FAST_DETAILS).await;
        c.fetch_page(None).await.unwrap();
    }
    assert_eq!(sim.zoho_refreshes(), 1);

    // The token dies: concurrent fetchers holding it refresh once between them.
    sim.control().expire_tokens();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let c = build(&sim, EcAuth::Zoho, state.clone(), FAST_DETAILS).await;
        tasks.push(tokio::spawn(async move {
            c.fetch_page(None).await.map(|p| p.records.len())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 30);
    }
    assert_eq!(sim.zoho_refreshes(), 2);

    // The state holds the access token and its expiry, never the refresh token or client secret.
    let stored = state
        .get("endpoint-central|ec-prod|zoho-token|1000.SIMCLIENT0000000000000000")
        .await
        .unwrap()
        .expect("token state");
    assert!(
        stored.get("access_token").is_some() && stored.get("expires_at").is_some(),
        "{stored}"
    );
    let text = stored.to_string();
    assert!(
        !text.contains("1000.simrefresh.token") && !text.contains("sim-client-secret"),
        "{text}"
    );
}

#[tokio::test]
async fn zoho_refresh_cap_is_respected_and_reported() {
    fast();
    let sim = EndpointCentralSim::start(no_limit(5)).await.unwrap();
    // Ten independent connections (separate state) use up the refresh token's ten tokens.
    for _ in 0..10 {
        let c = build(&sim, EcAuth::Zoho, Arc::new(MemoryState::default()), &[]).await;
        c.fetch_page(None).await.unwrap();
    }
    assert_eq!(sim.zoho_refreshes(), 10);
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::default());
    let c = build(&sim, EcAuth::Zoho, state.clone(), &[]).await;
    let e = c.fetch_page(None).await.expect_err("blocked");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("10 refreshes per 10 minutes"), "{e}");
    let refusals = sim.zoho_refusals();
    // Other fetchers of that connection do not knock again during the block.
    let c = build(&sim, EcAuth::Zoho, state, &[]).await;
    let e = c.fetch_page(None).await.expect_err("still blocked");
    assert!(e.to_string().contains("refuses new access tokens"), "{e}");
    assert_eq!(sim.zoho_refusals(), refusals);
}

#[tokio::test]
async fn a_server_that_ignores_page_ends_the_listing() {
    fast();
    let sim = EndpointCentralSim::start(EcSimConfig {
        ignore_page: true,
        ..no_limit(2500)
    })
    .await
    .unwrap();
    let c = build(
        &sim,
        EcAuth::ApiToken,
        Arc::new(MemoryState::default()),
        &[("details", "off")],
    )
    .await;
    let all = drain(c.as_ref()).await.unwrap();
    assert_each_once(&all.records, 1000);
    assert_eq!(all.pages, 2, "the repeated page is recognised at once");
    assert_eq!(
        all.total,
        Some(2500),
        "the total still shows the listing was incomplete"
    );
    assert_eq!(
        sim.detail_requests(),
        0,
        "details=off makes no detail calls"
    );
}

#[tokio::test]
async fn a_server_that_clamps_pagelimit_lower_is_paged_to_the_end() {
    fast();
    let sim = EndpointCentralSim::start(EcSimConfig {
        max_pagelimit: 300,
        ..no_limit(1000)
    })
    .await
    .unwrap();
    let c = build(
        &sim,
        EcAuth::ApiToken,
        Arc::new(MemoryState::default()),
        &[("details", "off")],
    )
    .await;
    let all = drain(c.as_ref()).await.unwrap();
    assert_each_once(&all.records, 1000);
    assert_eq!(all.pages, 4);
}

#[tokio::test]
async fn the_client_side_limit_keeps_under_the_server_limit() {
    fast();
    // 60 per 5 s on the server; 9 per second (540/min) with a burst of 10 is at most 55 per 5 s.
    let limit = RateLimitCfg {
        requests: 60,
        window: Duration::from_secs(5),
        lock: Duration::from_secs(30),
    };
    let sim = EndpointCentralSim::start(EcSimConfig {
        devices: 110,
        rate_limit: Some(limit),
        ..Default::default()
    })
    .await
    .unwrap();
    let c = build(
        &sim,
        EcAuth::ApiToken,
        Arc::new(MemoryState::default()),
        &[("detail_rate", "540")],
    )
    .await;
    let all = drain(c.as_ref()).await.unwrap();
    assert_each_once(&all.records, 110);
    assert_eq!(sim.lock_answers(), 0);
    assert!(
        c.http_counts().throttle_wait_ms > 0,
        "the client waited for its own limiter"
    );
}

#[tokio::test]
async fn a_locked_api_is_backed_off_whether_it_answers_429_or_an_error_body() {
    fast();
    for style in [LockStyle::Http429, LockStyle::ErrorBody] {
        let limit = RateLimitCfg {
            requests: 20,
            window: Duration::from_secs(60),
            lock: Duration::from_secs(1),
        };
        let sim = EndpointCentralSim::start(EcSimConfig {
            devices: 70,
            rate_limit: Some(limit),
            lock_style: style,
            ..Default::default()
        })
        .await
        .unwrap();
        let c = build(
            &sim,
            EcAuth::ApiToken,
            Arc::new(MemoryState::default()),
            &[("detail_rate", "1000000"), ("detail_concurrency", "2")],
        )
        .await;
        let all = drain(c.as_ref()).await.unwrap();
        assert_each_once(&all.records, 70);
        assert!(all
            .records
            .iter()
            .all(|r| r.get("assetsync_detail").is_some()));
        assert!(sim.lock_answers() > 0, "{style:?}");
        assert!(
            c.http_counts().throttled > 0,
            "{style:?}: {:?}",
            c.http_counts()
        );
    }
}
