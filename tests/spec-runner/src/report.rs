//! Per-suite counts and the expected-pass list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};

use crate::runner::{Status, TestReport};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Counts per suite, in the order the suites were given.
pub fn counts_by_suite(suites: &[String], reports: &[TestReport]) -> Vec<(String, Counts)> {
    suites
        .iter()
        .map(|suite| {
            let mut c = Counts::default();
            for r in reports.iter().filter(|r| &r.suite == suite) {
                match r.status {
                    Status::Pass => c.passed += 1,
                    Status::Fail(_) => c.failed += 1,
                    Status::Skip(_) => c.skipped += 1,
                }
            }
            (suite.clone(), c)
        })
        .collect()
}

/// Reads an expected-pass list: one test id a line; blank lines and lines
/// starting with `#` are ignored.
pub fn read_list(path: &Path) -> Result<BTreeSet<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read expected list {}", path.display()))?;
    Ok(text.lines().map(str::trim_end).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect())
}

/// Writes the ids of the passing tests, sorted, one a line. Ids already in
/// the file for tests this run did not cover (other suites, `--filter`) are
/// kept, so a partial run never shrinks the list.
pub fn write_list(path: &Path, reports: &[TestReport]) -> Result<usize> {
    let existing = if path.exists() { read_list(path)? } else { BTreeSet::new() };
    let ran: BTreeSet<&str> = reports.iter().map(|r| r.id.as_str()).collect();
    let mut ids: BTreeSet<&str> = reports.iter().filter(|r| r.status == Status::Pass).map(|r| r.id.as_str()).collect();
    ids.extend(existing.iter().map(String::as_str).filter(|id| !ran.contains(id)));
    let mut text = String::new();
    for id in &ids {
        text.push_str(id);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(ids.len())
}

/// How a run compares with the expected-pass list.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Listed, and failed or skipped this time (id, why).
    pub regressed: Vec<(String, String)>,
    /// Listed, but not run at all (renamed, removed or filtered out).
    pub missing: Vec<String>,
    /// Passing but not listed yet.
    pub newly_passing: Vec<String>,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.regressed.is_empty() && self.missing.is_empty()
    }
}

/// Compares a run with the list. With `partial` (a `--filter` or `--suite`
/// narrowed the run) listed tests that did not run are not reported missing.
pub fn compare(expected: &BTreeSet<String>, reports: &[TestReport], partial: bool) -> Comparison {
    let by_id: BTreeMap<&str, &Status> = reports.iter().map(|r| (r.id.as_str(), &r.status)).collect();
    let mut c = Comparison::default();
    for id in expected {
        match by_id.get(id.as_str()) {
            Some(Status::Pass) => {}
            Some(Status::Fail(why)) => c.regressed.push((id.clone(), format!("failed: {why}"))),
            Some(Status::Skip(why)) => c.regressed.push((id.clone(), format!("skipped: {why}"))),
            None if partial => {}
            None => c.missing.push(id.clone()),
        }
    }
    for r in reports {
        if r.status == Status::Pass && !expected.contains(&r.id) {
            c.newly_passing.push(r.id.clone());
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(id: &str, status: Status) -> TestReport {
        TestReport { id: id.into(), suite: "crud".into(), status }
    }

    #[test]
    fn comparison_with_expected_list() {
        let expected: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let reports = vec![rep("a", Status::Pass), rep("b", Status::Fail("x".into())), rep("d", Status::Pass)];
        let c = compare(&expected, &reports, false);
        assert_eq!(c.regressed.len(), 1);
        assert_eq!(c.missing, vec!["c".to_string()]);
        assert_eq!(c.newly_passing, vec!["d".to_string()]);
        assert!(!c.ok());
        let c = compare(&expected, &reports[..1], true);
        assert!(c.ok());
    }

    #[test]
    fn counts() {
        let reports =
            vec![rep("a", Status::Pass), rep("b", Status::Skip("y".into())), rep("c", Status::Fail("x".into()))];
        let c = counts_by_suite(&["crud".into(), "sessions".into()], &reports);
        assert_eq!(c[0].1, Counts { passed: 1, failed: 1, skipped: 1 });
        assert_eq!(c[1].1, Counts::default());
    }

    #[test]
    fn list_round_trip() {
        let dir = std::env::temp_dir().join(format!("spec-runner-list-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("list.txt");
        let reports =
            vec![rep("b :: x", Status::Pass), rep("a :: y", Status::Pass), rep("c", Status::Fail("f".into()))];
        assert_eq!(write_list(&path, &reports).unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "a :: y\nb :: x\n");
        assert_eq!(read_list(&path).unwrap().len(), 2);
        // a partial run keeps what it did not run and drops what now fails
        let partial = vec![rep("b :: x", Status::Fail("f".into())), rep("d", Status::Pass)];
        assert_eq!(write_list(&path, &partial).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a :: y\nd\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
