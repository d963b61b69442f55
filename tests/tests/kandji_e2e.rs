//! Kandji end to end: simulator → real fetcher → SQS (moto) → real importer → DynamoDB (moto).

use std::collections::HashSet;

use assetsync::fetcher::Fetcher;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::kandji::{KandjiSim, KandjiSimConfig};
use assetsync_tests::sim::Fault;
use serde_json::Value;

const SECRET: &str = "assetsync/kandji-e2e";

async fn setup(devices: usize, users: usize) -> anyhow::Result<(Harness, KandjiSim)> {
    let h = Harness::start().await?;
    let sim = KandjiSim::start(KandjiSimConfig {
        devices,
        users,
        max_apps_per_device: 3,
        ..KandjiSimConfig::default()
    })
    .await?;
    h.put_secret(SECRET, &sim.secret()).await?;
    Ok((h, sim))
}

fn ev(object_type: &str) -> Value {
    let conn = format!("kandji-{}", object_type.to_lowercase());
    event(&conn, "kandji", SECRET, object_type)
}

/// Devices with a usable serial, and those without (skipped).
fn keyed(sim: &KandjiSim) -> (usize, usize) {
    let with = sim.serials().len();
    (with, sim.device_count() - with)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn people_devices_and_apps_sync_and_resync() -> anyhow::Result<()> {
    let (h, sim) = setup(1200, 800).await?;
    let (with_serial, without) = keyed(&sim);
    assert!(
        without > 0,
        "the simulated fleet includes devices without serial"
    );

    // People first, so devices can be assigned by email.
    let p = h.sync(&ev("Person")).await?;
    println!("people: {}", serde_json::to_string(&p)?);
    assert_eq!(p.status.as_str(), "succeeded", "{p:?}");
    assert_eq!(p.counts.created as usize, sim.user_count());
    let people = h.all_records("Person").await?;
    let active: HashSet<String> = people
        .iter()
        .filter(|r| r.a.get("Status").map(String::as_str) == Some("active"))
        .filter_map(|r| r.a.get("Email").cloned())
        .collect();
    assert!(
        !active.is_empty() && active.len() < people.len(),
        "some people are suspended"
    );

    // Devices: every device with a serial created once, the others skipped with a reason.
    let s = h.sync(&ev("Hardware")).await?;
    println!("first device sync: {}", serde_json::to_string(&s)?);
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    assert_eq!(
        (s.counts.created + s.counts.duplicate) as usize,
        with_serial,
        "{s:?}"
    );
    assert_eq!(s.counts.skipped as usize, without);
    assert_eq!(s.counts.errors, 0);
    assert_eq!(s.pages.fetched, s.pages.imported);
    println!(
        "device sync: {} vendor requests for {} devices",
        sim.counts().devices,
        sim.device_count()
    );
    let records = h.all_records("Hardware").await?;
    assert_eq!(records.len() as u64, s.counts.created);
    for r in &records {
        let email = r.a.get("User Email");
        let assigned = r.a.get("Status").map(String::as_str) == Some("assigned");
        assert_eq!(
            assigned,
            email.is_some_and(|e| active.contains(e)),
            "{:?}",
            r.a
        );
        assert_eq!(
            r.a.contains_key("Manufacturer"),
            !matches!(
                r.a.get("OS Name").map(String::as_str),
                Some("Windows" | "Android")
            )
        );
    }
    assert!(records
        .iter()
        .any(|r| r.a.get("Status").map(String::as_str) == Some("assigned")));
    assert!(
        records
            .iter()
            .any(|r| r.a.get("Name").is_some_and(|n| !n.is_ascii())),
        "unicode names survive"
    );

    // Unchanged re-sync: no register write at all.
    h.ddb.reset();
    let s2 = h.sync(&ev("Hardware")).await?;
    let c = h.ddb.get();
    println!(
        "unchanged sync: {} DynamoDB requests ({:?})",
        c.total(),
        c.by_op
    );
    assert_eq!(s2.counts.unchanged, s.counts.created, "{s2:?}");
    assert_eq!(
        s2.counts.created + s2.counts.updated + s2.counts.missing,
        0,
        "{s2:?}"
    );
    assert_eq!(
        c.record_writes, 0,
        "an unchanged sync writes no register record"
    );

    // One OS version changes at the source: exactly one update.
    let devices = sim.devices();
    let i = devices
        .iter()
        .position(|d| {
            d["serial_number"]
                .as_str()
                .is_some_and(|s| s.starts_with("C02"))
        })
        .unwrap();
    sim.set_os_version(i, "15.9.1");
    let s3 = h.sync(&ev("Hardware")).await?;
    assert_eq!(s3.counts.updated, 1, "{s3:?}");
    let serial = devices[i]["serial_number"].as_str().unwrap();
    let rec = h.record("Hardware", serial).await?.expect("record");
    assert_eq!(rec.a.get("OS Version").map(String::as_str), Some("15.9.1"));

    // Apps from Prism, linked to their device.
    let a = h.sync(&ev("Software")).await?;
    println!("apps sync: {}", serde_json::to_string(&a)?);
    assert_eq!(a.status.as_str(), "succeeded", "{a:?}");
    assert_eq!(
        (a.counts.created + a.counts.duplicate) as usize,
        sim.keyed_app_count(),
        "{a:?}"
    );
    assert_eq!(
        (a.counts.created + a.counts.skipped + a.counts.duplicate) as usize,
        sim.app_count()
    );
    let apps = h.all_records("Software").await?;
    let serials: HashSet<String> = sim.serials().into_iter().collect();
    assert!(apps.iter().all(|r| r
        .a
        .get("Device Serial")
        .is_some_and(|s| serials.contains(&s.trim().to_uppercase()))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_and_a_revoked_token() -> anyhow::Result<()> {
    let (mut h, sim) = setup(3000, 200).await?;
    let (with_serial, _) = keyed(&sim);
    // A 429 without Retry-After (as documented), one with, a 500 and a malformed page: the run completes.
    sim.control()
        .inject_after(1, Fault::TooManyRequests { retry_after: None });
    sim.control().inject_after(
        2,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    sim.control().inject_after(3, Fault::ServerError(500));
    sim.control().inject_after(4, Fault::MalformedJson);
    let s = h.sync(&ev("Hardware")).await?;
    println!("faulty sync: {}", serde_json::to_string(&s)?);
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    assert_eq!(
        (s.counts.created + s.counts.duplicate) as usize,
        with_serial
    );
    assert!(s.throttled >= 2, "the 429s are counted in the run: {s:?}");

    // The token is revoked mid-run: Kandji has nothing to refresh, so the run fails fast and says why,
    // and marks nothing missing.
    let before = sim.counts().unauthorized;
    sim.control().inject_after(3, Fault::ExpireTokens);
    let f = h.sync(&ev("Hardware")).await?;
    println!("revoked-token sync: {}", serde_json::to_string(&f)?);
    assert_eq!(f.status.as_str(), "failed", "{f:?}");
    let why = serde_json::to_string(&f)?;
    assert!(why.contains("401") && why.contains("api_token"), "{why}");
    assert_eq!(f.counts.missing, 0);
    // The fetcher re-reads the secret once after a 401 (a rotated token would be picked up) and
    // retries the page once with it; the token is still revoked, so exactly two 401s.
    assert_eq!(
        sim.counts().unauthorized - before,
        2,
        "one retry after re-reading the secret, no more"
    );

    // An operator stores a new token; the next run (a fresh container) completes without duplicates.
    sim.rotate_token();
    h.put_secret(SECRET, &sim.secret()).await?;
    h.runner.fetcher = Fetcher::with_clients(
        h.settings.clone(),
        h.store.ddb.clone(),
        h.runner.sqs.clone(),
        aws_sdk_secretsmanager::Client::new(&h.sdk),
    );
    let s2 = h.sync(&ev("Hardware")).await?;
    assert_eq!(s2.status.as_str(), "succeeded", "{s2:?}");
    assert_eq!(s2.counts.created, 0, "{s2:?}");
    assert_eq!(
        (s2.counts.unchanged + s2.counts.duplicate) as usize,
        with_serial,
        "{s2:?}"
    );
    assert_eq!(
        h.all_records("Hardware").await?.len() as u64,
        s.counts.created
    );
    Ok(())
}

/// Prism answers in Kandji's published two-style body (`"cursor": null` with `total` larger than
/// the page): the software inventory is paged to its end; and when fewer rows arrive than Kandji's
/// `total`, the run says so and marks nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prism_two_style_body_pages_to_the_end_and_a_short_total_marks_nothing_missing(
) -> anyhow::Result<()> {
    let (h, sim) = setup(60, 10).await?;
    let mut e = ev("Software");
    // Small pages, so the listing takes several pages of the two-style body.
    e["mapping"] = Value::String(format!(
        "{}config:page_size=25\n",
        assetsync::connectors::default_mapping(
            assetsync::event::SourceKind::Kandji,
            assetsync::event::ObjectType::Software,
            None
        )?
    ));
    let a = h.sync(&e).await?;
    assert_eq!(a.status.as_str(), "succeeded", "{a:?}");
    assert!(a.pages.fetched > 2, "{a:?}");
    assert_eq!(a.records_fetched as usize, sim.app_count(), "{a:?}");
    assert_eq!(a.vendor_total, Some(sim.app_count() as u64), "{a:?}");
    assert_eq!(
        (a.counts.created + a.counts.duplicate) as usize,
        sim.keyed_app_count(),
        "{a:?}"
    );

    // A device leaves, but Kandji's total still counts more rows than any page delivers.
    sim.remove_device(0);
    sim.set_prism_total_extra(7);
    let b = h.sync(&e).await?;
    println!("short sync: {}", serde_json::to_string(&b)?);
    assert_eq!(b.counts.missing, 0, "{b:?}");
    assert_ne!(b.vendor_total, Some(b.records_fetched), "{b:?}");
    let msg = b.message.clone().unwrap_or_default();
    assert!(
        msg.contains("reported") && msg.contains("no record was marked missing"),
        "{b:?}"
    );
    Ok(())
}
