//! Runs that always end: the fetcher or the finisher dies between any two of its AWS calls (named
//! failpoints stop the handler right there, as a killed Lambda would), a Lambda times out in the
//! middle of a slow page, a continuation arrives twice, two fetchers start at once, a failed
//! invocation is retried: the next invocations end the run with every record present once and
//! exact counts, and the next start is not refused. One test, because failpoints are process-wide.

use std::time::{Duration, Instant};

use assetsync::failpoint;
use assetsync::summary::RunSummary;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use assetsync_tests::sim::Fault;
use serde_json::{json, Value};

const LEASE: u64 = 3;

async fn check_exact(
    h: &Harness,
    sim: &JamfSim,
    s: &RunSummary,
    before: usize,
    what: &str,
) -> anyhow::Result<()> {
    let keyed = (0..sim.computer_count())
        .filter(|i| sim.serial(*i).is_some())
        .count() as u64;
    assert_eq!(s.status.as_str(), "succeeded", "{what}: {s:?}");
    assert_eq!(
        s.counts.created + s.counts.duplicate,
        keyed,
        "{what}: {s:?}"
    );
    assert_eq!(
        s.counts.skipped,
        sim.computer_count() as u64 - keyed,
        "{what}: {s:?}"
    );
    assert_eq!(s.pages.imported, s.pages.fetched, "{what}: {s:?}");
    assert_eq!(
        h.all_records("Hardware").await?.len() - before,
        s.counts.created as usize,
        "{what}: every record present once"
    );
    Ok(())
}

struct Case {
    name: String,
    ev: Value,
    sim: JamfSim,
    before: usize,
}

async fn case(h: &Harness, seed: u64, computers: usize) -> anyhow::Result<Case> {
    let sim = JamfSim::start(JamfConfig {
        computers,
        seed,
        ..JamfConfig::default()
    })
    .await?;
    let name = format!("crash-{seed}");
    h.put_secret(&format!("assetsync/{name}"), &sim.secret())
        .await?;
    let mut ev = event(&name, "jamf", &format!("assetsync/{name}"), "Hardware");
    ev["mapping"] = json!("config:page_size=15");
    let before = h.all_records("Hardware").await?.len();
    Ok(Case {
        name,
        ev,
        sim,
        before,
    })
}

fn runs_of(runs: &[assetsync::runs::RunItem], name: &str) -> usize {
    runs.iter().filter(|r| r.connection == name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_run_ends_exact_whatever_dies() -> anyhow::Result<()> {
    let h = Harness::start_with(|s| {
        s.lease_seconds = LEASE as i64;
        s.finish_check_seconds = 1;
        s.fetch_retry_seconds = 0;
    })
    .await?;
    let mut seed = 100;

    // 1. Kill points between every pair of AWS calls of the fetcher and of the finish path. The
    //    run is never restarted; it ends through its finish check (no new start needed) ...
    for point in [
        "fetcher.after_fetch",
        "fetcher.after_plan",
        "fetcher.between_sends",
        "fetcher.after_send",
        "fetcher.after_checkpoint",
        "fetcher.after_finish",
        "finish.after_claim",
        "finish.after_sweep",
        "finish.after_end",
    ] {
        seed += 1;
        let c = case(&h, seed, 40).await?;
        failpoint::arm(point, 1);
        let begin = Instant::now();
        let s = h.sync(&c.ev).await;
        // `sync` either saw the fetcher die (it then returns the error) or drained to the end.
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                println!("{point}: first invocation died: {e}");
                // ... and a start right after the crash is answered, never an error, and the run
                // still ends: the check resumes or ends it once the dead holder's lease is out.
                let again = h
                    .invoke_fetcher(c.ev.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let run_id = again
                    .get("running_run_id")
                    .or_else(|| again.get("run_id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| anyhow::anyhow!("{point}: {again}"))?;
                h.runner
                    .drain_until_done(&run_id, &mut |_| {})
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?
            }
        };
        assert_eq!(failpoint::remaining(point), 0, "{point} was hit");
        println!(
            "{point}: ended in {:?}: {}",
            begin.elapsed(),
            serde_json::to_string(&s)?
        );
        assert_eq!(
            runs_of(&h.runs.list(500).await?, &c.name),
            1,
            "{point}: resumed, not restarted"
        );
        check_exact(&h, &c.sim, &s, c.before, point).await?;
        // The next start is not refused.
        let t = Instant::now();
        let next = h.sync(&c.ev).await?;
        println!("{point}: next sync took {:?}", t.elapsed());
        assert_ne!(next.run_id, s.run_id, "{point}");
        assert_eq!(next.status.as_str(), "succeeded", "{point}: {next:?}");
        assert_eq!(next.counts.created, 0, "{point}: {next:?}");
    }

    // 2. A run whose finisher dies after the last page, with no finish check to help (the fetch
    //    queue is not drained): the next start ends it and starts a new run.
    seed += 1;
    let c = case(&h, seed, 40).await?;
    failpoint::arm("finish.after_claim", 100);
    let first = h
        .invoke_fetcher(c.ev.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let old_id = first["run_id"].as_str().unwrap_or_default().to_string();
    while h.runner.drain_records_queue().await? > 0 {}
    let stuck = h.runs.get(&old_id).await?.expect("run");
    assert_eq!(stuck.status, "running", "the finisher died: {stuck:?}");
    assert!(stuck.fetch_complete);
    failpoint::arm("finish.after_claim", 0);
    // The dead finisher's claim goes stale after two leases.
    tokio::time::sleep(Duration::from_secs(2 * LEASE + 1)).await;
    let new = h.sync(&c.ev).await?;
    assert_ne!(new.run_id, old_id, "a new run was started");
    let old = h.runs.get(&old_id).await?.expect("old run");
    let old = h.runs.summary(&old).await?;
    println!("finisher died: old {}", serde_json::to_string(&old)?);
    check_exact(&h, &c.sim, &old, c.before, "finisher died").await?;
    assert_eq!(new.status.as_str(), "succeeded", "{new:?}");

    // 3. A Lambda timeout in the middle of a slow page: the invocation is killed (its future
    //    dropped, so nothing after the kill runs), and the run is resumed from its checkpoint.
    seed += 1;
    let c = case(&h, seed, 40).await?;
    c.sim
        .control()
        .inject_after(2, Fault::Delay(Duration::from_secs(4)));
    // Kill the invocation once its run has checkpointed a page and the next page is slow.
    let conn = c.name.clone();
    let runs = h.runs.clone();
    let kill = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(list) = runs.list(500).await {
                if let Some(r) = list
                    .into_iter()
                    .find(|r| r.connection == conn && r.next_page >= 1)
                {
                    return r;
                }
            }
        }
    };
    let run = tokio::select! {
        r = h.invoke_fetcher(c.ev.clone()) => panic!("the invocation ended before the kill: {r:?}"),
        r = kill => r,
    };
    let begin = Instant::now();
    let s = h
        .runner
        .drain_until_done(&run.run_id, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "lambda timeout: ended {:?} after the kill: {}",
        begin.elapsed(),
        serde_json::to_string(&s)?
    );
    check_exact(&h, &c.sim, &s, c.before, "lambda timeout").await?;

    // 4. A continuation delivered twice: both copies arrive at once; one fetcher runs the run.
    seed += 1;
    let c = case(&h, seed, 40).await?;
    let fast = assetsync::local::LocalRunner {
        fetcher: assetsync::fetcher::Fetcher::with_clients(
            {
                let mut s = h.settings.clone();
                s.time_reserve = Duration::from_secs(900);
                s
            },
            aws_sdk_dynamodb::Client::new(&h.sdk),
            aws_sdk_sqs::Client::new(&h.sdk),
            aws_sdk_secretsmanager::Client::new(&h.sdk),
        ),
        importer: assetsync::importer::Importer::new(
            h.settings.clone(),
            aws_sdk_dynamodb::Client::new(&h.sdk),
        ),
        sqs: aws_sdk_sqs::Client::new(&h.sdk),
        fetcher_budget: Duration::from_secs(901),
        max_wait: Duration::from_secs(120),
        workers: 1,
    };
    // A budget that is all reserve: the start hands over at once.
    let started = fast
        .fetcher
        .handle(
            c.ev.clone(),
            Some(Instant::now() + Duration::from_secs(900)),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let run_id = started["run_id"].as_str().unwrap_or_default().to_string();
    let cont = json!({"event": c.ev, "run_id": run_id});
    let payload = json!({"Records": [{"body": cont.to_string()}]});
    let (a, b) = tokio::join!(h.invoke_fetcher(payload.clone()), h.invoke_fetcher(payload));
    let (a, b) = (
        a.map_err(|e| anyhow::anyhow!("{e}"))?,
        b.map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    println!("twice: {a}\n{b}");
    assert_eq!(
        started["message"], "continuing through the fetch queue",
        "{started}"
    );
    let stood_down = [&a, &b]
        .iter()
        .filter(|v| {
            let m = v["continued"][0]["message"].as_str().unwrap_or_default();
            m == "another fetcher holds this run's lease" || m == "nothing left to fetch"
        })
        .count();
    assert!(stood_down >= 1, "one copy stood down: {a}\n{b}");
    let s = h
        .runner
        .drain_until_done(&run_id, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    check_exact(&h, &c.sim, &s, c.before, "continuation twice").await?;

    // 5. Two fetchers started at once for one connection: one run.
    seed += 1;
    let c = case(&h, seed, 40).await?;
    let (a, b) = tokio::join!(
        h.invoke_fetcher(c.ev.clone()),
        h.invoke_fetcher(c.ev.clone())
    );
    let (a, b) = (
        a.map_err(|e| anyhow::anyhow!("{e}"))?,
        b.map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let started: Vec<&Value> = [&a, &b]
        .into_iter()
        .filter(|v| v.get("started") != Some(&json!(false)))
        .collect();
    assert_eq!(started.len(), 1, "exactly one start wins: {a}\n{b}");
    let run_id = started[0]["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let s = h
        .runner
        .drain_until_done(&run_id, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(runs_of(&h.runs.list(500).await?, &c.name), 1);
    check_exact(&h, &c.sim, &s, c.before, "two fetchers").await?;

    // 6. An asynchronous retry of a failed invocation (an AWS error, not a crash) resumes the run
    //    at once instead of answering `started: false`.
    seed += 1;
    let c = case(&h, seed, 40).await?;
    failpoint::arm("fetcher.send_error", 1);
    let failed = h.invoke_fetcher(c.ev.clone()).await;
    assert!(failed.is_err(), "the invocation failed");
    let retry = h
        .invoke_fetcher(c.ev.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_ne!(
        retry.get("started"),
        Some(&json!(false)),
        "the retry resumed: {retry}"
    );
    let run_id = retry["run_id"].as_str().unwrap_or_default().to_string();
    let s = h
        .runner
        .drain_until_done(&run_id, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        runs_of(&h.runs.list(500).await?, &c.name),
        1,
        "resumed, not restarted"
    );
    check_exact(&h, &c.sim, &s, c.before, "async retry").await?;

    // 7. The importer dies after planning a page, after writing its records, and after counting
    //    it: SQS redelivers each page and the run still ends exact.
    seed += 1;
    let c = case(&h, seed, 60).await?;
    failpoint::arm("importer.after_plan", 1);
    failpoint::arm("importer.after_writes", 2);
    failpoint::arm("importer.after_count", 1);
    let s = h.sync(&c.ev).await?;
    for p in [
        "importer.after_plan",
        "importer.after_writes",
        "importer.after_count",
    ] {
        assert_eq!(failpoint::remaining(p), 0, "{p} was hit");
    }
    check_exact(&h, &c.sim, &s, c.before, "importer crashes").await?;

    // 8. A start that dies right after taking the connection's lease, before its run exists: a
    //    start right after is answered (refused while the dead start might still be writing its
    //    run, saying so), and one within the lease window starts a run that ends exact.
    seed += 1;
    let c = case(&h, seed, 40).await?;
    failpoint::arm("start.after_lease", 1);
    let died = h.invoke_fetcher(c.ev.clone()).await;
    assert!(died.is_err(), "the start died: {died:?}");
    assert_eq!(failpoint::remaining("start.after_lease"), 0);
    let crashed = Instant::now();
    let window = Duration::from_secs(LEASE.clamp(5, 60));
    let run_id = loop {
        let r = h
            .invoke_fetcher(c.ev.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if r.get("started") != Some(&json!(false)) {
            break r["run_id"].as_str().unwrap_or_default().to_string();
        }
        println!(
            "start.after_lease: {:?} after the crash: {r}",
            crashed.elapsed()
        );
        let msg = r["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&c.name),
            "the refusal names the connection: {r}"
        );
        assert!(
            crashed.elapsed() < window + Duration::from_secs(3),
            "still refused {:?} after the crash: {r}",
            crashed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "start.after_lease: a run started {:?} after the crash",
        crashed.elapsed()
    );
    let s = h
        .runner
        .drain_until_done(&run_id, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        runs_of(&h.runs.list(500).await?, &c.name),
        1,
        "the dead start left no run behind"
    );
    check_exact(&h, &c.sim, &s, c.before, "start.after_lease").await?;

    // 9. `runs redrive` re-arms the run's finish check: the redriven page's finisher dies after
    //    claiming the run's end, nobody calls try_finish by hand, and the run still ends by itself
    //    (the queues feed the handlers, as their event sources do on AWS).
    seed += 1;
    let c = case(&h, seed, 40).await?;
    let poisoned = (0..c.sim.computer_count())
        .find(|i| c.sim.serial(*i).is_some())
        .expect("a keyed computer");
    c.sim
        .set_field(poisoned, "hardware.serialNumber", json!("REDRIVE0001"));
    h.ddb.poison("R#Hardware#REDRIVE0001");
    let dead = h.sync(&c.ev).await?;
    assert_eq!(dead.pages.dead, 1, "{dead:?}");
    h.ddb.cure();
    // No earlier finish check is left to help: the ended run's last one is consumed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while h.runner.drain_fetch_queue().await? > 0 {}
    failpoint::arm("finish.after_claim", 1);
    let sqs = aws_sdk_sqs::Client::new(&h.sdk);
    let report = assetsync::console::redrive(&h.runs, &sqs, &h.settings, &dead.run_id).await?;
    println!("redrive: {}", serde_json::to_string(&report)?);
    assert!(report.finish_check, "{report:?}");
    assert_eq!((report.requeued, report.reopened), (1, 1), "{report:?}");
    assert_eq!(report.status, "running");
    let begin = Instant::now();
    let s = h
        .runner
        .drain_until_done(&dead.run_id, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "redriven run ended by itself {:?} after the redrive: {}",
        begin.elapsed(),
        serde_json::to_string(&s)?
    );
    assert_eq!(
        failpoint::remaining("finish.after_claim"),
        0,
        "the finisher died"
    );
    assert_eq!(s.pages.dead, 0, "{s:?}");
    check_exact(&h, &c.sim, &s, c.before, "redrive").await?;
    assert!(h.record("Hardware", "REDRIVE0001").await?.is_some());
    Ok(())
}
