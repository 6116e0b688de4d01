//! TEMP stub
use anyhow::Result;
pub struct InProcess;
impl InProcess {
    pub fn start() -> Result<InProcess> {
        anyhow::bail!("fake-mongod is not available yet")
    }
    pub fn uri(&self) -> String {
        String::new()
    }
    pub fn stop(self) {}
}
