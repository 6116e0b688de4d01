//! One clustersync process: opens the coordination store and runs the roles it was given.
//!
//! This version serves the REST API over the store; the leader loop and the worker runtime are
//! wired in by the full node.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clustersync_common::keys::Keys;
use clustersync_common::store::{EmbeddedStore, EtcdStore, EtcdStoreOptions, Store};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::control::Control;
use crate::topology::MongoClusters;

/// The roles a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Serves the API and takes part in the leader election.
    pub coordinator: bool,
    /// Claims and runs tasks.
    pub worker: bool,
}

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
    if !roles.coordinator {
        shutdown.cancelled().await;
        return Ok(());
    }
    let clusters = MongoClusters::connect(&config.cluster0, &config.cluster1).await?;
    let control = Arc::new(Control::new(store, keys, config.id.clone(), Arc::new(clusters)));
    let listener = crate::api::bind(SocketAddr::new(config.bind_address, config.port)).await?;
    crate::api::serve(listener, control, shutdown).await?;
    Ok(())
}
