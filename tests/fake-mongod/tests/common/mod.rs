//! Shared helpers for the integration tests.

#![allow(dead_code)]

use fake_mongod::{FakeMongod, ServerOptions};
use mongodb::Client;
use mongodb::options::ClientOptions;

/// Starts a server with default options.
pub fn server() -> FakeMongod {
    FakeMongod::start_default().expect("start fake-mongod")
}

/// Starts a server with custom options.
pub fn server_with(opts: ServerOptions) -> FakeMongod {
    FakeMongod::start(opts).expect("start fake-mongod")
}

/// A client using the replica set URI.
pub async fn client(s: &FakeMongod) -> Client {
    client_uri(&s.uri()).await
}

/// A client for a URI with short timeouts.
pub async fn client_uri(uri: &str) -> Client {
    let mut o = ClientOptions::parse(uri).await.expect("parse uri");
    o.server_selection_timeout = Some(std::time::Duration::from_secs(10));
    Client::with_options(o).expect("client")
}
