//! Crash consistency of the write path: the importer dies after writing records but before their
//! history and membership items (and after its writes, before counting). After SQS redelivers the
//! pages, record, membership, history and counts agree. Its own binary: failpoints are
//! process-wide.

use assetsync::failpoint;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::json;

async fn agree(h: &Harness, conn: &str, keys: &[String], action: &str) -> anyhow::Result<()> {
    for k in keys {
        let member = h
            .store
            .get(&format!("M#{conn}"), &format!("Hardware#{k}"))
            .await?;
        assert!(member.is_some(), "{k}: membership written");
        let rows = h
            .store
            .query(&format!("R#Hardware#{k}"), Some("H#"), false, None)
            .await?;
        let ok = rows.iter().any(|r| {
            r.get("action")
                .and_then(|a| a.as_s().ok())
                .is_some_and(|a| a == action)
        });
        assert!(ok, "{k}: a `{action}` history row ({} rows)", rows.len());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_between_record_and_side_items_completes_on_redelivery() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 120,
        seed: 77,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-x", &sim.secret()).await?;
    let mut ev = event("jamf-x", "jamf", "assetsync/jamf-x", "Hardware");
    ev["mapping"] = json!("config:page_size=40");
    let keyed: Vec<(usize, String)> = (0..sim.computer_count())
        .filter_map(|i| sim.serial(i).map(|s| (i, s)))
        .collect();

    failpoint::arm("importer.after_records", 2);
    failpoint::arm("importer.after_writes", 1);
    let s = h.sync(&ev).await?;
    assert_eq!(failpoint::remaining("importer.after_records"), 0);
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    let records = h.all_records("Hardware").await?;
    assert_eq!(s.counts.created as usize, records.len(), "{s:?}");
    assert_eq!(
        s.counts.created + s.counts.duplicate,
        keyed.len() as u64,
        "{s:?}"
    );
    let keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
    agree(&h, "jamf-x", &keys, "created").await?;

    // Ten devices change; the pages holding them die after the record writes.
    let changed: Vec<(usize, String)> = keyed.iter().step_by(12).take(10).cloned().collect();
    for (i, _) in &changed {
        sim.set_os_version(*i, "99.1");
    }
    failpoint::arm("importer.after_records", 3);
    let s2 = h.sync(&ev).await?;
    assert_eq!(s2.status.as_str(), "succeeded", "{s2:?}");
    assert_eq!(s2.counts.created, 0, "{s2:?}");
    // Serials shared by two source records (re-enrolments) count as duplicates instead.
    let updated: Vec<String> = changed
        .iter()
        .filter(|(_, k)| keyed.iter().filter(|(_, k2)| k2 == k).count() == 1)
        .map(|(_, k)| k.clone())
        .collect();
    assert_eq!(s2.counts.updated, updated.len() as u64, "{s2:?}");
    agree(&h, "jamf-x", &updated, "updated").await?;
    for k in &updated {
        let r = h.record("Hardware", k).await?.expect("record");
        assert_eq!(
            r.a.get("OS Version").map(String::as_str),
            Some("99.1"),
            "{k}"
        );
    }
    Ok(())
}
