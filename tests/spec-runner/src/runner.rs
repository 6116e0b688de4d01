//! Running one test: requirements, `initialData`, entities, operations with
//! `expectResult`/`expectError`/`saveResultAsEntity`, the `testRunner`
//! helpers, `expectEvents`, fail-point clean-up and `outcome`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ReadConcern, SelectionCriteria, WriteConcern};
use mongodb::{Client, Collection};

use crate::emulated::OpFailure;
use crate::entities::{self, Entities, Entity, Event};
use crate::matcher::{self, EntityLookup};
use crate::ops::{self, Args, OpResult, Output};
use crate::spec::{ServerInfo, TestFile};
use crate::{Skip, skip};

/// How a test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail(String),
    Skip(String),
}

#[derive(Debug, Clone)]
pub struct TestReport {
    pub id: String,
    pub suite: String,
    pub status: Status,
}

/// Longest time one test may take.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An unexpected driver error, kept so `withTransaction` can read its labels.
#[derive(Debug)]
struct DriverError(mongodb::error::Error);

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.get_custom::<OpFailure>().is_some() {
            write!(f, "unexpected error: {}", OpFailure::of(&self.0))
        } else {
            write!(f, "unexpected error: {}", self.0)
        }
    }
}
impl std::error::Error for DriverError {}

pub struct Runner {
    pub uri: String,
    /// The runner's own client: setup, outcome, fail points, assertions.
    pub internal: Client,
    pub server: ServerInfo,
    pub verbose: bool,
}

struct TestState {
    entities: Entities,
    failpoints: Vec<String>,
}

impl Runner {
    /// Connects and learns the topology and version of the server.
    pub async fn connect(uri: &str, verbose: bool) -> Result<Runner> {
        let mut options =
            mongodb::options::ClientOptions::parse(uri).await.with_context(|| format!("cannot parse uri {uri}"))?;
        options.server_selection_timeout = Some(Duration::from_secs(10));
        let internal = Client::with_options(options)?;
        let admin = internal.database("admin");
        let hello = admin.run_command(doc! {"hello": 1}).await.context("hello failed")?;
        let topology = if hello.get_str("msg") == Ok("isdbgrid") {
            "sharded"
        } else if hello.contains_key("setName") {
            "replicaset"
        } else if hello.contains_key("serviceId") {
            "load-balanced"
        } else {
            "single"
        }
        .to_string();
        let build = admin.run_command(doc! {"buildInfo": 1}).await.context("buildInfo failed")?;
        let version = match build.get_array("versionArray") {
            Ok(a) => a.iter().map(|v| ops::as_i64(v).and_then(|n| u32::try_from(n).ok()).unwrap_or(0)).collect(),
            Err(_) => crate::spec::parse_version(build.get_str("version").unwrap_or("0")),
        };
        let auth = uri.contains('@');
        Ok(Runner {
            uri: uri.to_string(),
            internal,
            server: ServerInfo { topology, version, auth, serverless: false, server_parameters: Document::new() },
            verbose,
        })
    }

    /// Fetches the server parameters requirements refer to.
    pub async fn load_server_parameters(&mut self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let mut cmd = doc! {"getParameter": 1};
        for n in names {
            cmd.insert(n.clone(), 1);
        }
        if let Ok(reply) = self.internal.database("admin").run_command(cmd).await {
            self.server.server_parameters = reply;
        }
    }

    /// Runs the tests of one file whose id contains `filter`.
    pub async fn run_file(&self, file: &TestFile, filter: Option<&str>) -> Vec<TestReport> {
        let mut out = Vec::new();
        let schema_error = crate::spec::schema_error(file);
        let file_skip = crate::spec::file_skip_reason(file, &self.server);
        for test in file.tests() {
            let desc = test.get_str("description").unwrap_or("<no description>");
            let id = format!("{} :: {desc}", file.rel_path);
            if filter.is_some_and(|f| !id.contains(f)) {
                continue;
            }
            let status = if let Some(reason) = &schema_error {
                Status::Fail(reason.clone())
            } else if let Some(reason) = &file_skip {
                Status::Skip(reason.clone())
            } else if let Some(reason) = crate::spec::test_skip_reason(&test, &self.server) {
                Status::Skip(reason)
            } else {
                let started = Instant::now();
                let status = self.run_test(file, &test).await;
                if self.verbose {
                    eprintln!("  ({:.2}s)", started.elapsed().as_secs_f64());
                }
                status
            };
            if self.verbose {
                match &status {
                    Status::Pass => eprintln!("PASS {id}"),
                    Status::Fail(why) => eprintln!("FAIL {id}\n     {why}"),
                    Status::Skip(why) => eprintln!("SKIP {id}: {why}"),
                }
            }
            out.push(TestReport { id, suite: file.suite.clone(), status });
        }
        out
    }

    async fn run_test(&self, file: &TestFile, test: &Document) -> Status {
        let mut st = TestState {
            entities: Entities { server_version: self.server.version.clone(), ..Entities::default() },
            failpoints: Vec::new(),
        };
        let result = match tokio::time::timeout(TEST_TIMEOUT, self.execute(file, test, &mut st)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("test timed out after {TEST_TIMEOUT:?}")),
        };
        self.disable_failpoints(&mut st).await;
        drop(st);
        match result {
            Ok(()) => Status::Pass,
            Err(e) => match e.downcast_ref::<Skip>() {
                Some(s) => Status::Skip(s.0.clone()),
                None => Status::Fail(format!("{e:#}")),
            },
        }
    }

    async fn disable_failpoints(&self, st: &mut TestState) {
        for name in st.failpoints.drain(..) {
            let _ = self.internal.database("admin").run_command(doc! {"configureFailPoint": name, "mode": "off"}).await;
        }
    }

    /// Ends open transactions left by earlier tests. Errors 11601
    /// (Interrupted) and 13 (Unauthorized) are ignored, as the format allows.
    async fn kill_all_sessions(&self) -> Result<()> {
        match self.internal.database("admin").run_command(doc! {"killAllSessions": []}).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(server_error(&e), Some((11601 | 13, _))) => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context("killAllSessions failed")),
        }
    }

    async fn execute(&self, file: &TestFile, test: &Document, st: &mut TestState) -> Result<()> {
        self.kill_all_sessions().await?;
        self.initial_data(file).await?;
        let ctx = entities::ClientContext {
            uri: self.uri.clone(),
            selection_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_millis(500),
        };
        if let Ok(list) = file.doc.get_array("createEntities") {
            st.entities.create_all(list, &ctx).await?;
        }
        for key in test.keys() {
            if !matches!(
                key.as_str(),
                "description" | "operations" | "expectEvents" | "outcome" | "runOnRequirements" | "skipReason"
            ) {
                skip!("test key {key} is not supported by this runner");
            }
        }
        let operations = test.get_array("operations").context("test without operations")?;
        for (i, op) in operations.iter().enumerate() {
            let op = op.as_document().context("operation is not a document")?;
            self.run_operation(st, op, &ctx).await.map_err(|e| {
                if e.is::<Skip>() {
                    e
                } else {
                    e.context(format!("operation {i} ({})", op.get_str("name").unwrap_or("?")))
                }
            })?;
        }
        if let Ok(expected) = test.get_array("expectEvents") {
            self.check_events(st, expected).await?;
        }
        self.disable_failpoints(st).await;
        if let Ok(outcome) = test.get_array("outcome") {
            self.check_outcome(outcome).await?;
        }
        Ok(())
    }

    fn majority() -> WriteConcern {
        let mut wc = WriteConcern::default();
        wc.w = Some(Acknowledgment::Majority);
        wc
    }

    async fn initial_data(&self, file: &TestFile) -> Result<()> {
        let Ok(list) = file.doc.get_array("initialData") else {
            return Ok(());
        };
        for item in list {
            let item = item.as_document().context("initialData entry")?;
            let db_name = item.get_str("databaseName")?;
            let coll_name = item.get_str("collectionName")?;
            let db = self.internal.database(db_name);
            let coll: Collection<Document> = db.collection(coll_name);
            coll.drop()
                .write_concern(Self::majority())
                .await
                .with_context(|| format!("initialData: drop {db_name}.{coll_name}"))?;
            let docs: Vec<Document> = item
                .get_array("documents")
                .map(|a| a.iter().filter_map(|d| d.as_document().cloned()).collect())
                .unwrap_or_default();
            if let Ok(create) = item.get_document("createOptions") {
                let mut cmd = doc! {"create": coll_name};
                cmd.extend(create.clone());
                cmd.insert("writeConcern", doc! {"w": "majority"});
                db.run_command(cmd).await.with_context(|| format!("initialData: create {db_name}.{coll_name}"))?;
            } else if docs.is_empty() {
                db.create_collection(coll_name)
                    .write_concern(Self::majority())
                    .await
                    .with_context(|| format!("initialData: create {db_name}.{coll_name}"))?;
            }
            if !docs.is_empty() {
                coll.insert_many(docs)
                    .write_concern(Self::majority())
                    .await
                    .with_context(|| format!("initialData: insert into {db_name}.{coll_name}"))?;
            }
        }
        Ok(())
    }

    async fn check_outcome(&self, outcome: &[Bson]) -> Result<()> {
        for item in outcome {
            let item = item.as_document().context("outcome entry")?;
            let db_name = item.get_str("databaseName")?;
            let coll_name = item.get_str("collectionName")?;
            let expected = item.get_array("documents")?;
            let coll: Collection<Document> = self.internal.database(db_name).collection(coll_name);
            let actual: Vec<Document> = coll
                .find(doc! {})
                .sort(doc! {"_id": 1})
                .read_concern(ReadConcern::local())
                .selection_criteria(SelectionCriteria::ReadPreference(mongodb::options::ReadPreference::Primary))
                .await
                .with_context(|| format!("outcome: find on {db_name}.{coll_name}"))?
                .try_collect()
                .await
                .with_context(|| format!("outcome: find on {db_name}.{coll_name}"))?;
            let actual = Bson::Array(actual.into_iter().map(Bson::Document).collect());
            matcher::matches_exactly(&Bson::Array(expected.clone()), &actual)
                .map_err(|e| anyhow!("outcome of {db_name}.{coll_name}: {e}"))?;
        }
        Ok(())
    }

    fn run_operation<'a>(
        &'a self,
        st: &'a mut TestState,
        op: &'a Document,
        ctx: &'a entities::ClientContext,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let name = op.get_str("name").context("operation without name")?;
            let object = op.get_str("object").context("operation without object")?;
            for key in op.keys() {
                if !matches!(
                    key.as_str(),
                    "name"
                        | "object"
                        | "arguments"
                        | "expectResult"
                        | "expectError"
                        | "saveResultAsEntity"
                        | "ignoreResultAndError"
                ) {
                    skip!("operation key {key} is not supported by this runner");
                }
            }
            let args = op.get_document("arguments").cloned().unwrap_or_default();
            if object == "testRunner" {
                return self.runner_op(st, name, args, ctx).await;
            }
            if name == "withTransaction" {
                return self.with_transaction(st, object, args, ctx).await;
            }
            let result = self.dispatch(st, object, name, args).await?;
            self.check_result(st, op, result)
        })
    }

    async fn dispatch(&self, st: &mut TestState, object: &str, name: &str, args: Document) -> Result<OpResult> {
        let a = Args::new(name, args);
        let ents = &mut st.entities;
        match ents.map.get(object) {
            Some(Entity::Collection(..)) => ops::collection_op(ents, object, name, a).await,
            Some(Entity::Database(..)) => ops::database_op(ents, object, name, a).await,
            Some(Entity::Client(..)) => ops::client_op(ents, object, name, a).await,
            Some(Entity::Session(..)) => ops::session_op(ents, object, name, a).await,
            Some(Entity::ChangeStream(..) | Entity::Cursor(..)) => ops::iterate_op(ents, object, name, a).await,
            Some(Entity::Value(_)) => bail!("{object} is a value, not an object"),
            None => bail!("no entity {object:?}"),
        }
    }

    fn check_result(&self, st: &mut TestState, op: &Document, result: OpResult) -> Result<()> {
        if op.get_bool("ignoreResultAndError").unwrap_or(false) {
            return Ok(());
        }
        if let Ok(expect_error) = op.get_document("expectError") {
            return match result {
                Ok(Output::Value(v)) => bail!("expected an error, got result {v}"),
                Ok(_) => bail!("expected an error, the operation succeeded"),
                Err(e) => check_error(&st.entities, &e, expect_error),
            };
        }
        let output = match result {
            Ok(o) => o,
            Err(e) if matches!(*e.kind, ErrorKind::InvalidArgument { .. }) => {
                skip!("the rust driver rejected the operation client-side: {e}")
            }
            Err(e) => return Err(anyhow::Error::new(DriverError(e))),
        };
        if let Some(expected) = op.get("expectResult") {
            let actual = match &output {
                Output::Value(v) => Some(v),
                Output::None => None,
                _ => bail!("expectResult on a cursor, change stream or collection is not supported"),
            };
            matcher::matches(expected, actual, true, &st.entities).map_err(|e| anyhow!("result mismatch: {e}"))?;
        }
        if let Ok(id) = op.get_str("saveResultAsEntity") {
            let entity = match output {
                Output::Value(v) => Entity::Value(v),
                Output::None => Entity::Value(Bson::Null),
                Output::ChangeStream(cs) => Entity::ChangeStream(cs),
                Output::Collection(c, client) => Entity::Collection(c, client),
                Output::Cursor(c) => Entity::Cursor(c),
            };
            st.entities.insert(id, entity)?;
        }
        Ok(())
    }

    async fn with_transaction(
        &self,
        st: &mut TestState,
        session_id: &str,
        mut args: Document,
        ctx: &entities::ClientContext,
    ) -> Result<()> {
        let callback = match args.remove("callback") {
            Some(Bson::Array(ops)) => ops,
            _ => bail!("withTransaction without callback"),
        };
        let options = entities::transaction_options(&args)?;
        let started = Instant::now();
        let limit = Duration::from_secs(120);
        'retry: loop {
            let s = st.entities.session_mut(session_id)?;
            s.session.start_transaction().with_options(options.clone()).await?;
            s.in_transaction = true;
            for op in &callback {
                let op = op.as_document().context("callback operation")?;
                if let Err(e) = self.run_operation(st, op, ctx).await {
                    let transient = e
                        .downcast_ref::<DriverError>()
                        .is_some_and(|d| OpFailure::of(&d.0).contains_label("TransientTransactionError"));
                    let s = st.entities.session_mut(session_id)?;
                    s.in_transaction = false;
                    let _ = s.session.abort_transaction().await;
                    if transient && started.elapsed() < limit {
                        continue 'retry;
                    }
                    return Err(e);
                }
            }
            loop {
                let s = st.entities.session_mut(session_id)?;
                s.in_transaction = false;
                match s.session.commit_transaction().await {
                    Ok(()) => return Ok(()),
                    Err(e) if started.elapsed() < limit => {
                        if e.contains_label("UnknownTransactionCommitResult") {
                            continue;
                        }
                        if e.contains_label("TransientTransactionError") {
                            continue 'retry;
                        }
                        return Err(anyhow::Error::new(DriverError(e)));
                    }
                    Err(e) => return Err(anyhow::Error::new(DriverError(e))),
                }
            }
        }
    }

    async fn runner_op(
        &self,
        st: &mut TestState,
        name: &str,
        args: Document,
        ctx: &entities::ClientContext,
    ) -> Result<()> {
        let ents = &mut st.entities;
        match name {
            "failPoint" => {
                let fp = args.get_document("failPoint").context("failPoint")?.clone();
                let fp_name = fp.get_str("configureFailPoint")?.to_string();
                ents.client(args.get_str("client")?)?;
                self.internal
                    .database("admin")
                    .run_command(fp)
                    .await
                    .with_context(|| format!("configureFailPoint {fp_name} failed"))?;
                st.failpoints.push(fp_name);
                Ok(())
            }
            "targetedFailPoint" => {
                skip!("targetedFailPoint needs a mongos-pinned session (sharded only)")
            }
            "createEntities" => {
                let list = args.get_array("entities")?;
                ents.create_all(list, ctx).await
            }
            "assertSessionUnpinned" => {
                ents.session_mut(args.get_str("session")?)?;
                if matches!(self.server.topology.as_str(), "sharded" | "load-balanced") {
                    skip!("the rust driver does not expose session pinning");
                }
                // only sessions on sharded or load-balanced deployments get pinned
                Ok(())
            }
            "assertSessionPinned" => skip!("the rust driver does not expose session pinning"),
            "assertSessionDirty" | "assertSessionNotDirty" => {
                skip!("the rust driver does not expose whether a session is dirty")
            }
            "assertSessionTransactionState" => {
                skip!("the rust driver does not expose the transaction state")
            }
            "assertSameLsidOnLastTwoCommands" | "assertDifferentLsidOnLastTwoCommands" => {
                let (a, b) = ents.client(args.get_str("client")?)?.last_two_lsids()?;
                let same = matcher::values_equal(&a, &b);
                if same != (name == "assertSameLsidOnLastTwoCommands") {
                    bail!("{name} failed: lsids {a} and {b}");
                }
                Ok(())
            }
            "assertCollectionExists" | "assertCollectionNotExists" => {
                let db = args.get_str("databaseName")?;
                let coll = args.get_str("collectionName")?;
                let names =
                    self.internal.database(db).list_collection_names().await.context("listCollections failed")?;
                let exists = names.iter().any(|n| n == coll);
                if exists != (name == "assertCollectionExists") {
                    bail!("{name} failed for {db}.{coll} (collections: {names:?})");
                }
                Ok(())
            }
            "assertIndexExists" | "assertIndexNotExists" => {
                let db = args.get_str("databaseName")?;
                let coll = args.get_str("collectionName")?;
                let index = args.get_str("indexName")?;
                let names = match self.internal.database(db).collection::<Document>(coll).list_index_names().await {
                    Ok(n) => n,
                    Err(e) if name == "assertIndexNotExists" && is_namespace_not_found(&e) => Vec::new(),
                    Err(e) => return Err(anyhow!("listIndexes failed: {e}")),
                };
                let exists = names.iter().any(|n| n == index);
                if exists != (name == "assertIndexExists") {
                    bail!("{name} failed for {index} on {db}.{coll} (indexes: {names:?})");
                }
                Ok(())
            }
            "assertNumberConnectionsCheckedOut" => {
                let client = ents.client(args.get_str("client")?)?;
                let want = args.get("connections").and_then(ops::as_i64).unwrap_or(0);
                let deadline = Instant::now() + Duration::from_secs(1);
                loop {
                    let have = client.checked_out();
                    if have == want {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        bail!("{want} connections checked out expected, {have} are");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            "wait" => {
                let ms = args.get("ms").and_then(ops::as_i64).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(u64::try_from(ms).unwrap_or(0))).await;
                Ok(())
            }
            other => skip!("testRunner operation {other} is not supported"),
        }
    }

    async fn check_events(&self, st: &TestState, expected: &[Bson]) -> Result<()> {
        for item in expected {
            let item = item.as_document().context("expectEvents entry")?;
            let client_id = item.get_str("client")?;
            let event_type = item.get_str("eventType").unwrap_or("command");
            let want = item.get_array("events")?;
            let ignore_extra = item.get_bool("ignoreExtraEvents").unwrap_or(false);
            let client = st.entities.client(client_id)?;
            let select = |all: Vec<Event>| -> Vec<Event> {
                all.into_iter().filter(|e| e.is_command() == (event_type == "command")).collect()
            };
            if !matches!(event_type, "command" | "cmap") {
                skip!("eventType {event_type} is not supported");
            }
            // events such as connectionCheckedIn or killCursors may trail the operation
            let deadline = Instant::now() + Duration::from_millis(500);
            let mut actual = select(client.events());
            while actual.len() < want.len() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                actual = select(client.events());
            }
            if !ignore_extra && actual.len() != want.len() || actual.len() < want.len() {
                bail!(
                    "{client_id}: expected {} {event_type} events, got {}: {}",
                    want.len(),
                    actual.len(),
                    summarize(&actual)
                );
            }
            for (i, (w, a)) in want.iter().zip(&actual).enumerate() {
                let w = w.as_document().context("expected event")?;
                if let Err(e) = match_event(w, a, &st.entities) {
                    if e.starts_with("unsupported") {
                        skip!("{e}");
                    }
                    bail!("{client_id}: event {i}: {e}\n     observed events: {}", summarize(&actual));
                }
            }
        }
        Ok(())
    }
}

fn summarize(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| match e {
            Event::CommandStarted { name, .. } => format!("started({name})"),
            Event::CommandSucceeded { name, .. } => format!("succeeded({name})"),
            Event::CommandFailed { name, .. } => format!("failed({name})"),
            Event::Cmap { name } => name.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn match_event(want: &Document, actual: &Event, ents: &dyn EntityLookup) -> Result<(), String> {
    let (kind, spec) = want.iter().next().ok_or("empty event expectation")?;
    if kind != actual.kind() {
        return Err(format!("expected {kind}, got {}", actual.kind()));
    }
    let spec = spec.as_document().ok_or("event expectation is not a document")?;
    for (key, value) in spec {
        let check = |have: &str| -> Result<(), String> {
            if value.as_str() == Some(have) {
                Ok(())
            } else {
                Err(format!("{kind}.{key}: expected {value}, got {have:?}"))
            }
        };
        match (key.as_str(), actual) {
            ("command", Event::CommandStarted { command, .. }) => {
                matcher::matches(value, Some(&Bson::Document(command.clone())), true, ents)
                    .map_err(|e| format!("command: {e}"))?;
            }
            ("reply", Event::CommandSucceeded { reply, .. }) => {
                matcher::matches(value, Some(&Bson::Document(reply.clone())), true, ents)
                    .map_err(|e| format!("reply: {e}"))?;
            }
            (
                "commandName",
                Event::CommandStarted { name, .. }
                | Event::CommandSucceeded { name, .. }
                | Event::CommandFailed { name, .. },
            ) => check(name)?,
            (
                "databaseName",
                Event::CommandStarted { db, .. } | Event::CommandSucceeded { db, .. } | Event::CommandFailed { db, .. },
            ) => check(db)?,
            (
                "hasServiceId",
                Event::CommandStarted { has_service_id, .. }
                | Event::CommandSucceeded { has_service_id, .. }
                | Event::CommandFailed { has_service_id, .. },
            ) => {
                if value.as_bool() != Some(*has_service_id) {
                    return Err(format!("{kind}.hasServiceId: expected {value}"));
                }
            }
            (
                "hasServerConnectionId",
                Event::CommandStarted { has_server_connection_id, .. }
                | Event::CommandSucceeded { has_server_connection_id, .. }
                | Event::CommandFailed { has_server_connection_id, .. },
            ) => {
                if value.as_bool() != Some(*has_server_connection_id) {
                    return Err(format!("{kind}.hasServerConnectionId: expected {value}"));
                }
            }
            _ => {
                return Err(format!("unsupported event field {kind}.{key} in this runner"));
            }
        }
    }
    Ok(())
}

fn is_namespace_not_found(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 26)
}

/// The server error code and name an error carries, if any.
pub fn server_error(e: &mongodb::error::Error) -> Option<(i32, String)> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some((c.code, c.code_name.clone())),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some((w.code, w.code_name.clone().unwrap_or_default())),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some((w.code, w.code_name.clone())),
        ErrorKind::InsertMany(im) => {
            if let Some(w) = im.write_errors.as_ref().and_then(|w| w.first()) {
                Some((w.code, w.code_name.clone().unwrap_or_default()))
            } else {
                im.write_concern_error.as_ref().map(|w| (w.code, w.code_name.clone()))
            }
        }
        _ => None,
    }
}

/// The message of an error: the server's `errmsg` for server errors, the
/// driver's description otherwise.
pub fn error_message(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => c.message.clone(),
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.message.clone(),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => w.message.clone(),
        ErrorKind::InsertMany(im) => im
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.message.clone())
            .or_else(|| im.write_concern_error.as_ref().map(|w| w.message.clone()))
            .unwrap_or_else(|| e.to_string()),
        _ => e.to_string(),
    }
}

fn check_error(ents: &Entities, e: &mongodb::error::Error, spec: &Document) -> Result<()> {
    let f = OpFailure::of(e);
    let is_server = !f.client_error;
    for (key, value) in spec {
        match key.as_str() {
            "isError" => {}
            "isClientError" => {
                let want = value.as_bool().unwrap_or(false);
                if want == is_server {
                    bail!("expected isClientError={want}, got {f}");
                }
            }
            "errorContains" => {
                let needle = value.as_str().unwrap_or_default().to_lowercase();
                if !f.message.to_lowercase().contains(&needle) {
                    bail!("expected the error message to contain {needle:?}, got {f}");
                }
            }
            "errorCode" => {
                let want = ops::as_i64(value).unwrap_or(-1);
                match &f.server {
                    Some((code, _)) if i64::from(*code) == want => {}
                    _ => bail!("expected error code {want}, got {f}"),
                }
            }
            "errorCodeName" => {
                let want = value.as_str().unwrap_or_default();
                match &f.server {
                    Some((_, name)) if name.eq_ignore_ascii_case(want) => {}
                    _ => bail!("expected error code name {want}, got {f}"),
                }
            }
            "errorLabelsContain" | "errorLabelsOmit" => {
                let labels: Vec<&str> =
                    value.as_array().map(|a| a.iter().filter_map(Bson::as_str).collect()).unwrap_or_default();
                for label in labels {
                    let has = f.contains_label(label);
                    if has != (key == "errorLabelsContain") {
                        bail!("{key} {label}: error labels are {:?} ({f})", f.labels);
                    }
                }
            }
            "errorResponse" => {
                let Some(response) = &f.response else {
                    bail!("expected a server response, got {f}");
                };
                matcher::matches(value, Some(&Bson::Document(response.clone())), true, ents)
                    .map_err(|m| anyhow!("errorResponse: {m}"))?;
            }
            "expectResult" => {
                let Some(partial) = &f.partial_result else {
                    bail!("expected a partial result with the error, got {f}");
                };
                matcher::matches(value, Some(partial), true, ents)
                    .map_err(|m| anyhow!("expectError.expectResult: {m}"))?;
            }
            "isTimeoutError" => skip!("isTimeoutError is not supported by this runner"),
            other => skip!("expectError.{other} is not supported by this runner"),
        }
    }
    Ok(())
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}
impl std::error::Error for Skip {}
