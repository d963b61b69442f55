//! The built function binaries, run under `cargo lambda watch` (the Lambda runtime emulator),
//! answer each file in `events/` as expected. This exercises the Lambda runtime wiring of
//! `functions/fetcher` and `functions/importer` (`lambda_runtime::run`, payload types, error
//! diagnostics), not just the handler functions the other end-to-end tests call in-process.
//!
//! Needs cargo-lambda from the project's virtual environment (`scripts/bootstrap.sh`); a missing
//! one fails the test, it is never skipped. The first invoke of each function compiles it (debug
//! build in the shared target directory), so the first answers may take minutes.

use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use assetsync_tests::stack::{repo_root, LocalStack};
use serde_json::Value;

/// The first invoke compiles the function (and may wait for the shared target directory's lock).
const FIRST_INVOKE_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Later invokes of an already running function.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(90);
const WATCH_LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// `cargo-lambda` from the project's virtual environment, or a clear failure naming the fix.
fn cargo_lambda() -> anyhow::Result<PathBuf> {
    let path = repo_root().join(".venv").join("bin").join("cargo-lambda");
    if !path.exists() {
        bail!(
            "{} not found: this test runs the function binaries under `cargo lambda watch`, which \
             needs cargo-lambda from the project's Python tools; run scripts/bootstrap.sh (from the \
             repository root: `scripts/bootstrap.sh`), then rerun the tests",
            path.display()
        );
    }
    Ok(path)
}

/// PATH with the venv's bin directory first (cargo-lambda looks for its helpers there).
fn path_with_venv() -> String {
    let venv = repo_root().join(".venv").join("bin");
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", venv.display()),
        _ => venv.display().to_string(),
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(listener.local_addr()?.port())
}

fn file_tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::from("(no log)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Every descendant of `root` (children, grandchildren...), from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = rest
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok())
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, ppid) in &parents {
            if *ppid == p && !out.contains(pid) {
                out.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    out
}

fn signal(pids: &[String], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(sig)
        .arg("--")
        .args(pids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A running `cargo lambda watch` in its own process group. Dropping it ends the group and every
/// descendant (the `cargo run` of each function and the function binaries), however the test ends.
struct Watch {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Watch {
    fn log_tail(&self) -> String {
        file_tail(&self.log, 6000)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let pid = self.child.id();
        // watchexec may put a function's `cargo run` in a group of its own: collect the whole tree
        // first, by pid, then signal the group and the tree.
        let mut targets: Vec<String> = vec![format!("-{pid}")];
        targets.extend(descendants(pid).into_iter().map(|p| p.to_string()));
        signal(&targets, "-TERM");
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever is left of the tree (pids collected before the TERM) gets a KILL.
        let alive: Vec<String> = targets
            .iter()
            .filter(|t| t.starts_with('-') || Path::new("/proc").join(t.as_str()).exists())
            .cloned()
            .collect();
        signal(&alive, "-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("ASSETSYNC_KEEP_WATCH_LOG").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Start `cargo lambda watch` from the repository root on a free loopback port. The functions'
/// environment is passed through the watch process's own environment, which cargo-lambda hands
/// on to the functions (`cargo run --bin <fn>` inherits it); `--env-var` would split values at
/// commas (SOURCE_PRECEDENCE is a comma-separated list).
fn start_watch(cargo_lambda: &Path, env: &[(String, String)]) -> anyhow::Result<Watch> {
    let root = repo_root();
    let port = free_port()?;
    let log = std::env::temp_dir().join(format!(
        "assetsync-cargo-lambda-watch-{}-{port}.log",
        std::process::id()
    ));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(cargo_lambda)
        .args([
            "lambda",
            "watch",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(port.to_string())
        // Others edit the workspace while this runs: never rebuild and restart mid-test.
        .arg("--ignore-changes")
        .current_dir(&root)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PATH", path_with_venv())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} lambda watch", cargo_lambda.display()))?;
    let mut watch = Watch { child, port, log };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    loop {
        if let Some(status) = watch.child.try_wait()? {
            bail!(
                "cargo lambda watch exited ({status}) before listening on {addr}:\n{}",
                watch.log_tail()
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(watch);
        }
        if started.elapsed() > WATCH_LISTEN_TIMEOUT {
            bail!(
                "cargo lambda watch did not listen on {addr} within {WATCH_LISTEN_TIMEOUT:?}:\n{}",
                watch.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What one `cargo lambda invoke` answered.
struct Answer {
    success: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Answer {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(self.stdout.trim()).with_context(|| {
            format!(
                "the answer is not JSON:\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

async fn invoke(
    cargo_lambda: &Path,
    watch: &Watch,
    function: &str,
    data_file: &Path,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(cargo_lambda);
    // Long flag names: in `cargo lambda invoke`, `-A` is both --invoke-address and --data-ascii.
    cmd.args([
        "lambda",
        "invoke",
        function,
        "--invoke-address",
        "127.0.0.1",
        "--invoke-port",
    ])
    .arg(watch.port.to_string())
    .arg("--data-file")
    .arg(data_file)
    .current_dir(repo_root())
    .env("PATH", path_with_venv())
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| anyhow!("`cargo lambda invoke {function} --data-file {}` gave no answer within {timeout:?}; watch log:\n{}", data_file.display(), watch.log_tail()))?
        .context("running cargo lambda invoke")?;
    Ok(Answer {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    })
}

/// Invoke and require a successful JSON answer.
async fn invoke_ok(
    cargo_lambda: &Path,
    watch: &Watch,
    function: &str,
    data_file: &Path,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let a = invoke(cargo_lambda, watch, function, data_file, timeout).await?;
    eprintln!(
        "[lambda_runtime] {function} <- {} ({:.1?}): {}",
        data_file.file_name().unwrap_or_default().to_string_lossy(),
        a.took,
        clip(a.stdout.trim(), 700)
    );
    if !a.success {
        bail!(
            "`cargo lambda invoke {function} --data-file {}` failed:\nstdout: {}\nstderr: {}\nwatch log:\n{}",
            data_file.display(),
            a.stdout,
            a.stderr,
            watch.log_tail()
        );
    }
    a.json()
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}... ({} bytes in all)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

fn short(v: &Value) -> String {
    clip(&v.to_string(), 600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn function_binaries_answer_every_event_file_under_cargo_lambda_watch() -> anyhow::Result<()>
{
    let test_started = Instant::now();
    let cargo_lambda = cargo_lambda()?;
    let root = repo_root();
    let events = root.join("events");

    // 1. The local AWS stack and a Jamf simulator behind the secret the Jamf events name.
    let stack = LocalStack::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 50,
        ..JamfConfig::default()
    })
    .await?;
    let sdk = stack.sdk_config().await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret_text = sim.secret().to_string();
    if sm
        .put_secret_value()
        .secret_id("assetsync/jamf-prod")
        .secret_string(&secret_text)
        .send()
        .await
        .is_err()
    {
        sm.create_secret()
            .name("assetsync/jamf-prod")
            .secret_string(&secret_text)
            .send()
            .await
            .context("storing the simulator's secret as assetsync/jamf-prod")?;
    }

    // 2. cargo lambda watch with the functions' environment from the template.
    let fetcher_env = stack.function_env("fetcher");
    let importer_env = stack.function_env("importer");
    assert_eq!(
        fetcher_env, importer_env,
        "both functions share one environment in the template"
    );
    let mut env = stack.aws_env();
    env.extend(fetcher_env);
    env.push(("RUST_LOG".into(), "warn".into()));
    env.push(("ASSETSYNC_FAST_RETRY".into(), "1".into()));
    let watch = start_watch(&cargo_lambda, &env)?;

    // 3. Each event file.
    // jamf-test (first fetcher invoke: compiles the fetcher).
    let v = invoke_ok(
        &cargo_lambda,
        &watch,
        "fetcher",
        &events.join("jamf-test.json"),
        FIRST_INVOKE_TIMEOUT,
    )
    .await?;
    assert_eq!(
        v["ok"],
        Value::Bool(true),
        "jamf-test.json answers ok: {}",
        short(&v)
    );
    assert_eq!(v["connection"], "jamf-prod", "{}", short(&v));

    // jamf-sample: the first page, raw and mapped.
    let v = invoke_ok(
        &cargo_lambda,
        &watch,
        "fetcher",
        &events.join("jamf-sample.json"),
        INVOKE_TIMEOUT,
    )
    .await?;
    let raw = v["raw"]
        .as_array()
        .with_context(|| format!("sample has a raw array: {}", short(&v)))?;
    let mapped = v["mapped"]
        .as_array()
        .with_context(|| format!("sample has a mapped array: {}", short(&v)))?;
    assert!(!raw.is_empty(), "the sample has raw records: {}", short(&v));
    assert!(
        !mapped.is_empty(),
        "the sample has mapped records: {}",
        short(&v)
    );
    assert!(mapped.len() <= raw.len());
    for m in mapped {
        assert!(
            m["key"].as_str().is_some_and(|k| !k.is_empty()),
            "a mapped record has a key: {m}"
        );
    }

    // jamf-scheduled: a sync run starts; with no importer draining the records queue it stays
    // running (all pages fetched, none imported).
    let v = invoke_ok(
        &cargo_lambda,
        &watch,
        "fetcher",
        &events.join("jamf-scheduled.json"),
        INVOKE_TIMEOUT,
    )
    .await?;
    let run_id = v["run_id"]
        .as_str()
        .with_context(|| format!("a run summary has run_id: {}", short(&v)))?
        .to_string();
    assert!(!run_id.is_empty());
    let status = v["status"]
        .as_str()
        .with_context(|| format!("a run summary has status: {}", short(&v)))?;
    assert!(
        matches!(status, "running" | "succeeded"),
        "status {status}: {}",
        short(&v)
    );
    assert!(
        v["pages"].is_object(),
        "a run summary has pages: {}",
        short(&v)
    );
    assert!(
        v["counts"].is_object(),
        "a run summary has counts: {}",
        short(&v)
    );
    assert_eq!(v["connection"], "jamf-prod");
    if status == "running" {
        assert!(
            v["pages"]["fetched"].as_u64().unwrap_or(0) >= 1,
            "the run fetched pages: {}",
            short(&v)
        );
    }

    // jamf-manual-sync: the same connection while the run holds the lease.
    let v = invoke_ok(
        &cargo_lambda,
        &watch,
        "fetcher",
        &events.join("jamf-manual-sync.json"),
        INVOKE_TIMEOUT,
    )
    .await?;
    if status == "running" {
        assert_eq!(
            v["started"],
            Value::Bool(false),
            "a second sync of a running connection starts nothing: {}",
            short(&v)
        );
        assert_eq!(
            v["running_run_id"].as_str(),
            Some(run_id.as_str()),
            "{}",
            short(&v)
        );
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("in progress"),
            "the message says a run is in progress: {msg}"
        );
    } else {
        assert!(v["run_id"].is_string(), "{}", short(&v));
    }

    // fetch-continuation-sqs: run `run-example` does not exist -> an error answer, not a panic.
    let a = invoke(
        &cargo_lambda,
        &watch,
        "fetcher",
        &events.join("fetch-continuation-sqs.json"),
        INVOKE_TIMEOUT,
    )
    .await?;
    let all = format!("{}\n{}", a.stdout, a.stderr);
    eprintln!(
        "[lambda_runtime] fetcher <- events/fetch-continuation-sqs.json ({:.1?}, success={}): {}",
        a.took,
        a.success,
        all.trim()
    );
    assert!(
        !a.success,
        "a continuation of an unknown run is reported as an error: {all}"
    );
    assert!(
        all.contains("run-example") && all.contains("does not exist"),
        "the error names the run: {all}"
    );
    // The handler's error went through the runtime as a Lambda error with the Diagnostic's type.
    assert!(
        all.contains("NonRetryable"),
        "the error carries the fetcher's error type: {all}"
    );
    assert!(!all.contains("panic"), "an error, not a panic: {all}");

    // The other sources' events, as connection tests: their template secrets hold placeholders
    // (REPLACE_ME, example hosts) unreachable here, so each answers ok:false with the reason.
    let tmp = std::env::temp_dir().join(format!(
        "assetsync-lambda-runtime-{}-{}",
        std::process::id(),
        watch.port
    ));
    std::fs::create_dir_all(&tmp)?;
    for file in [
        "ec-scheduled.json",
        "intune-scheduled.json",
        "kandji-scheduled.json",
        "jumpcloud-people.json",
    ] {
        let mut ev: Value = serde_json::from_str(&std::fs::read_to_string(events.join(file))?)
            .with_context(|| format!("events/{file} is JSON"))?;
        ev["action"] = Value::String("test".into());
        let path = tmp.join(file);
        std::fs::write(&path, ev.to_string())?;
        let v = invoke_ok(&cargo_lambda, &watch, "fetcher", &path, INVOKE_TIMEOUT).await?;
        assert_eq!(
            v["ok"],
            Value::Bool(false),
            "{file} (action test) with a placeholder secret: {}",
            short(&v)
        );
        assert_eq!(v["connection"], ev["connection"], "{}", short(&v));
        // Explained: the secret's bad field by name, or the unreachable vendor endpoint.
        let error = v["error"].as_str().unwrap_or_default();
        let secret_id = ev["secret_id"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("secret {secret_id}")) || error.contains("network error"),
            "{file}: the failure names the secret or the unreachable endpoint: {}",
            short(&v)
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);

    // importer-sqs-batch (first importer invoke: compiles the importer): the malformed record,
    // and only it, is a batch item failure; the page of the unknown run is imported uncounted.
    let batch: Value = serde_json::from_str(&std::fs::read_to_string(
        events.join("importer-sqs-batch.json"),
    )?)?;
    let malformed: Vec<String> = batch["Records"]
        .as_array()
        .context("the batch has Records")?
        .iter()
        .filter(|r| serde_json::from_str::<Value>(r["body"].as_str().unwrap_or_default()).is_err())
        .map(|r| r["messageId"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(malformed.len(), 1, "the batch has one malformed record");
    let v = invoke_ok(
        &cargo_lambda,
        &watch,
        "importer",
        &events.join("importer-sqs-batch.json"),
        FIRST_INVOKE_TIMEOUT,
    )
    .await?;
    assert_eq!(
        v,
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": malformed[0]}]}),
        "exactly the malformed record fails; watch log:\n{}",
        watch.log_tail()
    );
    // The well-formed page (of a run that does not exist) was imported into the register.
    let page: Value = batch["Records"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|r| serde_json::from_str(r["body"].as_str().unwrap_or_default()).ok())
        .context("the batch has a well-formed page")?;
    let key = page["records"][0]["key"]
        .as_str()
        .context("the page's record has a key")?;
    let store = assetsync::store::Store::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        stack.output("TableName"),
    );
    assert!(
        store.record("Hardware", key).await?.is_some(),
        "the importer wrote Hardware {key} to the register"
    );

    // Nothing panicked in the functions meanwhile.
    let log = file_tail(&watch.log, 200_000);
    assert!(
        !log.contains("panicked"),
        "a function panicked:\n{}",
        watch.log_tail()
    );

    drop(watch);
    drop(sim);
    drop(stack);
    eprintln!(
        "[lambda_runtime] all events answered in {:.1?}",
        test_started.elapsed()
    );
    Ok(())
}
