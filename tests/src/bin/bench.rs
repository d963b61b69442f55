//! Benchmark: prints the figures the issues ask for (not a test: CI machines are noisy).
//!
//! `cargo run --release -p assetsync-tests --bin bench -- [--fleet 10000] [--sources jamf,intune,...]`
//! For each source: wall time and vendor requests of a first sync, DynamoDB requests per record on
//! the first sync, an unchanged re-sync, a 1%-changed sync and the missing-device sweep (1% gone).
//! `bench page-memory` runs in its own process and prints the peak memory of fetching, mapping and
//! serialising the largest page (2,000 Jamf computers), as the fetcher does.
//! `bench write-path [--fleet 10000]` (the default mode's first table is skipped) prints, for a
//! Jamf fleet: first sync, unchanged re-sync and 1% changed with wall times; the raw limit
//! measured in the same run (every page fetched over one connection, plus BatchWriteItem of as
//! many same-size items, 25 a call); the ratios; DynamoDB requests and consumed capacity per record.

use std::time::Instant;

use anyhow::Context;
use assetsync::event::ObjectType;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::endpoint_central::{EcSimConfig, EndpointCentralSim};
use assetsync_tests::sim::intune::{IntuneConfig, IntuneSim};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use assetsync_tests::sim::jumpcloud::{JumpCloudConfig, JumpCloudSim};
use assetsync_tests::sim::kandji::{KandjiSim, KandjiSimConfig};
use assetsync_tests::sim::Control;
use serde_json::{json, Value};

/// One simulated source under benchmark, with the hooks to change and remove its records.
enum Sim {
    Jamf(JamfSim),
    Intune(IntuneSim),
    Ec(EndpointCentralSim),
    Kandji(KandjiSim),
    JumpCloud(JumpCloudSim),
}

impl Sim {
    async fn start(source: &str, n: usize) -> anyhow::Result<Self> {
        Ok(match source {
            "jamf" => Sim::Jamf(
                JamfSim::start(JamfConfig {
                    computers: n,
                    ..JamfConfig::default()
                })
                .await?,
            ),
            "intune" => Sim::Intune(
                IntuneSim::start(IntuneConfig {
                    devices: n,
                    users: n / 2,
                    ..IntuneConfig::default()
                })
                .await?,
            ),
            "endpoint-central" => Sim::Ec(
                EndpointCentralSim::start(EcSimConfig {
                    devices: n,
                    rate_limit: None,
                    ..EcSimConfig::default()
                })
                .await?,
            ),
            "kandji" => Sim::Kandji(
                KandjiSim::start(KandjiSimConfig {
                    devices: n,
                    users: n / 2,
                    hourly_limit: 1_000_000,
                    ..KandjiSimConfig::default()
                })
                .await?,
            ),
            "jumpcloud" => Sim::JumpCloud(
                JumpCloudSim::start(JumpCloudConfig {
                    systems: n,
                    users: n / 2,
                    ..JumpCloudConfig::default()
                })
                .await?,
            ),
            other => anyhow::bail!("unknown source {other}"),
        })
    }
    fn secret(&self) -> Value {
        match self {
            Sim::Jamf(s) => s.secret(),
            Sim::Intune(s) => s.secret(),
            Sim::Ec(s) => s.secret(),
            Sim::Kandji(s) => s.secret(),
            Sim::JumpCloud(s) => s.secret(),
        }
    }
    fn control(&self) -> &Control {
        match self {
            Sim::Jamf(s) => s.control(),
            Sim::Intune(s) => s.control(),
            Sim::Ec(s) => s.control(),
            Sim::Kandji(s) => &s.handle.control,
            Sim::JumpCloud(s) => s.control(),
        }
    }
    fn count(&self) -> usize {
        match self {
            Sim::Jamf(s) => s.computer_count(),
            Sim::Intune(s) => s.device_count(),
            Sim::Ec(s) => s.device_count(),
            Sim::Kandji(s) => s.device_count(),
            Sim::JumpCloud(s) => s.device_count(),
        }
    }
    fn change(&self, i: usize) {
        match self {
            Sim::Jamf(s) => s.set_os_version(i, "99.0"),
            Sim::Intune(s) => s.set_os_version(i, "99.0"),
            Sim::Ec(s) => s.set_os_version(i, "99.0"),
            Sim::Kandji(s) => s.set_os_version(i, "99.0"),
            Sim::JumpCloud(s) => s.set_os_version(i, "99.0"),
        }
    }
    fn remove(&self, i: usize) {
        match self {
            Sim::Jamf(s) => drop(s.remove_computer(i)),
            Sim::Intune(s) => s.remove_device(i),
            Sim::Ec(s) => s.remove_device(i),
            Sim::Kandji(s) => drop(s.remove_device(i)),
            Sim::JumpCloud(s) => drop(s.remove_device(i)),
        }
    }
}

fn per_record(req: u64, records: u64) -> String {
    format!("{:.3}", req as f64 / records.max(1) as f64)
}

async fn bench_source(source: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let h = Harness::start().await?;
    let sim = Sim::start(source, n).await?;
    h.put_secret("assetsync/bench", &sim.secret()).await?;
    let mut ev = event("bench", source, "assetsync/bench", "Hardware");
    // The sweep marks what one complete run lost (no grace), as before the grace period.
    ev["mapping"] = json!("config:missing_after=1");
    if source == "endpoint-central" {
        ev["mapping"] = json!(
            "config:detail_rate=1000000\nconfig:detail_concurrency=16\nconfig:missing_after=1"
        );
    }
    let mut out = vec![source.to_string()];
    // First sync.
    h.ddb.reset();
    let v0 = sim.control().data_requests() + sim.control().token_requests();
    let t = Instant::now();
    let s = h.sync(&ev).await?;
    let wall = t.elapsed();
    let vendor = sim.control().data_requests() + sim.control().token_requests() - v0;
    let records = s.records_fetched;
    out.push(format!("{:.1}", wall.as_secs_f64()));
    out.push(format!(
        "{:.1}",
        vendor as f64 * 1000.0 / records.max(1) as f64
    ));
    out.push(per_record(h.ddb.get().total(), records));
    // Unchanged.
    h.ddb.reset();
    let s2 = h.sync(&ev).await?;
    let c = h.ddb.get();
    out.push(format!(
        "{} ({} rec writes)",
        per_record(c.total(), records),
        c.record_writes
    ));
    // 1% changed.
    let step = 100;
    for i in (0..sim.count()).step_by(step) {
        sim.change(i);
    }
    h.ddb.reset();
    let s3 = h.sync(&ev).await?;
    out.push(format!(
        "{} ({} upd)",
        per_record(h.ddb.get().total(), records),
        s3.counts.updated
    ));
    // 1% gone: the missing-device sweep.
    let gone = sim.count() / 100;
    for k in 0..gone {
        sim.remove(k * 50 % sim.count().max(1));
    }
    h.ddb.reset();
    let s4 = h.sync(&ev).await?;
    out.push(format!(
        "{} ({} missing)",
        per_record(h.ddb.get().total(), records),
        s4.counts.missing
    ));
    eprintln!(
        "{source}: first {:?}; unchanged {:?}; changed {:?}; sweep {:?}",
        s.counts, s2.counts, s3.counts, s4.counts
    );
    Ok(out)
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn page_memory() -> anyhow::Result<()> {
    use assetsync::connectors::{self, ConnectorContext, MemoryState};
    let sim = JamfSim::start(JamfConfig {
        computers: 2000,
        ..JamfConfig::default()
    })
    .await?;
    let before = peak_rss_kib().unwrap_or(0);
    let mapping = assetsync::mapping::Mapping::parse(connectors::default_mapping(
        assetsync::event::SourceKind::Jamf,
        ObjectType::Hardware,
        None,
    )?)?;
    let ctx = ConnectorContext {
        connection: "mem".into(),
        object_type: ObjectType::Hardware,
        config: mapping.config.clone(),
        state: std::sync::Arc::new(MemoryState::default()),
    };
    let c = connectors::build(assetsync::event::SourceKind::Jamf, &sim.secret(), ctx).await?;
    let page = c.fetch_page(None).await?;
    let (records, skipped) =
        assetsync::fetcher::map_page(&mapping, c.as_ref(), &page.records, ObjectType::Hardware);
    let bytes: usize = records
        .iter()
        .map(|r| serde_json::to_string(r).map(|s| s.len()).unwrap_or(0))
        .sum();
    let after = peak_rss_kib().unwrap_or(0);
    println!(
        "largest page: {} raw records, {} mapped, {} skipped, {} KiB of messages; peak RSS {} KiB (simulator included; {} KiB before the page)",
        page.records.len(),
        records.len(),
        skipped.len(),
        bytes / 1024,
        after,
        before
    );
    Ok(())
}

/// A map's entries in key order, rounded, for printing.
fn sorted(m: &std::collections::HashMap<String, f64>) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = m
        .iter()
        .map(|(k, u)| (k.clone(), (u * 10.0).round() / 10.0))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// One measured sync: wall seconds and the DynamoDB figures per record.
fn sync_row(
    name: &str,
    secs: f64,
    raw: f64,
    c: &assetsync_tests::harness::Counts,
    n: u64,
) -> String {
    let n = n.max(1) as f64;
    format!(
        "| {name} | {secs:.2} | {:.2}x | {:.3} | {:.3} | {:.3} | {:.3} |",
        secs / raw.max(1e-9),
        c.reads as f64 / n,
        c.writes as f64 / n,
        c.read_units / n,
        c.write_units / n
    )
}

async fn write_path(n: usize) -> anyhow::Result<()> {
    use assetsync::connectors::{self, ConnectorContext, MemoryState};
    use assetsync::event::SourceKind;
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: n,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/bench", &sim.secret()).await?;
    let ev = event("bench", "jamf", "assetsync/bench", "Hardware");

    let mut rows = Vec::new();
    h.ddb.reset();
    let t = Instant::now();
    // The fetcher's invocation and the queue's draining, timed apart.
    let started = h.invoke_fetcher(ev.clone()).await?;
    let t_fetcher = t.elapsed().as_secs_f64();
    let run_id = started
        .get("run_id")
        .and_then(Value::as_str)
        .context("the fetcher started no run")?
        .to_string();
    let first = h.runner.drain_until_done(&run_id, &mut |_| {}).await?;
    let t_first = t.elapsed().as_secs_f64();
    let c_first = h.ddb.get();
    let records = first.records_fetched;

    // The raw limit: fetch every page over one connection, then write as many items of the
    // records' average size, 25 a BatchWriteItem, into the same moto.
    let mapping = assetsync::mapping::Mapping::parse(connectors::default_mapping(
        SourceKind::Jamf,
        ObjectType::Hardware,
        None,
    )?)?;
    let ctx = ConnectorContext {
        connection: "raw".into(),
        object_type: ObjectType::Hardware,
        config: mapping.config.clone(),
        state: std::sync::Arc::new(MemoryState::default()),
    };
    let t = Instant::now();
    let conn = connectors::build(SourceKind::Jamf, &sim.secret(), ctx).await?;
    let mut cursor = None;
    let mut fetched = 0usize;
    loop {
        let page = conn.fetch_page(cursor.as_ref()).await?;
        fetched += page.records.len();
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let t_fetch = t.elapsed().as_secs_f64();
    // A sample of 200 records by key (a scan of the whole register takes minutes at 50,000).
    let mut sample = Vec::new();
    for i in 0..sim.computer_count() {
        if sample.len() == 200 {
            break;
        }
        if let Some(serial) = sim.serial(i) {
            if let Some(r) = h.record("Hardware", &serial).await? {
                sample.push(r);
            }
        }
    }
    let avg = sample
        .iter()
        .map(|r| serde_json::to_string(r).map(|s| s.len()).unwrap_or(0))
        .sum::<usize>()
        / sample.len().max(1);
    let pad = "x".repeat(avg);
    let items: Vec<_> = (0..fetched)
        .map(|i| {
            std::collections::HashMap::from([
                ("pk".to_string(), assetsync::store::s(format!("X#raw#{i}"))),
                ("sk".to_string(), assetsync::store::s("#")),
                ("d".to_string(), assetsync::store::s(&pad)),
            ])
        })
        .collect();
    let t = Instant::now();
    h.store.batch_put(items).await?;
    let t_write = t.elapsed().as_secs_f64();
    let raw = t_fetch + t_write;
    // The same count of the register's own record items (sampled records under new keys),
    // 25 a BatchWriteItem: moto parses every attribute of a request, so items shaped like
    // records cost it several times the one-attribute items of the raw limit.
    let shaped: Vec<_> = (0..fetched)
        .filter_map(|i| {
            let r = sample.get(i % sample.len().max(1))?;
            assetsync::store::to_item(&format!("X#rec#{i}"), "#", r).ok()
        })
        .collect();
    let t = Instant::now();
    h.store.batch_put(shaped).await?;
    let t_shaped = t.elapsed().as_secs_f64();

    h.ddb.reset();
    let t = Instant::now();
    let s2 = h.sync(&ev).await?;
    let t_unchanged = t.elapsed().as_secs_f64();
    let c_unchanged = h.ddb.get();

    for i in (0..sim.computer_count()).step_by(100) {
        sim.set_os_version(i, "99.0");
    }
    h.ddb.reset();
    let t = Instant::now();
    let s3 = h.sync(&ev).await?;
    let t_changed = t.elapsed().as_secs_f64();
    let c_changed = h.ddb.get();

    // Every device checked in since: only volatile values move (the hourly case of a real fleet).
    let clock = assetsync_tests::sim::fleet::CheckinClock::default();
    for i in 0..sim.computer_count() {
        let t = clock.tick();
        sim.set_field(i, "general.lastContactTime", json!(t));
        sim.set_field(i, "general.reportDate", json!(t));
    }
    h.ddb.reset();
    let t = Instant::now();
    let s4 = h.sync(&ev).await?;
    let t_checkin = t.elapsed().as_secs_f64();
    let c_checkin = h.ddb.get();

    rows.push(sync_row("first sync", t_first, raw, &c_first, records));
    rows.push(sync_row(
        "unchanged re-sync",
        t_unchanged,
        raw,
        &c_unchanged,
        records,
    ));
    rows.push(sync_row("1% changed", t_changed, raw, &c_changed, records));
    rows.push(sync_row(
        "check-ins moved",
        t_checkin,
        raw,
        &c_checkin,
        records,
    ));
    println!(
        "Jamf fleet {n}: {records} records; raw limit {raw:.2} s (fetch {t_fetch:.2} s over one connection, {fetched} items of {avg} B BatchWriteItem-ed 25 a call in {t_write:.2} s)"
    );
    println!(
        "first sync: fetcher invocation {t_fetcher:.2} s, importing the queue {:.2} s; writing {fetched} record-shaped items alone takes {t_shaped:.2} s (fetch + that: {:.2}x the raw limit; the first sync is {:.2}x of fetch + that)",
        t_first - t_fetcher,
        (t_fetch + t_shaped) / raw.max(1e-9),
        t_first / (t_fetch + t_shaped).max(1e-9)
    );
    println!("| sync | wall s | / raw | read req/rec | write req/rec | read units/rec | write units/rec |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    // Per record and sync, priced at 10,000 devices synced every hour (720 syncs a month).
    let month = |c: &assetsync_tests::harness::Counts| {
        let n = records.max(1) as f64;
        assetsync_tests::capacity::dollars(c.read_units / n, c.write_units / n) * 10_000.0 * 720.0
    };
    println!(
        "10,000 devices synced hourly, at on-demand list prices (${} per million write units, ${} per million read units; units from item sizes): check-ins moved ${:.2} a month, unchanged ${:.2}, 1% changed ${:.2}; a first sync of 10,000 costs ${:.3} once",
        assetsync_tests::capacity::USD_PER_MILLION_WRU,
        assetsync_tests::capacity::USD_PER_MILLION_RRU,
        month(&c_checkin),
        month(&c_unchanged),
        month(&c_changed),
        month(&c_first) / 720.0,
    );
    println!(
        "write units by item kind (check-ins moved): {:?}; read units by operation: {:?}",
        sorted(&c_checkin.write_units_by_kind),
        sorted(&c_checkin.read_units_by_op)
    );
    println!(
        "write units by item kind (first sync): {:?}; read units by operation: {:?}",
        sorted(&c_first.write_units_by_kind),
        sorted(&c_first.read_units_by_op)
    );
    eprintln!(
        "first {:?}\nunchanged {:?}\nchanged {:?}\ncheck-ins {:?}\nwrites by kind (first) {:?}\nby op (first) {:?}\nsecs by op (first) {:?}\nqueries by partition kind (first) {:?}, (unchanged) {:?}\nby op (unchanged) {:?}\nreads by kind (unchanged) {:?}\nwrites by kind (unchanged) {:?}",
        first.counts, s2.counts, s3.counts, s4.counts, c_first.writes_by_kind, c_first.by_op, c_first.secs_by_op, c_first.queries_by_kind, c_unchanged.queries_by_kind, c_unchanged.by_op, c_unchanged.reads_by_kind, c_unchanged.writes_by_kind
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("page-memory") {
        return page_memory().await;
    }
    if args.first().map(String::as_str) == Some("write-path") {
        std::env::set_var(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
        );
        let n = match args.get(1).map(String::as_str) {
            Some("--fleet") => args.get(2).context("--fleet N")?.parse()?,
            _ => 10_000,
        };
        return write_path(n).await;
    }
    let mut fleet = 10_000;
    let mut sources = vec!["jamf", "intune", "endpoint-central", "kandji", "jumpcloud"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--fleet" => fleet = it.next().context("--fleet N")?.parse()?,
            "--sources" => {
                sources = it
                    .next()
                    .context("--sources a,b")?
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    std::env::set_var(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
    );
    println!("| source | first sync s | vendor req / 1k | ddb req/rec first | unchanged | 1% changed | 1% missing sweep |");
    println!("|---|---|---|---|---|---|---|");
    for s in &sources {
        let row = bench_source(s, fleet).await?;
        println!("| {} |", row.join(" | "));
    }
    Ok(())
}
