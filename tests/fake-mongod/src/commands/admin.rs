//! Handshake and administrative commands: hello/isMaster (including awaitable hello),
//! buildInfo, getParameter, serverStatus, replSetGetStatus, listDatabases, stats,
//! appendOplogNote, step-down.

use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document, doc};

use super::{Ctx, Reply};
use crate::error::{Error, Result};
use crate::oplog::{Kind, Pending};
use crate::server::{State, StateView};

const SUPPORTED_COMPRESSORS: [&str; 2] = ["snappy", "zlib"];

fn hello_doc(ctx: &Ctx, st: &StateView, legacy: bool) -> Document {
    let hp = ctx.shared.host_port();
    let primary = !st.is_secondary();
    let ts = st.last_ts;
    let now = bson::DateTime::now();
    let optime = doc! {"ts": ts, "t": st.term};
    let mut d = Document::new();
    if ctx.cmd.get_bool("helloOk").unwrap_or(false) {
        d.insert("helloOk", true);
    }
    d.insert("topologyVersion", doc! {"processId": ctx.shared.process_id, "counter": st.topology_counter});
    d.insert("hosts", vec![hp.clone()]);
    d.insert("setName", ctx.shared.opts.repl_set_name.clone());
    d.insert("setVersion", 1);
    d.insert(if legacy { "ismaster" } else { "isWritablePrimary" }, primary);
    d.insert("secondary", !primary);
    if primary {
        d.insert("primary", hp.clone());
    }
    d.insert("me", hp);
    if primary {
        d.insert("electionId", st.election_id);
    }
    d.insert(
        "lastWrite",
        doc! {"opTime": optime.clone(), "lastWriteDate": now, "majorityOpTime": optime, "majorityWriteDate": now},
    );
    d.insert("maxBsonObjectSize", 16 * 1024 * 1024);
    d.insert("maxMessageSizeBytes", 48_000_000);
    d.insert("maxWriteBatchSize", 100_000);
    d.insert("localTime", now);
    d.insert("logicalSessionTimeoutMinutes", 30);
    d.insert("connectionId", ctx.conn.id as i32);
    d.insert("minWireVersion", 0);
    d.insert("maxWireVersion", 21);
    d.insert("readOnly", false);
    if !ctx.conn.compressors.is_empty() {
        d.insert("compression", ctx.conn.compressors.clone());
    }
    d.insert("isImplicitDefaultMajorityWC", true);
    d
}

/// `hello` / `isMaster`, with the awaitable (streaming) form.
pub async fn hello(ctx: &mut Ctx<'_>) -> Result<Reply> {
    if let Ok(client) = ctx.cmd.get_document("client") {
        if let Ok(app) = client.get_document("application").and_then(|a| a.get_str("name")) {
            ctx.conn.app_name = Some(app.to_string());
            ctx.conn.bypass_write_block = ctx.shared.opts.write_block_bypass_app_names.iter().any(|n| n == app);
        }
        tracing::debug!(conn = ctx.conn.id, app = ?ctx.conn.app_name, "handshake");
    }
    if let Ok(list) = ctx.cmd.get_array("compression") {
        ctx.conn.compressors = list
            .iter()
            .filter_map(|c| c.as_str())
            .filter(|c| SUPPORTED_COMPRESSORS.contains(c))
            .map(str::to_string)
            .collect();
    }
    let legacy = ctx.name != "hello";
    // awaitable hello
    if let (Ok(tv), Some(max_wait)) =
        (ctx.cmd.get_document("topologyVersion"), ctx.cmd.get("maxAwaitTimeMS").and_then(crate::bson_order::as_i64))
    {
        let same_process = tv.get_object_id("processId").ok() == Some(ctx.shared.process_id);
        let counter = tv.get("counter").and_then(crate::bson_order::as_i64).unwrap_or(-1);
        let mut rx = ctx.shared.topology_tx.subscribe();
        let (current, fast) = {
            let st = ctx.shared.view();
            (st.topology_counter, st.fast_hello_until.is_some_and(|t| std::time::Instant::now() < t))
        };
        if same_process && counter == current && !fast {
            let _ = tokio::time::timeout(Duration::from_millis(max_wait.max(0) as u64), rx.changed()).await;
        }
    }
    // never waits for a long command: see `Shared::view`
    let st = ctx.shared.view();
    Ok(Reply::Doc(hello_doc(ctx, &st, legacy)))
}

/// `buildInfo`.
pub fn build_info() -> Document {
    doc! {
        "version": "7.0.12",
        "gitVersion": "0000000000000000000000000000000000000000",
        "versionArray": [7, 0, 12, 0],
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": 16 * 1024 * 1024,
        "storageEngines": ["devnull", "ephemeralForTest", "wiredTiger"],
        "modules": [],
        "javascriptEngine": "none",
        "openssl": {"running": "disabled", "compiled": "disabled"},
        "buildEnvironment": {"distmod": "fake-mongod", "target_os": std::env::consts::OS, "target_arch": std::env::consts::ARCH},
    }
}

/// `getParameter`.
pub fn get_parameter(ctx: &Ctx) -> Result<Reply> {
    let all = ctx.cmd.get_str("getParameter") == Ok("*")
        || matches!(ctx.cmd.get("getParameter"), Some(Bson::Document(d)) if d.get_bool("allParameters").unwrap_or(false));
    let known = doc! {
        "featureCompatibilityVersion": {"version": "7.0"},
        "transactionLifetimeLimitSeconds": 60,
        "maxTransactionLockRequestTimeoutMillis": 5,
        "internalQueryMaxBlockingSortMemoryUsageBytes": 104_857_600,
        "changeStreamOptions": {"preAndPostImages": {"expireAfterSeconds": "off"}},
        "authenticationMechanisms": ["SCRAM-SHA-1", "SCRAM-SHA-256"],
        "requireApiVersion": false,
        "enableTestCommands": 1,
        "maxBSONDepth": 200,
        "notablescan": false,
        "periodicNoopIntervalSecs": ctx.shared.opts.noop_interval.as_secs().max(1) as i32,
    };
    let mut out = Document::new();
    for (k, v) in &known {
        if all || ctx.cmd.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    if out.is_empty() && !all {
        return Err(Error::new(72, "no option found to get"));
    }
    Ok(Reply::Doc(out))
}

/// `serverStatus`.
pub fn server_status(ctx: &Ctx, st: &State) -> Result<Reply> {
    let up = ctx.shared.started.elapsed();
    Ok(Reply::Doc(doc! {
        "host": ctx.shared.host_port(),
        "version": "7.0.12",
        "process": "mongod",
        "pid": std::process::id() as i64,
        "uptime": up.as_secs_f64(),
        "uptimeMillis": up.as_millis() as i64,
        "localTime": bson::DateTime::now(),
        "connections": {"current": 1, "available": 1000, "totalCreated": ctx.shared.next_conn_id.load(std::sync::atomic::Ordering::Relaxed)},
        "repl": {"setName": ctx.shared.opts.repl_set_name.clone(), "isWritablePrimary": !st.is_secondary(), "secondary": st.is_secondary(), "me": ctx.shared.host_port(), "hosts": [ctx.shared.host_port()]},
        "storageEngine": {"name": "wiredTiger", "supportsCommittedReads": true, "persistent": false},
        "oplog": {"entries": st.oplog.len() as i64, "sizeBytes": st.oplog.size_bytes() as i64},
        "transactions": {"currentOpen": 0},
        "logicalSessionRecordCache": {"activeSessionsCount": st.sessions.len() as i32},
        "mem": {"bits": 64, "resident": 0, "virtual": 0},
    }))
}

/// `hostInfo`.
pub fn host_info() -> Document {
    doc! {
        "system": {"currentTime": bson::DateTime::now(), "hostname": "localhost", "cpuAddrSize": 64, "memSizeMB": 1024i64, "numCores": std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(1), "cpuArch": std::env::consts::ARCH},
        "os": {"type": std::env::consts::OS, "name": std::env::consts::OS},
        "extra": {},
    }
}

/// `replSetGetStatus`.
pub fn repl_set_get_status(ctx: &Ctx, st: &State) -> Result<Reply> {
    let ts = st.oplog.last_ts();
    let optime = doc! {"ts": ts, "t": st.term};
    let now = bson::DateTime::now();
    let primary = !st.is_secondary();
    Ok(Reply::Doc(doc! {
        "set": ctx.shared.opts.repl_set_name.clone(),
        "date": now,
        "myState": if primary { 1 } else { 2 },
        "term": st.term,
        "heartbeatIntervalMillis": 2000i64,
        "optimes": {"lastCommittedOpTime": optime.clone(), "appliedOpTime": optime.clone(), "durableOpTime": optime.clone(), "lastCommittedWallTime": now, "lastAppliedWallTime": now, "lastDurableWallTime": now},
        "members": [{
            "_id": 0,
            "name": ctx.shared.host_port(),
            "health": 1.0,
            "state": if primary { 1 } else { 2 },
            "stateStr": if primary { "PRIMARY" } else { "SECONDARY" },
            "uptime": ctx.shared.started.elapsed().as_secs() as i32,
            "optime": optime.clone(),
            "optimeDate": now,
            "lastAppliedWallTime": now,
            "lastDurableWallTime": now,
            "electionTime": ts,
            "electionDate": now,
            "configVersion": 1,
            "configTerm": st.term,
            "self": true,
        }],
    }))
}

/// `replSetGetConfig`.
pub fn repl_set_get_config(ctx: &Ctx, st: &State) -> Result<Reply> {
    Ok(Reply::Doc(doc! {"config": {
        "_id": ctx.shared.opts.repl_set_name.clone(),
        "version": 1,
        "term": st.term,
        "members": [{"_id": 0, "host": ctx.shared.host_port(), "arbiterOnly": false, "buildIndexes": true, "hidden": false, "priority": 1.0, "votes": 1}],
        "protocolVersion": 1i64,
        "settings": {"chainingAllowed": true, "heartbeatIntervalMillis": 2000},
    }}))
}

fn db_size(st: &State, db: &str) -> i64 {
    st.catalog
        .dbs
        .get(db)
        .map(|d| d.colls.values().map(|c| c.data_size as i64 + c.index_size() as i64).sum())
        .unwrap_or(0)
}

/// `listDatabases`.
pub fn list_databases(ctx: &Ctx, st: &State) -> Result<Reply> {
    let name_only = ctx.cmd.get_bool("nameOnly").unwrap_or(false);
    let filter = match ctx.cmd.get_document("filter") {
        Ok(f) => Some(crate::query::compile(f)?),
        Err(_) => None,
    };
    let mut out = Vec::new();
    let mut total = 0i64;
    let mut names: Vec<String> =
        st.catalog.dbs.iter().filter(|(_, d)| !d.colls.is_empty()).map(|(n, _)| n.clone()).collect();
    for internal in ["admin", "config", "local"] {
        if !names.iter().any(|n| n == internal) {
            names.push(internal.to_string());
        }
    }
    names.sort();
    for name in names {
        let size =
            db_size(st, &name).max(if matches!(name.as_str(), "admin" | "config" | "local") { 40960 } else { 0 });
        let entry = if name_only {
            doc! {"name": name.clone()}
        } else {
            doc! {"name": name.clone(), "sizeOnDisk": size, "empty": size == 0}
        };
        if let Some(f) = &filter
            && !f.matches(&doc! {"name": name.clone(), "sizeOnDisk": size, "empty": size == 0}, &Default::default())
        {
            continue;
        }
        total += size;
        out.push(entry);
    }
    let mut d = doc! {"databases": out};
    if !name_only {
        d.insert("totalSize", total);
        d.insert("totalSizeMb", total / (1024 * 1024));
    }
    Ok(Reply::Doc(d))
}

/// `getCmdLineOpts`.
pub fn cmd_line_opts(ctx: &Ctx) -> Document {
    let port = ctx.shared.port.load(std::sync::atomic::Ordering::Relaxed) as i32;
    doc! {
        "argv": ["fake-mongod", "--port", port.to_string(), "--replSet", ctx.shared.opts.repl_set_name.clone()],
        "parsed": {
            "net": {"bindIp": ctx.shared.opts.host.clone(), "port": port},
            "replication": {"replSet": ctx.shared.opts.repl_set_name.clone(), "oplogSizeMB": ctx.shared.opts.oplog_size_mb as i64},
        },
    }
}

/// `appendOplogNote`: writes a no-op entry.
pub fn append_oplog_note(ctx: &Ctx, st: &mut State) -> Result<Reply> {
    let data = ctx.cmd.get_document("data").cloned().unwrap_or_default();
    st.oplog.append(
        vec![Pending { db: "admin".into(), coll: "$cmd".into(), uuid: None, kind: Kind::Noop { msg: data } }],
        None,
    );
    st.last_write = std::time::Instant::now();
    Ok(Reply::Doc(doc! {}))
}

/// `replSetStepDown` / `fakeMongodStepDown`.
pub fn step_down(ctx: &mut Ctx) -> Result<Reply> {
    let secs = ctx.cmd.get(&ctx.name).and_then(crate::bson_order::as_f64).unwrap_or(60.0).max(0.0);
    let secs = if ctx.name == "replSetStepDown" { secs.min(60.0) } else { secs };
    Arc::clone(ctx.shared).step_down(Duration::from_secs_f64(secs));
    Ok(Reply::Doc(doc! {}))
}

/// Storage statistics of one collection (shared by `collStats` and `$collStats`).
pub fn storage_stats(c: &crate::storage::Collection, scale: i64) -> Document {
    let count = c.count() as i64;
    let size = c.data_size as i64;
    let mut d = doc! {
        "size": size / scale,
        "count": count,
        "avgObjSize": if count > 0 { size / count } else { 0 },
        "storageSize": (size / scale).max(4096 / scale),
        "freeStorageSize": 0,
        "capped": c.capped(),
        "nindexes": c.indexes.len() as i32,
        "totalIndexSize": c.index_size() as i64 / scale,
        "totalSize": (size + c.index_size() as i64) / scale,
        "indexSizes": c.indexes.iter().map(|i| (i.name.clone(), Bson::Int64(c.index_size() as i64 / c.indexes.len().max(1) as i64 / scale))).collect::<Document>(),
        "scaleFactor": scale as i32,
    };
    if c.capped() {
        let (size, max) = c.capped_limits();
        d.insert("max", max.map(|m| m as i64).unwrap_or(0));
        d.insert("maxSize", size as i64 / scale);
    }
    d
}

/// `collStats`.
pub fn coll_stats_cmd(ctx: &Ctx, st: &State) -> Result<Reply> {
    let coll = ctx.target()?;
    let scale = ctx.cmd.get("scale").and_then(crate::bson_order::as_i64).unwrap_or(1).max(1);
    let mut d = doc! {"ns": ctx.ns(&coll)};
    match st.catalog.coll(&ctx.db, &coll) {
        Some(c) if c.view.is_none() => d.extend(storage_stats(c, scale)),
        Some(_) => return Err(Error::new(166, format!("Namespace {} is a view, not a collection", ctx.ns(&coll)))),
        None => return Err(Error::new(26, format!("Collection [{}] not found.", ctx.ns(&coll)))),
    }
    Ok(Reply::Doc(d))
}

/// 128-bit FNV-1a over byte slices, printed as 32 hex digits (stands in for MD5 in `dbHash`).
fn fnv128<'a>(parts: impl Iterator<Item = &'a [u8]>) -> String {
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for p in parts {
        for b in p {
            h ^= *b as u128;
            h = h.wrapping_mul(PRIME);
        }
    }
    format!("{h:032x}")
}

/// `dbHash`: a hash per collection over its documents in `_id` order (FNV-1a 128, not MD5).
pub fn db_hash(ctx: &Ctx, st: &State) -> Result<Reply> {
    let started = std::time::Instant::now();
    let wanted: Option<Vec<String>> = ctx
        .cmd
        .get_array("collections")
        .ok()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect());
    let mut hashes = Document::new();
    let mut uuids = Document::new();
    let mut capped = Vec::new();
    let mut all = Vec::new();
    if let Some(db) = st.catalog.dbs.get(&ctx.db) {
        for (name, c) in &db.colls {
            if c.view.is_some() || name.starts_with("system.") || wanted.as_ref().is_some_and(|w| !w.contains(name)) {
                continue;
            }
            let h = if c.id_indexed() {
                fnv128(c.ids.values().filter_map(|rid| c.records.get(rid)).map(|d| d.as_bytes()))
            } else {
                fnv128(c.records.values().map(|d| d.as_bytes()))
            };
            if c.capped() {
                capped.push(Bson::String(name.clone()));
            }
            all.push(h.clone());
            hashes.insert(name.clone(), h);
            uuids.insert(name.clone(), c.uuid);
        }
    }
    let md5 = fnv128(all.iter().map(|s| s.as_bytes()));
    Ok(Reply::Doc(doc! {
        "host": ctx.shared.host_port(),
        "collections": hashes,
        "capped": capped,
        "uuids": uuids,
        "md5": md5,
        "timeMillis": started.elapsed().as_millis() as i64,
        "fromCache": [],
    }))
}

/// `dbStats`.
pub fn db_stats(ctx: &Ctx, st: &State) -> Result<Reply> {
    let scale = ctx.cmd.get("scale").and_then(crate::bson_order::as_i64).unwrap_or(1).max(1);
    let (mut colls, mut views, mut objects, mut data, mut indexes, mut index_size) = (0, 0, 0i64, 0i64, 0, 0i64);
    if let Some(db) = st.catalog.dbs.get(&ctx.db) {
        for c in db.colls.values() {
            if c.view.is_some() {
                views += 1;
                continue;
            }
            colls += 1;
            objects += c.count() as i64;
            data += c.data_size as i64;
            indexes += c.indexes.len() as i32;
            index_size += c.index_size() as i64;
        }
    }
    Ok(Reply::Doc(doc! {
        "db": ctx.db.clone(),
        "collections": colls,
        "views": views,
        "objects": objects,
        "avgObjSize": if objects > 0 { data as f64 / objects as f64 } else { 0.0 },
        "dataSize": (data / scale) as f64,
        "storageSize": (data / scale) as f64,
        "indexes": indexes,
        "indexSize": (index_size / scale) as f64,
        "totalSize": ((data + index_size) / scale) as f64,
        "scaleFactor": scale as f64,
        "fsUsedSize": 0.0,
        "fsTotalSize": 0.0,
    }))
}
