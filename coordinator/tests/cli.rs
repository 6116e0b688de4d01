//! The `clustersync` binary: bad flags and configuration exit with code 2 and a message naming
//! the problem (never a panic, never a credential), the disclaimer needs a terminal or
//! `--acceptDisclaimer`, and a good configuration serves the API until SIGTERM.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_clustersync");
const SECRET: &str = "hunter2";

fn uri0() -> String {
    format!("mongodb://alice:{SECRET}@127.0.0.1:1/?replicaSet=rs0")
}

const URI1: &str = "mongodb://127.0.0.1:2/?replicaSet=rs1";

/// Runs the binary with a clean `CLUSTERSYNC_*` environment and no stdin.
fn run(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Output {
    let mut command = Command::new(BINARY);
    command.args(args).current_dir(dir).stdin(Stdio::null());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("CLUSTERSYNC_")) {
        command.env_remove(name);
    }
    command.env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_usage_error(output: &Output, text: &str) {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(message.contains(text), "{message:?} should contain {text:?}");
    assert!(!message.contains("panicked") && !message.contains("RUST_BACKTRACE"), "{message}");
    assert!(!message.contains(SECRET), "a credential leaked: {message}");
}

#[test]
fn help_lists_the_mongosync_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["--help"], &[], dir.path());
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--cluster0",
        "--cluster1",
        "--port",
        "--logPath",
        "--verbosity",
        "--acceptDisclaimer",
        "--stateDir",
        "--migrationName",
        "--config",
        "CLUSTERSYNC_ETCD_ENDPOINTS",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let output = run(&["coordinator", "--help"], &[], dir.path());
    assert!(String::from_utf8_lossy(&output.stdout).contains("--etcd"));
}

#[test]
fn bad_flags_and_configuration_exit_with_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let uri0 = uri0();
    assert_usage_error(&run(&["--bogus"], &[], dir.path()), "--bogus");
    assert_usage_error(&run(&["--cluster0", &uri0], &[], dir.path()), "cluster1 is required");
    assert_usage_error(
        &run(&["--cluster0", &uri0, "--cluster1", URI1, "--verbosity", "LOUD"], &[], dir.path()),
        "verbosity",
    );
    assert_usage_error(
        &run(&["--cluster0", &uri0, "--cluster1", URI1], &[("CLUSTERSYNC_PORT", "port")], dir.path()),
        "CLUSTERSYNC_PORT",
    );
    let bad_uri = format!("mongodb://alice:{SECRET}@127.0.0.1:1/?readConcernLevel=local");
    assert_usage_error(
        &run(&["--cluster0", &bad_uri, "--cluster1", URI1, "--acceptDisclaimer"], &[], dir.path()),
        "read concern must be majority",
    );
    assert_usage_error(
        &run(&["coordinator", "--cluster0", &uri0, "--cluster1", URI1, "--acceptDisclaimer"], &[], dir.path()),
        "etcd.endpoints is required",
    );

    let config = dir.path().join("clustersync.yaml");
    std::fs::write(&config, format!("cluster0: {uri0}\ncluster1: {URI1}\nloadLevel: 3\n")).unwrap();
    assert_usage_error(&run(&["--config", config.to_str().unwrap()], &[], dir.path()), "loadLevel");
    assert_usage_error(
        &run(&["--config", "/nonexistent/clustersync.yaml"], &[], dir.path()),
        "cannot read config file",
    );
}

#[test]
fn the_disclaimer_needs_a_terminal_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let uri0 = uri0();
    let output = run(&["--cluster0", &uri0, "--cluster1", URI1], &[], dir.path());
    assert_usage_error(&output, "--acceptDisclaimer");
    assert!(stderr(&output).contains("Embedded verification is enabled by default"));
    // A worker has nothing to accept, so it does not prompt; it fails on etcd instead.
    let output = run(&["worker", "--cluster0", &uri0, "--cluster1", URI1], &[], dir.path());
    assert_usage_error(&output, "etcd.endpoints is required");
    assert!(!stderr(&output).contains("Embedded verification"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_progress(port: u16, child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("clustersync exited early with {status}: {err}");
        }
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            stream.write_all(b"GET /api/v1/progress HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).unwrap();
            return reply;
        }
        assert!(Instant::now() < deadline, "the api never came up on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_good_configuration_serves_the_api_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let logs = dir.path().join("logs");
    let config = dir.path().join("clustersync.yaml");
    std::fs::write(
        &config,
        format!("cluster1: {URI1}\nverbosity: debug\nacceptDisclaimer: true\nlogPath: {}\n", logs.display()),
    )
    .unwrap();
    let mut command = Command::new(BINARY);
    command
        .args(["--config", config.to_str().unwrap(), "--stateDir", dir.path().join("state").to_str().unwrap()])
        .env("CLUSTERSYNC_CLUSTER0", uri0())
        .env("CLUSTERSYNC_PORT", port.to_string())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let reply = wait_for_progress(port, &mut child);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""state":"IDLE""#), "{reply}");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "clustersync did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("clustersync starting"), "{err}");
    assert!(!err.contains(SECRET), "a credential leaked to stderr: {err}");

    let log = std::fs::read_to_string(logs.join("clustersync.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(value.get("level").is_some() && value.get("fields").is_some(), "{line}");
    }
    assert!(log.contains("rest api listening"), "{log}");
    assert!(!log.contains(SECRET), "a credential leaked to the log file");
    assert!(dir.path().join("state").is_dir(), "the embedded store lives in --stateDir");
}

/// The binary against two live replica sets: `/start` over HTTP probes them and records the
/// direction; bad bodies are refused. Works whether or not the full node runs the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_a_sync_between_two_live_replica_sets() {
    let source = fake_mongod::FakeMongod::start_default().unwrap();
    let destination = fake_mongod::FakeMongod::start_default().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BINARY)
        .args(["--cluster0", &source.uri(), "--cluster1", &destination.uri(), "--acceptDisclaimer"])
        .args(["--port", &port.to_string(), "--stateDir", dir.path().join("state").to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/progress")).send().await.is_err() {
        assert!(child.try_wait().unwrap().is_none(), "clustersync exited early");
        assert!(Instant::now() < deadline, "the api never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let reply = http
        .post(format!("{base}/start"))
        .body(r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": []}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 400);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["error"], "InvalidOption", "{body}");

    let reply = http
        .post(format!("{base}/start"))
        .body(r#"{"source": "cluster0", "destination": "cluster1"}"#)
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!((status, body.clone()), (200, serde_json::json!({"success": true})));

    let body: serde_json::Value = http.get(format!("{base}/progress")).send().await.unwrap().json().await.unwrap();
    let progress = &body["progress"];
    assert_ne!(progress["state"], "IDLE", "{body}");
    assert_eq!(progress["directionMapping"]["Source"], format!("cluster0: 127.0.0.1:{}", source.port()));
    assert_eq!(progress["directionMapping"]["Destination"], format!("cluster1: 127.0.0.1:{}", destination.port()));

    child.kill().unwrap();
    child.wait().unwrap();
}
