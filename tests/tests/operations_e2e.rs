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
