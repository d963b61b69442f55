//! The email index (`E#<email>` items) under concurrent pages, as real DynamoDB runs them (4 an
//! importer instance, several instances): pages that all find an email's entry absent must not
//! overwrite each other's waiting devices or people, and a person page racing a device page for
//! a new email must end with the device assigned. Pages are imported by the real importer, at
//! once; a page that fails is imported again, as SQS would redeliver it.

use std::collections::{BTreeMap, BTreeSet};

use assetsync::event::{ObjectType, PageMessage, SourceKind};
use assetsync::mapping::MappedRecord;
use assetsync::store::EmailEntry;
use assetsync_tests::faults::Faults;
use assetsync_tests::harness::{Harness, Options};
use assetsync_tests::pages::{device, page, person};

/// The local stack with three importer workers, as in production, behind `faults` if any.
async fn start(faults: Option<Faults>) -> anyhow::Result<Harness> {
    Harness::start_opts(Options { faults, workers: 3 }, |_| {}).await
}

/// Import pages all at once; a failed page is imported again until it succeeds.
async fn import_at_once(h: &Harness, pages: &[PageMessage]) -> anyhow::Result<()> {
    let tries = pages.iter().map(|p| async move {
        let mut last = None;
        for _ in 0..8 {
            match h.runner.importer.import_page(p).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(assetsync::error::chain(&e)),
            }
        }
        Err(anyhow::anyhow!("page {} kept failing: {last:?}", p.page))
    });
    for r in futures::future::join_all(tries).await {
        r?;
    }
    Ok(())
}

/// Devices noted waiting for an email (its `W#` items, and the entry's old `waiting` map).
async fn waiting(h: &Harness, email: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    if let Some(i) = h.store.get(&format!("E#{email}"), "#").await? {
        let e: EmailEntry = assetsync::store::from_item(i)?;
        out.extend(e.waiting.into_keys());
    }
    out.extend(h.store.waiting_items(email).await?);
    Ok(out)
}

async fn entry(h: &Harness, email: &str) -> anyhow::Result<EmailEntry> {
    let i = h
        .store
        .get(&format!("E#{email}"), "#")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no email index entry for {email}"))?;
    Ok(assetsync::store::from_item(i)?)
}

async fn assert_assigned(h: &Harness, serial: &str, email: &str) -> anyhow::Result<()> {
    let rec = h
        .record("Hardware", serial)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no record {serial}"))?;
    assert_eq!(
        rec.a.get("Assigned To").map(String::as_str),
        Some(email),
        "{serial}: {:?}",
        rec.a
    );
    assert_eq!(rec.a.get("Status").map(String::as_str), Some("assigned"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_finding_one_new_email_all_keep_their_waiting_devices() -> anyhow::Result<()> {
    let faults = Faults::new(11, 0.0);
    let h = start(Some(faults.clone())).await?;
    // Eight pages of two connections (run twice: without faults, then with throttling,
    // conflicts and 500s before and after applying), each with a device of every email.
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (round, rate) in [(0u32, 0.0), (1, 0.08)] {
        faults.set_rate(rate);
        let emails: Vec<String> = (0..6)
            .map(|i| format!("shared{round}-{i}@example.com"))
            .collect();
        let mut pages = Vec::new();
        for p in 0..8u32 {
            let (conn, source) = if p % 2 == 0 {
                ("jamf-a", SourceKind::Jamf)
            } else {
                ("kandji-b", SourceKind::Kandji)
            };
            let records: Vec<MappedRecord> = emails
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let serial = format!("SER{round}{p:02}{i:02}");
                    want.entry(e.clone()).or_default().insert(serial.clone());
                    device(&serial, e)
                })
                .collect();
            pages.push(page(
                conn,
                source,
                ObjectType::Hardware,
                round * 100 + p,
                records,
            ));
        }
        import_at_once(&h, &pages).await?;
        for e in &emails {
            let got = waiting(&h, e).await?;
            let lost: Vec<&String> = want[e].difference(&got).collect();
            assert!(lost.is_empty(), "{e}: devices no longer waiting: {lost:?}");
        }
    }
    faults.set_rate(0.0);
    println!("faults injected: {:?}", faults.injected());

    // The people arrive: every device that waited is assigned to its person, nobody waits.
    let people: Vec<MappedRecord> = want
        .keys()
        .enumerate()
        .map(|(i, e)| person(&format!("u{i}"), e))
        .collect();
    import_at_once(
        &h,
        &[page(
            "jc",
            SourceKind::Jumpcloud,
            ObjectType::Person,
            0,
            people,
        )],
    )
    .await?;
    for (e, devices) in &want {
        for d in devices {
            assert_assigned(&h, d, e).await?;
        }
        assert!(
            waiting(&h, e).await?.is_empty(),
            "{e}: nobody waits any more"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_and_a_device_of_one_new_email_at_once_end_assigned() -> anyhow::Result<()> {
    let h = start(None).await?;
    // Rounds of: a device page and a person page for the same new emails, imported at once.
    let mut want = Vec::new();
    for round in 0..12u32 {
        let emails: Vec<String> = (0..3)
            .map(|i| format!("new{round}-{i}@example.com"))
            .collect();
        let devices: Vec<MappedRecord> = emails
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let serial = format!("RACE{round:02}{i:02}");
                want.push((serial.clone(), e.clone()));
                device(&serial, e)
            })
            .collect();
        let people: Vec<MappedRecord> = emails
            .iter()
            .enumerate()
            .map(|(i, e)| person(&format!("p{round}-{i}"), e))
            .collect();
        import_at_once(
            &h,
            &[
                page(
                    "jamf-r",
                    SourceKind::Jamf,
                    ObjectType::Hardware,
                    round,
                    devices,
                ),
                page(
                    "jc-r",
                    SourceKind::Jumpcloud,
                    ObjectType::Person,
                    round,
                    people,
                ),
            ],
        )
        .await?;
    }
    let mut unassigned = Vec::new();
    for (serial, email) in &want {
        let rec = h
            .record("Hardware", serial)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no record {serial}"))?;
        if rec.a.get("Assigned To") != Some(email)
            || rec.a.get("Status").map(String::as_str) != Some("assigned")
        {
            unassigned.push((serial, rec.a.get("Status").cloned()));
        }
    }
    assert!(
        unassigned.is_empty(),
        "devices left unassigned though their person exists: {unassigned:?}"
    );
    for (_, email) in &want {
        assert!(
            waiting(&h, email).await?.is_empty(),
            "{email}: nobody waits"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_directories_creating_one_email_at_once_keep_both_people() -> anyhow::Result<()> {
    let faults = Faults::new(5, 0.05);
    let h = start(Some(faults.clone())).await?;
    // JumpCloud and Entra both know these people (one email, two person records), and both
    // first syncs import at once, each in two pages holding every email.
    let emails: Vec<String> = (0..20).map(|i| format!("both{i}@example.com")).collect();
    let mut pages = Vec::new();
    for (conn, source) in [("jc", SourceKind::Jumpcloud), ("entra", SourceKind::Intune)] {
        for p in 0..2u32 {
            let people: Vec<MappedRecord> = emails
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 % 2 == p)
                .map(|(i, e)| person(&format!("{conn}-{i}"), e))
                .collect();
            pages.push(page(conn, source, ObjectType::Person, p, people));
        }
    }
    import_at_once(&h, &pages).await?;
    for (i, e) in emails.iter().enumerate() {
        let got: BTreeSet<String> = entry(&h, e).await?.persons.into_keys().collect();
        let want = BTreeSet::from([format!("jc-{i}"), format!("entra-{i}")]);
        assert_eq!(got, want, "{e}: both people in the email index");
    }
    // A device of each email now is assigned at once, and nothing is noted waiting.
    let devices: Vec<MappedRecord> = emails
        .iter()
        .enumerate()
        .map(|(i, e)| device(&format!("BOTH{i:02}"), e))
        .collect();
    faults.set_rate(0.0);
    import_at_once(
        &h,
        &[page(
            "jamf",
            SourceKind::Jamf,
            ObjectType::Hardware,
            0,
            devices,
        )],
    )
    .await?;
    for (i, e) in emails.iter().enumerate() {
        assert_assigned(&h, &format!("BOTH{i:02}"), e).await?;
        assert!(waiting(&h, e).await?.is_empty(), "{e}: nobody waits");
    }
    Ok(())
}
