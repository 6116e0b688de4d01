//! `clustersync` processes under test: built once, started with mongosync's flags, killed with
//! SIGKILL, restarted with the same flags, and driven through the REST API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Path of the `clustersync` binary: `CLUSTERSYNC_BIN`, or the workspace's debug build, which
/// is brought up to date once per test process (so a test never runs a stale binary).
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Ok(path) = std::env::var("CLUSTERSYNC_BIN") {
                let path = PathBuf::from(path);
                assert!(path.exists(), "CLUSTERSYNC_BIN={} does not exist", path.display());
                return path;
            }
            let root = workspace_root();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            // cargo sets these for the running test; a build script that watches one (ring
            // watches CARGO_MANIFEST_DIR) would otherwise see it change and rebuild its crate
            // and everything above it, and the next plain build would rebuild them back
            for (key, _) in std::env::vars() {
                let set_for_test =
                    ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_", "CARGO_CRATE_"].iter().any(|p| key.starts_with(p))
                        || key == "CARGO_PRIMARY_PACKAGE"
                        || key == "CARGO_TARGET_TMPDIR";
                if set_for_test {
                    build.env_remove(&key);
                }
            }
            let status = build
                .current_dir(&root)
                // the same selection as the test build (`cargo nextest run --workspace`) and the
                // spec scripts, so after them this build has nothing to do
                .args(["build", "--quiet", "--workspace", "--all-targets"])
                .status()
                .expect("run cargo build for the clustersync binary");
            assert!(status.success(), "building the clustersync binary failed");
            let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
            let path = target.join("debug").join("clustersync");
            assert!(path.exists(), "{} was not built", path.display());
            path
        })
        .clone()
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One `clustersync` process (single-process mode unless `args` say otherwise).
pub struct SyncProcess {
    child: Option<Child>,
    args: Vec<String>,
    pub port: u16,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    http: reqwest::Client,
    _dirs: tempfile::TempDir,
}

impl SyncProcess {
    /// Starts `clustersync --cluster0 <source> --cluster1 <destination>` with a fresh state dir,
    /// plus `extra` arguments (e.g. `--config file.yaml`).
    pub fn start(cluster0: &str, cluster1: &str, extra: &[&str]) -> SyncProcess {
        let dirs = tempfile::tempdir().expect("tempdir");
        let state_dir = dirs.path().join("state");
        let log_dir = dirs.path().join("logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--cluster0".into(),
            cluster0.into(),
            "--cluster1".into(),
            cluster1.into(),
            "--port".into(),
            port.to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--logPath".into(),
            log_dir.display().to_string(),
            "--verbosity".into(),
            "INFO".into(),
            "--acceptDisclaimer".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut process = SyncProcess {
            child: None,
            args,
            port,
            state_dir,
            log_dir,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"),
            _dirs: dirs,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join("stderr.log"))
            .expect("stderr log");
        let child = Command::new(binary())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn clustersync");
        self.child = Some(child);
    }

    /// The process's stderr so far (for assertion messages).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("stderr.log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown hook runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again with the same flags and state dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn url(&self, endpoint: &str) -> String {
        format!("http://127.0.0.1:{}/api/v1/{endpoint}", self.port)
    }

    /// Waits until the REST API answers.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = self.http.get(self.url("progress")).send().await
                && response.status().is_success()
            {
                return;
            }
            assert!(self.is_running(), "clustersync exited early:\n{}", self.logs());
            assert!(Instant::now() < deadline, "clustersync API did not come up:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `POST /api/v1/<endpoint>` with a raw body; returns the HTTP status and the JSON reply.
    pub async fn post_raw(&self, endpoint: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(endpoint))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {endpoint}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.expect("reply body");
        let value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {endpoint} replied non-JSON {text:?}: {e}"));
        (status, value)
    }

    /// `POST /api/v1/<endpoint>` with a JSON body.
    pub async fn post(&self, endpoint: &str, body: Value) -> (u16, Value) {
        self.post_raw(endpoint, &body.to_string()).await
    }

    /// `POST` that must succeed.
    pub async fn post_ok(&self, endpoint: &str, body: Value) {
        let (status, reply) = self.post(endpoint, body).await;
        assert_eq!(reply["success"], json!(true), "POST {endpoint} failed with {status}: {reply}\n{}", self.logs());
    }

    /// `GET /api/v1/progress` → the `progress` object.
    pub async fn progress(&self) -> Value {
        let response = self.http.get(self.url("progress")).send().await.expect("GET progress");
        let value: Value = response.json().await.expect("progress JSON");
        assert_eq!(value["success"], json!(true), "progress failed: {value}");
        value["progress"].clone()
    }

    /// Polls `/progress` until `predicate` holds; panics after `timeout` with the last reply.
    /// Also panics at once if the migration goes FAILED while waiting for something else.
    pub async fn wait_for(&mut self, what: &str, timeout: Duration, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Ok(response) = self.http.get(self.url("progress")).send().await
                && let Ok(value) = response.json::<Value>().await
            {
                last = value["progress"].clone();
                if predicate(&last) {
                    return last;
                }
                if last["state"] == "FAILED" {
                    panic!("migration FAILED while waiting for {what}: {last:#}\n{}", self.logs());
                }
            }
            assert!(self.is_running(), "clustersync exited while waiting for {what}:\n{}", self.logs());
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last progress: {last:#}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for `state`.
    pub async fn wait_state(&mut self, state: &str, timeout: Duration) -> Value {
        self.wait_for(&format!("state {state}"), timeout, |p| p["state"] == state).await
    }
}

impl Drop for SyncProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
