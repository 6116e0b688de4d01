//! Loading unified test files and evaluating `runOnRequirements`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bson::{Bson, Document};

/// The newest schema version this runner understands.
pub const SUPPORTED_SCHEMA: (u32, u32) = (1, 28);

/// The default suites: the seven folders of the spec-test copy.
pub const DEFAULT_SUITES: [&str; 7] =
    ["change-streams", "collection-management", "crud", "index-management", "run-command", "sessions", "transactions"];

/// One unified test file, parsed into BSON (extended JSON decoded).
#[derive(Debug, Clone)]
pub struct TestFile {
    /// Path relative to the spec directory, with `/` separators.
    pub rel_path: String,
    /// The suite (first path component).
    pub suite: String,
    pub doc: Document,
}

impl TestFile {
    pub fn tests(&self) -> Vec<Document> {
        self.doc
            .get_array("tests")
            .map(|a| a.iter().filter_map(|t| t.as_document().cloned()).collect())
            .unwrap_or_default()
    }

    pub fn schema_version(&self) -> Option<(u32, u32)> {
        parse_schema_version(self.doc.get_str("schemaVersion").ok()?)
    }
}

pub fn parse_schema_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// Converts JSON text (possibly extended JSON) into a BSON document.
pub fn parse_json_document(text: &str) -> Result<Document> {
    let json: serde_json::Value = serde_json::from_str(text).context("invalid json")?;
    match Bson::try_from(json).context("invalid extended json")? {
        Bson::Document(d) => Ok(d),
        other => bail!("expected a json object, got {other}"),
    }
}

/// Finds the suite folders' unified test files, sorted by path.
pub fn load_suite(spec_dir: &Path, suite: &str) -> Result<Vec<TestFile>> {
    let root = spec_dir.join(suite);
    if !root.is_dir() {
        bail!("suite folder {} does not exist", root.display());
    }
    let mut paths = Vec::new();
    collect_json(&root, &mut paths)?;
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let rel = path
            .strip_prefix(spec_dir)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let doc = parse_json_document(&text).with_context(|| format!("in {rel}"))?;
        if !doc.contains_key("schemaVersion") || !doc.contains_key("tests") {
            // not a unified-format file
            continue;
        }
        files.push(TestFile { rel_path: rel, suite: suite.to_string(), doc });
    }
    Ok(files)
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_json(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// Facts about the server under test that requirements are checked against.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `single`, `replicaset`, `sharded` or `load-balanced`.
    pub topology: String,
    pub version: Vec<u32>,
    pub auth: bool,
    pub serverless: bool,
    pub server_parameters: Document,
}

/// Parses "4.2", "4.0.1" into components.
pub fn parse_version(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Compares two versions, missing components counting as zero.
pub fn compare_versions(a: &[u32], b: &[u32]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        match x.cmp(&y) {
            std::cmp::Ordering::Equal => {}
            other => return other,
        }
    }
    std::cmp::Ordering::Equal
}

/// Checks one requirement entry; `Err` explains why it does not match.
pub fn check_requirement(req: &Document, server: &ServerInfo) -> Result<(), String> {
    for (key, value) in req {
        match key.as_str() {
            "minServerVersion" => {
                let v = parse_version(value.as_str().unwrap_or_default());
                if compare_versions(&server.version, &v).is_lt() {
                    return Err(format!("minServerVersion {value}"));
                }
            }
            "maxServerVersion" => {
                let v = parse_version(value.as_str().unwrap_or_default());
                if compare_versions(&server.version, &v).is_gt() {
                    return Err(format!("maxServerVersion {value}"));
                }
            }
            "topologies" => {
                let list: Vec<&str> =
                    value.as_array().map(|a| a.iter().filter_map(Bson::as_str).collect()).unwrap_or_default();
                let ok = list
                    .iter()
                    .any(|t| *t == server.topology || (*t == "sharded-replicaset" && server.topology == "sharded"));
                if !ok {
                    return Err(format!("topology {} not in {list:?}", server.topology));
                }
            }
            "serverless" => match value.as_str() {
                Some("require") if !server.serverless => return Err("serverless required".into()),
                Some("forbid") if server.serverless => return Err("serverless forbidden".into()),
                _ => {}
            },
            "auth" => {
                if value.as_bool() != Some(server.auth) {
                    return Err(format!("auth {value}"));
                }
            }
            "authMechanism" => return Err("authMechanism requirement".into()),
            "csfle" => {
                if value.as_bool() == Some(true) {
                    return Err("csfle".into());
                }
            }
            "serverParameters" => {
                let Some(params) = value.as_document() else {
                    return Err("invalid serverParameters".into());
                };
                for (name, want) in params {
                    match server.server_parameters.get(name) {
                        Some(have) if crate::matcher::values_equal(want, have) => {}
                        _ => return Err(format!("serverParameters {name}")),
                    }
                }
            }
            other => return Err(format!("unknown requirement {other}")),
        }
    }
    Ok(())
}

/// Evaluates a `runOnRequirements` list: matches when it is absent or any
/// entry matches. `Err` carries the first entry's reason.
pub fn check_requirements(reqs: Option<&Bson>, server: &ServerInfo) -> Result<(), String> {
    let Some(Bson::Array(list)) = reqs else {
        return Ok(());
    };
    if list.is_empty() {
        return Ok(());
    }
    let mut first_reason = None;
    for req in list {
        let Some(req) = req.as_document() else {
            continue;
        };
        match check_requirement(req, server) {
            Ok(()) => return Ok(()),
            Err(reason) => {
                first_reason.get_or_insert(reason);
            }
        }
    }
    Err(first_reason.unwrap_or_else(|| "no requirement matched".into()))
}

/// An incompatible `schemaVersion`; the format requires an error (reported as
/// a failure of each test), not a skip.
pub fn schema_error(file: &TestFile) -> Option<String> {
    match file.schema_version() {
        None => Some("invalid schemaVersion".into()),
        Some((major, minor)) => {
            let (smaj, smin) = SUPPORTED_SCHEMA;
            (major != smaj || minor > smin)
                .then(|| format!("schemaVersion {major}.{minor} is not supported (runner supports {smaj}.{smin})"))
        }
    }
}

/// Why no test of the file can run, if so (file-level requirements).
pub fn file_skip_reason(file: &TestFile, server: &ServerInfo) -> Option<String> {
    check_requirements(file.doc.get("runOnRequirements"), server).err().map(|r| format!("requirement: {r}"))
}

/// Why one test cannot run (`skipReason` or its own requirements), if so.
pub fn test_skip_reason(test: &Document, server: &ServerInfo) -> Option<String> {
    if let Ok(reason) = test.get_str("skipReason") {
        return Some(format!("skipReason: {reason}"));
    }
    check_requirements(test.get("runOnRequirements"), server).err().map(|r| format!("requirement: {r}"))
}

/// Server-parameter names any requirement in the files mentions.
pub fn required_server_parameters(files: &[TestFile]) -> Vec<String> {
    fn scan(reqs: Option<&Bson>, out: &mut Vec<String>) {
        if let Some(Bson::Array(list)) = reqs {
            for req in list.iter().filter_map(Bson::as_document) {
                if let Ok(params) = req.get_document("serverParameters") {
                    out.extend(params.keys().cloned());
                }
            }
        }
    }
    let mut out = Vec::new();
    for f in files {
        scan(f.doc.get("runOnRequirements"), &mut out);
        for t in f.tests() {
            scan(t.get("runOnRequirements"), &mut out);
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn server() -> ServerInfo {
        ServerInfo {
            topology: "replicaset".into(),
            version: vec![7, 0, 12],
            auth: false,
            serverless: false,
            server_parameters: Document::new(),
        }
    }

    #[test]
    fn versions_compare_with_missing_components() {
        assert!(compare_versions(&[7, 0, 12], &parse_version("7.0")).is_gt());
        assert!(compare_versions(&[7, 0], &parse_version("7.0.0")).is_eq());
        assert!(compare_versions(&[4, 2, 99], &parse_version("4.3")).is_lt());
    }

    #[test]
    fn requirements() {
        let s = server();
        assert!(check_requirement(&doc! {"minServerVersion": "4.0", "topologies": ["replicaset"]}, &s).is_ok());
        assert!(check_requirement(&doc! {"minServerVersion": "8.0"}, &s).is_err());
        assert!(check_requirement(&doc! {"maxServerVersion": "4.2.99"}, &s).is_err());
        assert!(check_requirement(&doc! {"topologies": ["sharded", "load-balanced"]}, &s).is_err());
        assert!(check_requirement(&doc! {"serverless": "forbid"}, &s).is_ok());
        assert!(check_requirement(&doc! {"auth": true}, &s).is_err());
        assert!(check_requirement(&doc! {"auth": false}, &s).is_ok());
        let list = Bson::Array(vec![doc! {"topologies": ["sharded"]}.into(), doc! {"minServerVersion": "4.4"}.into()]);
        assert!(check_requirements(Some(&list), &s).is_ok());
    }

    #[test]
    fn extended_json_is_decoded() {
        let d =
            parse_json_document(r#"{"a": {"$numberLong": "5"}, "b": 1, "c": 1.5, "d": {"$$exists": true}}"#).unwrap();
        assert_eq!(d.get("a"), Some(&Bson::Int64(5)));
        assert_eq!(d.get("b"), Some(&Bson::Int32(1)));
        assert_eq!(d.get("c"), Some(&Bson::Double(1.5)));
        assert!(d.get_document("d").is_ok());
    }

    #[test]
    fn loads_every_spec_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/spec-tests");
        if !dir.is_dir() {
            eprintln!("spec tests not present at {}; nothing to load", dir.display());
            return;
        }
        let mut files = 0;
        let mut tests = 0;
        for suite in DEFAULT_SUITES {
            let loaded = load_suite(&dir, suite).unwrap();
            assert!(loaded.iter().all(|f| f.rel_path.starts_with(suite)));
            assert!(loaded.iter().all(|f| f.schema_version().is_some()));
            files += loaded.len();
            tests += loaded.iter().map(|f| f.tests().len()).sum::<usize>();
        }
        assert_eq!((files, tests), (250, 924));
        // the README's count of tests runnable on a 7.0 replica set
        let server = server();
        let mut runnable = 0;
        for suite in DEFAULT_SUITES {
            for f in load_suite(&dir, suite).unwrap() {
                if schema_error(&f).is_some() || file_skip_reason(&f, &server).is_some() {
                    continue;
                }
                runnable += f.tests().iter().filter(|t| test_skip_reason(t, &server).is_none()).count();
            }
        }
        assert_eq!(runnable, 653);
    }

    #[test]
    fn schema_versions() {
        assert_eq!(parse_schema_version("1.21"), Some((1, 21)));
        assert_eq!(parse_schema_version("1"), Some((1, 0)));
    }
}
