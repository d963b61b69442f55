//! All five vendor simulators in one process, for the local main job (scripts/local-sync.sh) and
//! for trying assetsync by hand:
//!
//! ```sh
//! simulators --fleet 2000 --seed 42 --out .local/simulators.json
//! ```
//!
//! Starts Jamf Pro, JumpCloud, Intune (Entra ID + Graph), Kandji and Endpoint Central on loopback
//! ports over one seeded fleet: person `i` of the shared directory (`fleet::person(i)`) is the same
//! person in every simulator, so devices' user emails match JumpCloud's and Intune's people. Writes
//! `{vendor: {"base_url", "secret", ...}}` to `--out` (atomically, once every simulator listens;
//! vendor keys are assetsync source names) and serves until SIGINT/SIGTERM, until its stdin
//! reaches end-of-file when stdin is a pipe or socket, or until the process `--exit-with-pid`
//! names has ended.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use assetsync_tests::sim::endpoint_central::{EcSimConfig, EndpointCentralSim, RateLimitCfg};
use assetsync_tests::sim::intune::{IntuneConfig, IntuneSim};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use assetsync_tests::sim::jumpcloud::{JumpCloudConfig, JumpCloudSim};
use assetsync_tests::sim::kandji::{KandjiSim, KandjiSimConfig};
use clap::Parser;
use serde_json::{json, Value};

/// Serve all five vendor simulators over one seeded fleet.
#[derive(Parser, Debug)]
#[command(name = "simulators")]
struct Args {
    /// Devices per vendor (Jamf: computers; Jamf mobile devices are a quarter of it).
    #[arg(long, default_value_t = 2000)]
    fleet: usize,
    /// Seed of the synthetic fleet (the same seed gives the same fleet).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write the base URLs and connection secrets (JSON).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// People in the shared directory (JumpCloud users, Intune users, Kandji users); default: the fleet size.
    #[arg(long)]
    people: Option<usize>,
    /// Jamf mobile devices; default: a quarter of the fleet.
    #[arg(long)]
    mobile: Option<usize>,
    /// Endpoint Central's per-API rate limit, requests per minute (documented: 120, then a
    /// 5-minute lock); 0 turns it off.
    #[arg(long, default_value_t = 120)]
    ec_rate_limit: u32,
    /// Kandji's request budget per hour (documented: 10,000).
    #[arg(long, default_value_t = 10_000)]
    kandji_hourly_limit: usize,
    /// Exit when the process with this id ends (e.g. the script that started the simulators).
    #[arg(long, value_name = "PID")]
    exit_with_pid: Option<u32>,
}

/// Whether stdin is a pipe or socket (so its end-of-file means "the parent is gone"); a terminal,
/// `/dev/null` or a file is not watched.
fn stdin_is_pipe() -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata("/proc/self/fd/0")
        .or_else(|_| std::fs::metadata("/dev/stdin"))
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false)
}

fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        return Path::new(&format!("/proc/{pid}")).exists();
    }
    std::process::Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn write_atomically(path: &Path, value: &Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// What ends the simulators.
async fn stop_signal(exit_with_pid: Option<u32>) -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("simulators: cannot listen for SIGTERM: {e}");
            None
        }
    };
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let stdin_eof = async {
        if !stdin_is_pipe() {
            return std::future::pending::<()>().await;
        }
        let _ = tokio::task::spawn_blocking(|| {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        })
        .await;
    };
    let parent_gone = async {
        let Some(pid) = exit_with_pid else {
            return std::future::pending::<()>().await;
        };
        while process_alive(pid) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = sigterm => "SIGTERM",
        _ = stdin_eof => "end of stdin",
        _ = parent_gone => "the watched process ended",
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.fleet;
    let people = args.people.unwrap_or(n).max(1);
    let seed = args.seed;

    let jamf = JamfSim::start(JamfConfig {
        computers: n,
        mobile_devices: args.mobile.unwrap_or(n / 4),
        seed,
        ..JamfConfig::default()
    })
    .await
    .context("starting the Jamf Pro simulator")?;
    let jumpcloud = JumpCloudSim::start(JumpCloudConfig {
        seed,
        systems: n,
        users: people,
        ..JumpCloudConfig::default()
    })
    .await
    .context("starting the JumpCloud simulator")?;
    let intune = IntuneSim::start(IntuneConfig {
        seed,
        devices: n,
        users: people,
        ..IntuneConfig::default()
    })
    .await
    .context("starting the Intune simulator")?;
    let kandji = KandjiSim::start(KandjiSimConfig {
        seed,
        devices: n,
        users: people,
        hourly_limit: args.kandji_hourly_limit,
        ..KandjiSimConfig::default()
    })
    .await
    .context("starting the Kandji simulator")?;
    let rate_limit = (args.ec_rate_limit > 0).then(|| RateLimitCfg {
        requests: args.ec_rate_limit,
        ..RateLimitCfg::documented()
    });
    let ec = EndpointCentralSim::start(EcSimConfig {
        seed,
        devices: n,
        rate_limit,
        ..EcSimConfig::default()
    })
    .await
    .context("starting the Endpoint Central simulator")?;

    let doc = json!({
        "jamf": {"base_url": jamf.base_url(), "secret": jamf.secret(), "computers": jamf.computer_count(), "mobile_devices": jamf.mobile_count()},
        "jumpcloud": {"base_url": jumpcloud.base_url(), "secret": jumpcloud.secret(), "service_account_secret": jumpcloud.service_account_secret(), "systems": jumpcloud.device_count(), "users": jumpcloud.user_count()},
        "intune": {"base_url": intune.base_url(), "secret": intune.secret(), "devices": intune.device_count(), "users": intune.user_count()},
        "kandji": {"base_url": kandji.base_url(), "secret": kandji.secret(), "devices": kandji.device_count(), "users": kandji.user_count()},
        "endpoint-central": {"base_url": ec.base_url(), "secret": ec.secret(), "devices": ec.device_count(),
                             "rate_limit_per_minute": args.ec_rate_limit},
    });
    write_atomically(&args.out, &doc)?;
    eprintln!(
        "simulators: fleet {n} (seed {seed}, {people} people): jamf {}  jumpcloud {}  intune {}  kandji {}  endpoint-central {}; secrets in {}",
        jamf.base_url(),
        jumpcloud.base_url(),
        intune.base_url(),
        kandji.base_url(),
        ec.base_url(),
        args.out.display()
    );
    let why = stop_signal(args.exit_with_pid).await;
    eprintln!("simulators: stopping ({why})");
    drop((jamf, jumpcloud, intune, kandji, ec));
    Ok(())
}

fn main() {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("simulators: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let res = rt.block_on(run(args));
    // A stdin reader may still block; don't wait for it.
    rt.shutdown_timeout(Duration::from_millis(200));
    if let Err(e) = res {
        eprintln!("simulators: error: {e:#}");
        std::process::exit(1);
    }
}
