//! Connections to the two clusters, URI redaction, and retrying transient MongoDB errors.
//!
//! All MongoDB traffic goes through the official driver. Every client identifies itself with the
//! application name `clustersync` (servers and test servers use it to recognise our connections,
//! e.g. to let them write while user writes are blocked) and uses majority read concern and
//! `w: majority, j: true` — the consistency mongosync gives, which a migration needs.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use mongodb::options::{Acknowledgment, ClientOptions, ReadConcern, ReadPreference, SelectionCriteria, WriteConcern};
use mongodb::{Client, Database};
use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;

/// Application name every clustersync connection announces.
pub const APP_NAME: &str = "clustersync";

/// Which side a client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

/// Read preference for the copy reads on the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CopyReadPreference {
    #[default]
    Primary,
    PrimaryPreferred,
    Secondary,
    SecondaryPreferred,
    Nearest,
}

impl CopyReadPreference {
    pub fn selection_criteria(self) -> SelectionCriteria {
        let pref = match self {
            Self::Primary => ReadPreference::Primary,
            Self::PrimaryPreferred => ReadPreference::PrimaryPreferred { options: None },
            Self::Secondary => ReadPreference::Secondary { options: None },
            Self::SecondaryPreferred => ReadPreference::SecondaryPreferred { options: None },
            Self::Nearest => ReadPreference::Nearest { options: None },
        };
        SelectionCriteria::ReadPreference(pref)
    }
}

/// Both clusters of a migration, with their names (`cluster0` / `cluster1`).
#[derive(Debug, Clone)]
pub struct Clusters {
    pub source: Client,
    pub destination: Client,
    /// `host:port,...` of the source, without credentials.
    pub source_hosts: String,
    /// `host:port,...` of the destination, without credentials.
    pub destination_hosts: String,
    /// Read preference of copy and verification reads on the source.
    pub copy_read_preference: CopyReadPreference,
}

impl Clusters {
    pub fn client(&self, side: Side) -> &Client {
        match side {
            Side::Source => &self.source,
            Side::Destination => &self.destination,
        }
    }

    pub fn source_db(&self, name: &str) -> Database {
        self.source.database(name)
    }

    pub fn destination_db(&self, name: &str) -> Database {
        self.destination.database(name)
    }
}

/// Checks a cluster URI and builds the driver options clustersync uses with it.
///
/// Rejected, with an error naming the option: a read concern other than majority, a write
/// concern other than majority, `socketTimeoutMS` (a socket timeout kills long awaitData reads
/// and index builds half-way). The error never contains the URI's credentials.
pub async fn client_options(uri: &str, cluster_name: &str) -> Result<ClientOptions, String> {
    let redacted = redact_uri(uri);
    if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
        return Err(format!("{cluster_name} uri {redacted} must start with mongodb:// or mongodb+srv://"));
    }
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| format!("{cluster_name} uri {redacted} is invalid: {}", redact_text(&e.to_string(), uri)))?;
    if let Some(rc) = &options.read_concern
        && rc.level != mongodb::options::ReadConcernLevel::Majority
    {
        return Err(format!("{cluster_name} uri {redacted}: invalid uri option, read concern must be majority"));
    }
    if let Some(wc) = &options.write_concern
        && wc.w.as_ref().is_some_and(|w| *w != Acknowledgment::Majority)
    {
        return Err(format!("{cluster_name} uri {redacted}: invalid uri option, write concern must be majority"));
    }
    if uri.to_ascii_lowercase().contains("sockettimeoutms=") {
        return Err(format!("{cluster_name} uri {redacted}: socketTimeoutMS is not supported, remove it"));
    }
    options.app_name = Some(APP_NAME.to_string());
    options.read_concern = Some(ReadConcern::majority());
    options.write_concern = Some(WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build());
    options.retry_reads = Some(true);
    options.retry_writes = Some(true);
    Ok(options)
}

/// Connects to both clusters (does not wait for a server; the first operation does).
pub async fn connect(
    source_uri: &str,
    source_name: &str,
    destination_uri: &str,
    destination_name: &str,
    copy_read_preference: CopyReadPreference,
) -> Result<Clusters, String> {
    let source_options = client_options(source_uri, source_name).await?;
    let destination_options = client_options(destination_uri, destination_name).await?;
    let source_hosts = hosts_of(&source_options);
    let destination_hosts = hosts_of(&destination_options);
    let source = Client::with_options(source_options).map_err(|e| format!("{source_name}: {e}"))?;
    let destination = Client::with_options(destination_options).map_err(|e| format!("{destination_name}: {e}"))?;
    Ok(Clusters { source, destination, source_hosts, destination_hosts, copy_read_preference })
}

fn hosts_of(options: &ClientOptions) -> String {
    options.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",")
}

/// Replaces the credentials of a MongoDB URI with `***` (and any secret-looking query option).
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return "<unparseable uri>".to_string();
    };
    let (authority_end, _) = rest.char_indices().find(|(_, c)| *c == '/' || *c == '?').unwrap_or((rest.len(), ' '));
    let (authority, tail) = rest.split_at(authority_end);
    let hosts = match authority.rsplit_once('@') {
        Some((_, hosts)) => format!("***@{hosts}"),
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query = query
                .split('&')
                .map(|pair| {
                    let key = pair.split('=').next().unwrap_or_default();
                    let lower = key.to_ascii_lowercase();
                    if lower.contains("password") || lower.contains("secret") || lower == "authmechanismproperties" {
                        format!("{key}=***")
                    } else {
                        pair.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("&");
            format!("{path}?{query}")
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{hosts}{tail}")
}

/// Removes the user and password of `uri` from a text (e.g. a driver error that echoes it).
pub fn redact_text(text: &str, uri: &str) -> String {
    let mut out = text.replace(uri, &redact_uri(uri));
    if let Some((_, rest)) = uri.split_once("://")
        && let Some((userinfo, _)) = rest.split_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
        && !password.is_empty()
    {
        out = out.replace(password, "***");
    }
    out
}

/// Backoff for transient errors: 100 ms doubling to 5 s, for up to `budget` in total.
pub fn backoff(budget: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_total_delay(Some(budget))
        .without_max_times()
}

/// Default total time a transient error is retried before the task gives up (and another
/// attempt of the task starts from its checkpoint). mongosync retries network errors for 30 min.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(30 * 60);

/// Runs `op` until it succeeds, fails with a non-retryable error, the budget is spent, or
/// `cancel` fires (then `WorkerError::Cancelled`).
pub async fn retry<T, F, Fut>(what: &str, cancel: &CancellationToken, budget: Duration, op: F) -> Result<T, WorkerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, WorkerError>>,
{
    let attempt = op
        .retry(backoff(budget))
        .when(|e: &WorkerError| e.is_retryable())
        .notify(|e: &WorkerError, delay: Duration| {
            tracing::warn!(operation = what, error = %e, retry_in_ms = delay.as_millis() as u64, "transient error, retrying");
        });
    tokio::select! {
        result = attempt => result,
        _ = cancel.cancelled() => Err(WorkerError::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_uri("mongodb://alice:s3cret@h1:27017,h2:27018/admin?replicaSet=rs0"),
            "mongodb://***@h1:27017,h2:27018/admin?replicaSet=rs0"
        );
        assert_eq!(redact_uri("mongodb://h1/?replicaSet=rs0"), "mongodb://h1/?replicaSet=rs0");
        assert_eq!(
            redact_uri("mongodb+srv://u:p@cluster.example.net/?authMechanismProperties=AWS_SESSION_TOKEN:abc"),
            "mongodb+srv://***@cluster.example.net/?authMechanismProperties=***"
        );
        assert_eq!(redact_uri("garbage"), "<unparseable uri>");
        let text = redact_text("failed for mongodb://alice:s3cret@h1 (s3cret)", "mongodb://alice:s3cret@h1");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[tokio::test]
    async fn uri_options_are_checked() {
        let err = client_options("mongodb://u:pw@localhost/?readConcernLevel=local", "cluster0").await.unwrap_err();
        assert!(err.contains("read concern must be majority") && !err.contains("pw"), "{err}");
        let err = client_options("mongodb://localhost/?w=1", "cluster1").await.unwrap_err();
        assert!(err.contains("write concern must be majority"), "{err}");
        let err = client_options("mongodb://localhost/?socketTimeoutMS=100", "cluster1").await.unwrap_err();
        assert!(err.contains("socketTimeoutMS"), "{err}");
        let err = client_options("http://localhost", "cluster1").await.unwrap_err();
        assert!(err.contains("mongodb://"), "{err}");
        let options = client_options("mongodb://localhost/?w=majority", "cluster0").await.unwrap();
        assert_eq!(options.app_name.as_deref(), Some(APP_NAME));
        assert_eq!(options.write_concern.unwrap().journal, Some(true));
    }
}
