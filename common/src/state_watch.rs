//! Keeps a local copy of one store value current: a read, then a watch from the next revision,
//! falling back to a fresh read after any error or compaction.
//!
//! Used for the migration's state document by the leader, the workers and the API, so every
//! process reacts to `/pause`, `/commit`, copy completion... within one watch round trip, and a
//! missed event can never leave a process acting on a stale state for long (every error ends in
//! a re-read, and a periodic re-read bounds staleness even if a watch silently stalls).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model;
use crate::store::{Revision, Store, WatchEventKind};

/// A decoded value and the revision it was read at (0 when the key does not exist).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    /// `mod_revision` of the key (0 if missing): the compare-and-swap token for updates.
    pub mod_revision: Revision,
}

/// Re-read at least this often, whatever the watch says.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after an error before reading again.
const ERROR_PAUSE: Duration = Duration::from_millis(300);

/// Starts watching `key`. The receiver holds `T::default()` until the first read; a missing key
/// reads as `T::default()`. The task stops when `cancel` fires.
pub async fn watch_value<T>(
    store: Arc<dyn Store>,
    key: String,
    cancel: CancellationToken,
) -> watch::Receiver<Versioned<T>>
where
    T: DeserializeOwned + Default + Clone + PartialEq + Send + Sync + 'static,
{
    let initial = read(store.as_ref(), &key).await.unwrap_or(Versioned { value: T::default(), mod_revision: 0 });
    let (sender, receiver) = watch::channel(initial);
    tokio::spawn(async move {
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let result = tokio::select! {
                result = follow(store.as_ref(), &key, &sender) => result,
                _ = cancel.cancelled() => return,
            };
            if let Err(error) = result {
                tracing::debug!(key = %key, %error, "state watch interrupted, re-reading");
                tokio::select! {
                    _ = tokio::time::sleep(ERROR_PAUSE) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    });
    receiver
}

async fn read<T: DeserializeOwned + Default>(store: &dyn Store, key: &str) -> Result<Versioned<T>, String> {
    match store.get(key).await.map_err(|e| e.to_string())? {
        Some(kv) => Ok(Versioned {
            value: model::decode(key, &kv.value).map_err(|e| e.to_string())?,
            mod_revision: kv.mod_revision,
        }),
        None => Ok(Versioned { value: T::default(), mod_revision: 0 }),
    }
}

/// One round: read, publish, then follow the watch until it errors or the refresh timer fires.
async fn follow<T>(store: &dyn Store, key: &str, sender: &watch::Sender<Versioned<T>>) -> Result<(), String>
where
    T: DeserializeOwned + Default + Clone + PartialEq,
{
    let (kvs, revision) = store.get_prefix(key).await.map_err(|e| e.to_string())?;
    let current = match kvs.into_iter().find(|kv| kv.key == key) {
        Some(kv) => Versioned {
            value: model::decode(key, &kv.value).map_err(|e| e.to_string())?,
            mod_revision: kv.mod_revision,
        },
        None => Versioned { value: T::default(), mod_revision: 0 },
    };
    publish(sender, current);
    let mut stream = store.watch_prefix(key, Some(revision + 1)).await.map_err(|e| e.to_string())?;
    let refresh = tokio::time::sleep(REFRESH_INTERVAL);
    tokio::pin!(refresh);
    loop {
        tokio::select! {
            next = stream.next() => {
                let events = match next {
                    Some(Ok(events)) => events,
                    Some(Err(error)) => return Err(error.to_string()),
                    None => return Err("watch stream ended".to_string()),
                };
                for event in events.into_iter().filter(|e| e.kv.key == key) {
                    let value = match event.kind {
                        WatchEventKind::Put => Versioned {
                            value: model::decode(key, &event.kv.value).map_err(|e| e.to_string())?,
                            mod_revision: event.kv.mod_revision,
                        },
                        WatchEventKind::Delete => Versioned { value: T::default(), mod_revision: 0 },
                    };
                    publish(sender, value);
                }
            }
            _ = &mut refresh => return Ok(()),
        }
    }
}

fn publish<T: PartialEq>(sender: &watch::Sender<Versioned<T>>, value: Versioned<T>) {
    sender.send_if_modified(|current| {
        // Never go back to an older revision (a slow re-read racing a watch event).
        if value.mod_revision != 0 && value.mod_revision < current.mod_revision {
            return false;
        }
        if *current == value {
            return false;
        }
        *current = value;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SyncState, SyncStateDoc};
    use crate::store::EmbeddedStore;

    #[tokio::test]
    async fn follows_puts_and_deletes() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let cancel = CancellationToken::new();
        let mut rx = watch_value::<SyncStateDoc>(store.clone(), "/t/state".into(), cancel.clone()).await;
        assert_eq!(rx.borrow().value.state, SyncState::Idle);

        let doc = SyncStateDoc { state: SyncState::Running, ..Default::default() };
        store.put("/t/state", model::encode(&doc), None).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| v.value.state == SyncState::Running))
            .await
            .expect("state change seen")
            .unwrap();
        assert!(rx.borrow().mod_revision > 0);

        store.delete("/t/state").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| v.value.state == SyncState::Idle))
            .await
            .expect("delete seen")
            .unwrap();
        cancel.cancel();
    }
}
