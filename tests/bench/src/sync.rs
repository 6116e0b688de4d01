//! Runs of clustersync itself, driven through its REST API like a user would.
//!
//! - [`single_process`]: a fresh `clustersync` process and a fresh destination server: the
//!   initial copy (`/start` until `/progress` reports phase `running`), change application
//!   under the load generator (maximum rate, then half the rate clustersync sustained),
//!   `/commit` with verification; the process's memory is sampled throughout.
//! - [`distributed`]: etcd, one `clustersync coordinator` and N `clustersync worker`
//!   processes; only the copy is timed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mongodb::Client;
use serde::Serialize;
use serde_json::{Value, json};

use crate::compare::{self, Comparison};
use crate::copy::Rate;
use crate::data::{self, Layout};
use crate::load::{CdcFigures, Probe, Workload, figures};
use crate::procs::{Etcd, MemorySampler, MongoServer, PhaseMemory, SyncProcess};

/// Where binaries and logs are, and how clustersync is configured.
pub struct Context {
    /// Directory of the release binaries.
    pub bin_dir: PathBuf,
    /// Logs of every child process.
    pub log_dir: PathBuf,
    /// `--config` for clustersync, if any.
    pub config: Option<PathBuf>,
}

/// How one single-process run is loaded.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Seconds of each load phase.
    pub phase_seconds: u64,
    /// Concurrent writers of the generator.
    pub writers: usize,
    /// Longest wait for the destination to show every write after a phase.
    pub converge_timeout: Duration,
    /// Also measure the generator's maximum rate on the source with clustersync stopped.
    pub measure_alone: bool,
}

/// Figures of one single-process run.
#[derive(Debug, Default, Serialize)]
pub struct SyncRun {
    /// Documents in the data set.
    pub documents: u64,
    /// The initial copy: `/start` until `/progress` reports phase `running`.
    pub copy: Rate,
    /// Documents found on the destination after the copy.
    pub copied_documents: u64,
    /// Change application at the generator's maximum rate.
    pub cdc_max: Option<CdcFigures>,
    /// Change application at half the rate clustersync sustained.
    pub cdc_half: Option<CdcFigures>,
    /// Why change application could not be measured, if it could not.
    pub cdc_error: Option<String>,
    /// `/commit` until COMMITTED (drain, restore indexes, verification).
    pub commit_seconds: f64,
    /// Why the commit did not reach COMMITTED, if it did not.
    pub commit_error: Option<String>,
    /// When the verifier reported a difference: the bench's own comparison of that collection.
    pub verification_check: Option<Comparison>,
    /// Seconds the verifier was seen hashing.
    pub verify_seconds: f64,
    /// Peak memory per phase (`copy`, `cdc`, `commit`, `verify`).
    pub memory: BTreeMap<String, PhaseMemory>,
    /// The generator's maximum write rate on the source with clustersync stopped.
    pub generator_alone_writes_per_sec: Option<f64>,
}

const POLL: Duration = Duration::from_millis(100);

fn sync_args(ctx: &Context, source: &str, destination: &str) -> Vec<String> {
    let mut args = vec!["--cluster0".to_string(), source.to_string(), "--cluster1".into(), destination.to_string()];
    if let Some(config) = &ctx.config {
        args.push("--config".into());
        args.push(config.display().to_string());
    }
    args
}

async fn client(uri: &str, pool: u32) -> anyhow::Result<Client> {
    let mut options = mongodb::options::ClientOptions::parse(uri).await?;
    options.app_name = Some("clustersync-bench".into());
    options.max_pool_size = Some(pool);
    Ok(Client::with_options(options)?)
}

/// Connects the bench's own client to a server.
pub async fn connect(uri: &str) -> anyhow::Result<Client> {
    client(uri, 16).await
}

fn failure(progress: &Value) -> Option<String> {
    (progress["state"] == "FAILED").then(|| {
        format!(
            "migration FAILED: {} {}",
            progress["error"].as_str().unwrap_or("?"),
            progress["errorDescription"].as_str().unwrap_or("")
        )
    })
}

/// Polls `/progress` until `done` holds; fails on FAILED, on the process exiting, or after
/// `timeout`. `each` sees every reply.
async fn wait_progress(
    process: &mut SyncProcess,
    what: &str,
    timeout: Duration,
    mut each: impl FnMut(&Value),
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    // A copy that stops moving (e.g. every cursor keeps being interrupted) fails the case
    // instead of running into the timeout.
    let (mut copied, mut moved_at) = (0u64, Instant::now());
    loop {
        process.check_running()?;
        if let Ok(progress) = process.progress().await {
            each(&progress);
            if let Some(reason) = failure(&progress) {
                bail!("{reason} (while waiting for {what})");
            }
            if done(&progress) {
                return Ok(progress);
            }
            let now_copied = progress["collectionCopy"]["estimatedCopiedBytes"].as_u64().unwrap_or(0);
            if now_copied > copied || progress["phase"] != "snapshot" {
                (copied, moved_at) = (now_copied.max(copied), Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        if moved_at.elapsed() > COPY_STALL {
            bail!(
                "the copy made no progress for {COPY_STALL:?} ({} MiB copied) while waiting for {what}",
                copied / 1048576
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long the copy may go without copying anything before the case fails.
const COPY_STALL: Duration = Duration::from_secs(180);

fn copy_timeout(documents: u64) -> Duration {
    Duration::from_secs(300 + documents / 500)
}

/// One fresh `clustersync` process syncing `source` (holding `layout`, `bytes` of BSON) to a
/// fresh destination server; `load: None` skips change application.
pub async fn single_process(
    ctx: &Context,
    name: &str,
    source: &MongoServer,
    layout: &Layout,
    bytes: u64,
    load: Option<&LoadPlan>,
) -> anyhow::Result<SyncRun> {
    let destination = MongoServer::start(&ctx.bin_dir, &ctx.log_dir, &format!("{name}-destination")).await?;
    let state = tempfile::Builder::new().prefix("clustersync-bench-state-").tempdir()?;
    let mut args = sync_args(ctx, &source.uri(), &destination.uri());
    args.extend(["--stateDir".to_string(), state.path().display().to_string()]);
    let mut process = SyncProcess::start(&ctx.bin_dir, &ctx.log_dir, name, &args)?;
    let result = drive(&mut process, source, &destination, layout, bytes, load).await;
    process.stop().await;
    destination.stop().await;
    let (mut run, workload) = result?;
    if let (Some(plan), Some(mut workload)) = (load, workload)
        && plan.measure_alone
    {
        let alone = generator_alone(source, &mut workload, plan).await?;
        say(format!("  the generator alone on the source: {alone:.0} writes/s"));
        run.generator_alone_writes_per_sec = Some(alone);
    }
    Ok(run)
}

async fn drive(
    process: &mut SyncProcess,
    source: &MongoServer,
    destination: &MongoServer,
    layout: &Layout,
    bytes: u64,
    load: Option<&LoadPlan>,
) -> anyhow::Result<(SyncRun, Option<Workload>)> {
    process.wait_ready().await?;
    let sampler = MemorySampler::start(process.pid().context("clustersync has no pid")?);
    let mut run = SyncRun { documents: layout.documents(), ..SyncRun::default() };

    // Initial copy.
    sampler.phase(Some("copy"));
    process.post("start", json!({"source": "cluster0", "destination": "cluster1"})).await?;
    let started = Instant::now();
    wait_progress(process, "the copy to complete", copy_timeout(run.documents), |_| {}, |p| p["phase"] == "running")
        .await?;
    run.copy = Rate { documents: run.documents, bytes, seconds: started.elapsed().as_secs_f64() };
    sampler.phase(None);
    let destination_client = connect(&destination.uri()).await?;
    run.copied_documents = data::count(&destination_client, layout).await?;
    if run.copied_documents != run.documents {
        bail!("the destination holds {} documents after the copy, expected {}", run.copied_documents, run.documents);
    }
    wait_progress(process, "canCommit", Duration::from_secs(300), |_| {}, |p| p["canCommit"] == true).await?;

    say(format!(
        "  copy: {} documents in {:.1} s ({:.0} docs/s)",
        run.documents,
        run.copy.seconds,
        run.copy.docs_per_sec()
    ));

    // Change application.
    let mut kept_workload = None;
    if let Some(plan) = load {
        sampler.phase(Some("cdc"));
        let mut workload = Workload::new(layout, plan.writers);
        let result = async {
            let source_client = client(&source.uri(), plan.writers as u32 + 4).await?;
            let probe = Probe::start(&destination_client, &workload).await?;
            let max = cdc_phase(process, &source_client, &mut workload, &probe, plan, None).await?;
            say(format!("  maximum rate: {}", summary(&max)));
            let half_rate = max.applied_events_per_sec.min(max.source_writes_per_sec) / 2.0;
            run.cdc_max = Some(max);
            if half_rate > 0.0 {
                let half = cdc_phase(process, &source_client, &mut workload, &probe, plan, Some(half_rate)).await?;
                say(format!("  half rate: {}", summary(&half)));
                run.cdc_half = Some(half);
            }
            if probe.unmatched() > 0 {
                say(format!("  {} destination events matched no write of the generator", probe.unmatched()));
            }
            probe.stop().await
        }
        .await;
        sampler.phase(None);
        if let Err(error) = result {
            run.cdc_error = Some(format!("{error:#}"));
            run.memory = sampler.finish();
            return Ok((run, None));
        }
        kept_workload = Some(workload);
    }

    // Restart, so the commit and its verification are measured in a fresh process rather than on
    // top of whatever the allocator kept from the copy and the change application. (A restart is
    // an ordinary event for clustersync: it resumes from its state directory.)
    run.memory = sampler.finish();
    process.restart().await?;
    process.wait_ready().await?;
    wait_progress(process, "canCommit after the restart", Duration::from_secs(300), |_| {}, |p| p["canCommit"] == true)
        .await?;
    let sampler = MemorySampler::start(process.pid().context("clustersync has no pid")?);

    // Commit, with verification.
    sampler.phase(Some("commit"));
    let started = Instant::now();
    let mut hashing_since: Option<Instant> = None;
    let mut hashing = Duration::ZERO;
    let committed = async {
        process.post("commit", json!({})).await?;
        wait_progress(
            process,
            "COMMITTED",
            commit_timeout(run.documents),
            |p| {
                let now_hashing =
                    ["source", "destination"].iter().any(|side| p["verification"][side]["phase"] == "hashing");
                match (now_hashing, hashing_since) {
                    (true, None) => {
                        hashing_since = Some(Instant::now());
                        sampler.phase(Some("verify"));
                    }
                    (false, Some(since)) => {
                        hashing += since.elapsed();
                        hashing_since = None;
                        sampler.phase(Some("commit"));
                    }
                    _ => {}
                }
            },
            |p| p["state"] == "COMMITTED",
        )
        .await
    }
    .await;
    if let Some(since) = hashing_since {
        hashing += since.elapsed();
    }
    run.commit_seconds = started.elapsed().as_secs_f64();
    run.verify_seconds = hashing.as_secs_f64();
    run.commit_error = committed.err().map(|error| format!("{error:#}"));
    run.memory.extend(sampler.finish());
    say(format!(
        "  peak RSS MiB: {}",
        run.memory.iter().map(|(phase, m)| format!("{phase} {:.0}", m.peak_rss_mib)).collect::<Vec<_>>().join(", ")
    ));
    if run.commit_error.is_some()
        && let Ok(progress) = process.progress().await
        && progress["error"] == "VerificationFailed"
        && let Some(namespace) = progress["errorNamespace"].as_str()
    {
        say(format!("  verification reported a difference in {namespace}; comparing it independently"));
        let source_client = connect(&source.uri()).await?;
        match compare::collection(&source_client, &destination_client, namespace).await {
            Ok(comparison) => {
                say(format!("  {}", comparison.summary()));
                run.verification_check = Some(comparison);
            }
            Err(error) => say(format!("  the independent comparison failed: {error:#}")),
        }
    }
    match &run.commit_error {
        None => say(format!("  commit: {:.1} s (verification {:.1} s)", run.commit_seconds, run.verify_seconds)),
        Some(error) => say(format!("  commit failed after {:.1} s: {error}", run.commit_seconds)),
    }
    Ok((run, kept_workload))
}

/// Prints a line on stderr (figures appear there as they are measured).
pub fn say(message: String) {
    eprintln!("bench: {message}");
}

fn summary(f: &CdcFigures) -> String {
    format!(
        "{:.0} writes/s, {:.0} applied/s, lag p50 {:?} ms p99 {:?} ms, converged {:?} s",
        f.source_writes_per_sec, f.applied_events_per_sec, f.lag_p50_ms, f.lag_p99_ms, f.converge_seconds
    )
}

/// How long `/commit` may take: verification reads everything on both sides.
fn commit_timeout(documents: u64) -> Duration {
    Duration::from_secs(120 + documents / 2000)
}

/// One load phase: run the generator, then wait until the destination shows every write.
async fn cdc_phase(
    process: &mut SyncProcess,
    source: &Client,
    workload: &mut Workload,
    probe: &Probe,
    plan: &LoadPlan,
    rate: Option<f64>,
) -> anyhow::Result<CdcFigures> {
    let applied = |p: &Value| p["totalEventsApplied"].as_u64();
    let before = applied(&process.progress().await?);
    let seen_before = probe.seen();
    let mut max_lag: Option<u64> = None;
    let mut note_lag = |p: &Value| {
        if let Some(lag) = p["lagTimeSeconds"].as_u64() {
            max_lag = Some(max_lag.map_or(lag, |max| max.max(lag)));
        }
    };

    let running = workload.start_phase(source, Duration::from_secs(plan.phase_seconds), rate);
    while !running.is_finished() {
        process.check_running()?;
        probe.check()?;
        if let Ok(progress) = process.progress().await {
            if let Some(reason) = failure(&progress) {
                bail!("{reason} (during change application)");
            }
            note_lag(&progress);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let writes = running.finish(workload).await?;

    let expected = seen_before + writes.writes.len() as u64;
    let deadline = Instant::now() + plan.converge_timeout;
    let mut last_poll = Instant::now();
    while probe.seen() < expected && Instant::now() < deadline {
        probe.check()?;
        if last_poll.elapsed() > Duration::from_millis(250) {
            process.check_running()?;
            if let Ok(progress) = process.progress().await {
                note_lag(&progress);
            }
            last_poll = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let visible = probe.visible_at(&writes.writes);
    let mut figures = figures(&writes, &visible, rate);

    // clustersync's own counter is checkpointed, so it may trail the destination a little.
    let settle = Instant::now() + Duration::from_secs(3);
    let mut after = None;
    while Instant::now() < settle {
        let progress = process.progress().await?;
        note_lag(&progress);
        after = applied(&progress);
        if let (Some(after), Some(before)) = (after, before)
            && after - before >= writes.writes.len() as u64
        {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    figures.clustersync_events_applied = after.zip(before).map(|(after, before)| after.saturating_sub(before));
    figures.clustersync_max_lag_seconds = max_lag;
    Ok(figures)
}

/// Figures of one distributed run.
#[derive(Debug, Default, Serialize)]
pub struct DistributedRun {
    /// Worker processes started.
    pub workers: usize,
    /// Most worker instances `/progress` listed at once during the copy.
    pub workers_seen: usize,
    /// The copy, `/start` until phase `running`.
    pub copy: Rate,
}

/// etcd, a `clustersync coordinator` and `workers` × `clustersync worker` copy `source`
/// (`documents` in the collections of `layout`, `bytes` of BSON) to a fresh destination server.
pub async fn distributed(
    ctx: &Context,
    source: &MongoServer,
    layout: &Layout,
    documents: u64,
    bytes: u64,
    workers: usize,
    timeout: Duration,
) -> anyhow::Result<DistributedRun> {
    let name = format!("distributed-{workers}");
    wait_responsive(&source.uri()).await?;
    let etcd = Etcd::start(&ctx.log_dir, &format!("{name}-etcd")).await?;
    let destination = MongoServer::start(&ctx.bin_dir, &ctx.log_dir, &format!("{name}-destination")).await?;
    let base = sync_args(ctx, &source.uri(), &destination.uri());
    let role_args = |role: &str, id: String| {
        let mut args = vec![role.to_string(), "--etcd".into(), etcd.endpoint.clone(), "--id".into(), id];
        args.extend(["--migrationName".to_string(), "bench".to_string()]);
        args.extend(base.iter().cloned());
        args
    };
    let result = async {
        let mut coordinator = SyncProcess::start(
            &ctx.bin_dir,
            &ctx.log_dir,
            &format!("{name}-coordinator"),
            &role_args("coordinator", "coordinator-1".into()),
        )?;
        let mut worker_processes = Vec::new();
        for i in 1..=workers {
            worker_processes.push(SyncProcess::start(
                &ctx.bin_dir,
                &ctx.log_dir,
                &format!("{name}-worker-{i}"),
                &role_args("worker", format!("worker-{i}")),
            )?);
        }
        let outcome = async {
            coordinator.wait_ready().await?;
            // Let every worker register before the work is planned.
            tokio::time::sleep(Duration::from_secs(2)).await;
            for worker in &mut worker_processes {
                worker.check_running()?;
            }
            coordinator.post("start", json!({"source": "cluster0", "destination": "cluster1"})).await?;
            let started = Instant::now();
            let mut seen = 0usize;
            wait_progress(
                &mut coordinator,
                "the distributed copy to complete",
                timeout,
                |p| seen = seen.max(worker_count(p)),
                |p| p["phase"] == "running",
            )
            .await?;
            let copy = Rate { documents, bytes, seconds: started.elapsed().as_secs_f64() };
            let copied = data::count(&connect(&destination.uri()).await?, layout).await?;
            if copied != documents {
                bail!("the destination holds {copied} documents after the copy, expected {documents}");
            }
            say(format!(
                "  {workers} worker(s): {documents} documents in {:.1} s ({:.0} docs/s)",
                copy.seconds,
                copy.docs_per_sec()
            ));
            anyhow::Ok(DistributedRun { workers, workers_seen: seen, copy })
        }
        .await;
        coordinator.stop().await;
        for worker in worker_processes {
            worker.stop().await;
        }
        outcome
    }
    .await;
    destination.stop().await;
    etcd.stop().await;
    result
}

/// Waits until the server answers `ping` within a second: a server still busy with the queries
/// of a previous case (fake-mongod finishes a query even when its client is gone) would
/// otherwise skew, or fail, the next one.
pub async fn wait_responsive(uri: &str) -> anyhow::Result<()> {
    let mut options = mongodb::options::ClientOptions::parse(uri).await?;
    options.app_name = Some("clustersync-bench-probe".into());
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.connect_timeout = Some(Duration::from_secs(2));
    let client = Client::with_options(options)?;
    let started = Instant::now();
    let mut warned = false;
    loop {
        let attempt = Instant::now();
        let answered =
            tokio::time::timeout(Duration::from_secs(5), client.database("admin").run_command(bson::doc! {"ping": 1}))
                .await;
        if matches!(answered, Ok(Ok(_))) && attempt.elapsed() < Duration::from_secs(1) {
            if warned {
                say(format!("  the source answers again after {:.0} s", started.elapsed().as_secs_f64()));
            }
            return Ok(());
        }
        if !warned {
            say("  the source is still busy; waiting until it answers within a second".into());
            warned = true;
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!("the source did not answer ping within a second for 15 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn worker_count(progress: &Value) -> usize {
    progress["fleet"]["instances"]
        .as_array()
        .map(|instances| {
            instances
                .iter()
                .filter(|i| i["roles"].as_array().is_some_and(|roles| roles.iter().any(|r| r == "worker")))
                .count()
        })
        .unwrap_or(0)
}

/// The generator alone on the source, once clustersync is gone: its maximum write rate.
async fn generator_alone(source: &MongoServer, workload: &mut Workload, plan: &LoadPlan) -> anyhow::Result<f64> {
    let client = client(&source.uri(), plan.writers as u32 + 4).await?;
    let running = workload.start_phase(&client, Duration::from_secs(plan.phase_seconds.min(10)), None);
    let writes = running.finish(workload).await?;
    let seconds = (writes.stop_ms - writes.start_ms).max(1) as f64 / 1000.0;
    Ok(writes.writes.len() as f64 / seconds)
}
