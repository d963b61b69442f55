//! All five sources into one register: people from JumpCloud and Intune, devices from every
//! source; a device is found its person by email, and one laptop seen by Intune and by Endpoint
//! Central is one record.

use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::endpoint_central::{EcSimConfig, EndpointCentralSim};
use assetsync_tests::sim::intune::{IntuneConfig, IntuneSim};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use assetsync_tests::sim::jumpcloud::{JumpCloudConfig, JumpCloudSim};
use assetsync_tests::sim::kandji::{KandjiSim, KandjiSimConfig};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_sources_one_register() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let jc = JumpCloudSim::start(JumpCloudConfig {
        systems: 100,
        users: 150,
        ..JumpCloudConfig::default()
    })
    .await?;
    let intune = IntuneSim::start(IntuneConfig {
        devices: 150,
        users: 150,
        ..IntuneConfig::default()
    })
    .await?;
    let ec = EndpointCentralSim::start(EcSimConfig {
        devices: 120,
        ..EcSimConfig::default()
    })
    .await?;
    let jamf = JamfSim::start(JamfConfig {
        computers: 150,
        ..JamfConfig::default()
    })
    .await?;
    let kandji = KandjiSim::start(KandjiSimConfig {
        devices: 120,
        users: 100,
        ..KandjiSimConfig::default()
    })
    .await?;
    for (name, secret) in [
        ("assetsync/jc", jc.secret()),
        ("assetsync/intune", intune.secret()),
        ("assetsync/ec", ec.secret()),
        ("assetsync/jamf", jamf.secret()),
        ("assetsync/kandji", kandji.secret()),
    ] {
        h.put_secret(name, &secret).await?;
    }
    // One laptop is managed by both Intune and Endpoint Central.
    let shared_serial = (0..intune.device_count())
        .filter_map(|i| intune.device(i))
        .find_map(|d| {
            d["serialNumber"]
                .as_str()
                .filter(|s| s.len() > 5)
                .map(str::to_string)
        })
        .expect("an Intune device with a serial");
    ec.set_field(0, "managedcomputerextn.service_tag", json!(shared_serial));

    // People first, then devices.
    let mut runs = vec![];
    runs.push(
        h.sync(&event("jc-people", "jumpcloud", "assetsync/jc", "Person"))
            .await?,
    );
    let mut ev = event("intune-people", "intune", "assetsync/intune", "Person");
    ev["mapping"] = json!("config:api=users");
    runs.push(h.sync(&ev).await?);
    runs.push(
        h.sync(&event(
            "intune-devices",
            "intune",
            "assetsync/intune",
            "Hardware",
        ))
        .await?,
    );
    runs.push(
        h.sync(&event(
            "ec-devices",
            "endpoint-central",
            "assetsync/ec",
            "Hardware",
        ))
        .await?,
    );
    runs.push(
        h.sync(&event("jamf-devices", "jamf", "assetsync/jamf", "Hardware"))
            .await?,
    );
    runs.push(
        h.sync(&event(
            "kandji-devices",
            "kandji",
            "assetsync/kandji",
            "Hardware",
        ))
        .await?,
    );
    runs.push(
        h.sync(&event(
            "jc-devices",
            "jumpcloud",
            "assetsync/jc",
            "Hardware",
        ))
        .await?,
    );
    for s in &runs {
        println!("{:<16} {:<8} created {:>4} updated {:>4} unchanged {:>4} skipped {:>3} dup {:>2} errors {}", s.connection, s.object_type, s.counts.created, s.counts.updated, s.counts.unchanged, s.counts.skipped, s.counts.duplicate, s.counts.errors);
        assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
        assert!(
            s.counts.created + s.counts.updated + s.counts.unchanged > 0,
            "{s:?}"
        );
    }

    let people = h.all_records("Person").await?;
    assert!(
        people.iter().any(|p| p.src.contains_key("jc-people"))
            && people.iter().any(|p| p.src.contains_key("intune-people"))
    );
    let devices = h.all_records("Hardware").await?;
    for conn in [
        "intune-devices",
        "ec-devices",
        "jamf-devices",
        "kandji-devices",
        "jc-devices",
    ] {
        assert!(
            devices.iter().any(|d| d.src.contains_key(conn)),
            "{conn} fed the register"
        );
    }
    // One record per key across sources.
    let merged = devices
        .iter()
        .find(|d| d.key == shared_serial.trim().to_uppercase())
        .expect("the shared laptop");
    assert!(
        merged.src.contains_key("intune-devices") && merged.src.contains_key("ec-devices"),
        "{:?}",
        merged.src.keys()
    );
    // A device's user is found among the people by email, whichever source imported them.
    let person_emails: std::collections::HashSet<String> = people
        .iter()
        .filter(|p| p.a.get("Status").is_none_or(|s| s == "active"))
        .filter_map(|p| p.a.get("Email").map(|e| e.to_lowercase()))
        .collect();
    let assigned: Vec<_> = devices
        .iter()
        .filter(|d| d.a.get("Status").map(String::as_str) == Some("assigned"))
        .collect();
    assert!(!assigned.is_empty());
    for d in &assigned {
        assert!(person_emails.contains(&d.a["Assigned To"]), "{:?}", d.a);
    }
    for conn in ["intune-devices", "jamf-devices", "kandji-devices"] {
        assert!(
            assigned.iter().any(|d| d.src.contains_key(conn)),
            "some {conn} device is assigned to a person"
        );
    }
    Ok(())
}
