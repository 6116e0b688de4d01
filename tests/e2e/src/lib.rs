//! Harness of clustersync's end-to-end tests.
//!
//! Each test runs real `clustersync` processes against two MongoDB deployments — in-process
//! fake-mongod servers by default, or real deployments named by `CLUSTERSYNC_TEST_SOURCE_URI` and
//! `CLUSTERSYNC_TEST_DESTINATION_URI` — and, for distributed tests, a real etcd started on free
//! ports (`clustersync_common::testing::EtcdServer`; missing etcd fails the test loudly).
//!
//! # Layout
//!
//! - [`clusters`]: the two deployments of a test and its database-name prefix.
//! - [`process`]: building, starting, SIGKILL-ing and restarting `clustersync`; its REST API.
//! - [`data`]: documents with every BSON type, mixed `_id` types, large documents; comparing
//!   both sides document for document, index for index, options for options.
//! - [`load`]: live writes (every kind, and DDL) on the source while a sync runs.
//! - [`fleet`]: distributed mode: etcd, coordinator and worker processes that can be killed,
//!   frozen, thawed, restarted or added; the coordination store as the test sees it.

pub mod clusters;
pub mod data;
pub mod fleet;
pub mod load;
pub mod process;

pub use clusters::{TestCluster, TestClusters};
pub use fleet::{Fleet, FleetOptions, NodeRole};
pub use process::SyncProcess;
