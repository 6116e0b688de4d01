//! `fake-mongod --port P --replSet NAME [--oplogSizeMB N] [--writeBlockBypassAppName NAME]...`

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fake_mongod::server::{self, ServerOptions, Shared};

/// In-memory MongoDB-compatible test server (one-member replica set, MongoDB 7.0).
#[derive(Parser, Debug)]
#[command(name = "fake-mongod", version)]
struct Args {
    /// Port to listen on (0 picks a free port).
    #[arg(long, default_value_t = 27017)]
    port: u16,
    /// Address to bind.
    #[arg(long = "bind_ip", default_value = "127.0.0.1")]
    bind_ip: String,
    /// Replica set name.
    #[arg(long = "replSet", default_value = "rs0")]
    repl_set: String,
    /// Oplog size bound in megabytes.
    #[arg(long = "oplogSizeMB", default_value_t = 192)]
    oplog_size_mb: u64,
    /// Application name allowed to write while user writes are blocked (repeatable).
    #[arg(long = "writeBlockBypassAppName")]
    write_block_bypass_app_name: Vec<String>,
    /// Interval of the idle no-op oplog writer, in milliseconds.
    #[arg(long = "noopIntervalMs", default_value_t = 10_000)]
    noop_interval_ms: u64,
}

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut opts = ServerOptions {
        host: args.bind_ip,
        port: args.port,
        repl_set_name: args.repl_set,
        oplog_size_mb: args.oplog_size_mb,
        noop_interval: Duration::from_millis(args.noop_interval_ms),
        ..Default::default()
    };
    if !args.write_block_bypass_app_name.is_empty() {
        opts.write_block_bypass_app_names = args.write_block_bypass_app_name;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port)).await?;
        let addr = listener.local_addr()?;
        let shared: Arc<Shared> = Shared::new(opts);
        shared.port.store(addr.port(), std::sync::atomic::Ordering::Relaxed);
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
        }
        tokio::select! {
            _ = server::run(shared, listener) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}
