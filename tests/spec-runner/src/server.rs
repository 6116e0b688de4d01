//! Starting the in-process `fake-mongod` when no `--uri` is given.

use anyhow::{Context, Result};

/// A running in-process server; shut down on [`InProcess::stop`].
pub struct InProcess {
    server: fake_mongod::FakeMongod,
}

impl InProcess {
    /// Starts `fake-mongod` on a free loopback port as replica set `rs0`.
    pub fn start() -> Result<InProcess> {
        let server = fake_mongod::FakeMongod::start_default().context("cannot start the in-process fake-mongod")?;
        Ok(InProcess { server })
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    pub fn stop(self) {
        self.server.shutdown();
    }
}
