//! Operations: a fetch that fails for ever ends its run, failed, in bounded time; the template's
//! alarms and the fetcher's on-failure destination exist after the local deploy, and a page sent
//! to the dead-letter queue shows where the alarm looks.

use std::time::{Duration, Instant};

use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jumpcloud::{JumpCloudConfig, JumpCloudSim};
use assetsync_tests::sim::Fault;
use assetsync_tests::stack::repo_root;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_answering_500_for_ever_fails_the_run_in_bounded_time() -> anyhow::Result<()> {
    let mut h = Harness::start_with(|s| {
        s.fetch_retry_seconds = 1;
        s.fetch_max_tries = 3;
        s.finish_check_seconds = 2;
        s.lease_seconds = 5;
    })
    .await?;
    h.runner.max_wait = Duration::from_secs(120);
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 20,
        users: 30,
        ..Default::default()
    })
    .await?;
    h.put_secret("assetsync/jc-500", &sim.secret()).await?;
    for _ in 0..1000 {
        sim.control().inject(Fault::ServerError(500));
    }
    let ev = event("jc-500", "jumpcloud", "assetsync/jc-500", "Person");
    let begin = Instant::now();
    let s = h.sync(&ev).await?;
    println!(
        "500 for ever: ended in {:?}: {}",
        begin.elapsed(),
        serde_json::to_string(&s)?
    );
    assert_eq!(s.status.as_str(), "failed", "{s:?}");
    let msg = s.message.clone().unwrap_or_default();
    assert!(msg.contains("HTTP 500"), "the reason is given: {msg}");
    assert!(
        begin.elapsed() < Duration::from_secs(100),
        "{:?}",
        begin.elapsed()
    );
    // The connection is free again: the next start is not refused.
    let mut requests = 0;
    while sim.control().data_requests() < 1000 && requests < 2000 {
        // Use up the injected faults so the vendor answers again.
        let _ = reqwest::get(format!("{}/api/systemusers", sim.handle.base_url)).await;
        requests += 1;
    }
    let next = h.sync(&ev).await?;
    assert_ne!(next.run_id, s.run_id);
    assert_eq!(next.status.as_str(), "succeeded", "{next:?}");
    assert_eq!(next.counts.created, 30, "{next:?}");
    Ok(())
}

/// Ask moto through boto3 (the venv the local stack runs on).
fn boto(endpoint: &str, script: &str) -> anyhow::Result<Value> {
    let python = repo_root().join(".venv/bin/python");
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(format!(
            "import boto3, json, sys\nkw = dict(endpoint_url={endpoint:?}, region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n{script}"
        ))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test]
async fn alarms_and_the_fetchers_failure_destination_exist_after_the_local_deploy(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let ep = h.stack.endpoint.clone();
    let alarms = boto(
        &ep,
        "cw = boto3.client('cloudwatch', **kw)\nprint(json.dumps(cw.describe_alarms()['MetricAlarms'], default=str))",
    )?;
    let alarms = alarms.as_array().cloned().unwrap_or_default();
    let find = |ns: &str, metric: &str, dim: Option<&str>| -> Option<Value> {
        alarms
            .iter()
            .find(|a| {
                a["Namespace"] == ns
                    && a["MetricName"] == metric
                    && dim.is_none_or(|d| {
                        a["Dimensions"]
                            .as_array()
                            .is_some_and(|ds| ds.iter().any(|x| x["Value"] == d))
                    })
            })
            .cloned()
    };
    let queue_name = |output: &str| {
        h.stack
            .output(output)
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let dlq = queue_name("DeadLetterQueueUrl");
    let records = queue_name("RecordsQueueUrl");
    let fetcher = h.stack.output("FetcherFunctionName");
    let importer = h.stack.output("ImporterFunctionName");
    let dlq_alarm = find("AWS/SQS", "ApproximateNumberOfMessagesVisible", Some(&dlq))
        .expect("an alarm on the records DLQ's depth");
    assert_eq!(dlq_alarm["Threshold"], json!(0.0));
    assert_eq!(dlq_alarm["ComparisonOperator"], "GreaterThanThreshold");
    assert!(
        alarms
            .iter()
            .filter(|a| a["MetricName"] == "ApproximateNumberOfMessagesVisible")
            .count()
            >= 3,
        "both DLQs and the failed-invocations queue have depth alarms"
    );
    find("AWS/SQS", "ApproximateAgeOfOldestMessage", Some(&records))
        .expect("an alarm on the age of the oldest record message");
    for f in [&fetcher, &importer] {
        find("AWS/Lambda", "Errors", Some(f)).expect("function errors alarm");
        find("AWS/Lambda", "Throttles", Some(f)).expect("function throttles alarm");
    }
    let stuck = find("assetsync", "RunningRunAge", None).expect("stuck-run alarm");
    assert!(
        stuck["Threshold"].as_f64().unwrap_or(0.0) >= 3600.0,
        "{stuck}"
    );
    assert!(dlq_alarm["AlarmActions"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));

    let cfg = boto(
        &ep,
        &format!("lam = boto3.client('lambda', **kw)\nc = lam.get_function_event_invoke_config(FunctionName={fetcher:?})\nc.pop('ResponseMetadata', None)\nprint(json.dumps(c, default=str))"),
    )?;
    let dest = cfg["DestinationConfig"]["OnFailure"]["Destination"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        dest.ends_with(&queue_name("FetcherFailedInvocationsQueueUrl")),
        "{cfg}"
    );
    assert_eq!(cfg["MaximumRetryAttempts"], 2, "{cfg}");

    // A page sent to the DLQ moves what the alarm watches: the queue's visible messages. (moto's
    // CloudWatch publishes no AWS/SQS metrics, so the queue's own attribute stands in for it.)
    let sqs = aws_sdk_sqs::Client::new(&h.sdk);
    let dlq_url = h.stack.output("DeadLetterQueueUrl");
    sqs.send_message()
        .queue_url(&dlq_url)
        .message_body("{\"page\": \"poison\"}")
        .send()
        .await?;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await?;
    let depth: f64 = attrs
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        depth > dlq_alarm["Threshold"].as_f64().unwrap_or(0.0),
        "the DLQ depth ({depth}) crosses the alarm's threshold"
    );
    Ok(())
}

/// The Endpoint Central first sync at the documented detail pace, with a Lambda budget far
/// shorter than its detail calls take: each invocation makes only the detail calls that fit its
/// budget and hands the rest of the page over; the run completes through continuations. (A
/// small fleet and a short simulated budget stand in for 10,000 computers and 900 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_central_first_sync_completes_through_continuations_within_its_budget(
) -> anyhow::Result<()> {
    use assetsync_tests::sim::endpoint_central::{EcSimConfig, EndpointCentralSim};
    let mut h = Harness::start_with(|s| {
        s.time_reserve = Duration::from_millis(500);
    })
    .await?;
    h.runner.fetcher_budget = Duration::from_millis(3500);
    h.runner.max_wait = Duration::from_secs(120);
    let sim = EndpointCentralSim::start(EcSimConfig {
        devices: 60,
        rate_limit: None,
        ..Default::default()
    })
    .await?;
    h.put_secret("assetsync/ec-budget", &sim.secret()).await?;
    let base = assetsync::connectors::default_mapping(
        assetsync::event::SourceKind::EndpointCentral,
        assetsync::event::ObjectType::Hardware,
        None,
    )?;
    let mut ev = event(
        "ec-budget",
        "endpoint-central",
        "assetsync/ec-budget",
        "Hardware",
    );
    // 600 detail calls a minute (10/s) with a 3 s budget: about 24 calls per invocation.
    ev["mapping"] = json!(format!("{base}config:detail_rate=600\n"));
    let keyed = (0..sim.device_count())
        .filter(|i| sim.serial(*i).is_some())
        .count() as u64;
    let first = h
        .runner
        .fetcher
        .handle(ev.clone(), Some(Instant::now() + h.runner.fetcher_budget))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("first invocation: {first}");
    assert_eq!(
        first["message"], "continuing through the fetch queue",
        "the first invocation stopped within its budget: {first}"
    );
    assert!(sim.detail_requests() < 60, "{}", sim.detail_requests());
    let run_id = first["run_id"].as_str().unwrap_or_default().to_string();
    let s = h
        .runner
        .drain_until_done(&run_id, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("ec budget: {}", serde_json::to_string(&s)?);
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    assert_eq!(s.counts.created, keyed, "{s:?}");
    assert_eq!(s.records_fetched, 60, "{s:?}");
    // Each detail is cached as it arrives; only calls in flight when a page was cut at its
    // deadline (a slow machine) are made again.
    let details = sim.detail_requests();
    assert!(
        (60..90).contains(&details),
        "{details} detail calls for 60 computers"
    );
    Ok(())
}

/// How many messages a queue holds (visible or in flight).
async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<u64> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await?;
    let get = |a: A| -> u64 {
        attrs
            .attributes()
            .and_then(|m| m.get(&a))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(get(A::ApproximateNumberOfMessages) + get(A::ApproximateNumberOfMessagesNotVisible))
}

/// An operator redrives an old run's dead-lettered page after a newer run of the connection has
/// synced: the redrive applies nothing (the old page would carry older values) and says why; and
/// if an old run still reaches its end after a newer one started (a redrive without that guard,
/// or a finisher that outlived its claim), its sweep marks nothing missing, and its summary says
/// why, so a record only the newer run reported is never marked missing by the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_run_is_not_redriven_and_its_late_end_marks_nothing_missing(
) -> anyhow::Result<()> {
    use assetsync::console;
    use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
    let h = Harness::start_with(|s| s.finish_check_seconds = 1).await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 60,
        seed: 301,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-old", &sim.secret()).await?;
    let mut ev = event("jamf-old", "jamf", "assetsync/jamf-old", "Hardware");
    ev["mapping"] = json!("config:page_size=20");
    let poisoned = (0..sim.computer_count())
        .find(|i| sim.serial(*i).is_some())
        .expect("a keyed computer");
    sim.set_field(poisoned, "hardware.serialNumber", json!("OLDRUN0001"));
    h.ddb.poison("R#Hardware#OLDRUN0001");
    let old = h.sync(&ev).await?;
    assert_eq!(old.pages.dead, 1, "{old:?}");
    assert_eq!(old.status.as_str(), "succeeded_with_errors", "{old:?}");
    h.ddb.cure();

    // Between the runs the computer's OS changes, and a computer only the newer run sees appears.
    sim.set_os_version(poisoned, "99.9");
    let added = sim.add_computer();
    let added_serial = sim.serial(added).expect("the new computer has a serial");
    let newer = h.sync(&ev).await?;
    assert_eq!(newer.status.as_str(), "succeeded", "{newer:?}");
    let os = |r: &Option<assetsync::register::StoredRecord>| {
        r.as_ref().and_then(|r| r.a.get("OS Version").cloned())
    };
    assert_eq!(
        os(&h.record("Hardware", "OLDRUN0001").await?).as_deref(),
        Some("99.9")
    );

    // `runs redrive` of the old run: nothing applied, the page stays in the DLQ, and it says so.
    let sqs = aws_sdk_sqs::Client::new(&h.sdk);
    let dlq = h
        .settings
        .dlq_url
        .clone()
        .expect("DLQ_URL from the template");
    assert_eq!(queue_depth(&sqs, &dlq).await?, 1);
    let report = console::redrive(&h.runs, &sqs, &h.settings, &old.run_id).await?;
    println!(
        "redrive of a superseded run: {}",
        serde_json::to_string(&report)?
    );
    assert_eq!(report.superseded_by.as_deref(), Some(newer.run_id.as_str()));
    assert_eq!((report.requeued, report.reopened), (0, 0), "{report:?}");
    assert!(!report.finish_check, "{report:?}");
    let msg = report.message.clone().unwrap_or_default();
    assert!(
        msg.starts_with(&format!(
            "not redriven: a newer run ({}) of jamf-old has started since",
            newer.run_id
        )),
        "{msg}"
    );
    assert_eq!(
        queue_depth(&sqs, &dlq).await?,
        1,
        "the page stays in the DLQ"
    );
    let still = h.runs.get(&old.run_id).await?.expect("old run");
    assert_eq!(still.status, "succeeded_with_errors");
    assert_eq!(
        os(&h.record("Hardware", "OLDRUN0001").await?).as_deref(),
        Some("99.9"),
        "the old page's values were not re-applied"
    );

    // The old run brought back anyway (what `runs redrive` did before its guard): its page is
    // imported late and the run ends again, without a sweep.
    let markers = h.runs.markers(&old.run_id).await?;
    let (page_id, _) = markers
        .iter()
        .find(|(_, m)| m.status == "dead")
        .expect("the dead page's marker");
    assert!(
        h.runs
            .reopen_dead_page(&old.run_id, page_id, h.settings.import_horizon_seconds)
            .await?
    );
    let out = sqs
        .receive_message()
        .queue_url(&dlq)
        .max_number_of_messages(10)
        .send()
        .await?;
    for m in out.messages.unwrap_or_default() {
        sqs.send_message()
            .queue_url(&h.settings.records_queue_url)
            .message_body(m.body.clone().unwrap_or_default())
            .send()
            .await?;
        sqs.delete_message()
            .queue_url(&dlq)
            .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
            .send()
            .await?;
    }
    let late = h
        .runner
        .drain_until_done(&old.run_id, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("late end: {}", serde_json::to_string(&late)?);
    assert_ne!(late.status.as_str(), "running");
    assert_eq!(late.counts.missing, 0, "{late:?}");
    let msg = late.message.clone().unwrap_or_default();
    assert!(
        msg.contains(&format!("a newer run ({})", newer.run_id))
            && msg.contains("no record was marked missing"),
        "the summary says why nothing was swept: {msg}"
    );
    let rec = h
        .record("Hardware", &added_serial)
        .await?
        .expect("the newer run's record");
    assert!(
        rec.src.get("jamf-old").is_some_and(|s| s.missing.is_none()),
        "a record only the newer run reported is not marked missing: {:?}",
        rec.src
    );
    assert_eq!(
        os(&h.record("Hardware", "OLDRUN0001").await?).as_deref(),
        Some("99.9"),
        "the late page did not overwrite the newer run's value"
    );
    Ok(())
}

/// Endpoint Central's first sync of a large fleet at the documented pace, time compressed `K`
/// times: the server's 120 detail calls a minute with a 5-minute lock, the connector's 110 a minute
/// and 440 (four minutes' worth) per page, a 900 s Lambda with its 60 s hand-over reserve, all
/// divided by `K` (the detail pace multiplied). Uncompressed, 10,000 computers are about 91 minutes
/// of detail calls, so no invocation can finish them: each makes the calls that fit its budget and
/// hands its cursor over through the fetch queue. The run completes with every computer once and
/// exact counts. The fleet is 2,000 computers so the test stays short on the shared moto;
/// `ASSETSYNC_EC_FLEET=10000` runs the full 10,000 (about 4 minutes on 2 cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_central_first_sync_of_a_large_fleet_at_the_documented_pace_completes_through_continuations(
) -> anyhow::Result<()> {
    use assetsync_tests::sim::endpoint_central::{EcSimConfig, EndpointCentralSim, RateLimitCfg};
    const K: u32 = 200;
    let fleet: usize = std::env::var("ASSETSYNC_EC_FLEET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let mut h = Harness::start_with(|s| {
        s.time_reserve = Duration::from_secs(60) / K;
    })
    .await?;
    h.runner.fetcher_budget = Duration::from_secs(900) / K;
    let sim = EndpointCentralSim::start(EcSimConfig {
        devices: fleet,
        rate_limit: Some(RateLimitCfg {
            requests: 120,
            window: Duration::from_secs(60) / K,
            lock: Duration::from_secs(300) / K,
        }),
        ..Default::default()
    })
    .await?;
    h.put_secret("assetsync/ec-big", &sim.secret()).await?;
    let base = assetsync::connectors::default_mapping(
        assetsync::event::SourceKind::EndpointCentral,
        assetsync::event::ObjectType::Hardware,
        None,
    )?;
    let mut ev = event("ec-big", "endpoint-central", "assetsync/ec-big", "Hardware");
    ev["mapping"] = json!(format!(
        "{base}config:detail_rate={}\nconfig:detail_budget=440\n",
        110 * K
    ));
    let keyed = (0..fleet).filter(|i| sim.serial(*i).is_some()).count() as u64;
    let begin = Instant::now();
    let first = h
        .runner
        .fetcher
        .handle(ev.clone(), Some(Instant::now() + h.runner.fetcher_budget))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        first["message"], "continuing through the fetch queue",
        "the first invocation handed over: {first}"
    );
    let run_id = first["run_id"].as_str().unwrap_or_default().to_string();
    // The two event sources at once, as on AWS: hand-overs feed the fetcher, pages the importer.
    let runs = h.runs.clone();
    let fetches = async {
        let mut invocations = 1u64;
        loop {
            let n = h.runner.drain_fetch_queue().await?;
            invocations += n as u64;
            let run = runs.get(&run_id).await?.expect("run");
            if run.fetch_complete || run.status != "running" {
                return anyhow::Ok((invocations, begin.elapsed()));
            }
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::ensure!(begin.elapsed() < Duration::from_secs(600), "fetch stalled");
        }
    };
    let imports = async {
        loop {
            let n = h.runner.drain_records_queue().await?;
            let run = runs.get(&run_id).await?.expect("run");
            if run.status != "running" {
                return anyhow::Ok(());
            }
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::ensure!(begin.elapsed() < Duration::from_secs(600), "import stalled");
        }
    };
    let ((invocations, fetch_time), ()) = tokio::try_join!(fetches, imports)?;
    let run = h.runs.get(&run_id).await?.expect("run");
    let s = h.runs.summary(&run).await?;
    println!(
        "ec {fleet}: {invocations} fetcher invocations of {:?} each, fetch done in {fetch_time:?} ({:.0} s uncompressed), run ended in {:?}; {} detail calls, {} list calls, {} lock answers; status {}, pages {:?}, counts {}",
        h.runner.fetcher_budget,
        fetch_time.as_secs_f64() * f64::from(K),
        begin.elapsed(),
        sim.detail_requests(),
        sim.list_requests(),
        sim.lock_answers(),
        s.status.as_str(),
        s.pages,
        serde_json::to_string(&s.counts)?
    );
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    assert_eq!(s.records_fetched, fleet as u64, "{s:?}");
    assert_eq!(s.vendor_total, Some(fleet as u64), "{s:?}");
    assert_eq!(
        s.counts.created, keyed,
        "every computer with a serial once: {s:?}"
    );
    assert_eq!(s.counts.skipped, fleet as u64 - keyed, "{s:?}");
    assert_eq!(s.counts.duplicate + s.counts.errors, 0, "{s:?}");
    assert_eq!(s.pages.imported, s.pages.fetched, "{s:?}");
    assert_eq!(h.all_records("Hardware").await?.len() as u64, keyed);
    // No invocation makes more detail calls than fit its budget at the pace (about 1,200 here).
    assert!(
        invocations as usize >= fleet.div_ceil(1_300),
        "{invocations} invocations"
    );
    // Each detail is fetched once (cached as it arrives); calls in flight when a page was cut at
    // its deadline are made again.
    let details = sim.detail_requests();
    assert!(
        (fleet as u64..fleet as u64 + 200).contains(&details),
        "{details} detail calls for {fleet} computers"
    );
    Ok(())
}
