//! Precedence per attribute (`ATTRIBUTE_PRECEDENCE`), end to end: Jamf and Intune report the same
//! laptop; the OS version follows its own order while the model follows the source order, and a
//! change of the setting applies at the next run of each connection with unchanged vendor data.

use assetsync::settings::precedence;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::intune::{IntuneConfig, IntuneSim};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attribute_follows_its_own_order_and_a_change_applies_at_the_next_run(
) -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    // The template hands the setting to the functions (empty by default).
    let env: std::collections::HashMap<String, String> =
        h.stack.function_env("importer").into_iter().collect();
    assert!(
        env.contains_key("ATTRIBUTE_PRECEDENCE"),
        "the template sets ATTRIBUTE_PRECEDENCE: {:?}",
        env.keys().collect::<Vec<_>>()
    );
    // Jamf before Intune in general; Intune before Jamf for the OS version.
    h.runner.importer.settings.precedence = precedence("jamf,intune", "OS Version=intune,jamf");
    let jamf = JamfSim::start(JamfConfig {
        computers: 40,
        seed: 5,
        ..JamfConfig::default()
    })
    .await?;
    let intune = IntuneSim::start(IntuneConfig {
        devices: 40,
        users: 20,
        ..IntuneConfig::default()
    })
    .await?;
    h.put_secret("assetsync/p-jamf", &jamf.secret()).await?;
    h.put_secret("assetsync/p-intune", &intune.secret()).await?;
    let (k, serial) = (0..jamf.computer_count())
        .find_map(|i| jamf.serial(i).map(|s| (i, s)))
        .expect("a Jamf computer with a serial");
    jamf.set_os_version(k, "14.6-jamf");
    jamf.set_field(k, "hardware.model", json!("MacBook Pro (Jamf)"));
    intune.set_field(0, "serialNumber", json!(serial));
    intune.set_os_version(0, "14.7-intune");
    intune.set_field(0, "model", json!("MacBook Pro (Intune)"));
    let ev_jamf = event("p-jamf", "jamf", "assetsync/p-jamf", "Hardware");
    let ev_intune = event("p-intune", "intune", "assetsync/p-intune", "Hardware");

    let s = h.sync(&ev_jamf).await?;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    let s = h.sync(&ev_intune).await?;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    let rec = h.record("Hardware", &serial).await?.expect("the laptop");
    assert_eq!(
        rec.a["OS Version"], "14.7-intune",
        "Intune first for the OS version"
    );
    assert_eq!(rec.p["OS Version"].c, "p-intune");
    assert_eq!(
        rec.a["Model"], "MacBook Pro (Jamf)",
        "the model follows the source order"
    );
    // No flip-flop: Jamf does not win the OS version back.
    let s = h.sync(&ev_jamf).await?;
    assert_eq!(s.counts.updated, 0, "{s:?}");
    assert_eq!(
        h.record("Hardware", &serial).await?.unwrap().a["OS Version"],
        "14.7-intune"
    );

    // The setting changes (the OS version is no longer named: the source order applies). The
    // vendors report exactly what they did; the next Jamf run takes the OS version.
    h.runner.importer.settings.precedence = precedence("jamf,intune", "");
    let s = h.sync(&ev_jamf).await?;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    assert_eq!(s.counts.updated, 1, "only the shared laptop moves: {s:?}");
    let rec = h.record("Hardware", &serial).await?.unwrap();
    assert_eq!(
        rec.a["OS Version"], "14.6-jamf",
        "{:?}",
        rec.p["OS Version"]
    );
    assert_eq!(rec.p["OS Version"].c, "p-jamf");
    let s = h.sync(&ev_intune).await?;
    assert_eq!(s.counts.updated, 0, "Intune no longer wins it: {s:?}");
    let rec = h.record("Hardware", &serial).await?.unwrap();
    assert_eq!(rec.a["OS Version"], "14.6-jamf");
    assert_eq!(rec.a["Model"], "MacBook Pro (Jamf)");

    // And back: Intune first for the OS version again, applied at Intune's next run.
    h.runner.importer.settings.precedence = precedence("jamf,intune", "OS Version=intune");
    let s = h.sync(&ev_intune).await?;
    assert_eq!(s.counts.updated, 1, "{s:?}");
    let rec = h.record("Hardware", &serial).await?.unwrap();
    assert_eq!(rec.a["OS Version"], "14.7-intune");
    assert_eq!(rec.a["Model"], "MacBook Pro (Jamf)");
    Ok(())
}
