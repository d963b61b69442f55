//! The missing sweep at the end of a run, end to end: it reads only the keys the run's pages
//! dropped from their packs, the packs no page replaced and the keys absent before, never the
//! whole membership, and still marks every vanished device and no moved one. Re-syncs read the
//! packs by key, within the pack range pages raise as the fleet grows. Anything that makes
//! that basis doubtful (a revert, a lost grace item) makes the next sweep read everything.

use std::collections::BTreeSet;

use assetsync::summary::Status;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::json;

/// Keys of the records marked missing from a connection.
async fn missing(h: &Harness) -> anyhow::Result<BTreeSet<String>> {
    Ok(h.all_records("Hardware")
        .await?
        .into_iter()
        .filter(|r| r.src.values().any(|s| s.missing.is_some()))
        .map(|r| r.key)
        .collect())
}

/// Membership partitions the sync's requests queried (a full sweep queries one).
fn membership_queries(h: &Harness) -> u64 {
    h.ddb.get().queries_by_kind.get("M").copied().unwrap_or(0)
}

/// Pack partitions queried (packs are read by key once the connection's pack range is kept).
fn pack_queries(h: &Harness) -> u64 {
    h.ddb.get().queries_by_kind.get("F").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_reads_only_what_moved_and_still_marks_every_vanished_device(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 250,
        seed: 11,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-sw", &sim.secret()).await?;
    let mut ev = event("jamf-sw", "jamf", "assetsync/jamf-sw", "Hardware");
    // Small pages, so removals shift devices across page boundaries; marked on the first absence.
    ev["mapping"] = json!("config:page_size=40\nconfig:missing_after=1\nconfig:max_drop=60");
    let first = h.sync(&ev).await?;
    assert_eq!(first.status, Status::Succeeded, "{first:?}");
    assert!(first.counts.created > 200, "{first:?}");

    // Unchanged: the sweep reads no membership.
    h.ddb.reset();
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.missing, 0, "{s:?}");
    assert_eq!(
        membership_queries(&h),
        0,
        "an unchanged sync read the membership"
    );
    assert_eq!(pack_queries(&h), 0, "the packs are read by key");

    // The first, a middle and the last device go: every device after the first moves one place,
    // so each page hands one device to the page before it.
    let keyed: Vec<usize> = (0..sim.computer_count())
        .filter(|i| sim.serial(*i).is_some())
        .collect();
    let picks = [keyed[0], keyed[keyed.len() / 2], keyed[keyed.len() - 1]];
    let mut gone = BTreeSet::new();
    for i in picks.iter().rev() {
        gone.insert(sim.serial(*i).expect("keyed"));
        sim.remove_computer(*i);
    }
    h.ddb.reset();
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.missing, 3, "{s:?}");
    assert_eq!(
        missing(&h).await?,
        gone,
        "exactly the vanished devices are missing"
    );
    assert_eq!(
        membership_queries(&h),
        0,
        "the sweep read the whole membership"
    );

    // The last 45 devices go: the last page disappears, its pack is no page's now.
    let keyed: Vec<usize> = (0..sim.computer_count())
        .filter(|i| sim.serial(*i).is_some())
        .collect();
    let mut tail = BTreeSet::new();
    // Highest index first: a removal shifts only the computers after it.
    for i in keyed.iter().rev().take(45) {
        tail.insert(sim.serial(*i).expect("keyed"));
        sim.remove_computer(*i);
    }
    h.ddb.reset();
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.missing, 45, "{s:?}");
    let want: BTreeSet<String> = gone.union(&tail).cloned().collect();
    assert_eq!(missing(&h).await?, want);
    assert_eq!(membership_queries(&h), 0);
    // The vanished last page's pack was found by key, within the range earlier runs raised.
    assert_eq!(pack_queries(&h), 0);

    // A new device is created; nothing else changes.
    let added = sim.add_computer();
    let s = h.sync(&ev).await?;
    assert_eq!(s.counts.missing, 0, "{s:?}");
    assert_eq!(
        s.counts.created,
        u64::from(sim.serial(added).is_some()),
        "{s:?}"
    );
    assert_eq!(missing(&h).await?, want);

    // Without the last sweep's absent keys (as after a revert), the next sweep reads everything
    // once, finds nothing new, and the one after is incremental again.
    assetsync::runs::forget_grace(&h.store, "jamf-sw", "Hardware").await?;
    h.ddb.reset();
    let s = h.sync(&ev).await?;
    assert_eq!(s.counts.missing, 0, "{s:?}");
    assert_eq!(
        membership_queries(&h),
        1,
        "the sweep after a lost basis reads it all"
    );
    assert_eq!(missing(&h).await?, want);
    h.ddb.reset();
    let s = h.sync(&ev).await?;
    assert_eq!(s.counts.missing, 0, "{s:?}");
    assert_eq!(membership_queries(&h), 0);

    // A register from before pack ranges: the next sweep finds the packs by Query and opens the
    // range; the one after reads them by key, and devices that vanish meanwhile are still marked.
    h.store.delete("G#jamf-sw", "Hardware#packs", None).await?;
    h.ddb.reset();
    let s = h.sync(&ev).await?;
    assert_eq!(s.counts.missing, 0, "{s:?}");
    assert_eq!(pack_queries(&h), 1, "without a range the packs are queried");
    let keyed: Vec<usize> = (0..sim.computer_count())
        .filter(|i| sim.serial(*i).is_some())
        .collect();
    let mut last = BTreeSet::new();
    for i in keyed.iter().rev().take(41) {
        last.insert(sim.serial(*i).expect("keyed"));
        sim.remove_computer(*i);
    }
    h.ddb.reset();
    let s = h.sync(&ev).await?;
    assert_eq!(s.counts.missing, 41, "{s:?}");
    assert_eq!(pack_queries(&h), 0, "the range the Query opened is kept");
    let want: BTreeSet<String> = want.union(&last).cloned().collect();
    assert_eq!(missing(&h).await?, want);

    // The fleet grows past every page so far (the importer raises the range for the new pages),
    // then the newcomers go again: their pages' packs, beyond what any sweep saw, are read by
    // key and the newcomers marked missing.
    let added: Vec<usize> = (0..130).map(|_| sim.add_computer()).collect();
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    let mut newcomers = BTreeSet::new();
    for i in added.iter().rev() {
        if let Some(serial) = sim.serial(*i) {
            newcomers.insert(serial);
        }
        sim.remove_computer(*i);
    }
    h.ddb.reset();
    let s = h.sync(&ev).await?;
    assert_eq!(s.counts.missing, newcomers.len() as u64, "{s:?}");
    assert_eq!(pack_queries(&h), 0);
    let want: BTreeSet<String> = want.union(&newcomers).cloned().collect();
    assert_eq!(missing(&h).await?, want);
    Ok(())
}
