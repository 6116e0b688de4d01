//! The gRPC control API (`clustersync.v1.Control`, `proto/protos/clustersync/v1/control.proto`),
//! served by every coordinator on `--grpcPort` (27183 by default) next to the REST API.
//!
//! The service is a thin layer over the same [`Control`] the REST API uses, so both APIs accept
//! and refuse exactly the same things with the same error names: a request is converted into the
//! domain type ([`convert`]), handed to [`Control`], and the result converted back. A refusal is
//! one [`tonic::Status`] built by the single `From<ControlError>` below: the code follows the
//! REST status (400 → `InvalidArgument`, 409 → `FailedPrecondition`, 501 → `Unimplemented`,
//! 503 → `Unavailable`, 500 → `Internal`), the message is the error description, and the REST
//! error name travels in the [`ERROR_HEADER`] metadata header.
//!
//! # Layout
//!
//! - this file: the service, the error mapping, binding and serving.
//! - [`convert`]: messages ↔ domain types (`Pb`-prefixed proto types).
//! - `watch`: the `WatchProgress` stream (store watch, debounce, heartbeat).

pub mod convert;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clustersync_common::model::SyncStateDoc;
use clustersync_proto::v1::control_server::{Control as PbControl, ControlServer as PbControlServer};
use clustersync_proto::v1::{
    CommitRequest as PbCommitRequest, CommitResponse as PbCommitResponse, PauseRequest as PbPauseRequest,
    PauseResponse as PbPauseResponse, ProgressRequest as PbProgressRequest, ProgressResponse as PbProgressResponse,
    ResumeRequest as PbResumeRequest, ResumeResponse as PbResumeResponse, ReverseRequest as PbReverseRequest,
    ReverseResponse as PbReverseResponse, StartRequest as PbStartRequest, StartResponse as PbStartResponse,
    WatchProgressRequest as PbWatchProgressRequest,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};

use crate::config::{Config, Origin};
use crate::control::{Control, ControlError};

/// Metadata header carrying the error name of a refused call (`InvalidState`, ...).
pub const ERROR_HEADER: &str = "clustersync-error";

/// `WatchProgress` sends a report at least this often when the request gives no interval.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Shortest heartbeat interval a `WatchProgress` request may ask for.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Longest heartbeat interval a `WatchProgress` request may ask for.
pub const MAX_WATCH_INTERVAL: Duration = Duration::from_secs(60);

impl From<ControlError> for Status {
    fn from(error: ControlError) -> Self {
        let code = match error.http_status() {
            400 => Code::InvalidArgument,
            409 => Code::FailedPrecondition,
            501 => Code::Unimplemented,
            503 => Code::Unavailable,
            _ => Code::Internal,
        };
        let mut status = Status::new(code, error.to_string());
        status.metadata_mut().insert(ERROR_HEADER, MetadataValue::from_static(error.name()));
        status
    }
}

/// The error name a status carries in [`ERROR_HEADER`], if any (a status from our server; a
/// transport failure has none).
pub fn error_name(status: &Status) -> Option<&str> {
    status.metadata().get(ERROR_HEADER).and_then(|value| value.to_str().ok())
}

/// The `clustersync.v1.Control` service over a [`Control`].
#[derive(Debug, Clone)]
pub struct ControlService {
    control: Arc<Control>,
    /// Ends the `WatchProgress` streams, so a graceful shutdown does not wait for clients that
    /// would watch forever.
    shutdown: CancellationToken,
}

impl ControlService {
    /// The service over `control`; its progress streams end when `shutdown` is cancelled.
    pub fn new(control: Arc<Control>, shutdown: CancellationToken) -> ControlService {
        ControlService { control, shutdown }
    }

    /// The tonic server wrapping the service, ready for `Server::add_service`.
    pub fn into_server(self) -> PbControlServer<ControlService> {
        PbControlServer::new(self)
    }
}

/// Logs a refused or failed call like the REST API does, and turns the error into a status.
fn refused(method: &'static str, error: ControlError) -> Status {
    if error.http_status() >= 500 {
        warn!(method, error = error.name(), description = %error, "grpc call failed");
    } else {
        info!(method, error = error.name(), description = %error, "grpc call refused");
    }
    Status::from(error)
}

/// `(state, phase)` of a transition's result, or the status of its refusal.
fn transition_reply(method: &'static str, result: Result<SyncStateDoc, ControlError>) -> Result<(i32, i32), Status> {
    result.map(|doc| convert::state_and_phase(&doc)).map_err(|error| refused(method, error))
}

#[tonic::async_trait]
impl PbControl for ControlService {
    async fn start(&self, request: Request<PbStartRequest>) -> Result<Response<PbStartResponse>, Status> {
        let options = convert::start_options_from_pb(request.into_inner()).map_err(|error| refused("start", error))?;
        let (state, phase) = transition_reply("start", self.control.start(options).await)?;
        Ok(Response::new(PbStartResponse { state, phase }))
    }

    async fn progress(&self, _request: Request<PbProgressRequest>) -> Result<Response<PbProgressResponse>, Status> {
        let progress = self.control.progress().await.map_err(|error| refused("progress", error))?;
        Ok(Response::new(PbProgressResponse { progress: Some((&progress).into()) }))
    }

    type WatchProgressStream = watch::ProgressStream;

    async fn watch_progress(
        &self,
        request: Request<PbWatchProgressRequest>,
    ) -> Result<Response<Self::WatchProgressStream>, Status> {
        let interval = watch_interval(request.get_ref().interval_ms);
        Ok(Response::new(watch::spawn(self.control.clone(), interval, self.shutdown.clone())))
    }

    async fn pause(&self, _request: Request<PbPauseRequest>) -> Result<Response<PbPauseResponse>, Status> {
        let (state, phase) = transition_reply("pause", self.control.pause().await)?;
        Ok(Response::new(PbPauseResponse { state, phase }))
    }

    async fn resume(&self, _request: Request<PbResumeRequest>) -> Result<Response<PbResumeResponse>, Status> {
        let (state, phase) = transition_reply("resume", self.control.resume().await)?;
        Ok(Response::new(PbResumeResponse { state, phase }))
    }

    async fn commit(&self, _request: Request<PbCommitRequest>) -> Result<Response<PbCommitResponse>, Status> {
        let (state, phase) = transition_reply("commit", self.control.commit().await)?;
        Ok(Response::new(PbCommitResponse { state, phase }))
    }

    async fn reverse(&self, _request: Request<PbReverseRequest>) -> Result<Response<PbReverseResponse>, Status> {
        let (state, phase) = transition_reply("reverse", self.control.reverse().await)?;
        Ok(Response::new(PbReverseResponse { state, phase }))
    }
}

/// The heartbeat interval of a `WatchProgress` request: 0 is the default, other values are
/// clamped to [`MIN_WATCH_INTERVAL`]..=[`MAX_WATCH_INTERVAL`].
pub fn watch_interval(interval_ms: u32) -> Duration {
    if interval_ms == 0 {
        return DEFAULT_WATCH_INTERVAL;
    }
    Duration::from_millis(u64::from(interval_ms)).clamp(MIN_WATCH_INTERVAL, MAX_WATCH_INTERVAL)
}

/// Binds the gRPC API's listener.
///
/// # Errors
///
/// The bind error, with the address in its message.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|error| std::io::Error::new(error.kind(), format!("cannot bind the grpc api to {address}: {error}")))
}

/// Serves the gRPC API on `listener` until `shutdown` is cancelled; unary calls in flight
/// finish, progress streams end.
///
/// # Errors
///
/// The server's transport error.
pub async fn serve(
    listener: TcpListener,
    control: Arc<Control>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "grpc api listening");
    }
    let service = ControlService::new(control, shutdown.clone()).into_server();
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), shutdown.cancelled_owned())
        .await
}

/// The gRPC API of a running coordinator process.
#[derive(Debug)]
pub struct GrpcServer {
    /// The address it listens on (the bound port when `grpcPort` is 0).
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcServer {
    /// Binds `bindAddress:grpcPort` and serves the API over `control` until `shutdown`.
    ///
    /// When `grpcPort` was not configured and the default port is taken (another coordinator
    /// on this machine, a test), the process runs without the gRPC API and says so in a
    /// warning: the REST API is the primary one, and an operator who wants gRPC there sets
    /// `grpcPort`. A configured port that cannot be bound is an error.
    ///
    /// # Errors
    ///
    /// The configured port cannot be bound.
    pub async fn start(
        config: &Config,
        control: Arc<Control>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Option<GrpcServer>> {
        let wanted = SocketAddr::new(config.bind_address, config.grpc_port);
        let listener = match bind(wanted).await {
            Ok(listener) => listener,
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse && config.origin("grpcPort") == Origin::Default =>
            {
                warn!(address = %wanted, %error, "grpc api not served: its default port is in use; set grpcPort to serve it");
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let address = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, control, shutdown));
        Ok(Some(GrpcServer { address, task }))
    }

    /// Waits until the server has stopped (after the shutdown), logging how it ended.
    pub async fn stopped(self) {
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "grpc api stopped with an error"),
            Err(error) => warn!(%error, "grpc api task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use clustersync_common::model::SyncState;

    use super::*;
    use crate::control::ERROR_NAMES;

    #[test]
    fn every_control_error_maps_to_its_code_name_and_message() {
        let cases = [
            (ControlError::invalid_request("bad body"), Code::InvalidArgument),
            (ControlError::invalid_option("bad option"), Code::InvalidArgument),
            (ControlError::InvalidNamespaceFilter { reason: "x".into() }, Code::InvalidArgument),
            (ControlError::UnsupportedTopology { reason: "x".into() }, Code::InvalidArgument),
            (
                ControlError::InvalidState { action: "pause", state: SyncState::Idle, reason: "x".into() },
                Code::FailedPrecondition,
            ),
            (ControlError::CommitNotReady { reason: "x".into() }, Code::FailedPrecondition),
            (ControlError::NotSupported { reason: "x".into() }, Code::Unimplemented),
            (ControlError::ClusterUnavailable { cluster: "c".into(), reason: "x".into() }, Code::Unavailable),
            (ControlError::StoreUnavailable { reason: "x".into() }, Code::Unavailable),
            (ControlError::Busy { action: "pause", attempts: 3 }, Code::Unavailable),
            (ControlError::Internal { reason: "x".into() }, Code::Internal),
        ];
        assert_eq!(cases.len(), ERROR_NAMES.len());
        for (error, code) in cases {
            let (name, message) = (error.name(), error.to_string());
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{name}");
            assert_eq!(status.message(), message);
            assert_eq!(error_name(&status), Some(name));
        }
        assert_eq!(error_name(&Status::unavailable("connection refused")), None);
    }

    #[test]
    fn watch_intervals_default_and_clamp() {
        assert_eq!(watch_interval(0), DEFAULT_WATCH_INTERVAL);
        assert_eq!(watch_interval(1), MIN_WATCH_INTERVAL);
        assert_eq!(watch_interval(250), Duration::from_millis(250));
        assert_eq!(watch_interval(u32::MAX), MAX_WATCH_INTERVAL);
    }
}
