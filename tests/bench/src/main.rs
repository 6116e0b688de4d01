//! `clustersync-bench`: benchmarks of clustersync against release `fake-mongod` servers.
//!
//! Every figure is put next to a baseline measured in the same run on the same machine, because
//! machines here are noisy: the servers' raw insert and scan rates with one client, a baseline
//! copier written with the same driver, the load generator's own maximum rate. Run it through
//! `scripts/bench.sh [--size small|full]`, which builds the release binaries first; results go
//! to stdout (markdown) and `target/bench/report.json`, child process logs to
//! `target/bench/logs/`.
//!
//! # Cases
//!
//! 1. Initial copy of `n` documents of about 1 KB in 4 collections (60 % in one): raw insert
//!    and raw scan rates, the baseline copier ([`copy`]), and a fresh single-process
//!    clustersync, timed from `/start` until `/progress` reports the copy complete.
//! 2. Change application ([`load`]): the generator's 50/30/20 update/insert/delete mix at its
//!    maximum rate, then at half the rate clustersync sustained; lag of every write measured on
//!    the destination.
//! 3. Memory: the clustersync process's peak RSS during copy, change application and
//!    verification, at `n / 10` and at `n` documents.
//! 4. Scaling: the copy in distributed mode (etcd, a coordinator, 1, 2 and 4 workers).
//!
//! # Modules
//!
//! - [`data`]: the data set. [`copy`]: raw rates and the baseline copier. [`compare`]: an
//!   independent comparison of a collection the verifier says differs. [`load`]: load
//!   generator and lag probe. [`procs`]: child processes and RSS sampling. [`sync`]: clustersync
//!   runs through its REST API. [`report`]: tables, JSON and targets.

mod compare;
mod copy;
mod data;
mod load;
mod procs;
mod report;
mod sync;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::copy::Rate;
use crate::data::{DATABASE, Layout};
use crate::procs::MongoServer;
use crate::report::{Machine, Outcome, Results};
use crate::sync::{Context, LoadPlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Size {
    /// 50k documents (memory at 5k and 50k), 8 s load phases: a smoke test.
    Small,
    /// 1M documents (memory at 100k and 1M), 30 s load phases.
    Full,
}

/// Benchmarks clustersync against release fake-mongod servers.
#[derive(Debug, Parser)]
#[command(name = "clustersync-bench")]
struct Args {
    /// Size of the run.
    #[arg(long, value_enum, default_value = "small")]
    size: Size,
    /// Directory holding the release `fake-mongod` and `clustersync` binaries [default: the
    /// directory of this binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The cargo profile the binaries in `--bin-dir` were built with, for the report.
    #[arg(long, default_value = "release")]
    build_profile: String,
    /// Where the JSON report goes [default: <bin dir>/../bench/report.json].
    #[arg(long)]
    out: Option<PathBuf>,
    /// YAML configuration passed to clustersync with `--config` (e.g. non-default `worker:`
    /// settings; reported with the results).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Documents of the main data set, overriding the size's.
    #[arg(long)]
    documents: Option<u64>,
    /// Seconds of each change-application phase, overriding the size's.
    #[arg(long)]
    phase_seconds: Option<u64>,
    /// Concurrent writers of the load generator.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Skip the distributed-mode scaling case.
    #[arg(long)]
    skip_scaling: bool,
    /// Skip the run on the smaller data set (memory comparison).
    #[arg(long)]
    skip_small_run: bool,
}

/// Worker counts of the scaling case.
const SCALING_WORKERS: [usize; 3] = [1, 2, 4];

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // On SIGINT or SIGTERM the run is dropped, which kills every child process it started.
    let interrupted = async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(args) => result,
            _ = interrupted => Err(anyhow::anyhow!("interrupted; child processes stopped")),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(message: impl AsRef<str>) {
    eprintln!("bench: {}", message.as_ref());
}

fn say_rate(what: &str, rate: &Outcome<Rate>) {
    match rate {
        Ok(rate) => say(format!(
            "  {what}: {} documents in {:.2} s ({:.0} docs/s, {:.1} MiB/s)",
            rate.documents,
            rate.seconds,
            rate.docs_per_sec(),
            rate.mib_per_sec()
        )),
        Err(error) => say(format!("  {what} failed: {error}")),
    }
}

fn outcome<T>(result: anyhow::Result<T>) -> Outcome<T> {
    result.map_err(|error| format!("{error:#}"))
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("the bench binary has no directory")?.to_path_buf(),
    };
    for binary in ["fake-mongod", "clustersync"] {
        anyhow::ensure!(
            bin_dir.join(binary).is_file(),
            "{} is missing: build it with `cargo build --release -p fake-mongod -p clustersync-coordinator` \
             (scripts/bench.sh does)",
            bin_dir.join(binary).display()
        );
    }
    let out = args.out.clone().unwrap_or_else(|| bin_dir.join("../bench/report.json"));
    let out_dir = out.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let log_dir = out_dir.join("logs");
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;

    let (documents, phase_seconds, converge_timeout) = match args.size {
        Size::Small => (50_000, 8, Duration::from_secs(60)),
        Size::Full => (1_000_000, 30, Duration::from_secs(300)),
    };
    let documents = args.documents.unwrap_or(documents);
    let phase_seconds = args.phase_seconds.unwrap_or(phase_seconds);
    let plan = LoadPlan { phase_seconds, writers: args.writers.max(1), converge_timeout, measure_alone: true };
    let (settings, settings_source) = match &args.config {
        Some(path) => (
            json!(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?),
            format!("from {}", path.display()),
        ),
        None => (json!(clustersync_worker::settings::WorkerSettings::default()), "defaults".to_string()),
    };
    let ctx = Context { bin_dir: bin_dir.clone(), log_dir: log_dir.clone(), config: args.config.clone() };
    let mut machine = Machine::detect();
    machine.build_profile = args.build_profile.clone();
    say(format!(
        "{} documents, load phases of {phase_seconds} s, {} cores, logs in {}",
        documents,
        machine.cores,
        log_dir.display()
    ));

    // The main data set, on the source.
    let layout = Layout::new(documents);
    say("generating the data set");
    let generated = data::generate(&layout);
    let bytes = data::bytes_of(&generated);
    let source = MongoServer::start(&bin_dir, &log_dir, "source").await?;
    let source_client = sync::connect(&source.uri()).await?;
    say("loading the source");
    let source_load = outcome(data::insert_all(&source_client, DATABASE, &generated).await.map(|seconds| Rate {
        documents,
        bytes,
        seconds,
    }));

    say("raw insert rate (one client, fresh server)");
    let raw_insert = outcome(
        async {
            let server = MongoServer::start(&bin_dir, &log_dir, "raw-insert").await?;
            let client = sync::connect(&server.uri()).await?;
            let seconds = data::insert_all(&client, DATABASE, &generated).await;
            server.stop().await;
            Ok(Rate { documents, bytes, seconds: seconds? })
        }
        .await,
    );
    drop(generated);
    say_rate("source load", &source_load);
    say_rate("raw insert", &raw_insert);

    say("raw scan rate (one client, source)");
    let raw_scan = outcome(copy::raw_scan(&source_client, &layout).await);
    say_rate("raw scan", &raw_scan);

    say("baseline copier");
    let baseline = outcome(
        async {
            let destination = MongoServer::start(&bin_dir, &log_dir, "baseline-destination").await?;
            let client = sync::connect(&destination.uri()).await?;
            let rate = copy::baseline(&source_client, &client, &layout).await;
            let copied = data::count(&client, &layout).await;
            destination.stop().await;
            let (rate, copied) = (rate?, copied?);
            anyhow::ensure!(copied == documents, "the baseline copied {copied} documents, expected {documents}");
            Ok(rate)
        }
        .await,
    );
    say_rate("baseline", &baseline);

    say("clustersync: copy, change application, commit");
    let sync = outcome(sync::single_process(&ctx, "clustersync", &source, &layout, bytes, Some(&plan)).await);

    let small_documents = (documents / 10).max(1000);
    let sync_small = if args.skip_small_run {
        Err("not run: --skip-small-run".to_string())
    } else {
        say(format!("clustersync on {small_documents} documents (memory comparison)"));
        outcome(
            async {
                let layout = Layout::new(small_documents);
                let generated = data::generate(&layout);
                let bytes = data::bytes_of(&generated);
                let server = MongoServer::start(&bin_dir, &log_dir, "small-source").await?;
                data::insert_all(&sync::connect(&server.uri()).await?, DATABASE, &generated).await?;
                drop(generated);
                let plan = LoadPlan { measure_alone: false, ..plan.clone() };
                let run = sync::single_process(&ctx, "clustersync-small", &server, &layout, bytes, Some(&plan)).await;
                server.stop().await;
                run
            }
            .await,
        )
    };

    let mut scaling = Vec::new();
    if args.skip_scaling {
        scaling.extend(SCALING_WORKERS.map(|n| (n, Err("not run: --skip-scaling".to_string()))));
    } else {
        // The change-application load changed the source's data set: count it again.
        let (documents, bytes) = data::stats(&source_client, &layout).await?;
        // A distributed copy gets five times what the single process needed (at least 10 min).
        let single = sync.as_ref().map(|s| s.copy.seconds).unwrap_or(0.0);
        let timeout = Duration::from_secs_f64((5.0 * single).max(600.0));
        for workers in SCALING_WORKERS {
            say(format!("distributed copy with {workers} worker(s)"));
            let run = sync::distributed(&ctx, &source, &layout, documents, bytes, workers, timeout).await;
            if let Err(error) = &run {
                say(format!("  {workers} worker(s) failed: {error:#}"));
            }
            scaling.push((workers, outcome(run)));
        }
    }
    source.stop().await;
    machine.load_average_end = report::load_average();

    let results = Results {
        size: format!("{:?}", args.size).to_lowercase(),
        documents,
        bytes,
        source_load,
        raw_insert,
        raw_scan,
        baseline,
        sync,
        sync_small,
        scaling,
        settings,
        settings_source,
        machine,
    };
    println!("{}", results.markdown());
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(&out, serde_json::to_string_pretty(&results.json())? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    say(format!("report written to {}", out.display()));

    let mut ok = true;
    for (name, failed) in [
        ("raw insert", results.raw_insert.as_ref().err()),
        ("raw scan", results.raw_scan.as_ref().err()),
        ("baseline", results.baseline.as_ref().err()),
        ("clustersync", results.sync.as_ref().err()),
        ("clustersync change application", results.sync.as_ref().ok().and_then(|s| s.cdc_error.as_ref())),
        ("clustersync commit", results.sync.as_ref().ok().and_then(|s| s.commit_error.as_ref())),
        ("clustersync (smaller data set)", results.sync_small.as_ref().err().filter(|e| !e.starts_with("not run"))),
        (
            "clustersync commit (smaller data set)",
            results.sync_small.as_ref().ok().and_then(|s| s.commit_error.as_ref()),
        ),
    ] {
        if let Some(error) = failed {
            say(format!("{name} failed: {error}"));
            ok = false;
        }
    }
    Ok(ok)
}
