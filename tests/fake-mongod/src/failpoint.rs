//! Fail points: `failCommand` and `failGetMoreAfterCursorCheckout`, configured through
//! `configureFailPoint` with modes `alwaysOn`, `off`, `{times: n}` and `{skip: n}`.

use bson::{Bson, Document};

use crate::bson_order::as_i64;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
enum Mode {
    AlwaysOn,
    Times(i64),
    Skip(i64),
}

/// One active fail point.
#[derive(Debug, Clone)]
pub struct FailPoint {
    mode: Mode,
    data: Document,
}

/// What a triggered fail point asks for.
#[derive(Debug, Clone, Default)]
pub struct Action {
    /// Error code to return.
    pub error_code: Option<i32>,
    /// Labels to attach (None = let the server decide).
    pub error_labels: Option<Vec<String>>,
    /// Close the connection without replying.
    pub close_connection: bool,
    /// Block before running the command.
    pub block_ms: Option<u64>,
    /// A write concern error to attach after running the command.
    pub write_concern_error: Option<Document>,
    /// Extra fields for the error reply.
    pub error_extra: Option<Document>,
}

/// The set of configured fail points.
#[derive(Debug, Default)]
pub struct FailPoints {
    fail_command: Option<FailPoint>,
    get_more_checkout: Option<FailPoint>,
}

fn parse_mode(v: &Bson) -> Result<Option<Mode>> {
    Ok(match v {
        Bson::String(s) if s == "alwaysOn" => Some(Mode::AlwaysOn),
        Bson::String(s) if s == "off" => None,
        Bson::Document(d) => {
            if let Some(n) = d.get("times").and_then(as_i64) {
                if n <= 0 { None } else { Some(Mode::Times(n)) }
            } else if let Some(n) = d.get("skip").and_then(as_i64) {
                Some(Mode::Skip(n))
            } else if d.contains_key("activationProbability") {
                Some(Mode::AlwaysOn)
            } else {
                return Err(Error::bad_value("unknown fail point mode"));
            }
        }
        _ => return Err(Error::bad_value("unknown fail point mode")),
    })
}

impl FailPoints {
    /// Handles `configureFailPoint`.
    pub fn configure(&mut self, cmd: &Document) -> Result<()> {
        let name =
            cmd.get_str("configureFailPoint").map_err(|_| Error::bad_value("configureFailPoint needs a name"))?;
        let mode = parse_mode(cmd.get("mode").unwrap_or(&Bson::String("off".into())))?;
        let data = cmd.get_document("data").cloned().unwrap_or_default();
        let fp = mode.map(|mode| FailPoint { mode, data });
        match name {
            "failCommand" => self.fail_command = fp,
            "failGetMoreAfterCursorCheckout" => self.get_more_checkout = fp,
            other => {
                // accept and ignore other fail points used by tests
                tracing::debug!(failpoint = other, "ignoring unknown fail point");
            }
        }
        Ok(())
    }

    /// Turns every fail point off.
    pub fn clear(&mut self) {
        self.fail_command = None;
        self.get_more_checkout = None;
    }

    fn fire(slot: &mut Option<FailPoint>) -> Option<Document> {
        let fp = slot.as_mut()?;
        match &mut fp.mode {
            Mode::AlwaysOn => Some(fp.data.clone()),
            Mode::Times(n) => {
                let d = fp.data.clone();
                *n -= 1;
                if *n <= 0 {
                    *slot = None;
                }
                Some(d)
            }
            Mode::Skip(n) => {
                if *n > 0 {
                    *n -= 1;
                    None
                } else {
                    Some(fp.data.clone())
                }
            }
        }
    }

    /// Checks `failCommand` for a command from a client with `app_name`.
    pub fn check_command(&mut self, cmd_name: &str, app_name: Option<&str>) -> Option<Action> {
        let fp = self.fail_command.as_ref()?;
        let cmds: Vec<&str> = fp
            .data
            .get_array("failCommands")
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if !cmds.iter().any(|c| c.eq_ignore_ascii_case(cmd_name) || (*c == "isMaster" && cmd_name == "ismaster")) {
            return None;
        }
        if let Ok(want) = fp.data.get_str("appName")
            && app_name != Some(want)
        {
            return None;
        }
        let data = Self::fire(&mut self.fail_command)?;
        Some(action_from(&data))
    }

    /// Checks `failGetMoreAfterCursorCheckout` (applies to every getMore).
    pub fn check_get_more(&mut self) -> Option<Action> {
        self.get_more_checkout.as_ref()?;
        let data = Self::fire(&mut self.get_more_checkout)?;
        Some(action_from(&data))
    }
}

fn action_from(data: &Document) -> Action {
    Action {
        error_code: data.get("errorCode").and_then(as_i64).map(|c| c as i32),
        error_labels: data
            .get_array("errorLabels")
            .ok()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()),
        close_connection: data.get_bool("closeConnection").unwrap_or(false),
        block_ms: if data.get_bool("blockConnection").unwrap_or(false) {
            Some(data.get("blockTimeMS").and_then(as_i64).unwrap_or(0).max(0) as u64)
        } else {
            None
        },
        write_concern_error: data.get_document("writeConcernError").ok().cloned(),
        error_extra: data.get_document("errmsg").ok().cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn times_and_skip() {
        let mut f = FailPoints::default();
        f.configure(&doc! {"configureFailPoint": "failCommand", "mode": {"times": 2}, "data": {"failCommands": ["insert"], "errorCode": 91}})
            .unwrap();
        assert!(f.check_command("find", None).is_none());
        assert_eq!(f.check_command("insert", None).unwrap().error_code, Some(91));
        assert!(f.check_command("insert", None).is_some());
        assert!(f.check_command("insert", None).is_none());
        f.configure(&doc! {"configureFailPoint": "failCommand", "mode": {"skip": 1}, "data": {"failCommands": ["ping"], "closeConnection": true, "appName": "x"}})
            .unwrap();
        assert!(f.check_command("ping", Some("x")).is_none());
        assert!(f.check_command("ping", Some("y")).is_none());
        assert!(f.check_command("ping", Some("x")).unwrap().close_connection);
    }
}
