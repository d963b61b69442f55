//! A 500 that DynamoDB answers after it applied a write: the SDK retries, and the retry's
//! condition fails on the writer's own write. The run lifecycle's conditional writes (the lease
//! at start, the fetcher's checkpoints, the finisher's claim) must recognise their own write
//! rather than read it as someone else's: otherwise a start is refused as "already running", a
//! fetcher believes it lost its run and stops, or a run waits for its own claim to go stale.

use std::collections::HashSet;

use assetsync_tests::faults::{Fault, Faults};
use assetsync_tests::harness::{event, Harness, Options};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_applied_before_a_500_are_recognised_as_their_own() -> anyhow::Result<()> {
    // A third of single-item writes answer 500 after they applied.
    let faults = Faults::applied_then_500(11, 0.33);
    let h = Harness::start_opts(
        Options {
            faults: Some(faults.clone()),
            workers: 2,
        },
        |_| {},
    )
    .await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 120,
        seed: 5,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-amb", &sim.secret()).await?;
    let mut ev = event("jamf-amb", "jamf", "assetsync/jamf-amb", "Hardware");
    ev["mapping"] = json!("config:page_size=10");
    let serials: HashSet<String> = (0..sim.computer_count())
        .filter_map(|i| sim.serial(i))
        .collect();

    for round in 0..3 {
        let started = std::time::Instant::now();
        let s = h.sync(&ev).await?;
        println!(
            "round {round}: {} in {:?}",
            serde_json::to_string(&s)?,
            started.elapsed()
        );
        assert_eq!(s.status.as_str(), "succeeded", "every run ends: {s:?}");
        assert_eq!(s.pages.fetched, 12, "every page fetched once: {s:?}");
        assert_eq!(s.pages.imported, s.pages.fetched, "{s:?}");
        assert_eq!(s.records_fetched, 120, "{s:?}");
        let c = s.counts;
        assert_eq!(c.errors, 0, "{s:?}");
        if round == 0 {
            assert_eq!(c.created, serials.len() as u64, "{s:?}");
        } else {
            assert_eq!(c.created, 0, "{s:?}");
        }
        // A run that waited for its own claim to go stale (two leases, 120 s) or for a lapsed lease
        // would take minutes; a healthy one takes seconds.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(100),
            "a run waited on its own write: {:?}",
            started.elapsed()
        );
    }
    let injected = faults.injected();
    println!("faults injected: {injected:?}");
    assert!(
        injected
            .get(&Fault::InternalServerErrorAfterWrite)
            .copied()
            .unwrap_or(0)
            > 20,
        "{injected:?}"
    );
    assert_eq!(h.all_records("Hardware").await?.len(), serials.len());
    Ok(())
}
