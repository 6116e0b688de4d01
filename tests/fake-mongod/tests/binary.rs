//! The `fake-mongod` binary: prints its address, serves clients, obeys the admin fault commands.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bson::{Document, doc};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_prints_its_port_and_serves_fault_commands() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_fake-mongod"))
            .args(["--port", "0", "--replSet", "rsX", "--oplogSizeMB", "8", "--writeBlockBypassAppName", "syncer"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fake-mongod"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").expect("first line names the address").to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let mut o = mongodb::options::ClientOptions::parse(format!("mongodb://{addr}/?replicaSet=rsX")).await.unwrap();
    o.server_selection_timeout = Some(Duration::from_secs(10));
    o.app_name = Some("syncer".into());
    let c = mongodb::Client::with_options(o).unwrap();
    let hello = c.database("admin").run_command(doc! {"hello": 1}).await.unwrap();
    assert_eq!(hello.get_str("setName").unwrap(), "rsX");
    assert_eq!(hello.get_str("me").unwrap(), addr);
    let opts = c.database("admin").run_command(doc! {"getCmdLineOpts": 1}).await.unwrap();
    assert_eq!(
        opts.get_document("parsed").unwrap().get_document("replication").unwrap().get_i64("oplogSizeMB").unwrap(),
        8
    );
    let coll = c.database("b").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    // write blocking with the configured bypass name
    c.database("admin").run_command(doc! {"setUserWriteBlockMode": 1, "global": true}).await.unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    c.database("admin").run_command(doc! {"setUserWriteBlockMode": 1, "global": false}).await.unwrap();
    // fault commands
    let _ = c.database("admin").run_command(doc! {"fakeMongodDropConnections": 1}).await;
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
    let _ = c.database("admin").run_command(doc! {"fakeMongodStepDown": 1}).await;
    let t = std::time::Instant::now();
    coll.insert_one(doc! {"_id": 3}).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "the write waited for the step-down to end: {:?}", t.elapsed());
    let r = c.database("admin").run_command(doc! {"fakeMongodTruncateOplog": 1}).await.unwrap();
    assert_eq!(r.get_f64("ok").unwrap(), 1.0);
    let err = coll.watch().start_at_operation_time(bson::Timestamp { time: 1, increment: 1 }).await.unwrap_err();
    assert!(err.to_string().contains("286") || err.to_string().contains("ChangeStreamHistoryLost"), "{err}");
}
