//! The `clustersync` binary: parse the command line, load and validate the configuration,
//! confirm the verifier disclaimer, set up logging, and run the node until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown, 1 when the process fails while running, 2 for a bad
//! command line or configuration (the message names the flag or key), 3 when the disclaimer
//! is declined.
//!
//! `clustersync ctl ...` is the gRPC client instead ([`clustersync_coordinator::ctl`]): it needs
//! no configuration, and has its own exit codes (see `clustersync ctl --help`).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use clustersync_coordinator::cli::{Cli, Command, CtlArgs, DisclaimerError, confirm_disclaimer};
use clustersync_coordinator::config::{Config, process_env};
use clustersync_coordinator::{ctl, logging, node};
use clustersync_worker::mongo::redact_text;
use tokio_util::sync::CancellationToken;

/// Bad command line or configuration.
const EXIT_USAGE: u8 = 2;
/// The process failed while running.
const EXIT_FAILURE: u8 = 1;
/// The verifier disclaimer was declined.
const EXIT_DECLINED: u8 = 3;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // clap prints help and version on stdout with code 0, usage errors on stderr with 2.
        Err(error) => error.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("clustersync").build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if let Some(Command::Ctl(args)) = &cli.command {
        return runtime.block_on(run_ctl(args));
    }
    runtime.block_on(run(cli))
}

/// `clustersync ctl`: one command against the gRPC API; the error goes to stderr.
async fn run_ctl(args: &CtlArgs) -> ExitCode {
    match ctl::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let (mode, args, etcd) = cli.parts();
    let config = match Config::load(mode, args, etcd, &process_env) {
        Ok(config) => config,
        Err(error) => return usage_error(&error.to_string()),
    };
    if let Err(error) = config.validate().await {
        return usage_error(&error.to_string());
    }

    // The verifier runs under the coordinator's control; a worker has nothing to accept.
    if mode.runs_coordinator() && !config.accept_disclaimer {
        let interactive = std::io::stdin().is_terminal();
        let mut input = std::io::stdin().lock();
        let mut output = std::io::stderr();
        match confirm_disclaimer(&mut input, &mut output, interactive) {
            Ok(()) => {}
            Err(error @ DisclaimerError::Declined) => {
                eprintln!("{error}");
                return ExitCode::from(EXIT_DECLINED);
            }
            Err(error) => return usage_error(&error.to_string()),
        }
    }

    let _logging = match logging::init(config.verbosity, config.log_path.as_deref()) {
        Ok(guard) => guard,
        Err(error) => return usage_error(&error.to_string()),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        mode = mode.as_str(),
        id = %config.id,
        migration = %config.migration_name,
        config = ?config,
        "clustersync starting"
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let roles = node::Roles { coordinator: mode.runs_coordinator(), worker: mode.runs_worker() };
    let (cluster0, cluster1) = (config.cluster0.clone(), config.cluster1.clone());
    match node::run(config, roles, shutdown).await {
        Ok(()) => {
            tracing::info!("clustersync stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            // The chain may quote a driver error that echoes a connection string.
            let message = redact_text(&redact_text(&format!("{error:#}"), &cluster0), &cluster1);
            tracing::error!(error = %message, "clustersync failed");
            eprintln!("error: {message}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                let _ = interrupt.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = interrupt => tracing::info!("interrupted, shutting down"),
            _ = terminate.recv() => tracing::info!("terminated, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    shutdown.cancel();
}
