//! `spec-runner`: runs the unified-format spec tests against `--uri` or an
//! in-process `fake-mongod`, prints per-suite counts and checks the
//! expected-pass list. See the library's module map for the parts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;

use spec_runner::report;
use spec_runner::runner::{Runner, Status, TestReport};
use spec_runner::server::InProcess;
use spec_runner::spec::{self, DEFAULT_SUITES};

#[derive(Parser, Debug)]
#[command(
    name = "spec-runner",
    about = "Runs MongoDB's unified-format specification tests through the official Rust driver"
)]
struct Cli {
    /// Folder holding the spec tests (default: $SPEC_TESTS_DIR, else
    /// ../shared/spec-tests next to the workspace).
    #[arg(long)]
    spec_dir: Option<PathBuf>,
    /// Run against this server instead of an in-process fake-mongod.
    #[arg(long)]
    uri: Option<String>,
    /// Suite (folder) to run; repeatable. Default: all seven.
    #[arg(long = "suite")]
    suites: Vec<String>,
    /// Only run tests whose id contains this substring.
    #[arg(long)]
    filter: Option<String>,
    /// Fail if a test listed in this file fails or is missing.
    #[arg(long)]
    expected: Option<PathBuf>,
    /// Rewrite this file with the ids of the tests that passed.
    #[arg(long)]
    write_passing: Option<PathBuf>,
    /// Print every test's result and failure details.
    #[arg(long)]
    verbose: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn resolve_spec_dir(cli: &Cli) -> Result<PathBuf> {
    let (dir, source) = match (&cli.spec_dir, std::env::var_os("SPEC_TESTS_DIR")) {
        (Some(d), _) => (d.clone(), "--spec-dir"),
        (None, Some(d)) => (PathBuf::from(d), "SPEC_TESTS_DIR"),
        (None, None) => {
            (workspace_root().join("../shared/spec-tests"), "the default ../shared/spec-tests next to the workspace")
        }
    };
    if !dir.is_dir() {
        bail!(
            "spec test folder {} (from {source}) does not exist: the MongoDB \
             specification tests must be present (shared/spec-tests next to the \
             repository), or pass --spec-dir / set SPEC_TESTS_DIR",
            dir.display()
        );
    }
    Ok(dir.canonicalize().unwrap_or(dir))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spec-runner: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let spec_dir = resolve_spec_dir(&cli)?;
    let suites: Vec<String> =
        if cli.suites.is_empty() { DEFAULT_SUITES.iter().map(|s| s.to_string()).collect() } else { cli.suites.clone() };
    let mut files = Vec::new();
    for suite in &suites {
        files.extend(spec::load_suite(&spec_dir, suite)?);
    }
    let expected = match &cli.expected {
        Some(path) => Some(report::read_list(path)?),
        None => None,
    };

    let server = match &cli.uri {
        Some(_) => None,
        None => Some(InProcess::start()?),
    };
    let uri = match (&cli.uri, &server) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.uri(),
        (None, None) => unreachable!("a server is started when no uri is given"),
    };

    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the tokio runtime")?;
    let reports = rt.block_on(async {
        let mut runner =
            Runner::connect(&uri, cli.verbose).await.with_context(|| format!("cannot reach the server at {uri}"))?;
        runner.load_server_parameters(&spec::required_server_parameters(&files)).await;
        if cli.verbose {
            eprintln!("server at {uri}: topology {}, version {:?}", runner.server.topology, runner.server.version);
        }
        let mut reports: Vec<TestReport> = Vec::new();
        for file in &files {
            reports.extend(runner.run_file(file, cli.filter.as_deref()).await);
        }
        anyhow::Ok(reports)
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if let Some(s) = server {
        s.stop();
    }

    let mut ok = true;
    if let Some(expected) = &expected {
        // only the listed tests this run covers can be checked
        let covered: std::collections::BTreeSet<String> = expected
            .iter()
            .filter(|id| {
                let suite = id.split('/').next().unwrap_or_default();
                suites.iter().any(|s| s == suite) && cli.filter.as_deref().is_none_or(|f| id.contains(f))
            })
            .cloned()
            .collect();
        let cmp = report::compare(&covered, &reports, false);
        for (id, why) in &cmp.regressed {
            println!("REGRESSION {id}\n    {}", why.lines().next().unwrap_or_default());
        }
        for id in &cmp.missing {
            println!("MISSING {id} (listed as passing but not run)");
        }
        for id in &cmp.newly_passing {
            println!("newly passing, add it: {id}");
        }
        if !cmp.newly_passing.is_empty() {
            println!("{} newly passing tests: add them with --write-passing", cmp.newly_passing.len());
        }
        if cmp.ok() {
            println!("expected list: all {} listed tests pass", covered.len());
        } else {
            println!(
                "expected list: {} listed tests failed or were skipped, {} missing",
                cmp.regressed.len(),
                cmp.missing.len()
            );
            ok = false;
        }
    }
    if let Some(path) = &cli.write_passing {
        let n = report::write_list(path, &reports)?;
        println!("wrote {n} passing test ids to {}", path.display());
    }
    let mut total = report::Counts::default();
    for (suite, c) in report::counts_by_suite(&suites, &reports) {
        println!("{suite}: {} passed, {} failed, {} skipped", c.passed, c.failed, c.skipped);
        total.passed += c.passed;
        total.failed += c.failed;
        total.skipped += c.skipped;
    }
    if !cli.verbose && reports.iter().any(|r| matches!(r.status, Status::Fail(_))) {
        eprintln!("(run with --verbose to see why each test failed)");
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
