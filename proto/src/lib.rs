//! gRPC wire types of the clustersync control API, generated from `protos/clustersync/v1/` by
//! `build.rs` (tonic + prost).
//!
//! # Layout
//!
//! - [`v1`]: package `clustersync.v1` — the `Control` service
//!   ([`v1::control_server`], [`v1::control_client`]) and its messages.
//!
//! This crate holds no domain logic: conversions between these messages and the domain types
//! live in the coordinator (`clustersync_coordinator::grpc::convert`), which owns the domain.

/// Package `clustersync.v1`: the `Control` service and its messages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("clustersync.v1");
}
