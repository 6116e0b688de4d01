//! Entities (`createEntities`): clients with command and CMAP monitoring,
//! databases, collections, sessions, and values or cursors saved from results.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bson::{Bson, Document};
use mongodb::event::EventHandler;
use mongodb::event::cmap::CmapEvent;
use mongodb::event::command::CommandEvent;
use mongodb::options::{
    ClientOptions, CollectionOptions, DatabaseOptions, ReadConcern, SelectionCriteria, SessionOptions,
    TransactionOptions, WriteConcern,
};
use mongodb::{Client, ClientSession, Collection, Database};

use crate::matcher::EntityLookup;
use crate::skip;

/// One monitored event, reduced to what expectations look at.
#[derive(Debug, Clone)]
pub enum Event {
    CommandStarted {
        name: String,
        db: String,
        command: Document,
        has_service_id: bool,
        has_server_connection_id: bool,
    },
    CommandSucceeded {
        name: String,
        db: String,
        reply: Document,
        has_service_id: bool,
        has_server_connection_id: bool,
    },
    CommandFailed {
        name: String,
        db: String,
        has_service_id: bool,
        has_server_connection_id: bool,
    },
    /// A CMAP event by its unified-format name, e.g. `poolClearedEvent`.
    Cmap {
        name: String,
    },
}

impl Event {
    pub fn kind(&self) -> &str {
        match self {
            Event::CommandStarted { .. } => "commandStartedEvent",
            Event::CommandSucceeded { .. } => "commandSucceededEvent",
            Event::CommandFailed { .. } => "commandFailedEvent",
            Event::Cmap { name } => name,
        }
    }
    pub fn is_command(&self) -> bool {
        !matches!(self, Event::Cmap { .. })
    }
}

/// Commands whose events are hidden unless `observeSensitiveCommands`.
const SENSITIVE: [&str; 10] = [
    "authenticate",
    "saslstart",
    "saslcontinue",
    "getnonce",
    "createuser",
    "updateuser",
    "copydbgetnonce",
    "copydbsaslstart",
    "copydb",
    "hello",
];

fn is_sensitive(name: &str, body: &Document) -> bool {
    let lower = name.to_ascii_lowercase();
    if lower == "hello" || lower == "ismaster" {
        // only sensitive when it carries speculative authentication; the driver
        // redacts those bodies to an empty document
        return body.is_empty() || body.contains_key("speculativeAuthenticate");
    }
    SENSITIVE.contains(&lower.as_str())
}

#[derive(Debug, Default)]
pub struct EventLog {
    pub events: Vec<Event>,
    /// Connections currently checked out (from CMAP events).
    pub checked_out: i64,
    /// Database of each started command, by request id.
    pub dbs: HashMap<i32, String>,
    /// Request ids of sensitive commands whose events are hidden.
    pub hidden: std::collections::HashSet<i32>,
}

/// A client entity and what it records.
#[derive(Clone)]
pub struct ClientEntity {
    pub client: Client,
    pub log: Arc<Mutex<EventLog>>,
}

impl ClientEntity {
    pub fn events(&self) -> Vec<Event> {
        self.log.lock().map(|l| l.events.clone()).unwrap_or_default()
    }
    pub fn checked_out(&self) -> i64 {
        self.log.lock().map(|l| l.checked_out).unwrap_or_default()
    }
    /// The `lsid` of the last two `commandStartedEvent`s.
    pub fn last_two_lsids(&self) -> Result<(Bson, Bson)> {
        let events = self.events();
        let lsids: Vec<Bson> = events
            .iter()
            .filter_map(|e| match e {
                Event::CommandStarted { command, .. } => Some(command.get("lsid").cloned().unwrap_or(Bson::Null)),
                _ => None,
            })
            .collect();
        if lsids.len() < 2 {
            bail!("fewer than two commandStartedEvents were observed");
        }
        Ok((lsids[lsids.len() - 2].clone(), lsids[lsids.len() - 1].clone()))
    }
}

pub struct SessionEntity {
    pub session: ClientSession,
    /// Between `startTransaction` and its commit or abort (the driver keeps
    /// its own flag private).
    pub in_transaction: bool,
    pub lsid: Document,
    pub client_id: String,
}

pub enum CursorEntity {
    Plain(mongodb::Cursor<Document>),
    WithSession(mongodb::SessionCursor<Document>, String),
}

pub enum Entity {
    Client(ClientEntity),
    Database(Database, String),
    Collection(Collection<Document>, String),
    Session(Box<SessionEntity>),
    ChangeStream(Box<mongodb::change_stream::ChangeStream<Document>>),
    Cursor(Box<CursorEntity>),
    Value(Bson),
}

#[derive(Default)]
pub struct Entities {
    pub map: HashMap<String, Entity>,
    /// The lsid of every session ever created, kept after `endSession`.
    pub lsids: HashMap<String, Document>,
    /// The server's version, for options that depend on it (`rawData`).
    pub server_version: Vec<u32>,
}

impl EntityLookup for Entities {
    fn entity_value(&self, id: &str) -> Option<Bson> {
        match self.map.get(id) {
            Some(Entity::Value(v)) => Some(v.clone()),
            _ => None,
        }
    }
    fn session_lsid(&self, id: &str) -> Option<Document> {
        self.lsids.get(id).cloned()
    }
}

/// What the runner knows when it creates clients.
pub struct ClientContext {
    pub uri: String,
    /// Server selection timeout for test clients.
    pub selection_timeout: Duration,
    /// Heartbeat frequency for test clients that set none.
    pub heartbeat: Duration,
}

impl Entities {
    pub fn client(&self, id: &str) -> Result<&ClientEntity> {
        match self.map.get(id) {
            Some(Entity::Client(c)) => Ok(c),
            _ => Err(anyhow!("no client entity {id:?}")),
        }
    }
    pub fn database(&self, id: &str) -> Result<Database> {
        match self.map.get(id) {
            Some(Entity::Database(d, _)) => Ok(d.clone()),
            _ => Err(anyhow!("no database entity {id:?}")),
        }
    }
    pub fn collection(&self, id: &str) -> Result<Collection<Document>> {
        match self.map.get(id) {
            Some(Entity::Collection(c, _)) => Ok(c.clone()),
            _ => Err(anyhow!("no collection entity {id:?}")),
        }
    }
    pub fn session(&self, id: &str) -> Result<&SessionEntity> {
        match self.map.get(id) {
            Some(Entity::Session(s)) => Ok(s),
            _ => Err(anyhow!("no session entity {id:?}")),
        }
    }
    pub fn session_mut(&mut self, id: &str) -> Result<&mut SessionEntity> {
        match self.map.get_mut(id) {
            Some(Entity::Session(s)) => Ok(s),
            _ => Err(anyhow!("no session entity {id:?}")),
        }
    }
    /// The client id a database, collection or session entity belongs to.
    pub fn client_of(&self, id: &str) -> Option<String> {
        match self.map.get(id)? {
            Entity::Client(_) => Some(id.to_string()),
            Entity::Database(_, c) | Entity::Collection(_, c) => Some(c.clone()),
            Entity::Session(s) => Some(s.client_id.clone()),
            _ => None,
        }
    }

    pub fn insert(&mut self, id: &str, entity: Entity) -> Result<()> {
        if self.map.contains_key(id) {
            bail!("entity {id:?} already exists");
        }
        self.map.insert(id.to_string(), entity);
        Ok(())
    }

    /// Creates the entities of a `createEntities` list.
    pub async fn create_all(&mut self, list: &[Bson], ctx: &ClientContext) -> Result<()> {
        for item in list {
            let item = item.as_document().ok_or_else(|| anyhow!("entity is not a document"))?;
            let (kind, spec) = item.iter().next().ok_or_else(|| anyhow!("empty entity"))?;
            let spec = spec.as_document().ok_or_else(|| anyhow!("entity spec is not a document"))?;
            let id = spec.get_str("id").context("entity without id")?.to_string();
            match kind.as_str() {
                "client" => {
                    let c = create_client(spec, ctx).await?;
                    self.insert(&id, Entity::Client(c))?;
                }
                "database" => {
                    let client_id = spec.get_str("client")?;
                    let client = self.client(client_id)?.client.clone();
                    let name = spec.get_str("databaseName")?;
                    let db = match spec.get_document("databaseOptions") {
                        Ok(o) => client.database_with_options(name, database_options(o)?),
                        Err(_) => client.database(name),
                    };
                    self.insert(&id, Entity::Database(db, client_id.to_string()))?;
                }
                "collection" => {
                    let db_id = spec.get_str("database")?;
                    let db = self.database(db_id)?;
                    let client_id = self.client_of(db_id).unwrap_or_default();
                    let name = spec.get_str("collectionName")?;
                    let coll = match spec.get_document("collectionOptions") {
                        Ok(o) => db.collection_with_options(name, collection_options(o)?),
                        Err(_) => db.collection(name),
                    };
                    self.insert(&id, Entity::Collection(coll, client_id))?;
                }
                "session" => {
                    let client_id = spec.get_str("client")?.to_string();
                    let client = self.client(&client_id)?.client.clone();
                    let mut builder = client.start_session();
                    if let Ok(o) = spec.get_document("sessionOptions") {
                        builder = builder.with_options(session_options(o, self)?);
                    }
                    let session = builder.await?;
                    let lsid = session.id().clone();
                    self.lsids.insert(id.clone(), lsid.clone());
                    self.insert(
                        &id,
                        Entity::Session(Box::new(SessionEntity { session, in_transaction: false, lsid, client_id })),
                    )?;
                }
                other => skip!("entity type {other} is not supported"),
            }
        }
        Ok(())
    }
}

fn known_keys(doc: &Document, what: &str, allowed: &[&str]) -> Result<()> {
    for key in doc.keys() {
        if !allowed.contains(&key.as_str()) {
            skip!("{what} option {key} is not supported by this runner");
        }
    }
    Ok(())
}

pub fn read_concern(b: &Bson) -> Result<ReadConcern> {
    Ok(bson::from_bson(b.clone())?)
}

pub fn write_concern(b: &Bson) -> Result<WriteConcern> {
    let doc = b.as_document().ok_or_else(|| anyhow!("write concern is not a document"))?;
    known_keys(doc, "write concern", &["w", "j", "wtimeoutMS", "journal"])?;
    let mut wc = WriteConcern::default();
    match doc.get("w") {
        Some(Bson::String(s)) if s == "majority" => wc.w = Some(mongodb::options::Acknowledgment::Majority),
        Some(Bson::String(s)) => wc.w = Some(mongodb::options::Acknowledgment::Custom(s.clone())),
        Some(n @ (Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_))) => {
            let n = crate::ops::as_i64(n).unwrap_or(1);
            wc.w = Some(mongodb::options::Acknowledgment::Nodes(u32::try_from(n).context("invalid w")?));
        }
        _ => {}
    }
    if let Some(j) = doc.get("j").or_else(|| doc.get("journal")).and_then(Bson::as_bool) {
        wc.journal = Some(j);
    }
    if let Some(t) = doc.get("wtimeoutMS").and_then(crate::ops::as_i64) {
        wc.w_timeout = Some(Duration::from_millis(u64::try_from(t).unwrap_or(0)));
    }
    Ok(wc)
}

pub fn read_preference(b: &Bson) -> Result<SelectionCriteria> {
    let doc = b.as_document().ok_or_else(|| anyhow!("read preference is not a document"))?;
    known_keys(doc, "read preference", &["mode", "tagSets", "maxStalenessSeconds", "hedge"])?;
    use mongodb::options::ReadPreference as R;
    let mut opts = mongodb::options::ReadPreferenceOptions::default();
    if doc.contains_key("hedge") {
        skip!("hedged read preferences are not supported by this runner");
    }
    if let Ok(tags) = doc.get_array("tagSets") {
        opts.tag_sets = Some(bson::from_bson(Bson::Array(tags.clone())).context("bad tagSets")?);
    }
    if let Some(secs) = doc.get("maxStalenessSeconds").and_then(crate::ops::as_i64) {
        opts.max_staleness = Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)));
    }
    let opts = Some(opts);
    let mode = doc.get_str("mode").unwrap_or("primary");
    let rp = match mode {
        "primary" if doc.len() == 1 => R::Primary,
        "primary" => bail!("primary read preference with options"),
        "primaryPreferred" => R::PrimaryPreferred { options: opts },
        "secondary" => R::Secondary { options: opts },
        "secondaryPreferred" => R::SecondaryPreferred { options: opts },
        "nearest" => R::Nearest { options: opts },
        other => bail!("unknown read preference mode {other}"),
    };
    Ok(SelectionCriteria::ReadPreference(rp))
}

fn database_options(doc: &Document) -> Result<DatabaseOptions> {
    known_keys(doc, "database", &["readConcern", "writeConcern", "readPreference"])?;
    let mut o = DatabaseOptions::default();
    if let Some(rc) = doc.get("readConcern") {
        o.read_concern = Some(read_concern(rc)?);
    }
    if let Some(wc) = doc.get("writeConcern") {
        o.write_concern = Some(write_concern(wc)?);
    }
    if let Some(rp) = doc.get("readPreference") {
        o.selection_criteria = Some(read_preference(rp)?);
    }
    Ok(o)
}

fn collection_options(doc: &Document) -> Result<CollectionOptions> {
    known_keys(doc, "collection", &["readConcern", "writeConcern", "readPreference"])?;
    let mut o = CollectionOptions::default();
    if let Some(rc) = doc.get("readConcern") {
        o.read_concern = Some(read_concern(rc)?);
    }
    if let Some(wc) = doc.get("writeConcern") {
        o.write_concern = Some(write_concern(wc)?);
    }
    if let Some(rp) = doc.get("readPreference") {
        o.selection_criteria = Some(read_preference(rp)?);
    }
    Ok(o)
}

pub fn transaction_options(doc: &Document) -> Result<TransactionOptions> {
    known_keys(doc, "transaction", &["readConcern", "writeConcern", "readPreference", "maxCommitTimeMS"])?;
    let mut o = TransactionOptions::default();
    if let Some(rc) = doc.get("readConcern") {
        o.read_concern = Some(read_concern(rc)?);
    }
    if let Some(wc) = doc.get("writeConcern") {
        o.write_concern = Some(write_concern(wc)?);
    }
    if let Some(rp) = doc.get("readPreference") {
        o.selection_criteria = Some(read_preference(rp)?);
    }
    if let Some(ms) = doc.get("maxCommitTimeMS").and_then(crate::ops::as_i64) {
        o.max_commit_time = Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
    }
    Ok(o)
}

fn session_options(doc: &Document, ents: &Entities) -> Result<SessionOptions> {
    known_keys(doc, "session", &["causalConsistency", "snapshot", "defaultTransactionOptions", "snapshotTime"])?;
    let mut o = SessionOptions::default();
    if let Ok(id) = doc.get_str("snapshotTime") {
        match ents.map.get(id) {
            Some(Entity::Value(Bson::Timestamp(ts))) => o.snapshot_time = Some(*ts),
            Some(Entity::Value(other)) => {
                bail!("snapshotTime entity {id:?} is {other}, not a timestamp (the session learned no snapshot time)")
            }
            _ => bail!("no snapshotTime entity {id:?}"),
        }
    }
    o.causal_consistency = doc.get("causalConsistency").and_then(Bson::as_bool);
    o.snapshot = doc.get("snapshot").and_then(Bson::as_bool);
    if let Ok(t) = doc.get_document("defaultTransactionOptions") {
        o.default_transaction_options = Some(transaction_options(t)?);
    }
    Ok(o)
}

fn uri_option_value(v: &Bson) -> Result<String> {
    Ok(match v {
        Bson::String(s) => s.clone(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Int32(n) => n.to_string(),
        Bson::Int64(n) => n.to_string(),
        Bson::Double(d) => d.to_string(),
        other => bail!("unsupported uri option value {other}"),
    })
}

/// Adds `uriOptions` to a connection string.
pub fn uri_with_options(base: &str, opts: &Document) -> Result<String> {
    let mut uri = base.to_string();
    for (k, v) in opts {
        if k == "readPreferenceTags" || k == "authMechanismProperties" {
            skip!("uri option {k} is not supported by this runner");
        }
        let sep = if uri.contains('?') {
            if uri.ends_with('?') || uri.ends_with('&') { "" } else { "&" }
        } else if uri.rsplit("//").next().is_some_and(|rest| rest.contains('/')) {
            "?"
        } else {
            "/?"
        };
        uri = format!("{uri}{sep}{k}={}", uri_option_value(v)?);
    }
    Ok(uri)
}

fn server_api(doc: &Document) -> Result<mongodb::options::ServerApi> {
    known_keys(doc, "serverApi", &["version", "strict", "deprecationErrors"])?;
    let version = match doc.get_str("version")? {
        "1" => mongodb::options::ServerApiVersion::V1,
        other => skip!("server api version {other} is not supported"),
    };
    let mut api = mongodb::options::ServerApi::builder().version(version).build();
    api.strict = doc.get_bool("strict").ok();
    api.deprecation_errors = doc.get_bool("deprecationErrors").ok();
    Ok(api)
}

fn observed_names(spec: &Document, key: &str) -> Vec<String> {
    spec.get_array(key).map(|a| a.iter().filter_map(Bson::as_str).map(str::to_string).collect()).unwrap_or_default()
}

const CLIENT_KEYS: [&str; 10] = [
    "id",
    "uriOptions",
    "useMultipleMongoses",
    "observeEvents",
    "ignoreCommandMonitoringEvents",
    "observeSensitiveCommands",
    "serverApi",
    "storeEventsAsEntities",
    "observeLogMessages",
    "autoEncryptOpts",
];

async fn create_client(spec: &Document, ctx: &ClientContext) -> Result<ClientEntity> {
    for key in spec.keys() {
        if !CLIENT_KEYS[..7].contains(&key.as_str()) {
            skip!("client option {key} is not supported by this runner");
        }
    }
    let uri = match spec.get_document("uriOptions") {
        Ok(o) => uri_with_options(&ctx.uri, o)?,
        Err(_) => ctx.uri.clone(),
    };
    let mut options = match ClientOptions::parse(&uri).await {
        Ok(o) => o,
        Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::InvalidArgument { .. }) => {
            skip!("the rust driver rejects the client options: {e}")
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot parse uri {uri}"))),
    };
    if options.server_selection_timeout.is_none() {
        options.server_selection_timeout = Some(ctx.selection_timeout);
    }
    if options.heartbeat_freq.is_none() {
        // recover quickly after state-change errors, as driver test suites do
        options.heartbeat_freq = Some(ctx.heartbeat);
    }
    if let Ok(api) = spec.get_document("serverApi") {
        options.server_api = Some(server_api(api)?);
    }
    let observe = observed_names(spec, "observeEvents");
    let ignore: Vec<String> =
        observed_names(spec, "ignoreCommandMonitoringEvents").into_iter().map(|s| s.to_ascii_lowercase()).collect();
    let sensitive = spec.get_bool("observeSensitiveCommands").unwrap_or(false);
    let log = Arc::new(Mutex::new(EventLog::default()));

    let observe_cmd = observe.clone();
    let cmd_log = log.clone();
    options.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
        let Ok(mut l) = cmd_log.lock() else {
            return;
        };
        let event = match ev {
            CommandEvent::Started(e) => {
                if !sensitive && is_sensitive(&e.command_name, &e.command) {
                    l.hidden.insert(e.request_id);
                    return;
                }
                l.dbs.insert(e.request_id, e.db.clone());
                Event::CommandStarted {
                    name: e.command_name,
                    db: e.db,
                    command: e.command,
                    has_service_id: e.service_id.is_some(),
                    has_server_connection_id: e.connection.server_id.is_some(),
                }
            }
            CommandEvent::Succeeded(e) => {
                if l.hidden.remove(&e.request_id) {
                    return;
                }
                Event::CommandSucceeded {
                    name: e.command_name,
                    db: l.dbs.remove(&e.request_id).unwrap_or_default(),
                    reply: e.reply,
                    has_service_id: e.service_id.is_some(),
                    has_server_connection_id: e.connection.server_id.is_some(),
                }
            }
            CommandEvent::Failed(e) => {
                if l.hidden.remove(&e.request_id) {
                    return;
                }
                Event::CommandFailed {
                    name: e.command_name,
                    db: l.dbs.remove(&e.request_id).unwrap_or_default(),
                    has_service_id: e.service_id.is_some(),
                    has_server_connection_id: e.connection.server_id.is_some(),
                }
            }
            _ => return,
        };
        let name = match &event {
            Event::CommandStarted { name, .. }
            | Event::CommandSucceeded { name, .. }
            | Event::CommandFailed { name, .. } => name.to_ascii_lowercase(),
            Event::Cmap { .. } => String::new(),
        };
        if ignore.contains(&name) || !observe_cmd.iter().any(|o| o == event.kind()) {
            return;
        }
        l.events.push(event);
    }));

    let cmap_log = log.clone();
    options.cmap_event_handler = Some(EventHandler::callback(move |ev: CmapEvent| {
        let (name, delta) = match ev {
            CmapEvent::PoolCreated(_) => ("poolCreatedEvent", 0),
            CmapEvent::PoolReady(_) => ("poolReadyEvent", 0),
            CmapEvent::PoolCleared(_) => ("poolClearedEvent", 0),
            CmapEvent::PoolClosed(_) => ("poolClosedEvent", 0),
            CmapEvent::ConnectionCreated(_) => ("connectionCreatedEvent", 0),
            CmapEvent::ConnectionReady(_) => ("connectionReadyEvent", 0),
            CmapEvent::ConnectionClosed(_) => ("connectionClosedEvent", 0),
            CmapEvent::ConnectionCheckoutStarted(_) => ("connectionCheckOutStartedEvent", 0),
            CmapEvent::ConnectionCheckoutFailed(_) => ("connectionCheckOutFailedEvent", 0),
            CmapEvent::ConnectionCheckedOut(_) => ("connectionCheckedOutEvent", 1),
            CmapEvent::ConnectionCheckedIn(_) => ("connectionCheckedInEvent", -1),
            _ => return,
        };
        if let Ok(mut l) = cmap_log.lock() {
            l.checked_out += delta;
            if observe.iter().any(|o| o == name) {
                l.events.push(Event::Cmap { name: name.into() });
            }
        }
    }));
    let client = Client::with_options(options)?;
    Ok(ClientEntity { client, log })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn uri_options_are_appended() {
        let base = "mongodb://127.0.0.1:27017/?replicaSet=rs0";
        let uri = uri_with_options(base, &doc! {"retryWrites": false, "w": 1}).unwrap();
        assert_eq!(uri, "mongodb://127.0.0.1:27017/?replicaSet=rs0&retryWrites=false&w=1");
        let uri = uri_with_options("mongodb://h:1", &doc! {"w": "majority"}).unwrap();
        assert_eq!(uri, "mongodb://h:1/?w=majority");
    }

    #[test]
    fn write_concern_parsing() {
        let wc = write_concern(&Bson::Document(doc! {"w": "majority"})).unwrap();
        assert_eq!(wc.w, Some(mongodb::options::Acknowledgment::Majority));
        let wc = write_concern(&Bson::Document(doc! {"w": 0})).unwrap();
        assert_eq!(wc.w, Some(mongodb::options::Acknowledgment::Nodes(0)));
    }
}
