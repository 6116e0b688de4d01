//! One clustersync process: opens the coordination store and runs the roles it was given.
//!
//! - **coordinator**: serves the REST API (any coordinator accepts commands: they are
//!   compare-and-swaps on the state document, so they reach every process through the store) and
//!   campaigns to lead the migration ([`crate::leader`]);
//! - **worker**: claims and runs tasks ([`clustersync_worker::runtime`]).
//!
//! Single-process mode runs both over the embedded store; distributed mode runs them in
//! separate processes over etcd — the same code either way.
//!
//! The process holds one lease in the store for its registration, its claims and (when leading)
//! its leadership. If the lease is lost (the process was frozen, or cut off from the store longer
//! than the TTL), every role stops its lease-bound work at once and the process starts over with a
//! new lease: its old claims may already belong to someone else, so it must not assume anything
//! it held before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clustersync_common::keys::Keys;
use clustersync_common::lease::{LeaseHandle, LeaseKeeper};
use clustersync_common::model::{self, InstanceInfo, Role};
use clustersync_common::store::{EmbeddedStore, EtcdStore, EtcdStoreOptions, LeaseId, Store, StoreError};
use clustersync_worker::runtime::{ClusterUris, WorkerRuntime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::control::Control;
use crate::leader::Leader;
use crate::topology::MongoClusters;

/// The roles a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Serves the API and takes part in the leader election.
    pub coordinator: bool,
    /// Claims and runs tasks.
    pub worker: bool,
}

/// Pause before starting over after the lease was lost, so a flapping store is not hammered.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Opens the coordination store the configuration names: etcd when endpoints are set,
/// otherwise the embedded store in `stateDir`.
///
/// # Errors
///
/// The store cannot be opened or reached.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if config.uses_etcd() {
        let options = EtcdStoreOptions {
            username: config.etcd.username.clone(),
            password: config.etcd.password.clone(),
            ..EtcdStoreOptions::default()
        };
        let store = EtcdStore::connect(&config.etcd.endpoints, options).await.context("cannot connect to etcd")?;
        Ok(Arc::new(store))
    } else {
        let dir = config.state_dir.clone();
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
            .await
            .context("opening the embedded store panicked")?
            .with_context(|| format!("cannot open the state directory {}", config.state_dir.display()))?;
        Ok(Arc::new(store))
    }
}

/// Runs the process until `shutdown` is cancelled.
///
/// # Errors
///
/// The store cannot be opened, the clusters' connection strings are unusable, or the API
/// cannot bind.
pub async fn run(config: Config, roles: Roles, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let keys = Keys::new(&config.etcd.root_prefix, &config.migration_name)?;
    info!(id = %config.id, migration = %config.migration_name, store = store.kind(), ?roles, "clustersync starting");

    let api_address = SocketAddr::new(config.bind_address, config.port);
    let mut api_task = None;
    let mut grpc_server = None;
    if roles.coordinator {
        let clusters = MongoClusters::connect(&config.cluster0, &config.cluster1).await?;
        let control = Arc::new(Control::new(store.clone(), keys.clone(), config.id.clone(), Arc::new(clusters)));
        // The gRPC API serves the same `Control` as the REST API (see `crate::grpc`).
        grpc_server = crate::grpc::GrpcServer::start(&config, control.clone(), shutdown.clone())
            .await
            .with_context(|| format!("cannot listen on port {} for the grpc api", config.grpc_port))?;
        let listener = crate::api::bind(api_address)
            .await
            .with_context(|| format!("cannot listen on {api_address} for the REST API"))?;
        let api_shutdown = shutdown.clone();
        api_task = Some(tokio::spawn(async move { crate::api::serve(listener, control, api_shutdown).await }));
    }

    let uris = ClusterUris { cluster0: config.cluster0.clone(), cluster1: config.cluster1.clone() };
    let settings = Arc::new(config.worker.clone());
    // Leases of earlier rounds, lost and no longer renewed, whose roles have all stopped.
    let mut abandoned: Vec<LeaseId> = Vec::new();
    while !shutdown.is_cancelled() {
        let keeper = match LeaseKeeper::start(store.clone(), config.etcd.lease_ttl).await {
            Ok(keeper) => keeper,
            Err(error) => {
                warn!(%error, "cannot obtain a lease from the coordination store; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RESTART_PAUSE) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        // The store answers again: free what the old leases still hold before starting over.
        revoke_abandoned(store.as_ref(), &mut abandoned).await;
        let lease = keeper.handle();
        let grpc_address = grpc_server.as_ref().map(|server| server.address);
        if let Err(error) = register(store.as_ref(), &keys, &config, roles, api_address, grpc_address, &lease).await {
            warn!(%error, "cannot register this process; retrying");
            abandoned.push(keeper.lease_id());
            drop(keeper);
            tokio::time::sleep(RESTART_PAUSE).await;
            continue;
        }
        let term = CancellationToken::new();
        let mut roles_running = tokio::task::JoinSet::new();
        if roles.coordinator {
            let leader = Leader {
                store: store.clone(),
                keys: keys.clone(),
                migration: config.migration_name.clone(),
                instance: config.id.clone(),
                uris: uris.clone(),
                settings: settings.clone(),
            };
            let (lease, term) = (lease.clone(), term.clone());
            roles_running
                .spawn(async move { leader.run(lease, term).await.map_err(|e| anyhow::anyhow!("leader: {e}")) });
        }
        if roles.worker {
            let runtime = WorkerRuntime {
                store: store.clone(),
                keys: keys.clone(),
                migration: config.migration_name.clone(),
                instance: config.id.clone(),
                lease: lease.clone(),
                settings: settings.clone(),
                uris: uris.clone(),
            };
            let term = term.clone();
            roles_running.spawn(async move { runtime.run(term).await.map_err(|e| anyhow::anyhow!("worker: {e}")) });
        }
        // Wait for shutdown or for any role to end (they end on their own only when the lease is
        // lost); then stop the others and start over with a new lease.
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = lease.lost() => warn!("lease lost; restarting this process's roles with a new lease"),
            Some(ended) = roles_running.join_next() => match ended {
                Ok(Ok(())) => {}
                Ok(Err(error)) => warn!(%error, "a role stopped; restarting with a new lease"),
                Err(error) => warn!(%error, "a role panicked; restarting with a new lease"),
            },
        }
        term.cancel();
        while roles_running.join_next().await.is_some() {}
        if shutdown.is_cancelled() {
            // Revoking the lease drops our claims and registration at once, so other processes
            // (or this one, restarted) take over without waiting for the TTL.
            if let Err(error) = keeper.revoke().await {
                warn!(%error, "could not revoke the lease on shutdown");
            }
            break;
        }
        abandoned.push(keeper.lease_id());
        drop(keeper);
        tokio::time::sleep(RESTART_PAUSE).await;
    }
    if let Some(api_task) = api_task {
        match api_task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "rest api stopped with an error"),
            Err(error) => warn!(%error, "rest api task failed"),
        }
    }
    if let Some(grpc_server) = grpc_server {
        grpc_server.stopped().await;
    }
    info!("clustersync stopped");
    Ok(())
}

/// Revokes leases this process gave up after losing them, forgetting those that are gone.
///
/// A lost lease is not necessarily expired in the store: the keeper self-fences a margin
/// *before* the deadline, a short store outage may end before the TTL, and an etcd restart
/// restores every lease with a fresh TTL. Its keys — our old registration, task claims, and
/// the leader key if we led — would then keep our own tasks and the leadership blocked for up
/// to a TTL although nothing works under that lease any more. Revoking is safe only because
/// every role of that lease's round has stopped (they are joined before the lease is pushed
/// here), and the fenced writes of those roles would fail anyway once their claims are gone.
async fn revoke_abandoned(store: &dyn Store, abandoned: &mut Vec<LeaseId>) {
    let mut still_held = Vec::new();
    for lease in abandoned.drain(..) {
        match store.revoke_lease(lease).await {
            Ok(()) => info!(%lease, "revoked the lost lease of an earlier round; its claims are free"),
            Err(StoreError::LeaseExpired { .. }) => debug!(%lease, "the lost lease of an earlier round has expired"),
            Err(error) => {
                // It expires on its own after the TTL; try again at the next restart.
                debug!(%lease, %error, "cannot revoke the lost lease of an earlier round yet");
                still_held.push(lease);
            }
        }
    }
    *abandoned = still_held;
}

/// Publishes `{m}/instances/{id}` under the process's lease.
async fn register(
    store: &dyn Store,
    keys: &Keys,
    config: &Config,
    roles: Roles,
    api_address: SocketAddr,
    grpc_address: Option<SocketAddr>,
    lease: &LeaseHandle,
) -> anyhow::Result<()> {
    let mut role_list = Vec::new();
    if roles.coordinator {
        role_list.push(Role::Coordinator);
    }
    if roles.worker {
        role_list.push(Role::Worker);
    }
    let info = InstanceInfo {
        id: config.id.clone(),
        roles: role_list,
        api_address: roles.coordinator.then(|| api_address.to_string()),
        grpc_address: grpc_address.map(|address| address.to_string()),
        hostname: hostname(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms: model::now_ms(),
        task_slots: if roles.worker { config.worker.task_slots } else { 0 },
    };
    store.put(&keys.instance(&config.id), model::encode(&info), Some(lease.lease_id())).await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}
