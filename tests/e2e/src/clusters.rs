//! The two MongoDB deployments of a test: in-process fake-mongod servers, or real deployments
//! named by environment variables.
//!
//! - `CLUSTERSYNC_TEST_SOURCE_URI` and `CLUSTERSYNC_TEST_DESTINATION_URI`: run against these
//!   (both or neither). Each test then works only in databases named `cs<random>_…` and syncs
//!   them with an include filter, so tests can share deployments; the destination's databases
//!   of the test are dropped first.
//! - Otherwise every test starts two fresh fake-mongod replica sets.

use bson::{Document, doc};
use fake_mongod::{FakeMongod, ServerOptions};
use mongodb::Client;
use mongodb::options::ClientOptions;
use serde_json::json;

/// Environment variable naming the source deployment of real-MongoDB runs.
pub const SOURCE_URI_VAR: &str = "CLUSTERSYNC_TEST_SOURCE_URI";
/// Environment variable naming the destination deployment of real-MongoDB runs.
pub const DESTINATION_URI_VAR: &str = "CLUSTERSYNC_TEST_DESTINATION_URI";

/// One deployment.
pub struct TestCluster {
    pub uri: String,
    pub client: Client,
    /// The in-process server, when the test runs against fake-mongod.
    pub fake: Option<FakeMongod>,
}

impl TestCluster {
    /// A client whose writes count as a user's (not clustersync's): subject to write blocking.
    pub async fn user_client(&self) -> Client {
        let mut options = ClientOptions::parse(&self.uri).await.expect("test uri parses");
        options.app_name = Some("e2e-user".into());
        Client::with_options(options).expect("client")
    }

    /// A client that may write while user writes are blocked (as clustersync itself does: on
    /// fake-mongod by its application name, on real MongoDB by the test user's privileges).
    pub async fn bypass_client(&self) -> Client {
        let mut options = ClientOptions::parse(&self.uri).await.expect("test uri parses");
        options.app_name = Some("clustersync".into());
        Client::with_options(options).expect("client")
    }

    /// The fake-mongod server, for fault controls; panics against real MongoDB (callers are
    /// tests marked `fake_only`).
    pub fn fake(&self) -> &FakeMongod {
        self.fake.as_ref().expect("this test needs fake-mongod's fault controls (it is a fake_only test)")
    }

    /// Runs an admin command.
    pub async fn admin(&self, command: Document) -> mongodb::error::Result<Document> {
        self.client.database("admin").run_command(command).await
    }
}

/// Source and destination of one test, with the test's database-name prefix.
pub struct TestClusters {
    pub source: TestCluster,
    pub destination: TestCluster,
    /// Every database a test creates starts with this prefix.
    pub prefix: String,
    pub real: bool,
}

impl TestClusters {
    /// Starts two fake-mongod servers, or connects to the real deployments.
    pub async fn start() -> TestClusters {
        Self::start_with(ServerOptions::default()).await
    }

    /// Like [`TestClusters::start`], with options for the fake source server (e.g. a small oplog).
    pub async fn start_with(source_options: ServerOptions) -> TestClusters {
        let prefix = format!("cs{:06x}_", rand::random::<u32>() & 0xff_ffff);
        let source_uri = std::env::var(SOURCE_URI_VAR).ok();
        let destination_uri = std::env::var(DESTINATION_URI_VAR).ok();
        match (source_uri, destination_uri) {
            (Some(source), Some(destination)) => {
                let source = connect(source, None).await;
                let destination = connect(destination, None).await;
                // Leave nothing from an earlier run with the same (random) prefix.
                for db in destination.client.list_database_names().await.expect("list databases") {
                    if db.starts_with(&prefix) {
                        destination.client.database(&db).drop().await.expect("drop test database");
                    }
                }
                TestClusters { source, destination, prefix, real: true }
            }
            (None, None) => {
                let source_server = FakeMongod::start(source_options).expect("start source fake-mongod");
                let destination_server = FakeMongod::start_default().expect("start destination fake-mongod");
                let source = connect(source_server.uri(), Some(source_server)).await;
                let destination = connect(destination_server.uri(), Some(destination_server)).await;
                TestClusters { source, destination, prefix, real: false }
            }
            _ => panic!("set both {SOURCE_URI_VAR} and {DESTINATION_URI_VAR}, or neither"),
        }
    }

    /// A database name of this test.
    pub fn db(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The `includeNamespaces` filter that limits a sync to this test's databases.
    pub fn include_filter(&self) -> serde_json::Value {
        json!([{ "databaseRegex": { "pattern": format!("^{}", self.prefix) } }])
    }

    /// Names of this test's databases on one side.
    pub async fn test_databases(&self, client: &Client) -> Vec<String> {
        let mut names: Vec<String> = client
            .list_database_names()
            .await
            .expect("list databases")
            .into_iter()
            .filter(|db| db.starts_with(&self.prefix))
            .collect();
        names.sort();
        names
    }
}

async fn connect(uri: String, fake: Option<FakeMongod>) -> TestCluster {
    let mut options = ClientOptions::parse(&uri).await.expect("test uri parses");
    // Tests write as clustersync would not: the harness client is a privileged helper.
    options.app_name = Some("clustersync-e2e-harness".into());
    let client = Client::with_options(options).expect("client");
    client.database("admin").run_command(doc! {"ping": 1}).await.expect("test cluster answers ping");
    TestCluster { uri, client, fake }
}
