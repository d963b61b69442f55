//! `sync`, `sample`, `test`: run the fetcher in-process (local stack, `--local`) or invoke the
//! deployed one, and wait for the run.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use assetsync::error::chain;
use assetsync::event::{Action, ConnectionEvent};
use assetsync::fetcher::Fetcher;
use assetsync::importer::Importer;
use assetsync::local::LocalRunner;
use assetsync::runs::{RunItem, Runs};
use assetsync::summary::{RunSummary, Status};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::exit::{Exit, ALREADY_RUNNING, RUN_FAILED};
use crate::output;
use crate::target::Target;
use crate::Global;

/// The fetcher's time budget per invocation in-process (the template's Lambda timeout).
const FETCHER_BUDGET: Duration = Duration::from_secs(900);
/// How long `sync` waits for a run before giving up (the run itself goes on).
const MAX_WAIT: Duration = Duration::from_secs(6 * 3600);

/// Read an event file, set its action, and check it as the fetcher will.
pub fn read_event(path: &Path, action: Action) -> anyhow::Result<(Value, ConnectionEvent)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading event {}", path.display()))?;
    let mut value: Value = serde_json::from_str(&text)
        .with_context(|| format!("event {} is not JSON", path.display()))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| anyhow!("event {} must be a JSON object", path.display()))?;
    obj.insert("action".into(), serde_json::to_value(action)?);
    let ev = ConnectionEvent::parse(value.clone())
        .map_err(|e| anyhow!("event {}: {e}", path.display()))?;
    Ok((value, ev))
}

/// Progress of a run on stderr: a bar on a terminal, a line every 15 s otherwise.
pub struct Progress {
    bar: ProgressBar,
    label: String,
    tty: bool,
    last_line: Instant,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {prefix} [{elapsed_precise}] [{bar:25}] {pos}/{len} pages imported · {wide_msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        bar.set_message("fetching…");
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress {
            bar,
            label: label.to_string(),
            tty,
            last_line: Instant::now(),
        }
    }

    pub fn update(&mut self, run: &RunItem) {
        let c = &run.counts;
        let total = run
            .vendor_total
            .map(|t| format!("/{t}"))
            .unwrap_or_default();
        let fetching = if run.fetch_complete {
            "fetched"
        } else {
            "fetching"
        };
        let mut msg = format!(
            "{fetching} {} pages, {}{total} records · created {} updated {} unchanged {} skipped {} errors {}",
            run.pages_fetched, run.records_fetched, c.created, c.updated, c.unchanged, c.skipped, c.errors
        );
        // A retry in progress ("fetch failed (...); retrying from the last checkpoint") says so.
        if let Some(m) = run.message.as_deref().filter(|m| !m.is_empty()) {
            msg.push_str(&format!(" · {}", assetsync::console::one_line(m)));
        }
        self.bar.set_length(run.pages_fetched.max(1));
        self.bar.set_position(run.pages_imported + run.pages_dead);
        if !self.tty && self.last_line.elapsed() >= Duration::from_secs(15) {
            eprintln!(
                "{}: {} · {}/{} pages imported",
                self.label,
                msg,
                run.pages_imported + run.pages_dead,
                run.pages_fetched
            );
            self.last_line = Instant::now();
        }
        self.bar.set_message(msg);
    }

    pub fn note(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The run currently holding a connection's lease, if it is running.
async fn leased_run(runs: &Runs, connection: &str) -> Option<RunItem> {
    let item = runs
        .store
        .get(&format!("L#{connection}"), "#")
        .await
        .ok()??;
    let run_id = item.get("run_id")?.as_s().ok()?.clone();
    runs.get(&run_id)
        .await
        .ok()?
        .filter(|r| r.status == "running")
}

/// Set the event's one-off breaker override (`--allow-drop`).
fn with_allow_drop(
    (mut value, mut event): (Value, ConnectionEvent),
    allow_drop: bool,
) -> (Value, ConnectionEvent) {
    if allow_drop {
        if let Some(o) = value.as_object_mut() {
            o.insert("allow_drop".into(), Value::Bool(true));
        }
        event.allow_drop = true;
    }
    (value, event)
}

/// `assetsync sync --event FILE [--allow-drop]`.
pub async fn sync(g: &Global, path: &Path, allow_drop: bool) -> anyhow::Result<()> {
    let (value, event) = with_allow_drop(read_event(path, Action::Sync)?, allow_drop);
    let target = Target::resolve(g).await?;
    let summary = if target.in_process(g) {
        sync_in_process(&target, value, &event).await?
    } else {
        sync_invoked(&target, value, &event).await?
    };
    print_summary(g, &summary)?;
    if summary.status == Status::Failed {
        return Err(Exit::silent(RUN_FAILED));
    }
    Ok(())
}

fn print_summary(g: &Global, s: &RunSummary) -> anyhow::Result<()> {
    if g.json {
        output::json(s)
    } else {
        print!("{}", output::summary_text(s, Some(20)));
        Ok(())
    }
}

/// The real handlers, driven against the target's queues.
pub fn local_runner_for(target: &Target) -> LocalRunner {
    let ddb = target.ddb();
    let sqs = target.sqs();
    let fetcher = Fetcher::with_clients(
        target.settings.clone(),
        ddb.clone(),
        sqs.clone(),
        aws_sdk_secretsmanager::Client::new(&target.sdk),
    );
    // The page path has no transaction, so the production concurrency is safe against moto too.
    let importer = Importer::new(target.settings.clone(), ddb);
    LocalRunner {
        fetcher,
        importer,
        sqs,
        fetcher_budget: FETCHER_BUDGET,
        max_wait: MAX_WAIT,
        workers: 1,
    }
}

/// What a fetcher invocation answered for a sync: the run it started, or why none was started.
fn started_run(answer: &Value) -> anyhow::Result<String> {
    if answer.get("started") == Some(&Value::Bool(false)) {
        let msg = answer
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("a run of this connection is already in progress");
        return Err(Exit::with_message(ALREADY_RUNNING, msg));
    }
    answer
        .get("run_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the fetcher started no run; it answered {answer}"))
}

/// Run the handlers in this process: the fetcher in one task while the importer drains the
/// records queue in another (as the event source mapping would), then both queues until the end.
async fn sync_in_process(
    target: &Target,
    value: Value,
    event: &ConnectionEvent,
) -> anyhow::Result<RunSummary> {
    let runner = Arc::new(local_runner_for(target));
    let mut progress = Progress::new(&event.connection);
    let fetch_done = Arc::new(AtomicBool::new(false));
    let fetch = {
        let runner = runner.clone();
        let done = fetch_done.clone();
        tokio::spawn(async move {
            let res = runner
                .fetcher
                .handle(value, Some(Instant::now() + FETCHER_BUDGET))
                .await;
            done.store(true, Ordering::SeqCst);
            res
        })
    };
    // Import while the fetcher fetches; stop between batches (never mid-batch) once it returns.
    let runs = runner.fetcher.runs.clone();
    while !fetch_done.load(Ordering::SeqCst) {
        let n = runner
            .drain_records_queue()
            .await
            .map_err(|e| anyhow!("importing: {}", chain(&e)))?;
        if let Some(run) = leased_run(&runs, &event.connection).await {
            progress.update(&run);
        }
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    let answer = fetch
        .await
        .context("the fetcher task")?
        .map_err(|e| anyhow!("{}", chain(&e)));
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            progress.finish();
            return Err(e);
        }
    };
    let run_id = match started_run(&answer) {
        Ok(r) => r,
        Err(e) => {
            progress.finish();
            return Err(e);
        }
    };
    let res = runner
        .drain_until_done(&run_id, &mut |r: &RunItem| progress.update(r))
        .await;
    progress.finish();
    res.map_err(|e| anyhow!("run {run_id}: {}", chain(&e)))
}

/// Invoke the deployed fetcher and follow the run in the register.
async fn sync_invoked(
    target: &Target,
    value: Value,
    event: &ConnectionEvent,
) -> anyhow::Result<RunSummary> {
    let function = fetcher_function(target)?;
    let runs = target.runs();
    let mut progress = Progress::new(&event.connection);
    progress.note(&format!("invoking {function}…"));
    let lambda = aws_sdk_lambda::Client::new(&target.sdk);
    let invoke = invoke(&lambda, &function, &value);
    tokio::pin!(invoke);
    // While the fetcher works (up to its timeout), show the run it started.
    let answer = loop {
        tokio::select! {
            res = &mut invoke => break res,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                if let Some(run) = leased_run(&runs, &event.connection).await {
                    progress.update(&run);
                }
            }
        }
    };
    let answer = match answer.and_then(|a| started_run(&a)) {
        Ok(r) => r,
        Err(e) => {
            progress.finish();
            return Err(e);
        }
    };
    let begin = Instant::now();
    let run = loop {
        let run = runs
            .get(&answer)
            .await?
            .ok_or_else(|| anyhow!("run {answer} is not in the register"))?;
        progress.update(&run);
        if run.status != "running" {
            break run;
        }
        if begin.elapsed() > MAX_WAIT {
            progress.finish();
            bail!("run {answer} is still running after {} h; follow it with `assetsync runs show {answer}`", MAX_WAIT.as_secs() / 3600);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    progress.finish();
    Ok(runs.summary(&run).await?)
}

fn fetcher_function(target: &Target) -> anyhow::Result<String> {
    target
        .fetcher_function
        .clone()
        .ok_or_else(|| anyhow!("no fetcher function to invoke: set FETCHER_FUNCTION (the stack output FetcherFunctionName), or use --local"))
}

/// Invoke the fetcher synchronously; its answer as JSON.
async fn invoke(
    lambda: &aws_sdk_lambda::Client,
    function: &str,
    payload: &Value,
) -> anyhow::Result<Value> {
    let out = lambda
        .invoke()
        .function_name(function)
        .invocation_type(aws_sdk_lambda::types::InvocationType::RequestResponse)
        .payload(aws_sdk_lambda::primitives::Blob::new(serde_json::to_vec(
            payload,
        )?))
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "invoking {function}: {}",
                aws_sdk_lambda::error::DisplayErrorContext(e)
            )
        })?;
    let body = out.payload.map(|b| b.into_inner()).unwrap_or_default();
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if let Some(kind) = out.function_error {
        let msg = value
            .get("errorMessage")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        bail!("the fetcher {function} failed ({kind}): {msg}");
    }
    Ok(value)
}

/// One answer of the fetcher to `value` (a `plan`, `sample` or `test` event): in-process with
/// `--local`, otherwise from the deployed function.
async fn ask_fetcher(g: &Global, value: Value) -> anyhow::Result<Value> {
    let target = Target::resolve(g).await?;
    if target.in_process(g) {
        let fetcher = local_runner_for(&target).fetcher;
        fetcher
            .handle(value, Some(Instant::now() + FETCHER_BUDGET))
            .await
            .map_err(|e| anyhow!("{}", chain(&e)))
    } else {
        let function = fetcher_function(&target)?;
        invoke(&aws_sdk_lambda::Client::new(&target.sdk), &function, &value).await
    }
}

/// `assetsync plan --event FILE [--allow-drop]`: what a sync would do now, writing nothing.
pub async fn plan(g: &Global, path: &Path, allow_drop: bool) -> anyhow::Result<()> {
    let (value, _event) = with_allow_drop(read_event(path, Action::Plan)?, allow_drop);
    let answer = ask_fetcher(g, value).await?;
    let plan: assetsync::plan::Plan = serde_json::from_value(answer.clone())
        .map_err(|e| anyhow!("the fetcher's plan is not one ({e}): {answer}"))?;
    if g.json {
        output::json(&plan)
    } else {
        print!("{}", output::plan_text(&plan));
        Ok(())
    }
}

/// `assetsync sample|test --event FILE`.
pub async fn sample_or_test(g: &Global, path: &Path, action: Action) -> anyhow::Result<()> {
    let (value, event) = read_event(path, action)?;
    let answer = ask_fetcher(g, value).await?;
    let failed = action == Action::Test && answer.get("ok") != Some(&Value::Bool(true));
    if g.json {
        output::json(&answer)?;
    } else if action == Action::Test {
        print!("{}", test_text(&event, &answer));
    } else {
        print!("{}", sample_text(&event, &answer));
    }
    if failed {
        return Err(Exit::silent(1));
    }
    Ok(())
}

fn test_text(event: &ConnectionEvent, answer: &Value) -> String {
    let mut out = String::new();
    if answer.get("ok") == Some(&Value::Bool(true)) {
        let msg = answer
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("authenticated and read a record");
        out.push_str(&format!(
            "ok: {} ({}): {msg}\n",
            event.connection, event.source
        ));
        if let Some(sample) = answer.get("sample").filter(|s| !s.is_null()) {
            out.push_str(&mapped_text(sample));
        }
    } else {
        let err = answer
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| answer.to_string());
        out.push_str(&format!(
            "test failed: {} ({}): {err}\n",
            event.connection, event.source
        ));
    }
    out
}

fn mapped_text(m: &Value) -> String {
    let mut out = format!(
        "  key: {}",
        m.get("key").and_then(Value::as_str).unwrap_or("(none)")
    );
    if let Some(id) = m.get("source_id").and_then(Value::as_str) {
        out.push_str(&format!("   source id: {id}"));
    }
    if let Some(ci) = m.get("checked_in").and_then(Value::as_str) {
        out.push_str(&format!("   checked in: {ci}"));
    }
    out.push('\n');
    if let Some(attrs) = m.get("attrs").and_then(Value::as_object) {
        let width = attrs.keys().map(|k| k.chars().count()).max().unwrap_or(0);
        for (k, v) in attrs {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            out.push_str(&format!(
                "    {k}{} = {}\n",
                " ".repeat(width - k.chars().count()),
                assetsync::console::one_line(&v)
            ));
        }
    }
    out
}

fn sample_text(event: &ConnectionEvent, answer: &Value) -> String {
    let mapped = answer
        .get("mapped")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let raw = answer
        .get("raw")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let skipped = answer
        .get("skipped")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = answer
        .get("vendor_total")
        .and_then(Value::as_u64)
        .map(|t| format!("; the vendor reports {t} in all"))
        .unwrap_or_default();
    let mut out = format!(
        "sample of {} ({}, {}): {raw} raw records on the first page, {} mapped, {} without a key{total}\n(raw records: --json)\n\n",
        event.connection,
        event.source,
        event.object_type,
        mapped.len(),
        skipped.len()
    );
    for m in &mapped {
        out.push_str(&mapped_text(m));
    }
    if !skipped.is_empty() {
        out.push_str("\nskipped (no key):\n");
        for s in &skipped {
            out.push_str(&format!(
                "  {}: {}\n",
                s.get("key").and_then(Value::as_str).unwrap_or("?"),
                s.get("reason").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_get_the_action_and_are_checked() {
        let dir = std::env::temp_dir().join(format!("assetsync-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("e.json");
        std::fs::write(
            &p,
            r#"{"connection":"jamf-prod","source":"jamf","secret_id":"s","action":"sample"}"#,
        )
        .unwrap();
        let (v, ev) = read_event(&p, Action::Sync).unwrap();
        assert_eq!(v["action"], "sync");
        assert_eq!(ev.action, Action::Sync);
        std::fs::write(
            &p,
            r#"{"connection":"jamf-prod","source":"jamf","secret_id":"s","objecttype":"Hardware"}"#,
        )
        .unwrap();
        let e = read_event(&p, Action::Sync).unwrap_err().to_string();
        assert!(e.contains("objecttype"), "{e}");
        std::fs::write(&p, "[]").unwrap();
        assert!(read_event(&p, Action::Sync)
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn already_running_is_exit_3() {
        let e = started_run(&json!({"started": false, "running_run_id": "r0", "message": "connection x already has run r0 in progress"})).unwrap_err();
        let exit = e.downcast_ref::<Exit>().unwrap();
        assert_eq!(exit.code, ALREADY_RUNNING);
        assert!(exit.message.as_deref().unwrap().contains("r0"));
        assert_eq!(
            started_run(&json!({"run_id": "r1", "status": "running"})).unwrap(),
            "r1"
        );
    }

    #[test]
    fn test_and_sample_text() {
        let ev = ConnectionEvent::parse(
            json!({"connection": "jamf-prod", "source": "jamf", "secret_id": "s"}),
        )
        .unwrap();
        let t = test_text(
            &ev,
            &json!({"ok": false, "error": "Jamf rejected the credentials: invalid_client"}),
        );
        assert!(
            t.contains("test failed") && t.contains("invalid_client"),
            "{t}"
        );
        let t = test_text(
            &ev,
            &json!({"ok": true, "message": "Jamf Pro 11", "sample": {"key": "C02", "attrs": {"Name": "Mac"}}}),
        );
        assert!(t.contains("ok:") && t.contains("Name = Mac"), "{t}");
        let t = sample_text(
            &ev,
            &json!({"raw": [{}, {}], "mapped": [{"key": "C02", "attrs": {}}], "skipped": [{"key": "7", "reason": "no serial"}], "vendor_total": 9}),
        );
        assert!(
            t.contains("2 raw records") && t.contains("9 in all") && t.contains("7: no serial"),
            "{t}"
        );
    }
}
