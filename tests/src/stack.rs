//! The local AWS stack: a moto server on a free loopback port with `infra/template.yaml`
//! deployed into it by `infra/local_deploy.py`, so tests run against the same resources,
//! names and function environment the real stack has.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let stack = assetsync_tests::stack::LocalStack::start().await?;
//! let table = stack.output("TableName");
//! let config = stack.sdk_config().await;
//! let dynamodb = aws_sdk_dynamodb::Client::new(&config);
//! # let _ = (table, dynamodb); Ok(()) }
//! ```
//!
//! Needs the project's virtual environment (`scripts/bootstrap.sh`); a missing one is an error,
//! never a skipped test. Each `LocalStack` owns its own moto process, killed on drop, so tests
//! may run in parallel.

use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

/// The region the local stack lives in.
pub const REGION: &str = "us-east-1";
const STACK_NAME: &str = "assetsync";
const MOTO_READY_TIMEOUT: Duration = Duration::from_secs(60);
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);
/// `moto_server`, plus a thread that ends the server when its stdin reaches EOF.
const MOTO_WITH_WATCHDOG: &str = "\
import os, sys, threading
def _watch():
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
# DynamoDB applies each request atomically; threaded moto does not: a conditional PutItem reads
# the item, builds the new one (long, for a register record) and stores it, and another thread
# may store in between, so two `attribute_not_exists` creates both succeed. One DynamoDB request
# at a time makes moto linearizable like DynamoDB (other services stay concurrent).
from moto.moto_server import werkzeug_app as _w
_ddb_lock = threading.Lock()
_dispatch = _w.DomainDispatcherApplication.__call__
def _linearized(self, environ, start_response):
    if environ.get('HTTP_X_AMZ_TARGET', '').startswith('DynamoDB_'):
        with _ddb_lock:
            return _dispatch(self, environ, start_response)
    return _dispatch(self, environ, start_response)
_w.DomainDispatcherApplication.__call__ = _linearized
from moto.server import main
main(sys.argv[1:])
";

/// A running moto server with the template deployed in it.
pub struct LocalStack {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// The JSON document `infra/local_deploy.py` printed: outputs, function environments,
    /// secrets, schedules (see infra/README.md).
    pub info: serde_json::Value,
    child: Child,
    log_path: PathBuf,
}

impl LocalStack {
    /// Start moto on a free loopback port and deploy infra/template.yaml into it.
    /// Fails with a clear message naming `scripts/bootstrap.sh` if .venv is missing (never skip).
    pub async fn start() -> anyhow::Result<Self> {
        let root = repo_root();
        let venv = root.join(".venv").join("bin");
        let moto = venv.join("moto_server");
        let python = venv.join("python");
        for tool in [&moto, &python] {
            if !tool.exists() {
                bail!(
                    "{} not found: the local AWS stack needs the project's Python tools; run scripts/bootstrap.sh \
                     (from the repository root: `scripts/bootstrap.sh`), then rerun the tests",
                    tool.display()
                );
            }
        }

        // Binding port 0 and releasing it races with other processes; retry on a lost race.
        let mut last_err = None;
        for _ in 0..3 {
            match spawn_moto(&python).await {
                Ok((endpoint, child, log_path)) => {
                    let mut stack = LocalStack {
                        endpoint,
                        info: serde_json::Value::Null,
                        child,
                        log_path,
                    };
                    stack.info = stack.deploy(&root, &python).await?;
                    return Ok(stack);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("moto did not start")))
    }

    /// A stack output, e.g. `"TableName"`, `"RecordsQueueUrl"`, `"FetcherFunctionName"`.
    ///
    /// Panics with the available names if the template has no such output.
    pub fn output(&self, name: &str) -> String {
        match self.info["outputs"][name].as_str() {
            Some(v) => v.to_string(),
            None => panic!(
                "stack output {name:?} not found; outputs are {}",
                self.info["outputs"]
            ),
        }
    }

    /// The environment the template gives a function (`"fetcher"` or `"importer"`), as moto's
    /// Lambda reports it, sorted by name.
    ///
    /// Panics if there is no such function.
    pub fn function_env(&self, function: &str) -> Vec<(String, String)> {
        let Some(map) = self.info["functions"][function].as_object() else {
            panic!(
                "function {function:?} not in the local stack; functions are {}",
                self.info["functions"]
            );
        };
        let mut env: Vec<(String, String)> = map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        env.sort();
        env
    }

    /// Everything a process needs to act as `function` against this stack: the AWS SDK settings
    /// (endpoint, region, static test credentials, no instance metadata) plus the function's
    /// environment. Use it with `Command::envs` to run a binary (the CLI, a handler) against
    /// the stack without touching this process's environment.
    pub fn env_vars(&self, function: &str) -> Vec<(String, String)> {
        let mut vars = self.aws_env();
        vars.extend(self.function_env(function));
        vars
    }

    /// The AWS SDK settings (endpoint, region, test credentials), plus
    /// `ASSETSYNC_ALLOW_LOOPBACK_HTTP=1` so a process can reach the loopback simulators.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            // A process run against the local stack talks to simulators over loopback http.
            (assetsync::http::ALLOW_LOOPBACK_HTTP_ENV, "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Apply `AWS_ENDPOINT_URL`, `AWS_REGION=us-east-1`, the test credentials,
    /// `AWS_EC2_METADATA_DISABLED=true` and `function`'s environment to this process, so code
    /// that reads its configuration from the environment (the handlers' `main`) sees this stack.
    ///
    /// The environment is process-wide: tests that start several stacks in one process should
    /// prefer [`LocalStack::sdk_config`] or [`LocalStack::env_vars`].
    pub fn apply_env(&self, function: &str) {
        for (k, v) in self.env_vars(function) {
            std::env::set_var(k, v);
        }
    }

    /// An SDK configuration pointing at this stack: endpoint, `us-east-1`, static test credentials.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "assetsync-local-stack",
            ))
            .load()
            .await
    }

    /// Where this stack's moto writes its request log (useful when a test fails).
    pub fn moto_log(&self) -> &Path {
        &self.log_path
    }

    async fn deploy(&mut self, root: &Path, python: &Path) -> anyhow::Result<serde_json::Value> {
        let out = std::env::temp_dir().join(format!(
            "assetsync-stack-{}-{}.json",
            std::process::id(),
            self.endpoint.rsplit(':').next().unwrap_or("0")
        ));
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(root.join("infra").join("local_deploy.py"))
            .arg("--endpoint")
            .arg(&self.endpoint)
            .arg("--stack-name")
            .arg(STACK_NAME)
            .arg("--out")
            .arg(&out)
            .current_dir(root)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(DEPLOY_TIMEOUT, cmd.output())
            .await
            .map_err(|_| anyhow!("infra/local_deploy.py did not finish within {DEPLOY_TIMEOUT:?}"))?
            .context("running infra/local_deploy.py")?;
        let _ = std::fs::remove_file(&out);
        if !output.status.success() {
            bail!(
                "infra/local_deploy.py failed ({}):\n{}\nmoto log tail:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                log_tail(&self.log_path)
            );
        }
        let info: serde_json::Value =
            serde_json::from_slice(&output.stdout).with_context(|| {
                format!(
                    "infra/local_deploy.py printed no JSON document:\n{}",
                    String::from_utf8_lossy(&output.stdout)
                )
            })?;
        Ok(info)
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// The workspace root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(listener.local_addr()?.port())
}

async fn spawn_moto(python: &Path) -> anyhow::Result<(String, Child, PathBuf)> {
    let port = free_port()?;
    let log_path =
        std::env::temp_dir().join(format!("assetsync-moto-{}-{port}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    // moto_server run through the venv's python with a watchdog: moto exits when its stdin
    // closes, i.e. when this process ends however it ends (a killed test leaves no server behind).
    let mut child = Command::new(python)
        .args(["-c", MOTO_WITH_WATCHDOG])
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting moto_server with {}", python.display()))?;

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = log_tail(&log_path);
            let _ = std::fs::remove_file(&log_path);
            bail!("moto_server exited ({status}) before listening on {addr}:\n{tail}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok((format!("http://{addr}"), child, log_path));
        }
        if started.elapsed() > MOTO_READY_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let tail = log_tail(&log_path);
            let _ = std::fs::remove_file(&log_path);
            bail!("moto_server did not listen on {addr} within {MOTO_READY_TIMEOUT:?}:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_tail(path: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::from("(no log)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(4000)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
