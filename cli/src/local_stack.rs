//! `local up|down`: moto on loopback with infra/template.yaml deployed into it.
//!
//! `local up` starts moto detached (its own process group, so it outlives the command and a
//! Ctrl-C of it) through `moto_server.py` (moto_server with isolated DynamoDB transactions, written
//! next to the stack file), records it in `moto.json` (pid, port, endpoint) and `moto.pid` there
//! (default `.local/`), and reuses it on the next `local up` while it is alive. `local down` stops
//! it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::output;
use crate::target::{self, repo_root};
use crate::{Global, LocalCmd};

const MOTO_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// moto_server with DynamoDB transactions that neither copy nor restore whole tables.
const MOTO_SERVER_PY: &str = include_str!("moto_server.py");

/// What `.local/moto.json` records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct MotoRecord {
    pid: u32,
    port: u16,
    endpoint: String,
    started_at: String,
}

pub async fn run(g: &Global, cmd: LocalCmd) -> anyhow::Result<()> {
    let root = repo_root().ok_or_else(|| anyhow!("run this inside the assetsync repository (no infra/local_deploy.py above the working directory)"))?;
    match cmd {
        LocalCmd::Up { recreate } => up(g, &root, recreate),
        LocalCmd::Down => down(g, &root),
    }
}

/// Where moto's state (`moto.json`, `moto.pid`, `moto.log`) lives: next to the stack file.
fn local_dir(g: &Global, root: &Path) -> PathBuf {
    match target::stack_file(g).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => root.join(".local"),
    }
}

/// Our stderr as a child's stdout, so `--json` keeps stdout for the one document.
fn stderr_stdio() -> Stdio {
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::inherit(),
    }
}

fn up(g: &Global, root: &Path, recreate: bool) -> anyhow::Result<()> {
    let venv = root.join(".venv").join("bin");
    if !venv.join("python").exists() || !venv.join("moto_server").exists() {
        eprintln!("local up: no .venv yet; running scripts/bootstrap.sh");
        let status = Command::new("bash")
            .arg(root.join("scripts").join("bootstrap.sh"))
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(stderr_stdio())
            .status()
            .context("running scripts/bootstrap.sh")?;
        if !status.success() {
            bail!("scripts/bootstrap.sh failed ({status})");
        }
    }
    let dir = local_dir(g, root);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let given = g.endpoint.clone().or_else(|| {
        std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|v| !v.trim().is_empty())
    });
    let (endpoint, moto, reused) = match given {
        Some(e) => {
            target::check_reachable(&e)?;
            (e, None, false)
        }
        None => match alive_moto(&dir) {
            Some(m) => (m.endpoint.clone(), Some(m), true),
            None => {
                let m = start_moto(&venv, &dir)?;
                (m.endpoint.clone(), Some(m), false)
            }
        },
    };
    if let Some(m) = &moto {
        eprintln!(
            "local up: moto {} at {} (pid {})",
            if reused { "already running" } else { "started" },
            m.endpoint,
            m.pid
        );
    }
    let stack_file = target::stack_file(g);
    let mut cmd = Command::new(venv.join("python"));
    cmd.arg(root.join("infra").join("local_deploy.py"))
        .arg("--endpoint")
        .arg(&endpoint)
        .arg("--out")
        .arg(&stack_file);
    if recreate {
        cmd.arg("--recreate");
    }
    let out = cmd
        .current_dir(root)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running infra/local_deploy.py")?;
    if !out.status.success() {
        bail!(
            "infra/local_deploy.py failed ({}); see its messages above{}",
            out.status,
            moto.as_ref()
                .map(|_| format!("; moto's log: {}", dir.join("moto.log").display()))
                .unwrap_or_default()
        );
    }
    let info: Value = serde_json::from_slice(&out.stdout)
        .context("infra/local_deploy.py printed no JSON document")?;
    if g.json {
        return output::json(&json!({
            "endpoint": endpoint,
            "moto_pid": moto.as_ref().map(|m| m.pid),
            "moto_reused": reused,
            "stack_file": stack_file,
            "region": info.get("region"),
            "outputs": info.get("outputs"),
            "secrets": info.get("secrets"),
        }));
    }
    println!("endpoint    {endpoint}");
    if let Some(m) = &moto {
        println!(
            "moto        pid {}{}",
            m.pid,
            if reused { " (reused)" } else { "" }
        );
    }
    println!("stack file  {}", stack_file.display());
    if let Some(outputs) = info.get("outputs").and_then(Value::as_object) {
        let width = outputs.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in outputs {
            println!(
                "  {k}{}  {}",
                " ".repeat(width - k.len()),
                v.as_str().unwrap_or_default()
            );
        }
    }
    if let Some(secrets) = info.get("secrets").and_then(Value::as_array) {
        let names: Vec<&str> = secrets.iter().filter_map(Value::as_str).collect();
        println!(
            "secrets     {} (placeholders: `assetsync secrets put NAME --file F`)",
            names.join(", ")
        );
    }
    Ok(())
}

fn read_record(dir: &Path) -> Option<MotoRecord> {
    let text = std::fs::read_to_string(dir.join("moto.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether `pid` is a live process that looks like moto (guards against a reused pid).
fn pid_is_moto(pid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if Path::new("/proc/self").exists() {
        return std::fs::read(proc_dir.join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("moto"))
            .unwrap_or(false);
    }
    Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// The moto an earlier `local up` started, if it still runs and listens.
fn alive_moto(dir: &Path) -> Option<MotoRecord> {
    let m = read_record(dir)?;
    (pid_is_moto(m.pid) && listening(m.port)).then_some(m)
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn start_moto(venv: &Path, dir: &Path) -> anyhow::Result<MotoRecord> {
    let port = free_port()?;
    let log_path = dir.join("moto.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    // moto_server with isolated, table-size-independent DynamoDB transactions (see moto_server.py).
    let script = dir.join("moto_server.py");
    std::fs::write(&script, MOTO_SERVER_PY)
        .with_context(|| format!("writing {}", script.display()))?;
    let mut child = Command::new(venv.join("python"))
        .arg(&script)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: it outlives this command and a Ctrl-C sent to it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting moto with {}", venv.join("python").display()))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "moto_server exited ({status}) before listening on 127.0.0.1:{port}:\n{}",
                log_tail(&log_path)
            );
        }
        if listening(port) {
            break;
        }
        if started.elapsed() > MOTO_READY_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "moto_server did not listen on 127.0.0.1:{port} within {MOTO_READY_TIMEOUT:?}:\n{}",
                log_tail(&log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rec = MotoRecord {
        pid: child.id(),
        port,
        endpoint: format!("http://127.0.0.1:{port}"),
        started_at: assetsync::runs::now(),
    };
    std::fs::write(
        dir.join("moto.json"),
        serde_json::to_string_pretty(&rec)? + "\n",
    )?;
    std::fs::write(dir.join("moto.pid"), format!("{}\n", rec.pid))?;
    Ok(rec)
}

fn down(g: &Global, root: &Path) -> anyhow::Result<()> {
    let dir = local_dir(g, root);
    let rec = read_record(&dir);
    let mut stopped = None;
    if let Some(m) = &rec {
        if pid_is_moto(m.pid) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(m.pid.to_string())
                .status();
            let begin = Instant::now();
            while pid_is_moto(m.pid) && begin.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if pid_is_moto(m.pid) {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(m.pid.to_string())
                    .status();
            }
            stopped = Some(m.pid);
        }
        let _ = std::fs::remove_file(dir.join("moto.json"));
        let _ = std::fs::remove_file(dir.join("moto.pid"));
        // The stack lived in that moto's memory: its description is stale now.
        let stack_file = target::stack_file(g);
        if target::read_stack_file(&stack_file)
            .ok()
            .and_then(|i| {
                i.get("endpoint")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .as_deref()
            == Some(m.endpoint.as_str())
        {
            let _ = std::fs::remove_file(&stack_file);
        }
    }
    if g.json {
        return output::json(&json!({"stopped_pid": stopped}));
    }
    match stopped {
        Some(pid) => println!("stopped moto (pid {pid})"),
        None => println!("no moto started by `assetsync local up` is running"),
    }
    Ok(())
}
