//! Child processes of a benchmark run — release `fake-mongod` servers, `clustersync` processes
//! and etcd — and the memory sampler that watches one of them through `/proc/<pid>/status`.
//!
//! Every child is killed when its handle is dropped, so a failed run leaves nothing behind.
//! Logs go to files under the run's log directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a child gets to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A free TCP port on 127.0.0.1 (bind port 0, read it, release it).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

/// A release `fake-mongod` process: a one-member replica set `rs0` on a free port.
pub struct MongoServer {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl MongoServer {
    /// Starts `fake-mongod --port 0 --replSet rs0` and reads its `listening on` line.
    pub async fn start(bin_dir: &Path, log_dir: &Path, name: &str) -> anyhow::Result<MongoServer> {
        let binary = bin_dir.join("fake-mongod");
        let mut child = Command::new(&binary)
            .args(["--port", "0", "--replSet", "rs0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(log_dir, &format!("{name}.log"))?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("fake-mongod stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(STARTUP_TIMEOUT, lines.next_line())
            .await
            .context("fake-mongod did not print its address in time")??
            .context("fake-mongod exited before printing its address")?;
        let port = first
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|port| port.trim().parse::<u16>().ok())
            .with_context(|| format!("unexpected first line from fake-mongod: {first:?}"))?;
        // Nothing else is expected on stdout; drain it so the server can never block on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(MongoServer { child, port })
    }

    /// Connection string, as a user would give it to clustersync.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?replicaSet=rs0", self.port)
    }

    /// Kills the server and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A `clustersync` process (single-process mode, or one role of distributed mode).
pub struct SyncProcess {
    child: Child,
    /// REST API port (meaningful for roles that serve it).
    pub port: u16,
    command: Vec<String>,
    log: PathBuf,
    http: reqwest::Client,
}

impl SyncProcess {
    /// Starts `clustersync <args> --port P --logPath <dir> --acceptDisclaimer`; `args` holds the
    /// subcommand (if any) and the cluster URIs.
    pub fn start(bin_dir: &Path, log_dir: &Path, name: &str, args: &[String]) -> anyhow::Result<SyncProcess> {
        let port = free_port()?;
        let own_logs = log_dir.join(name);
        std::fs::create_dir_all(&own_logs)?;
        let mut command = vec![bin_dir.join("clustersync").display().to_string()];
        command.extend(args.iter().cloned());
        command.extend(["--port".to_string(), port.to_string(), "--logPath".to_string()]);
        command.extend([own_logs.display().to_string(), "--acceptDisclaimer".to_string()]);
        let log = log_dir.join(format!("{name}.stderr.log"));
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = spawn(&command, &log)?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(SyncProcess { child, port, command, log, http })
    }

    /// Stops the process with SIGTERM (SIGKILL after 30 s) and starts it again with the same
    /// flags and state directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        self.child = spawn(&self.command, &self.log)?;
        Ok(())
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last lines of the process's stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails with the log tail if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("clustersync exited with {status}; stderr ends with:\n{}", self.log_tail());
        }
        Ok(())
    }

    fn url(&self, endpoint: &str) -> String {
        format!("http://127.0.0.1:{}/api/v1/{endpoint}", self.port)
    }

    /// Waits until `GET /api/v1/progress` answers.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(response) = self.http.get(self.url("progress")).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() > deadline {
                bail!("the clustersync api did not come up; stderr ends with:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `POST /api/v1/<endpoint>`; fails unless the reply says `success: true`.
    pub async fn post(&self, endpoint: &str, body: Value) -> anyhow::Result<()> {
        let reply: Value = self
            .http
            .post(self.url(endpoint))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {endpoint}"))?
            .json()
            .await
            .with_context(|| format!("POST {endpoint}: reply is not json"))?;
        if reply["success"] != Value::Bool(true) {
            bail!("POST {endpoint} failed: {reply}");
        }
        Ok(())
    }

    /// `GET /api/v1/progress` → the `progress` object.
    pub async fn progress(&self) -> anyhow::Result<Value> {
        let reply: Value = self.http.get(self.url("progress")).send().await?.json().await?;
        if reply["success"] != Value::Bool(true) {
            bail!("GET progress failed: {reply}");
        }
        Ok(reply["progress"].clone())
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// An etcd server on free loopback ports with a temporary data directory.
pub struct Etcd {
    child: Child,
    /// Client URL.
    pub endpoint: String,
    _data: tempfile::TempDir,
}

impl Etcd {
    /// Starts `etcd` (from `$ETCD_BIN`, `PATH` or `/usr/bin/etcd`) and waits for `/health`.
    pub async fn start(log_dir: &Path, name: &str) -> anyhow::Result<Etcd> {
        let binary = find_etcd().context("etcd is not installed (apt-get install -y etcd-server)")?;
        let data = tempfile::Builder::new().prefix("clustersync-bench-etcd-").tempdir()?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut child = Command::new(&binary)
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&endpoint)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{name}={peer}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(log_dir, &format!("{name}.log"))?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(response) = http.get(format!("{endpoint}/health")).send().await
                && response.status().is_success()
            {
                return Ok(Etcd { child, endpoint, _data: data });
            }
            if let Some(status) = child.try_wait()? {
                bail!("etcd exited during startup with {status}");
            }
            if Instant::now() > deadline {
                bail!("etcd did not answer on {endpoint}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills etcd; its data directory goes with the handle.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn spawn(command: &[String], log: &Path) -> anyhow::Result<Child> {
    let stderr =
        std::fs::OpenOptions::new().append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", command[0]))
}

fn find_etcd() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(explicit)).filter(|path| path.is_file());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|candidate| candidate.is_file())
}

/// Resident set size and its high-water mark, in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Peak memory of one phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseMemory {
    /// Largest `VmRSS` sampled during the phase, in MiB.
    pub peak_rss_mib: f64,
    /// `VmRSS` at the phase's first sample, in MiB.
    pub start_rss_mib: f64,
    /// `VmHWM` (the process's peak since it started) at the phase's last sample, in MiB.
    pub hwm_at_end_mib: f64,
    /// Samples taken.
    pub samples: u64,
}

#[derive(Default)]
struct SamplerState {
    phase: Option<String>,
    phases: BTreeMap<String, PhaseMemory>,
}

/// Samples a process's `VmRSS` every 20 ms and keeps the peak of each named phase.
pub struct MemorySampler {
    state: Arc<Mutex<SamplerState>>,
    task: tokio::task::JoinHandle<()>,
}

/// Sampling period of [`MemorySampler`].
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(20);

impl MemorySampler {
    /// Starts sampling `pid` (no phase yet: samples are dropped until [`Self::phase`]).
    pub fn start(pid: u32) -> MemorySampler {
        let state = Arc::new(Mutex::new(SamplerState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SAMPLE_PERIOD);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticker.tick().await;
                let Some((rss, hwm)) = rss_kib(pid) else { return };
                let mut state = shared.lock().expect("sampler lock");
                let Some(phase) = state.phase.clone() else { continue };
                let entry = state.phases.entry(phase).or_default();
                let rss = rss as f64 / 1024.0;
                if entry.samples == 0 {
                    entry.start_rss_mib = rss;
                }
                entry.samples += 1;
                entry.peak_rss_mib = entry.peak_rss_mib.max(rss);
                entry.hwm_at_end_mib = hwm as f64 / 1024.0;
            }
        });
        MemorySampler { state, task }
    }

    /// Attributes the following samples to `phase` (`None`: to no phase).
    pub fn phase(&self, phase: Option<&str>) {
        self.state.lock().expect("sampler lock").phase = phase.map(str::to_string);
    }

    /// Stops sampling; returns the peak of every phase that got samples.
    pub fn finish(self) -> BTreeMap<String, PhaseMemory> {
        self.task.abort();
        std::mem::take(&mut self.state.lock().expect("sampler lock").phases)
    }
}
