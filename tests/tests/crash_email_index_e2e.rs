//! Crash consistency of the email index: a page that dies after noting its devices waiting, a
//! person page that dies after writing its records but before the index, and one that dies after
//! the index but before looking for waiting devices. After redelivery every device is assigned to
//! its person and nothing is left waiting. Its own binary: failpoints are process-wide.

use assetsync::event::{ObjectType, PageMessage, SourceKind};
use assetsync::failpoint;
use assetsync_tests::harness::Harness;
use assetsync_tests::pages::{device, page, person};

/// Import a page, importing it again after each simulated crash (as SQS redelivers it).
async fn import(h: &Harness, p: &PageMessage) -> anyhow::Result<u32> {
    let mut crashes = 0;
    loop {
        match h.runner.importer.import_page(p).await {
            Ok(_) => return Ok(crashes),
            Err(e) if failpoint::is_crash(&e) && crashes < 5 => crashes += 1,
            Err(e) => return Err(anyhow::anyhow!(assetsync::error::chain(&e))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn people_and_devices_meet_whatever_dies_on_the_way() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let emails = ["ann@example.com", "bob@example.com", "cy@example.com"];
    let devices = emails
        .iter()
        .enumerate()
        .map(|(i, e)| device(&format!("DEV{i}"), e))
        .collect();
    failpoint::arm("importer.after_waiting_notes", 1);
    let c = import(
        &h,
        &page("jamf", SourceKind::Jamf, ObjectType::Hardware, 0, devices),
    )
    .await?;
    assert_eq!(c, 1, "the device page died once");
    for e in emails {
        assert_eq!(
            h.store.waiting_items(e).await?.len(),
            1,
            "{e}: its device waits"
        );
    }

    // Dies after the person records, before the email index.
    failpoint::arm("importer.after_records", 1);
    let c = import(
        &h,
        &page(
            "jc",
            SourceKind::Jumpcloud,
            ObjectType::Person,
            0,
            vec![person("ann", emails[0])],
        ),
    )
    .await?;
    assert_eq!(c, 1);
    // Dies after the email index, before looking for waiting devices.
    failpoint::arm("importer.after_email_index", 1);
    let c = import(
        &h,
        &page(
            "entra",
            SourceKind::Intune,
            ObjectType::Person,
            0,
            vec![person("bob", emails[1]), person("cy", emails[2])],
        ),
    )
    .await?;
    assert_eq!(c, 1);

    for (i, e) in emails.iter().enumerate() {
        let rec = h
            .record("Hardware", &format!("DEV{i}"))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no device record"))?;
        assert_eq!(
            rec.a.get("Assigned To").map(String::as_str),
            Some(*e),
            "{:?}",
            rec.a
        );
        assert_eq!(rec.a.get("Status").map(String::as_str), Some("assigned"));
        assert!(
            h.store.waiting_items(e).await?.is_empty(),
            "{e}: nobody waits"
        );
    }
    Ok(())
}
