//! `clustersync ctl`, the built binary, against running servers: a whole migration of the
//! single-process binary (embedded store, two test replica sets) driven only through `ctl`; and
//! against an in-process gRPC server, the ways a watch ends (FAILED, Ctrl-C), JSON output, and
//! the errors and exit codes of refused commands and unreachable addresses.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::doc;
use clustersync_common::ids::{InstanceId, MigrationId};
use clustersync_common::keys::Keys;
use clustersync_common::model::{self, Failure, Phase, StartOptions, SyncState, SyncStateDoc};
use clustersync_common::store::{EmbeddedStore, Store};
use clustersync_coordinator::control::Control;
use clustersync_coordinator::grpc;
use clustersync_coordinator::topology::StaticClusters;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

const BINARY: &str = env!("CARGO_BIN_EXE_clustersync");

/// Exit codes of `clustersync ctl`.
const REFUSED: i32 = 1;
const USAGE: i32 = 2;
const UNREACHABLE: i32 = 3;
const MIGRATION_FAILED: i32 = 4;
const INTERRUPTED: i32 = 130;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `clustersync ctl --address <address> <args>`, with a clean environment and no stdin.
fn ctl_command(address: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.arg("ctl").arg("--address").arg(address).args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("CLUSTERSYNC_")) {
        command.env_remove(name);
    }
    command
}

/// Runs a `ctl` command to completion (off the async runtime's threads).
async fn ctl(address: &str, args: &[&str]) -> Output {
    let mut command = ctl_command(address, args);
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_exit(output: &Output, code: i32, stderr_contains: &str) {
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(code), "stdout: {out}\nstderr: {err}");
    assert!(err.contains(stderr_contains), "stderr {err:?} should contain {stderr_contains:?}");
    assert!(!err.contains("panicked"), "{err}");
}

fn assert_ok(output: &Output) -> String {
    assert_exit(output, 0, "");
    text(&output.stdout)
}

/// The single-process binary over two test replica sets; killed on drop.
struct Server {
    child: Child,
    rest_port: u16,
    grpc_address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(cluster0: &str, cluster1: &str, state_dir: &Path) -> Server {
        let (rest_port, grpc_port) = (free_port(), free_port());
        let child = Command::new(BINARY)
            .args(["--cluster0", cluster0, "--cluster1", cluster1, "--acceptDisclaimer"])
            .args(["--port", &rest_port.to_string(), "--grpcPort", &grpc_port.to_string()])
            .args(["--stateDir", state_dir.to_str().unwrap(), "--verbosity", "WARN"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Server { child, rest_port, grpc_address: format!("http://127.0.0.1:{grpc_port}") }
    }

    /// Waits until `ctl progress` answers.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = ctl(&self.grpc_address, &["progress"]).await;
            match output.status.code() {
                Some(0) => return,
                Some(UNREACHABLE) => {}
                _ => panic!("unexpected answer while waiting: {}", text(&output.stderr)),
            }
            assert!(self.child.try_wait().unwrap().is_none(), "clustersync exited early");
            assert!(Instant::now() < deadline, "the grpc api never came up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn rest_progress(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/progress", self.rest_port);
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_a_whole_migration_of_the_binary() {
    let source = fake_mongod::FakeMongod::start_default().unwrap();
    let destination = fake_mongod::FakeMongod::start_default().unwrap();
    let source_client = mongodb::Client::with_uri_str(source.uri()).await.unwrap();
    let orders = source_client.database("shop").collection::<bson::Document>("orders");
    orders.insert_many((0..200).map(|i| doc! {"_id": i, "item": format!("item-{i}"), "qty": i % 7})).await.unwrap();
    let users = source_client.database("shop").collection::<bson::Document>("users");
    users.insert_many((0..20).map(|i| doc! {"_id": format!("u{i}")})).await.unwrap();
    let skipped = source_client.database("other").collection::<bson::Document>("skipped");
    skipped.insert_one(doc! {"_id": 1}).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&source.uri(), &destination.uri(), &dir.path().join("state"));
    server.wait_ready().await;
    let address = server.grpc_address.clone();

    let idle = assert_ok(&ctl(&address, &["progress"]).await);
    assert!(idle.contains("IDLE"), "{idle}");
    assert_exit(
        &ctl(&address, &["pause"]).await,
        REFUSED,
        "error: InvalidState: cannot pause while the migration is IDLE",
    );

    let body = dir.path().join("start.json");
    std::fs::write(&body, r#"{"source": "cluster0", "destination": "cluster1", "loadLevel": 3}"#).unwrap();
    assert_exit(&ctl(&address, &["start", "--json", body.to_str().unwrap()]).await, USAGE, "InvalidRequest");
    assert_exit(&ctl(&address, &["start", "--include", "a.b", "--reversible"]).await, REFUSED, "error: InvalidOption:");

    let started =
        assert_ok(&ctl(&address, &["start", "--include", "shop", "--write-blocking", "destinationOnly"]).await);
    assert!(started.contains("the migration is RUNNING (phase setup)"), "{started}");
    assert_exit(&ctl(&address, &["start"]).await, REFUSED, "error: InvalidState: cannot start while the migration is");

    // Commit once it is ready (CommitNotReady until then).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let output = ctl(&address, &["commit"]).await;
        if output.status.success() {
            assert!(text(&output.stdout).contains("COMMITTING"), "{}", text(&output.stdout));
            break;
        }
        assert_exit(&output, REFUSED, "CommitNotReady");
        assert!(Instant::now() < deadline, "never ready to commit: {}", text(&output.stderr));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Watch until COMMITTED: plain lines (stdout is not a terminal), exit 0.
    let watched = assert_ok(&ctl(&address, &["--timeout", "5", "progress", "--watch", "--interval", "200"]).await);
    let lines: Vec<&str> = watched.lines().collect();
    assert!(lines.len() >= 2, "{watched}");
    assert!(lines[lines.len() - 2].starts_with("COMMITTED (phase completed: commit completed)"), "{watched}");
    assert_eq!(lines[lines.len() - 1], "the migration is COMMITTED");

    let summary = assert_ok(&ctl(&address, &["progress"]).await);
    for expected in ["COMMITTED", "can write     yes", "shop.orders", "shop.users", "verification  done"] {
        assert!(summary.contains(expected), "{expected:?} missing from:\n{summary}");
    }
    assert!(!summary.contains("other.skipped"), "{summary}");

    let json: Value = serde_json::from_slice(&ctl(&address, &["progress", "--json"]).await.stdout).unwrap();
    let rest = server.rest_progress().await;
    assert_eq!(json["success"], true);
    for field in
        ["state", "canCommit", "canWrite", "info", "collectionCopy", "directionMapping", "verification", "phase"]
    {
        assert_eq!(json["progress"][field], rest["progress"][field], "{field}");
    }
    assert_eq!(json["progress"]["collections"], rest["progress"]["collections"]);

    let destination_client = mongodb::Client::with_uri_str(destination.uri()).await.unwrap();
    let copied = destination_client.database("shop").collection::<bson::Document>("orders");
    assert_eq!(copied.count_documents(doc! {}).await.unwrap(), 200);
}

/// A gRPC server in this process over an in-memory store, for the ctl binary to talk to.
struct InProcess {
    address: String,
    store: Arc<dyn Store>,
    keys: Keys,
    shutdown: CancellationToken,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl InProcess {
    async fn start() -> InProcess {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let keys = Keys::new("/test", &MigrationId::new("m").unwrap()).unwrap();
        let control = Control::new(
            store.clone(),
            keys.clone(),
            InstanceId::new("node-a").unwrap(),
            Arc::new(StaticClusters::replica_sets()),
        );
        let listener = grpc::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(grpc::serve(listener, Arc::new(control), shutdown.clone()));
        InProcess { address, store, keys, shutdown }
    }

    async fn put_state(&self, doc: &SyncStateDoc) {
        self.store.put(&self.keys.state(), model::encode(doc), None).await.unwrap();
    }
}

fn running() -> SyncStateDoc {
    SyncStateDoc {
        state: SyncState::Running,
        phase: Phase::Snapshot,
        options: Some(
            serde_json::from_value::<StartOptions>(json!({"source": "cluster0", "destination": "cluster1"})).unwrap(),
        ),
        ..Default::default()
    }
}

/// A `ctl` child whose stdout is read line by line.
struct Watcher {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Watcher {
    fn spawn(address: &str, args: &[&str]) -> Watcher {
        let mut command = tokio::process::Command::from(ctl_command(address, args));
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Watcher { child, lines }
    }

    async fn next_line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .expect("stdout still open")
    }

    /// Reads lines until one contains `text`.
    async fn line_containing(&mut self, text: &str) -> String {
        loop {
            let line = self.next_line().await;
            if line.contains(text) {
                return line;
            }
        }
    }

    async fn finish(mut self) -> (i32, String) {
        let status =
            tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.expect("ctl exits").unwrap();
        let mut stderr = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).await.unwrap();
        (status.code().unwrap_or(-1), stderr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_exits_with_the_reason_when_the_migration_fails() {
    let server = InProcess::start().await;
    server.put_state(&running()).await;
    let mut watcher = Watcher::spawn(&server.address, &["progress", "--watch", "--interval", "200"]);
    let first = watcher.next_line().await;
    assert!(first.starts_with("RUNNING (phase snapshot: collection copy)"), "{first}");

    server
        .put_state(&SyncStateDoc {
            state: SyncState::Failed,
            phase: Phase::Failed,
            failure: Some(Failure {
                error: "VerificationFailed".into(),
                description: "documents differ".into(),
                namespace: Some("db.b".into()),
                range: Some("all _id values".into()),
                at_ms: 1,
            }),
            ..running()
        })
        .await;
    let failed = watcher.line_containing("FAILED").await;
    assert!(failed.contains("VerificationFailed: documents differ"), "{failed}");
    let (code, stderr) = watcher.finish().await;
    assert_eq!(code, MIGRATION_FAILED, "{stderr}");
    assert!(
        stderr.contains(
            "error: the migration FAILED: VerificationFailed: documents differ (namespace db.b, range all _id values)"
        ),
        "{stderr}"
    );

    // A one-shot progress of a failed migration is a report, not an error.
    let summary = assert_ok(&ctl(&server.address, &["progress"]).await);
    assert!(summary.contains("error         VerificationFailed: documents differ"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_watch_prints_rest_bodies_until_interrupted() {
    let server = InProcess::start().await;
    let mut watcher = Watcher::spawn(&server.address, &["progress", "--watch", "--json", "--interval", "60000"]);
    let first: Value = serde_json::from_str(&watcher.next_line().await).unwrap();
    assert_eq!(
        first,
        json!({"success": true, "progress": serde_json::to_value(clustersync_coordinator::progress::Progress::idle()).unwrap()})
    );

    server.put_state(&running()).await;
    let second: Value = serde_json::from_str(&watcher.line_containing("RUNNING").await).unwrap();
    assert_eq!(second["progress"]["state"], "RUNNING");
    assert_eq!(second["progress"]["mongosyncID"], "node-a");
    assert_eq!(second["progress"]["collectionCopy"], json!({"estimatedTotalBytes": 1, "estimatedCopiedBytes": 0}));

    let pid = watcher.child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let (code, stderr) = watcher.finish().await;
    assert_eq!(code, INTERRUPTED, "{stderr}");
    assert!(stderr.contains("error: interrupted"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_unreachable_addresses_have_their_exit_codes() {
    let server = InProcess::start().await;
    let address = server.address.clone();
    assert_exit(
        &ctl(&address, &["resume"]).await,
        REFUSED,
        "error: InvalidState: cannot resume while the migration is IDLE",
    );
    assert_exit(&ctl(&address, &["reverse"]).await, REFUSED, "error: InvalidState:");
    let started = assert_ok(&ctl(&address, &["start", "--destination", "cluster0", "--no-verification"]).await);
    assert!(started.starts_with("started: the migration is RUNNING"), "{started}");
    let paused = assert_ok(&ctl(&address, &["pause"]).await);
    assert_eq!(paused.trim(), "paused: the migration is PAUSED (phase paused)");
    let resumed = assert_ok(&ctl(&address, &["resume"]).await);
    assert_eq!(resumed.trim(), "resumed: the migration is RUNNING (phase setup)");
    assert_exit(&ctl(&address, &["commit"]).await, REFUSED, "error: CommitNotReady: cannot commit yet");

    // The body from stdin, with the REST parser's tolerance for trailing commas.
    let mut command = ctl_command(&address, &["start", "--json", "-"]);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(br#"{"source": "cluster0", "destination": "cluster1",}"#).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert_exit(&output, REFUSED, "error: InvalidState: cannot start while the migration is RUNNING");

    // Nothing listening: exit 3 and a hint; a malformed address: exit 2.
    let nowhere = format!("127.0.0.1:{}", free_port());
    assert_exit(
        &ctl(&nowhere, &["progress"]).await,
        UNREACHABLE,
        &format!("cannot reach the clustersync grpc api at http://{nowhere}"),
    );
    assert_exit(&ctl("http://exa mple:1", &["progress"]).await, USAGE, "invalid --address");
    // Options checked before connecting: a bad --json file fails as usage even with no server.
    assert_exit(&ctl(&nowhere, &["start", "--json", "/nonexistent.json"]).await, USAGE, "/nonexistent.json");
    // ctl needs no cluster URIs, config or disclaimer.
    let help = assert_ok(&ctl(&address, &["--help"]).await);
    assert!(help.contains("Exit codes") && help.contains("progress"), "{help}");
}
