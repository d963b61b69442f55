//! Crash safety: the fetcher or the importer dies at several points (named failpoints stop the
//! handler right there, as a killed Lambda would); the next invocation finishes the run with every
//! record present once and exact counts. One test, because failpoints are process-wide.

use std::time::Duration;

use assetsync::failpoint;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::json;

async fn check_exact(
    h: &Harness,
    sim: &JamfSim,
    s: &assetsync::summary::RunSummary,
    before: usize,
) -> anyhow::Result<()> {
    let keyed = (0..sim.computer_count())
        .filter(|i| sim.serial(*i).is_some())
        .count() as u64;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    assert_eq!(s.counts.created + s.counts.duplicate, keyed, "{s:?}");
    assert_eq!(
        s.counts.skipped,
        sim.computer_count() as u64 - keyed,
        "{s:?}"
    );
    assert_eq!(s.pages.imported, s.pages.fetched, "{s:?}");
    assert_eq!(
        h.all_records("Hardware").await?.len() - before,
        s.counts.created as usize,
        "every record present once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_handlers_leave_exact_runs() -> anyhow::Result<()> {
    let h = Harness::start_with(|s| s.lease_seconds = 8).await?;
    let mut seed = 100;
    for point in ["fetcher.after_send", "fetcher.after_checkpoint"] {
        seed += 1;
        let sim = JamfSim::start(JamfConfig {
            computers: 500,
            seed,
            ..JamfConfig::default()
        })
        .await?;
        let name = format!("crash-{seed}");
        h.put_secret(&format!("assetsync/{name}"), &sim.secret())
            .await?;
        let mut ev = event(&name, "jamf", &format!("assetsync/{name}"), "Hardware");
        ev["mapping"] = json!("config:page_size=150");
        let before = h.all_records("Hardware").await?.len();
        failpoint::arm(point, 1);
        let crashed = h.sync(&ev).await;
        assert!(crashed.is_err(), "{point}: the fetcher died");
        // While its lease lives, a new start says a run is in progress.
        let busy = h
            .invoke_fetcher(ev.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(busy["started"], json!(false), "{busy}");
        // The holder is dead: once the lease expires, the next invocation resumes the same run.
        tokio::time::sleep(Duration::from_secs(9)).await;
        let s = h.sync(&ev).await?;
        println!("{point}: {}", serde_json::to_string(&s)?);
        assert_eq!(
            h.runs
                .list(100)
                .await?
                .iter()
                .filter(|r| r.connection == name)
                .count(),
            1,
            "{point}: resumed, not restarted"
        );
        check_exact(&h, &sim, &s, before).await?;
    }

    // The importer dies after planning a page, after writing its records, and after counting it:
    // SQS redelivers each page and the run still ends exact.
    let sim = JamfSim::start(JamfConfig {
        computers: 500,
        seed: 200,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/crash-imp", &sim.secret()).await?;
    let mut ev = event("crash-imp", "jamf", "assetsync/crash-imp", "Hardware");
    ev["mapping"] = json!("config:page_size=100");
    let before = h.all_records("Hardware").await?.len();
    failpoint::arm("importer.after_plan", 1);
    failpoint::arm("importer.after_writes", 2);
    failpoint::arm("importer.after_count", 1);
    let s = h.sync(&ev).await?;
    println!("importer crashes: {}", serde_json::to_string(&s)?);
    for p in [
        "importer.after_plan",
        "importer.after_writes",
        "importer.after_count",
    ] {
        assert_eq!(failpoint::remaining(p), 0, "{p} was hit");
    }
    check_exact(&h, &sim, &s, before).await?;
    Ok(())
}
